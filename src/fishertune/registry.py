"""`Registry[T]`: the one shape of every table of named entries (backbone families, selection criteria, baseline
methods, training methods). A leaf: it imports nothing of fishertune, so every layer may use it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order.

    Iterating (and `in`, `len`) goes over the names, read when called: a `Registry` is a live list of choices
    (argparse's `choices=`) that includes entries registered later.

    Args:
        what (`str`): what an entry is, for messages (`"criterion"`).
        how_to_add (`str`): the call that adds one, named in the error of an unknown name.
        name_of (`Callable[[T], str]`, *optional*): an entry's name; defaults to its `name` attribute.
    """

    def __init__(self, what: str, how_to_add: str, name_of: Optional[Callable[[T], str]] = None):
        self.what, self.how_to_add = what, how_to_add
        self._name_of = name_of or (lambda entry: entry.name)
        self._entries: dict[str, T] = {}

    def register(self, entry: T, *, replace: bool = False) -> T:
        """Add `entry` under its name (an existing name only with `replace=True`); returns it."""
        name = self._name_of(entry)
        if name in self._entries and not replace:
            raise ValueError(f"A {self.what} named {name!r} is registered already; pass replace=True to replace it.")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove and return the entry `name`."""
        self.get(name)
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        """The entry `name`; an unknown name is an error listing the registered ones and how to add one."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"{self.what}={name!r} is not registered; use one of {', '.join(self._entries)}, or "
                f"register it with {self.how_to_add}."
            ) from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def values(self) -> tuple[T, ...]:
        """The registered entries, in registration order."""
        return tuple(self._entries.values())

    def items(self) -> tuple[tuple[str, T], ...]:
        return tuple(self._entries.items())

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return repr(list(self._entries))
