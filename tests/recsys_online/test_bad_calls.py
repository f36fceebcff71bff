"""The core's public calls refuse what they cannot use with a clear error, before any
state changes, and hand out lists a caller may change."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_online.evaluate import prequential
from recsys_online.events import ItemDelete, ItemUpsert, Rating
from recsys_online.factors import FactorParams
from recsys_online.recommender import Recommender, RecommenderConfig


def _model() -> Recommender:
    rec = Recommender()
    rec.upsert_items(["a", "b", "c"], [{"x": 1.0}, {"x": 1.0}, {"y": 1.0}])
    rec.learn_many(["ann", "bob"], ["a", "b"], [5.0, 4.0], [1.0, 2.0])
    return rec


def _state(rec: Recommender) -> tuple:
    return (
        rec.n_events,
        len(rec.users),
        len(rec.items),
        rec.mf.mu,
        rec.now,
        [r.item for r in rec.popular(3)],
    )


@pytest.mark.parametrize(
    ("users", "items", "ratings", "timestamps", "message"),
    [
        (["cy"], ["c"], [math.nan], [3.0], "ratings must be finite and within the scale"),
        (["cy"], ["c"], [100.0], [3.0], r"within the scale \[1, 5\], got 100"),
        (["cy"], ["c"], [-3.0], [3.0], "got -3"),
        (["cy"], ["c"], [4.0], [math.inf], "timestamps must be finite .*, got inf"),
        (["cy"], ["c"], [4.0], [-1.7e308], "within [+]-2.53 of 1970, got -1.7e[+]308"),
        (["cy"], ["c"], [4.0], [math.nan], "timestamps must be finite"),
        (["cy", "dee"], ["new", "a"], [5.0], [1.0], "2 users need as many items, ratings"),
        (["cy", "dee"], ["c", "a"], [5.0, 4.0], [1.0], "got 2, 2 and 1"),
        (["cy"], ["c"], [5.0], [1.0, 2.0], "got 1, 1 and 2"),
    ],
)
def test_learn_many_refuses_a_batch_it_cannot_learn_and_changes_nothing(
    users, items, ratings, timestamps, message
) -> None:
    # A NaN rating made the mean rating, and so every prediction, NaN for good; an
    # infinite timestamp broke every later call; unequal lists registered ids (and listed
    # an item never announced) before failing halfway.
    rec = _model()
    before = _state(rec)
    with pytest.raises(ValueError, match=message):
        rec.learn_many(users, items, ratings, timestamps)
    assert _state(rec) == before
    assert rec.users.get("cy") is None and rec.items.get("new") is None
    rec.learn_rating("cy", "c", 4.0, 3.0)  # and it goes on learning
    assert np.isfinite(rec.predict_many(["cy"], ["a"])).all() and rec.n_events == 3


def test_predictions_need_as_many_items_as_users() -> None:
    # (numpy stretched one item over two users.)
    with pytest.raises(ValueError, match="2 users need as many items"):
        _model().predict_many(["ann", "bob"], ["a"])


def test_an_upsert_at_a_time_that_is_not_finite_is_refused_and_changes_nothing() -> None:
    rec = _model()
    before = _state(rec)
    with pytest.raises(ValueError, match="timestamps must be finite"):
        rec.upsert_items(["m"], [{"x": 1.0}], [math.inf])
    assert _state(rec) == before and rec.items.get("m") is None
    assert [r.item for r in rec.recommend("ann", 3)] == ["b", "c"]


@pytest.mark.parametrize("call", ["recommend", "top_items", "popular", "similar_items"])
@pytest.mark.parametrize(
    ("k", "error", "message"),
    [
        (-1, ValueError, "k must be >= 0, got -1"),
        (2.5, TypeError, "k must be an int, got 2.5"),
        ("3", TypeError, "k must be an int, got '3'"),
        (True, TypeError, "k must be an int, got True"),
        (None, TypeError, "k must be an int, got None"),
    ],
)
def test_a_bad_k_is_refused_by_name(call: str, k, error, message) -> None:
    rec = _model()
    args = {"recommend": ("ann",), "top_items": (["ann", "zed"],), "popular": ()}
    with pytest.raises(error, match=message):
        getattr(rec, call)(*args.get(call, ("a",)), k)


def test_k_past_the_catalog_costs_no_more_than_the_catalog() -> None:
    # (Not capped, a k of 10**8 asked for gigabytes of scores.)
    rec = _model()
    assert len(rec.similar_items("a", 10**12)) <= 2
    assert [r.item for r in rec.recommend("ann", 10**12)] == ["b", "c"]
    assert len(rec.popular(np.int64(10**12))) == 3


def test_top_items_hands_each_user_a_list_of_their_own() -> None:
    rec = _model()
    for users in (["x", "y"], ["ann", "x", "y"]):  # all popular; popular beside a ranked one
        out = rec.top_items(users, 3)
        out[-1].append("Z")
        assert "Z" not in out[-2]


def test_prequential_ends_with_a_checkpoint_when_the_stream_ends_with_a_refused_rating() -> None:
    # A rating of a deleted item is refused: at a checkpoint's place it skipped the
    # checkpoint, and at the end of the stream the last one ("covers the whole stream").
    stream = [
        ItemUpsert("x", {"a": 1.0}),
        ItemUpsert("y", {"a": 1.0}),
        Rating("u", "x", 5.0, 1.0),
        ItemDelete("x"),
        Rating("w", "x", 5.0, 3.0),
    ]
    for every in (5, 4, 2):
        checkpoints = list(prequential(Recommender(), stream, checkpoint_every=every))
        assert checkpoints[-1].events == 5 and checkpoints[-1].refused == 1, every
        assert [c.events for c in checkpoints] == list(range(every, 6, every)) + (
            [] if 5 % every == 0 else [5]
        )


@pytest.mark.parametrize(
    "bad", [{"checkpoint_every": 0}, {"batch_size": 0}, {"k": -1}, {"k": 2.5}, {"k": True}]
)
def test_prequential_refuses_steps_of_zero_or_a_bad_k_up_front(bad: dict) -> None:
    model = Recommender()
    with pytest.raises(ValueError, match=r"must be (an integer )?>= [01]"):
        next(prequential(model, [Rating("u", "x", 3.0, 1.0), Rating("u", "y", 5.0, 2.0)], **bad))
    assert model.n_events == 0  # (k was checked only at the first relevant rating, after)


def test_factor_settings_that_worked_before_the_checks_still_do() -> None:
    """No clipping, a frozen part (a biases-only baseline) and no seed are choices."""
    for setting in ({"clip_error": math.inf}, {"lr_factor": 0.0}, {"lr_bias": 0.0}, {"seed": None}):
        rec = Recommender(RecommenderConfig(factors=FactorParams(n_factors=4, **setting)))
        rec.learn_many(["u", "v"], ["a", "b"], [5.0, 1.0], [1.0, 2.0])
        assert np.isfinite(rec.predict_many(["u", "v"], ["b", "a"])).all(), setting


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("lr_factor", math.nan, r"a finite number >= 0 \(0: frozen\)"),
        ("lr_bias", -1.0, r"a finite number >= 0 \(0: frozen\)"),
        ("clip_error", 0.0, r"a number > 0 \(inf: no clipping\)"),
        ("clip_error", math.nan, r"a number > 0 \(inf: no clipping\)"),
        ("seed", -1, "an integer >= 0 or None"),
        ("init_std", math.inf, "a finite number >= 0"),
        ("l2_factor", -0.1, "a finite number >= 0"),
        ("n_factors", 0, "an integer >= 1"),
        ("n_factors", 4.0, "an integer >= 1"),
        ("adaptive", "yes", "True or False"),
    ],
)
def test_factor_settings_that_would_learn_nothing_or_nan_are_refused_by_name(
    field: str, value: object, rule: str
) -> None:
    # (Each was accepted: NaN settings gave NaN predictions and empty lists, and a negative
    # or zero rate learned nothing, silently.)
    with pytest.raises(ValueError, match=f"factors.{field} must be {rule}, got"):
        FactorParams(**{field: value})


@pytest.mark.parametrize(
    "scale", [(1.0, math.inf), (-math.inf, 5.0), (1.0, 1e39), (0.0, 1e38), (-1e7, 5.0)]
)
def test_an_unbounded_scale_is_refused(scale: tuple[float, float]) -> None:
    # (With (1, inf), an infinite rating passed as "within the scale": mu, every
    # prediction and every list went infinite or empty. With (0, 1e38), four ratings of
    # one user made its float32 sums infinite, and through the blend weights every
    # user's list empty.)
    with pytest.raises(ValueError, match=r"scale must be .*finite"):
        RecommenderConfig(scale=scale)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"cold_ratings": 0}, "cold_ratings must be a finite number > 0, got 0"),
        ({"blend_lr": math.nan}, "blend_lr must be a finite number >= 0, got nan"),
        ({"content_dim": 0}, "content_dim must be an integer >= 1, got 0"),
        ({"cooc_window": 0}, "cooc_window must be an integer >= 1"),
        ({"cooc_neighbours": 2.5}, "cooc_neighbours must be an integer >= 1"),
        ({"popularity_half_life": -1.0}, "popularity_half_life must be a finite number > 0"),
        ({"popularity_half_life": 0.0}, "popularity_half_life must be a finite number > 0"),
        ({"cooc_decay": 1.5}, r"cooc_decay must be in \(0, 1\]"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"n_negatives": True}, "n_negatives must be an integer >= 1, got True"),
        ({"history_limit": math.inf}, "history_limit must be an integer >= 1, got inf"),
        ({"content_dim": 8.0}, "content_dim must be an integer >= 1, got 8.0"),
        ({"seed": 42.0}, "seed must be an integer >= 0, got 42.0"),
    ],
)
def test_a_config_the_model_cannot_run_is_refused_by_name(setting: dict, message: str) -> None:
    # (Each was accepted, then failed on first use deep in numpy, or silently gave no lists.)
    with pytest.raises(ValueError, match=message):
        RecommenderConfig(**setting)


@pytest.mark.parametrize("call", ["learn_many", "upsert_items"])
def test_an_id_that_is_not_a_string_is_refused_before_anything_changes(call: str) -> None:
    """(The batch's other new ids were registered first, the arrays never grown for
    them: every later recommend, predict or similar call failed.)"""
    rec = _model()
    before = _state(rec)
    with pytest.raises(TypeError, match="items are str ids, not int: 17"):
        if call == "learn_many":
            rec.learn_many(["u0", "u1"], ["brand_new", 17], [5.0, 4.0], [3.0, 3.0])
        else:
            rec.upsert_items(["brand_new", 17], [{"x": 1.0}, {"x": 1.0}])
    assert _state(rec) == before and "brand_new" not in rec.items and "u0" not in rec.users
    assert [r.item for r in rec.recommend("ann", 3)] and rec.similar_items("a") is not None


def test_a_scorer_made_before_a_compaction_says_so_instead_of_reading_freed_rows() -> None:
    rec = _model()
    score = rec.item_scorer(["ann"])
    assert np.isfinite(score(["c"])).all()
    rec.delete_item("a")
    rec.compact()
    with pytest.raises(RuntimeError, match="compacted since this scorer was made"):
        score(["c"])
    assert np.isfinite(rec.item_scorer(["ann"])(["c"])).all()


def test_one_large_batch_moves_the_blend_as_slices_do_never_past_zero() -> None:
    """The blend's L2 decay grew with the batch: past 2 / (lr * l2) relevant ratings in
    one call (400,000 by default; 4,000 here) every weight turned negative and lists
    came out in reverse. A large batch is learned in steps of at most 256."""

    def learned(step: int) -> np.ndarray:
        rec = Recommender(RecommenderConfig(blend_l2=0.01))
        rec.upsert_items([f"i{j}" for j in range(50)], [{f"t{j % 5}": 1.0} for j in range(50)])
        rng = np.random.default_rng(0)
        n = 6000
        users = [f"u{j}" for j in range(n)]
        items = [f"i{j}" for j in np.minimum(rng.zipf(1.5, n) - 1, 49)]
        for lo in range(0, n, step):
            sl = slice(lo, lo + step)
            rec.learn_many(users[sl], items[sl], [5.0] * len(users[sl]), [1.0] * len(users[sl]))
        return np.concatenate([rec.w_cold, rec.w_warm])

    one, sliced = learned(6000), learned(256)
    assert (np.sign(one) == np.sign(sliced)).all() and (one > 0).sum() >= 8
