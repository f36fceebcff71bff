"""Tests for recsys_online.evaluate: test-then-train order, figures by hand, checkpoints."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pytest

from recsys_online import synth
from recsys_online.evaluate import Checkpoint, ndcg_at_rank, prequential
from recsys_online.events import Event, ItemDelete, ItemUpsert, Rating
from recsys_online.factors import FactorParams
from recsys_online.recommender import Recommender, RecommenderConfig


class Spy(Recommender):
    """A recommender that logs every call the evaluator makes, in order."""

    def __init__(self, config: RecommenderConfig) -> None:
        super().__init__(config)
        self.calls: list[tuple[str, list[tuple[str, str]] | list[str]]] = []
        self.learned: set[tuple[str, str]] = set()

    def predict_many(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        pairs = list(zip(users, items, strict=True))
        assert not set(pairs) & self.learned, "predicted a rating it had already learned"
        self.calls.append(("predict", pairs))
        return super().predict_many(users, items)

    def top_items(self, users: Sequence[str], k: int = 10) -> list[list[str]]:
        self.calls.append(("top", list(users)))
        return super().top_items(users, k)

    def learn_many(
        self,
        users: Sequence[str],
        items: Sequence[str],
        ratings: Sequence[float],
        timestamps: Sequence[float],
    ) -> None:
        pairs = list(zip(users, items, strict=True))
        self.calls.append(("learn", pairs))
        self.learned.update(pairs)
        super().learn_many(users, items, ratings, timestamps)


@functools.cache
def _stream() -> tuple[Event, ...]:
    ds = synth.generate(n_users=60, n_items=120, n_ratings=1500, seed=5, n_deletes=3)
    return tuple(ds.events())


def _spy(signals: tuple[str, ...] = ("mf", "pop")) -> Spy:
    return Spy(RecommenderConfig(signals=signals, factors=FactorParams(n_factors=8, seed=0)))


def _ratings(events: Sequence[Event]) -> list[Rating]:
    return [e for e in events if isinstance(e, Rating)]


@pytest.mark.parametrize("batch_size", [1, 16])
def test_every_rating_is_predicted_and_ranked_before_it_is_learned(batch_size: int) -> None:
    model = _spy()
    events = _stream()
    list(prequential(model, events, k=5, batch_size=batch_size, checkpoint_every=500))
    predicted: dict[tuple[str, str], int] = {}
    ranked_users: list[tuple[int, str]] = []
    learned: dict[tuple[str, str], int] = {}
    for n, (what, args) in enumerate(model.calls):
        if what == "predict":
            predicted.update((pair, n) for pair in args)
        elif what == "top":
            ranked_users.extend((n, u) for u in args)
        else:
            learned.update((pair, n) for pair in args)
    ratings = _ratings(events)
    assert set(learned) == {(r.user, r.item) for r in ratings} == set(predicted)
    for pair, n in learned.items():
        assert predicted[pair] < n, f"{pair} was learned before it was predicted"
    # Each relevant rating's user is ranked after the user's earlier ratings were learned
    # and before this one is: one "top" entry per relevant rating, in stream order.
    relevant = [(r.user, r.item) for r in ratings if r.rating >= 4.0]
    assert [u for _, u in ranked_users] == [u for u, _ in relevant]
    earlier: dict[str, list[tuple[str, str]]] = {}
    for r in ratings:
        earlier.setdefault(r.user, []).append((r.user, r.item))
    for (n_top, user), pair in zip(ranked_users, relevant, strict=True):
        assert n_top < learned[pair]
        before = earlier[user][: earlier[user].index(pair)]
        assert all(learned[p] < n_top for p in before), f"{pair} ranked before its user's past"


def test_ndcg_and_recall_by_hand_with_the_popularity_model() -> None:
    # user, item, rating; k = 2, batch_size = 1, popularity = rating counts (no time to decay).
    stream = [
        ("u1", "A", 5),  # u1 unknown, empty catalog: []            -> miss
        ("u2", "A", 5),  # u2 unknown: popular [A]                  -> rank 0
        ("u3", "B", 3),  # not relevant
        ("u3", "A", 4),  # u3 rated B; live unrated: A (2)          -> rank 0
        ("u4", "C", 5),  # u4 unknown: popular [A (3), B (1)]       -> miss
        ("u5", "C", 2),  # not relevant
        ("u1", "B", 4),  # u1 rated A; unrated: C (2), B (1) -> [C, B]: rank 1
        ("u6", "A", 4),  # u6 unknown: popular [A (3), ...]          -> rank 0
    ]
    events = [Rating(u, i, float(r), float(t)) for t, (u, i, r) in enumerate(stream, 1)]
    model = Recommender(RecommenderConfig(signals=("pop",)))
    (last,) = prequential(model, events, k=2, batch_size=1, checkpoint_every=100)
    gains = [0.0, 1.0, 1.0, 0.0, 1.0 / math.log2(3), 1.0]
    assert last.events == last.ratings == 8 and last.k == 2
    assert last.relevant == 6
    assert last.ndcg_at_k == pytest.approx(sum(gains) / 6)
    assert last.recall_at_k == pytest.approx(4 / 6)
    assert last.rolling_ndcg_at_k == pytest.approx(sum(gains) / 6)
    # Served: A, B (to u4), C, B (to u1) over a live catalog of A, B, C.
    assert last.coverage == pytest.approx(1.0)
    # The first prediction comes from an empty model: the middle of the scale.
    assert last.rmse > 0 and math.isfinite(last.mae)


def test_cold_figures_by_hand() -> None:
    stream = [
        ("u1", "A", 5),  # u1 new, A new      -> miss
        ("u2", "A", 5),  # u2 new             -> rank 0
        ("u3", "B", 3),
        ("u3", "A", 4),  # u3 has 1 rating    -> rank 0
        ("u4", "C", 5),  # u4 new, C new      -> miss
        ("u5", "C", 2),
        ("u1", "B", 4),  # u1 has 1 rating    -> rank 1
        ("u6", "A", 4),  # u6 new             -> rank 0
    ]
    events = [Rating(u, i, float(r), float(t)) for t, (u, i, r) in enumerate(stream, 1)]
    model = Recommender(RecommenderConfig(signals=("pop",)))
    (last,) = prequential(model, events, k=2, batch_size=1, cold_ratings=1)
    # Cold users (no earlier rating): u1 (miss), u2 (hit), u4 (miss), u6 (hit).
    assert last.cold_users["n"] == 4
    assert last.cold_users["ndcg_at_k"] == pytest.approx(0.5)
    assert last.cold_users["recall_at_k"] == pytest.approx(0.5)
    # Cold items (never rated before): A by u1 and C by u4, both missed.
    assert last.cold_items["n"] == 2
    assert last.cold_items["recall_at_k"] == 0.0
    # With a high threshold every relevant event is cold on both sides.
    model = Recommender(RecommenderConfig(signals=("pop",)))
    (last,) = prequential(model, events, k=2, batch_size=1, cold_ratings=100)
    assert last.cold_users["n"] == last.cold_items["n"] == last.relevant == 6
    assert last.cold_users["ndcg_at_k"] == pytest.approx(last.ndcg_at_k)


def test_cold_counts_match_the_stream() -> None:
    events = _stream()
    model = Recommender(RecommenderConfig(signals=("pop",)))
    (last,) = prequential(model, events, k=5, batch_size=8, cold_ratings=3, checkpoint_every=10**6)
    seen_users: dict[str, int] = {}
    seen_items: dict[str, int] = {}
    cold_users = cold_items = relevant = 0
    for r in _ratings(events):
        if r.rating >= 4.0:
            relevant += 1
            cold_users += seen_users.get(r.user, 0) < 3
            cold_items += seen_items.get(r.item, 0) < 3
        seen_users[r.user] = seen_users.get(r.user, 0) + 1
        seen_items[r.item] = seen_items.get(r.item, 0) + 1
    assert last.relevant == relevant
    assert last.cold_users["n"] == cold_users
    assert last.cold_items["n"] == cold_items
    assert 0 < cold_users < relevant and 0 < cold_items < relevant


def test_checkpoints_every_n_events() -> None:
    events = _stream()
    n = len(events)
    every = 400
    assert n % every != 0
    checkpoints = list(prequential(_spy(("pop",)), events, k=5, checkpoint_every=every))
    assert all(isinstance(c, Checkpoint) for c in checkpoints)
    assert [c.events for c in checkpoints] == [*range(every, n + 1, every), n]
    for c in checkpoints:
        assert c.ratings == len(_ratings(events[: c.events]))  # flushed at each checkpoint
    relevant = [c.relevant for c in checkpoints]
    assert relevant == sorted(relevant) and relevant[-1] > relevant[0]


def test_no_duplicate_final_checkpoint_when_the_stream_ends_on_one() -> None:
    events = _stream()[:1200]
    checkpoints = list(prequential(_spy(("pop",)), events, k=5, checkpoint_every=400))
    assert [c.events for c in checkpoints] == [400, 800, 1200]


@pytest.mark.parametrize("batch_size", [4, 64])
def test_micro_batches_never_hold_a_user_twice(batch_size: int) -> None:
    model = _spy()
    events = _stream()
    list(prequential(model, events, k=5, batch_size=batch_size, checkpoint_every=10**6))
    batches = [args for what, args in model.calls if what == "learn"]
    assert max(len(b) for b in batches) > 1  # batching did happen
    learned: list[tuple[str, str]] = []
    for b in batches:
        users = [u for u, _ in b]
        assert len(users) == len(set(users)), f"a user appears twice in {b}"
        assert len(b) <= batch_size
        learned.extend(b)
    # Batches replay the ratings in stream order, each exactly once.
    assert learned == [(r.user, r.item) for r in _ratings(events)]


def test_catalog_events_reach_the_model_between_batches() -> None:
    events = [
        ItemUpsert("x", {"a": 1.0}, 0.0),
        Rating("u1", "x", 5.0, 1.0),
        ItemUpsert("y", {"a": 1.0}, 2.0),
        Rating("u2", "x", 4.0, 3.0),
        ItemDelete("x", 4.0),
        Rating("u3", "y", 5.0, 5.0),
    ]
    model = _spy(("pop",))
    (last,) = prequential(model, events, k=2, batch_size=64)
    assert model.is_deleted("x") and not model.is_deleted("y")
    assert last.events == 6 and last.ratings == 3
    # All three are hits only if each catalog event lands exactly between the ratings:
    # u1 and u2 are ranked while x is live, u3 once y has arrived.
    assert last.recall_at_k == 1.0


def test_coverage_is_a_share_of_the_live_catalog() -> None:
    events = [
        Rating("u1", "x", 5.0, 1.0),
        Rating("u2", "y", 5.0, 2.0),
        Rating("u3", "x", 5.0, 3.0),  # served [x, y]
        ItemDelete("x", 4.0),
        ItemDelete("y", 4.0),
        Rating("u4", "z", 5.0, 5.0),
    ]
    model = Recommender(RecommenderConfig(signals=("pop",)))
    (last,) = prequential(model, events, k=2, batch_size=1)
    assert last.relevant == 4 and last.recall_at_k == 0.25  # only u3 finds its item
    assert int(model.active[: model.n_items].sum()) == 1  # only z is left
    # x and y were served (to u2 and u3), then left; u4 was served nothing: no live
    # item was ever served.
    assert last.coverage == 0.0
    # u5 is served z, the one live item then; then w is listed (by its rating), unserved.
    model = Recommender(RecommenderConfig(signals=("pop",)))
    more = [Rating("u5", "w", 5.0, 6.0)]
    (last,) = prequential(model, events + more, k=2, batch_size=1)
    assert int(model.active[: model.n_items].sum()) == 2 and last.coverage == 0.5


def test_ndcg_at_rank_by_hand() -> None:
    assert ndcg_at_rank(0) == 1.0
    assert ndcg_at_rank(1) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_rank(6) == pytest.approx(1 / 3)
    assert ndcg_at_rank(None) == 0.0


@pytest.mark.parametrize("window", [1, 7, 50, 3000])  # (3000: the ring grows as it fills)
def test_batched_rolling_figures_match_river_one_value_at_a_time(window: int) -> None:
    """The ring windows give river's ``utils.Rolling`` figures, whatever the batch sizes
    (including batches longer than the window)."""
    from river import metrics, stats, utils

    from recsys_online.evaluate import ErrorScore, RankingScore

    rng = np.random.default_rng(window)
    errors, ranking = ErrorScore(window), RankingScore(window)
    rmse, rolling_rmse = metrics.RMSE(), utils.Rolling(metrics.RMSE, window_size=window)
    rolling_mae = utils.Rolling(metrics.MAE, window_size=window)
    rolling_ndcg = utils.Rolling(stats.Mean, window_size=window)
    ndcg = stats.Mean()
    for _ in range(40):
        n = int(rng.integers(0, 3 * window + 2))
        y, y_pred = rng.uniform(1, 5, n), rng.uniform(1, 5, n)
        ranks = [None if r >= 10 else int(r) for r in rng.integers(0, 15, n)]
        errors.update_many(y.tolist(), y_pred)
        ranking.update_many(ranks)
        for a, b, r in zip(y.tolist(), y_pred.tolist(), ranks, strict=True):
            for m in (rmse, rolling_rmse, rolling_mae):
                m.update(a, b)
            for m in (ndcg, rolling_ndcg):
                m.update(ndcg_at_rank(r))
        e, s = errors.summary(), ranking.summary()
        assert e["rmse"] == pytest.approx(rmse.get(), rel=1e-9)
        assert e["rolling_rmse"] == pytest.approx(rolling_rmse.get(), rel=1e-9)
        assert e["rolling_mae"] == pytest.approx(rolling_mae.get(), rel=1e-9)
        assert s["ndcg_at_k"] == pytest.approx(ndcg.get(), rel=1e-9)
        assert s["rolling_ndcg_at_k"] == pytest.approx(rolling_ndcg.get(), rel=1e-9, abs=1e-12)


def test_a_large_window_holds_what_came_not_its_size() -> None:
    """A million-value window over a few thousand values keeps a few thousand (it is in
    every model snapshot), and still drops the oldest once full."""
    from recsys_online.evaluate import Window

    big = Window(1_000_000)
    big.extend(np.ones(5_000))
    assert len(big) == 5_000 and big._ring.nbytes <= 16 * 5_000
    small = Window(2_000)
    for lo in range(0, 5_000, 700):
        small.extend(np.arange(lo, min(lo + 700, 5_000), dtype=np.float64))
    assert len(small) == 2_000 and small._ring.nbytes == 8 * 2_000
    assert small.mean() == pytest.approx(np.arange(3_000, 5_000).mean())


def test_re_ratings_are_not_ranked_and_deleted_items_are_refused() -> None:
    """A user's second rating of an item cannot find it in their list (lists exclude
    rated items): it counts in RMSE, not in NDCG. A rating of a deleted item is refused,
    as the worker dead-letters it: neither scored nor learned."""
    catalog = [ItemUpsert(x, {"t": 1.0}, 0.5) for x in "abcd"]
    stream = [
        *catalog,
        Rating("u", "a", 5.0, 1.0),
        Rating("v", "b", 5.0, 2.0),
        Rating("u", "a", 5.0, 3.0),  # again: not ranked
        ItemDelete("c", 4.0),
        Rating("v", "c", 5.0, 5.0),  # deleted: refused
    ]
    model = Recommender(RecommenderConfig(signals=("pop",)))
    last = list(prequential(model, stream, k=2, batch_size=1))[-1]
    assert (last.ratings, last.relevant, last.refused) == (3, 2, 1)
    assert model.user_n[model.users.get("v")] == 1  # the refused rating was not learned


def test_cold_users_and_items_get_the_error_figures_too() -> None:
    """RMSE and MAE over the cold users' and cold items' ratings, beside their ranking:
    with every rating cold they are the run's; with none, NaN over 0 ratings."""

    def last(cold_ratings: int) -> Checkpoint:
        model = Recommender(RecommenderConfig(factors=FactorParams(n_factors=4)))
        return list(prequential(model, _stream(), k=5, cold_ratings=cold_ratings))[-1]

    everything, nothing = last(10**9), last(0)
    for cold in (everything.cold_users, everything.cold_items):
        assert cold["ratings"] == everything.ratings > 0
        assert (cold["rmse"], cold["mae"]) == pytest.approx((everything.rmse, everything.mae))
    for cold in (nothing.cold_users, nothing.cold_items):
        assert cold["ratings"] == 0 and math.isnan(cold["rmse"]) and math.isnan(cold["mae"])
    some = last(5).cold_users
    assert 0 < some["ratings"] < everything.ratings and some["rmse"] != everything.rmse
