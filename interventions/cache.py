"""Per-process caches: a small LRU of large values (a family's baselines, adapted runs, other models), bounded by
count and, where it can weigh its values, by bytes."""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

import torch

V = TypeVar("V")


def tensor_bytes(value, seen: set[int] | None = None) -> int:
    """Bytes of the tensor storages `value` keeps alive: tensors inside dicts, lists, tuples and dataclasses, each
    storage counted once (a slice keeps its whole storage, and two views share one)."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(value, dict):
        return sum(tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(tensor_bytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    return 0


class LRU(Generic[V]):
    """At most `size` values, the least recently used dropped first; with `max_bytes` (and `weigh`, a value's bytes
    now) also dropped while the values besides the one just asked for weigh more than that: that one is never
    dropped, however large. Values may grow after they are made (a family's baselines are computed as trials first
    read them), so the bound is applied on every `get`: the cache holds the value in use plus at most `max_bytes` of
    the others."""

    def __init__(self, size: int, max_bytes: int | None = None, weigh: Callable[[V], int] | None = None) -> None:
        if max_bytes is not None and weigh is None:
            raise ValueError("an LRU bounded by bytes needs `weigh`")
        self.size, self.max_bytes, self.weigh = size, max_bytes, weigh
        self._values: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value under `key`, computed on first use."""
        if key not in self._values:
            self._values[key] = compute()
        self._values.move_to_end(key)
        self._bound()
        return self._values[key]

    def _bound(self) -> None:
        while len(self._values) > max(1, self.size):
            self._values.popitem(last=False)
        if self.max_bytes is None or len(self._values) < 2:
            return
        sizes = [self.weigh(v) for v in self._values.values()][:-1]  # the others, oldest first
        total = sum(sizes)
        for size in sizes:
            if total <= self.max_bytes:
                break
            self._values.popitem(last=False)
            total -= size

    def nbytes(self) -> int:
        """What the values weigh now (0 without `weigh`)."""
        return sum(self.weigh(v) for v in self._values.values()) if self.weigh else 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)
