"""A data source: a named set of items (frame series or tilt series)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from .item import Item

__all__ = ["DataSource"]


@dataclass(eq=False)
class DataSource:
    name: str
    kind: str  # "frames" | "tilts"
    items: dict[str, Item] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        if item.kind != self.kind:
            raise InvalidInput(f"a {self.kind} source cannot hold a {item.kind} item", item.name)
        if item.name in self.items:
            raise InvalidInput("two items share a name in one source", item.name)
        self.items[item.name] = item

    def by_digest(self) -> dict[str, Item]:
        return {it.data_digest: it for it in self.items.values()}
