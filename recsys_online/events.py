"""Plain event records the learning core consumes (ids and floats, no wire format)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real


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

# The weights a tag may carry, here for every layer that checks them (the wire schema,
# the loaders, the model).
MAX_WEIGHT = 1e9  # float32 vectors then hold any item's weights, squared and summed
MIN_WEIGHT = 1e-9  # (a smaller one is 0 as float32, or nearly: shares of 0 / 0)
# Tags of one item (or user) at most: the model's tag rows are as wide as the widest
# item's, and "more like this" compares two items' tags pairwise.
MAX_TAGS = 64
MAX_SCALE = 1e6  # the rating scale's bound, either way (float32 sums of ratings stay finite)


def weight_problem(weight: float) -> str | None:
    """Why ``weight`` cannot weigh a tag (e.g. ``"is not positive"``), None when it can."""
    if isinstance(weight, bool) or not isinstance(weight, Real):  # (numpy's numbers are)
        return "is not a number"
    if not math.isfinite(weight):
        return "is not finite"
    if weight <= 0:
        return "is not positive"
    if weight < MIN_WEIGHT:
        return f"is less than {MIN_WEIGHT:g}"
    if weight > MAX_WEIGHT:
        return f"is more than {MAX_WEIGHT:g}"
    return None


__all__ = [
    "MAX_WEIGHT",
    "MIN_WEIGHT",
    "Event",
    "ItemDelete",
    "ItemUpsert",
    "Rating",
    "weight_problem",
]
