"""Registries: one name -> implementation table per concept, the one user-error type, and its one-line messages."""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class AtlasError(ValueError):
    """Bad input from a user: the CLI prints it as one line and exits 2."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name when the message is empty)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


class Registry(Generic[T]):
    """Name -> implementation for one concept (kind, vector type, task family, model, ...).

    `sources` names the modules that declare entries; they are imported on the first lookup, so
    the registry is complete whoever reads it first (declaring modules never import their readers).
    A package above the registry's own adds its declaring modules with `add_sources` (it names itself: the
    registry's package never names a package above it).
    """

    def __init__(self, concept: str, sources: tuple[str, ...] = ()) -> None:
        self.concept = concept
        self._entries: dict[str, T] = {}
        self._pending, self._added = list(sources), set(sources)

    def add_sources(self, *modules: str) -> None:
        """More modules that declare entries, imported on the next lookup (at once if that is under way)."""
        new = [m for m in modules if m not in self._added]
        self._added.update(new)
        self._pending += new

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under `name`; a duplicate fails at import."""
        if name in self._entries:
            raise ValueError(f"{self.concept} {name!r} is registered twice")

        def add(obj: T) -> T:
            self._entries[name] = obj
            return obj

        return add

    def _load(self) -> dict[str, T]:
        while self._pending:
            importlib.import_module(self._pending.pop(0))  # popped first: the source registers into this registry
        return self._entries

    def get(self, name: str) -> T:
        entries = self._load()
        if name in entries:
            return entries[name]
        near = difflib.get_close_matches(str(name), entries, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise AtlasError(f"unknown {self.concept} {name!r} (known: {', '.join(self.names())}){hint}")

    def names(self) -> list[str]:
        return sorted(self._load())

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
