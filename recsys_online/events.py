"""Plain event records the learning core consumes (ids and floats, no wire format)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Rating:
    """A user rated an item at ``timestamp`` (epoch seconds)."""

    user: str
    item: str
    rating: float
    timestamp: float


@dataclass(frozen=True, slots=True)
class ItemUpsert:
    """An item joins (or changes in) the catalog with weighted tags."""

    item: str
    tags: dict[str, float] = field(default_factory=dict)
    timestamp: float = 0.0
    title: str = ""


@dataclass(frozen=True, slots=True)
class ItemDelete:
    """An item leaves the catalog: it must never be recommended again."""

    item: str
    timestamp: float = 0.0


Event = Rating | ItemUpsert | ItemDelete

__all__ = ["Event", "ItemDelete", "ItemUpsert", "Rating"]
