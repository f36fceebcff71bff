"""Tests for recsys_online.ranking: block top-K against a plain sort-based reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from recsys_online.factors import FactorParams
from recsys_online.ranking import _by_row_then_score, padded_width, top_k_rows
from recsys_online.recommender import Recommender, RecommenderConfig


def _reference(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Each row's ``k`` largest finite values, best first, by sorting."""
    out = []
    for row in scores:
        finite = row[np.isfinite(row)]
        out.append(np.sort(finite)[::-1][:k])
    return out


def _check(scores: np.ndarray, k: int, block: int) -> None:
    pos, val = top_k_rows(scores, k, block)
    assert pos.shape == val.shape == (len(scores), k)
    for r, (row, want) in enumerate(zip(scores, _reference(scores, k), strict=True)):
        n = len(want)
        # Values: exactly the reference's, best first (ties make positions ambiguous only).
        np.testing.assert_array_equal(val[r, :n], want, err_msg=f"row {r}")
        assert np.all(pos[r, n:] == -1) and np.all(val[r, n:] == -np.inf), f"row {r} padding"
        found = pos[r, :n]
        assert len(set(found.tolist())) == n, f"row {r}: a position repeats"
        assert np.all((found >= 0) & (found < scores.shape[1]))
        np.testing.assert_array_equal(row[found], val[r, :n], err_msg=f"row {r} positions")
        if n:  # every score strictly above the cut is listed, whatever the tie order
            above = np.flatnonzero(np.isfinite(row) & (row > want[-1]))
            assert set(above.tolist()) <= set(found.tolist()), f"row {r}"


def test_docstring_example_by_hand() -> None:
    s = np.array([[0.1, 0.9, 0.5, 0.7], [3.0, -np.inf, 1.0, 2.0]], np.float32)
    pos, val = top_k_rows(s, 2, block=2)
    assert pos.tolist() == [[1, 3], [0, 3]]
    np.testing.assert_array_equal(val, np.array([[0.9, 0.7], [3.0, 2.0]], np.float32))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 10, 64])
