"""ItemTags: the batched set agrees with one set per item."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_online.tags import ItemTags


def _random_tags(rng: np.random.Generator, n: int) -> list[dict[str, float]]:
    return [
        {f"t{j}": float(rng.uniform(0.1, 3.0)) for j in rng.choice(30, rng.integers(0, 7), False)}
        for _ in range(n)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_set_many_leaves_the_tags_as_one_set_per_item_would(seed: int) -> None:
    """Items set before, items set twice in one call (the last wins), items given no
    tags, and a call that widens the rows: the same rows, weights, tag rows and counts."""
    rng = np.random.default_rng(seed)
    one, many = ItemTags(), ItemTags()
    first = _random_tags(rng, 20)
    for row, tags in enumerate(first):
        one.set(row, tags)
    many.set_many(list(range(20)), first)
    rows = rng.integers(0, 40, 60).tolist()  # repeats, and rows not seen yet
    again = _random_tags(rng, 60)
    again[7] = {f"wide{j}": 1.0 for j in range(12)}  # wider than any item so far
    for row, tags in zip(rows, again, strict=True):
        one.set(row, tags)
    many.set_many(rows, again)
    assert one.n_items == many.n_items and one.n_tags == many.n_tags
    assert list(one.index.ids) == list(many.index.ids)
    assert one.tag_df.tolist() == many.tag_df.tolist()
    for row in range(one.n_items):
        assert one.names(row) == many.names(row)
        assert one.shares_of(row).tolist()[: len(one.names(row))] == pytest.approx(
            many.shares_of(row).tolist()[: len(many.names(row))]
        )


def test_set_many_refuses_a_bad_weight_before_changing_anything() -> None:
    tags = ItemTags()
    tags.set(0, {"a": 1.0})
    with pytest.raises(ValueError, match="weight"):
        tags.set_many([0, 1], [{"b": 1.0}, {"c": float("nan")}])
    assert tags.names(0) == ["a"] and tags.n_items == 1 and tags.n_tags == 1
