"""Named registries: one style for backbones, weighting modes and methods.

A :class:`Registry` is a ``dict`` from a config name to what builds it, filled
by a decorator next to the definition::

    BACKBONES = Registry("model.backbone")

    @BACKBONES.register("cnn_small")
    def _cnn_small(): ...

`Registry.lookup` raises ``ValueError`` naming the config key, the unknown
name, the closest known one and all known ones.

Example:
    >>> colours = Registry("colour")
    >>> @colours.register("red")
    ... def red():
    ...     return "#f00"
    >>> colours.lookup("red")()
    '#f00'
    >>> colours.lookup("rde")
    Traceback (most recent call last):
    ...
    ValueError: colour: unknown name 'rde' (did you mean 'red'?); known: red
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "did_you_mean"]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or an empty string."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(dict[str, T], Generic[T]):
    """A dict of named entries with a registering decorator and a checked lookup.

    Args:
        key: the config key the names are given under (used in error messages).
    """

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under ``name`` (a name is taken once)."""

        def add(entry: T) -> T:
            if name in self:
                raise ValueError(f"{self.key}: {name!r} is registered twice")
            self[name] = entry
            return entry

        return add

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self)

    def check(self, name: object) -> str:
        """``name`` if registered, else ValueError with the closest name and the known ones."""
        if isinstance(name, str) and name in self:
            return name
        hint = did_you_mean(str(name), self) if isinstance(name, str) else ""
        raise ValueError(
            f"{self.key}: unknown name {name!r}{hint}; known: {', '.join(self.names())}"
        )

    def lookup(self, name: object) -> T:
        """The entry registered as ``name`` (ValueError, as :meth:`check`, otherwise)."""
        return self[self.check(name)]
