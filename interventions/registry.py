"""Registries: one name -> implementation table per concept, and the one user-error type."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class AtlasError(ValueError):
    """Bad input from a user: the CLI prints it as one line and exits 2."""


class Registry(Generic[T]):
    """Name -> implementation for one concept (kind, vector type, task family, model, ...)."""

    def __init__(self, concept: str) -> None:
        self.concept = concept
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under `name`; a duplicate fails at import."""
        if name in self._entries:
            raise ValueError(f"{self.concept} {name!r} is registered twice")

        def add(obj: T) -> T:
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        near = difflib.get_close_matches(str(name), self._entries, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise AtlasError(f"unknown {self.concept} {name!r} (known: {', '.join(self.names())}){hint}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
