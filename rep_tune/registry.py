"""One shape for every extension point's registry (prompt methods, datasets, samplers, pruners,
executor backends, export formats): a name -> item mapping whose lookup of an unknown name raises
the same user-facing error, naming the field, the registered names and the name found.

A ``Registry`` is a ``dict`` (iteration, ``in``, ``', '.join(REG)`` keep working); ``add``
registers and ``lookup`` resolves. Like Optuna's and timm's registries, registration happens at
import of the module that defines the item, so the registered names are what the CLI offers.
"""
from __future__ import annotations

from typing import TypeVar

V = TypeVar("V")


class Registry(dict[str, V]):
    """Registered items by name; ``field`` names the setting users choose them with (``--sampler``)."""

    def __init__(self, field: str) -> None:
        super().__init__()
        self.field = field

    def add(self, name: str, item: V, *, unique: bool = False) -> V:
        """Register ``item`` under ``name`` (a later registration replaces an earlier one unless
        ``unique``: then registering a name twice is a programming error)."""
        if unique and name in self:
            raise ValueError(f"{self.field}: {name!r} is registered already")
        self[name] = item
        return item

    def lookup(self, name: str) -> V:
        """The item registered as ``name``; ValueError naming the field, the registered names and ``name``."""
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"{self.field}: expected one of {', '.join(self)}, found {name!r}") from None


__all__ = ["Registry"]