def test_random_matrices_with_ties_and_minus_inf(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    block, width = padded_width(50 + 37 * seed, k)
    scores = rng.integers(0, 6, size=(7, width)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[0] = -np.inf  # a row with nothing
    scores[1, 3:] = -np.inf  # a row with fewer than k finite values
    scores[2] = rng.standard_normal(width).astype(np.float32)  # a row without ties
    _check(scores, k, block)


@pytest.mark.parametrize("seed", range(5))
def test_candidate_order_is_lexsorts(seed: int) -> None:
    """The 64-bit key sort orders candidates exactly as ``lexsort``: by row, then score
    from the largest, ties (signed zeros included) by position."""
    rng = np.random.default_rng(seed)
    pool = np.float32([0.0, -0.0, 1.5, -1.5, 3e38, -3e38, 1e-45, -1e-45, 2.0, -2.0])
    values = np.where(
        rng.random(500) < 0.5, rng.choice(pool, 500), rng.standard_normal(500) * 10
    ).astype(np.float32)
    rows = np.sort(rng.integers(0, 20, 500))
    want = np.lexsort((-values, rows))
    np.testing.assert_array_equal(_by_row_then_score(rows, values), want)


def test_ties_go_to_the_lower_position() -> None:
    scores = np.zeros((3, 40), np.float32)
    scores[1, ::3] = -0.0
    scores[2, 7] = 1.0
    pos, _ = top_k_rows(scores, 4, block=10)
    assert pos.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [7, 0, 1, 2]]


def test_fewer_blocks_than_k() -> None:
    """One block of two scores, k = 2: both scores come back."""
    pos, val = top_k_rows(np.array([[-2.5, -1.0]], np.float32), 2, block=2)
    assert pos.tolist() == [[1, 0]]
    assert val.tolist() == [[-1.0, -2.5]]


def test_all_blocks_share_the_maximum() -> None:
    """Every block holds the same best value: the block bound prunes nothing."""
    scores = np.tile(np.array([5.0, 1.0, 5.0, 2.0], np.float32), (3, 6))
    for k in (1, 2, 5, 12, 13, 24, 30):
        _check(scores, k, block=4)


def test_empty_inputs_and_k_zero() -> None:
    pos, val = top_k_rows(np.zeros((3, 8), np.float32), 0, 4)
    assert pos.shape == val.shape == (3, 0)
    pos, val = top_k_rows(np.zeros((0, 8), np.float32), 2, 4)
    assert pos.shape == (0, 2)
    pos, val = top_k_rows(np.zeros((2, 0), np.float32), 2, 1)
    assert pos.tolist() == [[-1, -1], [-1, -1]] and np.all(val == -np.inf)


def test_non_finite_scores_are_skipped() -> None:
    """The k largest *finite* scores: +inf and NaN must not hide the finite ones."""
    for bad in (np.inf, np.nan):
        scores = np.array([[bad, 1.0, 2.0, 0.5]], np.float32)
        for block in (1, 2, 4):
            pos, val = top_k_rows(scores, 2, block)
            assert pos.tolist() == [[2, 1]], (bad, block, pos, val)
            assert val.tolist() == [[2.0, 1.0]], (bad, block)


@pytest.mark.parametrize("n_items", [1, 7, 99, 1001, 10_000, 123_457])
@pytest.mark.parametrize("k", [0, 1, 10, 500])
def test_padded_width_fits_the_catalog(n_items: int, k: int) -> None:
    block, width = padded_width(n_items, k)
    assert 1 <= block <= 200
    assert width % block == 0 and n_items <= width < n_items + block


@st.composite
def _problems(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    n_rows = draw(st.integers(1, 4))
    block = draw(st.integers(1, 8))
    n_blocks = draw(st.integers(1, 10))
    values = st.sampled_from([-np.inf, -2.5, -1.0, 0.0, 0.0, 1.0, 1.5, 3.0, 7.0])
    elements = values | st.floats(-9, 9, width=32)
    scores = draw(hnp.arrays(np.float32, (n_rows, block * n_blocks), elements=elements))
    k = draw(st.integers(0, block * n_blocks + 3))
    return scores, k, block


@settings(max_examples=300, deadline=None)
@given(_problems())
def test_matches_sort_reference_property(problem: tuple[np.ndarray, int, int]) -> None:
    scores, k, block = problem
    _check(scores, k, block)


def _trained(n_users: int, n_items: int, n_ratings: int, seed: int):
    """A default hybrid that learned a synthetic stream, and the stream."""
    from recsys_online import synth
    from recsys_online.recommender import Recommender

    ds = synth.generate(n_users=n_users, n_items=n_items, n_ratings=n_ratings, seed=seed)
    model = Recommender()
    for item in ds.items.values():
        model.upsert_item(item.item, item.tags, item.timestamp)
    for r in ds.ratings:
        model.learn_rating(r.user, r.item, r.rating, r.timestamp)
    return model, ds


def test_score_items_gives_the_scores_recommend_ranks_by() -> None:
    model, ds = _trained(60, 200, 3000, seed=5)
    users = [*sorted({r.user for r in ds.ratings[-300:]})[:20], "nobody"]
    lists = model.recommend_many(users, 10)
    listed = sorted({rec.item for recs in lists[:-1] for rec in recs})
    scores = model.score_items(users, [*listed, "unknown", listed[0]])
    for b, recs in enumerate(lists[:-1]):
        for rec in recs:
            assert scores[b, listed.index(rec.item)] == pytest.approx(rec.score, rel=1e-5, abs=1e-5)
    assert np.all(scores[-1] == -np.inf)  # a cold user is served popularity
    assert np.all(scores[:, -2] == -np.inf)  # an unknown item
    np.testing.assert_array_equal(scores[:, -1], scores[:, 0])  # asked twice, same scores
    # A rated item is out of the user's reach.
    row = model.users.get(users[0])
    seen = model.items.id_of(int(model.history[row][0]))
    assert model.score_items([users[0]], [seen])[0, 0] == -np.inf


def test_scoring_a_few_items_matches_the_catalog_scores_with_co_occurrence() -> None:
    """``item_scorer`` sums co-occurrence over the distinct items of the users' rings
    instead of every ring place's neighbours: the same scores the catalog ranking
    computes, on a stream where co-occurrence carries weight, asked in two calls."""
    model, ds = _trained(100, 300, 8000, seed=7)
    users = sorted({r.user for r in ds.ratings})[:40]
    items = list(model.items.ids)
    score = model.item_scorer(users)
    got = np.concatenate([score(items[:120]), score(items[120:])], axis=1)
    warm, u = model._warm(users)
    w = model._weights(u)
    assert (w[:, 2] > 0).all()  # co-occurrence is in every user's blend
    _, width = padded_width(model.n_items, 10)
    rows = [model.items.get(x) for x in items]
    full = model._blended_scores(u, w, width, model._context(u))[:, rows]
    shown = np.isfinite(got[warm])
    np.testing.assert_allclose(got[warm][shown], full[shown], rtol=1e-5, atol=1e-5)
    # Without co-occurrence the same scores would differ: the test sees that signal.
    without = w * np.array([1, 1, 0, 1, 1, 1], np.float32)
    no_cooc = full - model._blended_scores(u, without, width, model._context(u))[:, rows]
    assert np.abs(no_cooc[shown]).max() > 0.01


def test_because_you_liked_never_names_an_item_the_user_disliked() -> None:
    """Rings hold every rated item, liked or not: a co-occurrence reason names only one
    the user rated at or above their mean; a list led by a disliked item's neighbours is
    explained by another signal."""
    rng = np.random.default_rng(0)
    rec = Recommender(RecommenderConfig(factors=FactorParams(n_factors=4)))
    items = [f"i{j}" for j in range(200)]
    rec.upsert_items(items, [{f"t{j % 20}": 1.0} for j in range(200)])
    t = 0.0
    for n in range(400):  # sessions: item 2m is followed by 2m + 1
        m = int(rng.integers(0, 100))
        rec.learn_many([f"u{n}"] * 2, [items[2 * m], items[2 * m + 1]], [5.0, 5.0], [t, t + 1])
        t += 2
    rec.learn_many(["ann", "bob"], ["i10", "i10"], [1.0, 5.0], [t, t])
    ann, bob = rec.recommend("ann", 5), rec.recommend("bob", 5)
    assert all(r.because != "i10" and "i10" not in r.reason for r in ann), ann
    assert any(r.because == "i10" for r in bob)  # liked: named


def test_score_items_counts_pairs_shared_by_another_process() -> None:
    """Pairs another process shared make an item a neighbour here though it was never
    rated here: score_items still adds its co-occurrence, as the ranking does."""
    a, b = Recommender(), Recommender()
    for m in (a, b):
        m.upsert_items(["x", "y", "z"], [{"jazz": 1.0}] * 3)
        m.track_item_changes()
    for n in range(5):
        a.learn_many([f"a{n}"] * 2, ["x", "y"], [5.0, 5.0], [2.0 * n, 2.0 * n + 1])
    b.apply_item_changes(a.take_item_changes())
    b.learn_many(["ann"], ["x"], [5.0], [20.0])
    ranked = {r.item: r.score for r in b.recommend("ann", 3)}
    scored = b.score_items(["ann"], ["y", "z"])[0]
    assert scored.tolist() == pytest.approx([ranked["y"], ranked["z"]], rel=1e-5)


def test_a_malformed_batch_upsert_changes_nothing() -> None:
    """Fewer tag mappings than items is refused before anything changes: a deleted item
    named in it stays deleted (it was brought back, tagless, into the popular list)."""
    rec = Recommender()
    rec.upsert_items(["a", "b"], [{"x": 1.0}] * 2)
    rec.learn_many(["u1", "u2"], ["a", "b"], [5.0, 5.0], [1.0, 2.0])
    rec.delete_item("b")
    with pytest.raises(ValueError, match="2 items need as many tag mappings"):
        rec.upsert_items(["a", "b"], [{"y": 1.0}])
    assert rec.is_deleted("b") and "b" not in [r.item for r in rec.popular(5)]


def noisy_model(seed: int, signals: tuple[str, ...]) -> tuple[Recommender, list[str]]:
    """A small model learned from random ratings (any user, any item, 1 to 5): likes,
    dislikes and re-ratings mixed, some items deleted."""
    rng = np.random.default_rng(seed)
    config = RecommenderConfig(factors=FactorParams(n_factors=8), signals=signals, seed=seed)
    rec = Recommender(config)
    items = [f"i{j}" for j in range(100)]
    rec.upsert_items(
        items,
        [{f"t{t}": 1.0 for t in rng.choice(8, rng.integers(0, 4), replace=False)} for _ in items],
    )
    users = [f"u{j}" for j in range(15)]
    for n in range(50):
        rec.learn_many(
            [users[x] for x in rng.integers(0, 15, 10)],
            [items[x] for x in rng.integers(0, 100, 10)],
            rng.integers(1, 6, 10).astype(float).tolist(),
            [10.0 * n + x for x in range(10)],
        )
    for x in rng.choice(100, 5, replace=False):
        rec.delete_item(items[x])
    return rec, users


@pytest.mark.parametrize("signals", ["hybrid", "session"])
def test_reasons_are_those_of_every_users_closest_like_looked_up(monkeypatch, signals) -> None:
    """The closest liked item is looked up only for users where a factor signal could
    explain an item: the reasons are the same as when it is looked up for every user.
    (A co-occurrence reason withdrawn because it named a disliked item left the factors
    out for users not looked up: "popular now" for items the factors led, with a like.)"""
    from recsys_online.recommender import MODELS

    for seed in range(15):
        rec, users = noisy_model(seed, MODELS[signals])
        lists = rec.recommend_many(users, 10)
        with monkeypatch.context() as m:
            m.setattr(Recommender, "_factor_reason_rows", staticmethod(lambda c: np.arange(len(c))))
            assert rec.recommend_many(users, 10) == lists, seed


def test_because_you_liked_never_names_an_item_rated_again_lower() -> None:
    """A user who rated an item 5 and then 1 no longer likes it: no reason names it
    (the earlier rating, still among their last 50, counted as a like)."""
    rec = Recommender(RecommenderConfig(signals=("mf",), factors=FactorParams(n_factors=4)))
    rec.upsert_items(["x", "y", "z"], [None] * 3)
    rec.learn_many(["bob", "bob"], ["y", "z"], [5.0, 4.0], [0.0, 1.0])
    rec.learn_rating("ann", "x", 5.0, timestamp=2.0)
    assert [r.because for r in rec.recommend("ann", 2)] == ["x", "x"]
    rec.learn_rating("ann", "x", 1.0, timestamp=3.0)
    assert [r.because for r in rec.recommend("ann", 2)] == [None, None]
    rec.learn_rating("ann", "x", 5.0, timestamp=4.0)  # liked again
    assert [r.because for r in rec.recommend("ann", 2)] == ["x", "x"]


def test_popular_now_explains_only_items_more_popular_than_most() -> None:
    """An item nobody rated is never "popular now", even where it is the only one left
    for popularity to rank."""
    rec = Recommender(RecommenderConfig(factors=FactorParams(n_factors=4)))
    rec.upsert_items(
        ["a", "b", "c", "d"], [{"jazz": 1.0}, {"rock": 1.0}, {"folk": 1.0}, {"pop": 1.0}]
    )
    rec.learn_many(["ann", "bob", "bob"], ["a", "b", "c"], [1.0, 5.0, 5.0], [1.0, 2.0, 3.0])
    reasons = {r.item: r.reason for r in rec.recommend("ann", 3)}
    assert set(reasons) == {"b", "c", "d"}
    assert reasons["d"] != "popular now"
    assert reasons["b"] == reasons["c"] == "popular now"


def test_popular_now_never_explains_a_blend_that_weighs_popularity_down() -> None:
    """A blend whose popularity weight is negative lifts the least popular items: their
    positive contribution is not popularity's to explain."""
    rec, users = noisy_model(3, ("mf", "pop"))
    rec.w_warm[3] = rec.w_cold[3] = -1.0
    for recs in rec.recommend_many(users, 10):
        assert recs and all(r.reason != "popular now" for r in recs)


def test_a_users_mean_stays_on_a_scale_far_from_zero() -> None:
    """Ratings near the scale's 1e6 bound: summed in float32, each addition lost units
    and the user's mean (what a like is measured against) left the scale by 38."""
    off = 999_995.0
    rec = Recommender(
        RecommenderConfig(scale=(1 + off, 5 + off), relevant=4 + off, learn_blend=False)
    )
    r = np.random.default_rng(0).choice([1.0, 2.0, 3.0], 3000)
    for lo in range(0, 3000, 50):
        items = [f"i{k}" for k in range(lo, lo + 50)]
        rec.learn_many(["u"] * 50, items, list(r[lo : lo + 50] + off), [0.0] * 50)
    mean = float(rec._user_means(np.array([rec.users.get("u")]))[0]) - off
    assert mean == pytest.approx(r.mean(), abs=0.05)


def test_a_rating_replaced_since_is_set_aside_when_a_history_is_read() -> None:
    """An earlier rating of an item the user rated again is never a like, whatever the
    history holds (a model restored from a snapshot kept every rating as it came), in
    one user's read and in a batch of histories of different lengths."""
    from array import array

    rec = Recommender()
    rec.learn_many(["u", "u", "u", "v"], ["x", "y", "x", "y"], [5.0, 4.0, 1.0, 2.0], [1, 2, 3, 4])
    u, v = rec.users.get("u"), rec.users.get("v")
    rec.history_ratings[u] = array("f", [5.0, 4.0, 1.0])  # (as an older snapshot holds it)
    hist, ratings = rec._recent_rated(np.array([u]))
    assert np.isnan(ratings[0, 0]) and ratings[0, 1:].tolist() == [4.0, 1.0]
    hist, ratings = rec._recent_rated(np.array([v, u]), fill=-1)
    assert hist.tolist() == [[rec.items.get("y"), -1, -1], [rec.items.get(x) for x in "xyx"]]
    assert ratings[0].tolist() == [2.0, -np.inf, -np.inf]
    assert np.isnan(ratings[1, 0]) and ratings[1, 1:].tolist() == [4.0, 1.0]


def test_one_rows_selection_agrees_with_the_batched_one_past_float32s_range() -> None:
    """A finite float64 score past float32's range is the largest, in the one-row path
    too (cast as it was copied in, it became +inf: invalid, dropped)."""
    from recsys_online.recommender import _top_k

    scores = np.array([1e39, 1.0, 2.0])
    assert _top_k(scores, 2).tolist() == top_k_rows(scores[None, :], 2, 1)[0][0].tolist() == [0, 2]
