""" "More like this" (``Recommender.similar_many``): what the score counts, and what it
must never claim."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_online.recommender import SIMILAR_CONTENT_WEIGHT, Recommender, RecommenderConfig


def _pairs(rec: Recommender, item: str, others: list[tuple[str, int]], t: float = 0.0):
    """Users who rate ``item`` and then each other item, ``times`` users per item."""
    for other, times in others:
        for j in range(times):
            user = f"u-{item}-{other}-{j}"
            rec.learn_rating(user, item, 5.0, t := t + 1)
            rec.learn_rating(user, other, 5.0, t := t + 1)
    return t


def test_the_score_is_weighted_content_cosine_plus_the_co_occurrence_share() -> None:
    rec = Recommender()
    rec.upsert_items(
        ["x", "a", "b", "c", "d"],
        [{"jazz": 1.0}, {"jazz": 1.0}, {"rock": 1.0}, {"jazz": 1.0, "rock": 1.0}, {"jazz": 1.0}],
    )
    _pairs(rec, "x", [("b", 4), ("a", 2)])
    got = {r.item: r for r in rec.similar_items("x", 4)}
    earned = np.maximum(rec.cooc._guaranteed(np.array([rec.items.get("x")])), 0)[0]
    nbr = rec.cooc.nbr[rec.items.get("x")]
    share = {
        rec.items.id_of(int(j)): w / earned.max()
        for j, w in zip(nbr, earned, strict=True)
        if j >= 0
    }
    c_rows = rec.content.C[[rec.items.get("x"), rec.items.get("c")]]
    cosine_c = float(c_rows[0] @ c_rows[1])  # c shares one of its two tags (TF-IDF)
    assert 0 < cosine_c < 1
    w = SIMILAR_CONTENT_WEIGHT
    assert abs(got["a"].score - (w + share["a"])) < 1e-6  # same tags, rated together
    assert abs(got["b"].score - share["b"]) < 1e-6 and got["b"].source == "co-occurrence"
    assert abs(got["c"].score - (w * cosine_c + share.get("c", 0.0))) < 1e-3
    assert abs(got["d"].score - w) < 1e-6 and got["d"].source == "content"
    assert got["a"].reason == "rated together with x" and got["d"].reason == "similar to x"
    # The users' next items lead; tags fill in after them.
    assert [r.item for r in rec.similar_items("x", 4)] == ["b", "a", "d", "c"]


def test_an_inherited_neighbour_weight_is_not_evidence() -> None:
    """Co-occurrence keeps the heaviest M neighbours (SpaceSaving): a newcomer takes a
    full slot and inherits its weight. One shared rating must not top the list."""
    rec = Recommender()
    m = rec.cooc.n_neighbours
    rec.upsert_items(
        ["x", *(f"n{j}" for j in range(m)), "y"],
        [{"a": 1.0}, *({f"t{j % 5}": 1.0} for j in range(m)), {"zz": 1.0}],
    )
    t = 0.0
    for _ in range(20):
        t = _pairs(rec, "x", [(f"n{j}", 1) for j in range(m)], t)
    _pairs(rec, "x", [("y", 1)], t)
    listed = [r.item for r in rec.similar_items("x", 10)]
    assert listed and "y" not in listed


def test_past_content_dim_tags_only_items_sharing_a_tag_are_similar_by_content() -> None:
    """Tag t lands in content column t mod content_dim: with more tags than columns,
    unrelated items share columns. "similar to X" must still mean a shared tag."""
    rec = Recommender(RecommenderConfig(content_dim=8))
    items = [f"i{j}" for j in range(40)]
    rec.upsert_items(items, [{f"own{j}": 1.0} for j in range(40)])
    assert rec.similar_many(items, 5) == [[] for _ in items]
    rec.upsert_item("twin", {"own3": 1.0})
    assert [r.item for r in rec.similar_items("i3", 5)] == ["twin"]


def test_the_content_weight_is_a_setting_of_its_own() -> None:
    """A catalog whose lists should follow tags: at weight 1 a shared tag counts as
    much as the heaviest co-occurrence, and the tag-sharing items come first."""
    items, tags = ["x", "a", "b"], [{"jazz": 1.0}, {"jazz": 1.0}, {"rock": 1.0}]
    by_tags = Recommender(RecommenderConfig(similar_content_weight=1.0))
    default = Recommender()
    for rec in (by_tags, default):
        rec.upsert_items(items, tags)
        _pairs(rec, "x", [("b", 4), ("a", 1)])
    assert [r.item for r in default.similar_items("x", 2)] == ["b", "a"]
    assert [r.item for r in by_tags.similar_items("x", 2)] == ["a", "b"]
    with pytest.raises(ValueError, match="similar_content_weight"):
        RecommenderConfig(similar_content_weight=-1.0)


def test_past_content_dim_tags_every_item_sharing_a_tag_can_be_listed() -> None:
    """With more tags than content columns, tags share columns with opposite signs and
    cancel out: a hashed cosine left most items that share a tag out of the list (200 of
    200 lists short at 1,000 tags). Scored from the tags themselves, each list holds
    ``min(k, items sharing a tag)`` items, and the cosines are the hashed ones'
    wherever one column holds one tag."""
    rng = np.random.default_rng(0)
    n, k = 600, 10
    tags = [{f"t{int(t)}": 1.0 for t in rng.choice(300, 3, replace=False)} for _ in range(n)]
    items = [f"i{j}" for j in range(n)]
    rec = Recommender(RecommenderConfig(content_dim=16))
    rec.upsert_items(items, tags)
    for j, recs in zip(range(n), rec.similar_many(items, k), strict=True):
        sharing = {items[x] for x in range(n) if x != j and tags[x].keys() & tags[j].keys()}
        assert len(recs) == min(k, len(sharing)) and {r.item for r in recs} <= sharing
    few = Recommender(RecommenderConfig(content_dim=64))
    few.upsert_items(items[:50], [{f"t{j % 40}": 1.0, f"t{j % 7}": 0.5} for j in range(50)])
    rows = np.arange(50)
    exact = few.content.exact_cosines(rows, 50, np.empty((50, 50), np.float32))
    hashed = few.content.C[:50] @ few.content.C[:50].T
    np.testing.assert_allclose(exact, hashed, atol=1e-6)
