"""Contract tests written once and run over every named model in ``MODELS``."""

from __future__ import annotations

import copy
import functools
import math
import pickle
from collections.abc import Iterable

import numpy as np
import pytest

from recsys_online import synth
from recsys_online.events import Event, ItemDelete, ItemUpsert, Rating
from recsys_online.factors import FactorParams
from recsys_online.recommender import MODELS, Recommendation, Recommender, RecommenderConfig

SOURCES = {"collaborative", "content", "co-occurrence", "popular"}
#: What a single-signal model may name as the source: its own signal or a fallback.
OWN_SOURCES = {
    "hybrid": SOURCES,
    "session": SOURCES,
    "mf": {"collaborative", "popular"},
    "content": {"content", "collaborative", "popular"},
    "cooc": {"co-occurrence", "collaborative", "popular"},
    "popularity": {"popular"},
}
K = 10
GHOST_USER, GHOST_ITEM = "ghost-user", "ghost-item"

pytestmark = pytest.mark.parametrize("name", sorted(MODELS))


def test_own_sources_cover_every_model(name: str) -> None:
    assert set(OWN_SOURCES) == set(MODELS)
    assert OWN_SOURCES[name] <= SOURCES


# ---------------------------------------------------------------------------- helpers


@functools.cache
def _events() -> tuple[Event, ...]:
    ds = synth.generate(n_users=60, n_items=120, n_ratings=3000, seed=3, n_deletes=6)
    return tuple(ds.events())


def _feed(model: Recommender, events: Iterable[Event]) -> Recommender:
    for e in events:
        if isinstance(e, Rating):
            model.learn_rating(e.user, e.item, e.rating, e.timestamp)
        elif isinstance(e, ItemUpsert):
            model.upsert_item(e.item, e.tags, e.timestamp)
        else:
            model.delete_item(e.item)
    return model


def _config(name: str, seed: int, **kw: object) -> RecommenderConfig:
    return RecommenderConfig(
        signals=MODELS[name], factors=FactorParams(n_factors=8, seed=seed), **kw
    )


def _build(name: str, seed: int = 1, n_events: int | None = None) -> Recommender:
    return _feed(Recommender(_config(name, seed)), _events()[:n_events])


@functools.cache
def _trained(name: str, seed: int = 1, n_events: int | None = None) -> Recommender:
    return _build(name, seed, n_events)


#: The seed tests replay a prefix of the stream (a third of it), to stay fast.
PREFIX = 1000


@pytest.fixture
def model(name: str) -> Recommender:
    """A trained model of its own (tests may change it)."""
    return copy.deepcopy(_trained(name))


def _users() -> list[str]:
    return sorted({e.user for e in _events() if isinstance(e, Rating)})


def _rated() -> dict[str, set[str]]:
    rated: dict[str, set[str]] = {}
    for e in _events():
        if isinstance(e, Rating):
            rated.setdefault(e.user, set()).add(e.item)
    return rated


def _live_items() -> set[str]:
    """Items announced or rated and not deleted, straight from the stream."""
    live: set[str] = set()
    deleted: set[str] = set()
    for e in _events():
        if isinstance(e, ItemDelete):
            deleted.add(e.item)
        else:
            live.add(e.item)
    return live - deleted


def _deleted_items() -> set[str]:
    return {e.item for e in _events() if isinstance(e, ItemDelete)}


def _items(recs: list[Recommendation]) -> list[str]:
    return [r.item for r in recs]


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_lists_and_predictions(name: str) -> None:
    a, b = _trained(name, 1, PREFIX), _build(name, 1, PREFIX)
    users = sorted(a.users.ids)
    assert len(users) > 10
    for u in users:
        assert a.recommend(u, K) == b.recommend(u, K)
    assert a.top_items(users, K) == b.top_items(users, K)
    uu = [u for u in users for _ in range(5)]
    ii = [f"i{j:03d}" for j in range(5)] * len(users)
    np.testing.assert_array_equal(a.predict_many(uu, ii), b.predict_many(uu, ii))


def test_factor_seed_matters_only_where_factors_rank(name: str) -> None:
    a, c = _trained(name, 1, PREFIX), _trained(name, 2, PREFIX)
    users = sorted(a.users.ids)
    same_lists = a.top_items(users, K) == c.top_items(users, K)
    if "mf" in MODELS[name]:
        assert not same_lists
        uu = users
        ii = [a.items.id_of(int(a.history[a.users.get(u)][0])) for u in users]
        assert not np.array_equal(a.predict_many(uu, ii), c.predict_many(uu, ii))
    else:
        # The factor seed only initialises MF, which this model does not rank with.
        assert same_lists


# ---------------------------------------------------------------------------- unseen ids


def test_unseen_ids_predict_in_scale_without_registering(name: str, model: Recommender) -> None:
    n_users, n_items = model.n_users, model.n_items
    known_user, known_item = _users()[0], sorted(_live_items())[0]
    lo, hi = model.config.scale
    for user, item in [
        (GHOST_USER, known_item),
        (known_user, GHOST_ITEM),
        (GHOST_USER, GHOST_ITEM),
    ]:
        p = model.predict_rating(user, item)
        assert math.isfinite(p) and lo <= p <= hi, (user, item, p)
    preds = model.predict_many([GHOST_USER, known_user], [GHOST_ITEM, GHOST_ITEM])
    assert np.all(np.isfinite(preds)) and np.all((lo <= preds) & (preds <= hi))
    assert model.similar_items(GHOST_ITEM, K) == []
    model.recommend(GHOST_USER, K)
    model.recommend_many([GHOST_USER], K)
    model.top_items([GHOST_USER], K)
    assert GHOST_USER not in model.users and GHOST_ITEM not in model.items
    assert (model.n_users, model.n_items) == (n_users, n_items)


def test_unknown_user_gets_the_popularity_list(name: str, model: Recommender) -> None:
    popular = model.popular(K)
    assert len(popular) == K
    assert {r.source for r in popular} == {"popular"}
    assert model.recommend(GHOST_USER, K) == popular
    many = model.recommend_many([GHOST_USER, _users()[0], "other-ghost"], K)
    assert many[0] == many[2] == popular
    assert many[1] != popular
    assert model.top_items([GHOST_USER], K) == [_items(popular)]


def test_declared_tags_without_ratings(name: str, model: Recommender) -> None:
    """A user who declared interests but rated nothing: content lists where the model has
    content, else the popularity list ("users with no ratings get decayed popularity")."""
    catalog = {e.item: e.tags for e in _events() if isinstance(e, ItemUpsert)}
    first = sorted(_live_items())[0]
    declared = dict(sorted(catalog[first].items())[:2])
    model.upsert_user("newbie", declared)
    recs = model.recommend("newbie", K)
    if "content" not in MODELS[name]:
        assert _items(recs) == _items(model.popular(K)), "labelled 'popular now', is it?"
        return
    content = [r for r in recs if r.source == "content"]
    assert content, recs
    for r in content:
        assert set(catalog[r.item]) & set(declared), r
        assert any(tag in r.reason for tag in declared), r
    if MODELS[name] == ("content",):
        assert recs[0].source == "content"


def test_empty_model_predicts_mid_scale_and_recommends_nothing(name: str) -> None:
    model = Recommender(_config(name, 1, scale=(0.5, 5.0)))
    assert model.predict_rating("a", "b") == pytest.approx(2.75)
    assert model.recommend("a", K) == []
    assert model.popular(K) == []
    assert model.top_items(["a"], K) == [[]]
    # Declared tags before any item is known (a worker waiting for its catalog).
    model.upsert_user("declared", {"jazz": 1.0})
    assert model.recommend("declared", K) == [] and model.top_items(["declared"], K) == [[]]
    assert model.score_items(["declared"], ["x"]).shape == (1, 1)


# ---------------------------------------------------------------------------- list shape


@pytest.mark.parametrize("k", [0, 1, K, 200])
def test_lists_are_short_unique_live_and_unrated(name: str, k: int) -> None:
    model = _trained(name)
    rated, live = _rated(), _live_items()
    assert model.n_items > len(live)  # the stream did delete items
    for u in _users():
        items = _items(model.recommend(u, k))
        assert len(items) <= k
        assert len(set(items)) == len(items)
        assert not set(items) & rated[u], "an already rated item was recommended"
        assert set(items) <= live, "a deleted item was recommended"
        if k >= model.n_items:  # room for everything: every live unrated item is listed
            assert set(items) == live - rated[u]
        else:
            assert len(items) == min(k, len(live - rated[u]))


def test_deleted_items_are_never_returned(name: str, model: Recommender) -> None:
    users = _users()
    top = model.recommend(users[0], 1)[0].item
    most_popular = model.popular(1)[0].item
    gone = {top, most_popular} | _deleted_items()
    model.delete_item(top)
    model.delete_item(most_popular)
    # Later ratings of a deleted item teach the model but must not bring the item back.
    model.learn_rating(users[1], top, 5.0, timestamp=model.now + 1.0)
    model.learn_rating("late-user", most_popular, 5.0, timestamp=model.now + 2.0)
    assert model.is_deleted(top) and model.is_deleted(most_popular)
    n = model.n_items
    users = [*users, "late-user", GHOST_USER]

    def check(items: Iterable[str], where: str) -> None:
        assert not set(items) & gone, f"{where} returned a deleted item"

    for u in users:
        check(_items(model.recommend(u, n)), f"recommend({u})")
    for u, recs in zip(users, model.recommend_many(users, n), strict=True):
        check(_items(recs), f"recommend_many({u})")
    for u, items in zip(users, model.top_items(users, n), strict=True):
        check(items, f"top_items({u})")
    check(_items(model.popular(n)), "popular")
    for item in sorted(gone | set(_items(model.popular(5)))):
        check(_items(model.similar_items(item, n)), f"similar_items({item})")
    assert _items(model.popular(n))  # something is still recommended


def test_bad_tag_weights_are_refused_before_anything_changes(name: str, model: Recommender) -> None:
    """A weight of 0 would divide by a zero sum and spread NaN to every user; one above
    float32's range would overflow. Both are a ValueError, and the model is unchanged."""
    before = model.recommend(_users()[0], K)
    for bad in (
        {"drama": 0.0},
        {"drama": -1.0},
        {"drama": math.nan},
        {"drama": 1e39},
        {"drama": 1e-300},
    ):
        with pytest.raises(ValueError, match="tag 'drama': weight"):
            model.upsert_items(["fresh", "other"], [{"jazz": 1.0}, bad])
        with pytest.raises(ValueError, match="tag 'drama': weight"):
            model.upsert_user("declarer", bad)
    assert model.items.get("fresh") is None and model.users.get("declarer") is None
    assert model.recommend(_users()[0], K) == before


def test_items_rated_before_the_history_limit_stay_excluded(name: str) -> None:
    """A heavy user's ratings past ``history_limit`` leave the recent history the signals
    read, never the set of items their lists exclude (nor in a pickled copy)."""
    import pickle

    model = Recommender(RecommenderConfig(signals=MODELS[name], history_limit=3, seed=1))
    items = [f"i{n}" for n in range(12)]
    model.upsert_items(items, [{"jazz": 1.0}] * 12)
    for n, item in enumerate(items[:8]):  # one heavy user rates 8; others make them popular
        model.learn_many(["heavy", f"fan{n}", "fan"], [item, item, item], [5.0] * 3, [n] * 3)
    assert len(model.history[model.users.get("heavy")]) == 3
    for m in (model, pickle.loads(pickle.dumps(model))):
        listed = {
            *_items(m.recommend("heavy", 12)),
            *_items(m.recommend_many(["heavy", "fan0"], 12)[0]),
            *m.top_items(["heavy"], 12)[0],
        }
        assert listed and not listed & set(items[:8]), listed
        assert np.isinf(m.score_items(["heavy"], items[:8])).all()


def test_an_empty_batch_changes_nothing(name: str, model: Recommender) -> None:
    before = (model.n_events, model.recommend(_users()[0], K))
    model.learn_many([], [], [], [])
    assert (model.n_events, model.recommend(_users()[0], K)) == before


def test_an_item_scorer_outlives_new_tags(name: str, model: Recommender) -> None:
    """A scorer made before a new tag widens the content columns keeps scoring."""
    users = _users()[:3]
    score = model.item_scorer(users)
    first = score([model.items.id_of(0)])
    model.upsert_item("brand-new", {f"never-seen-{n}": 1.0 for n in range(3)})
    again = score([model.items.id_of(0), "brand-new"])
    assert again.shape == (3, 2) and np.isfinite(again[:, 1]).all()
    assert np.allclose(first[:, 0], again[:, 0], equal_nan=True)


def test_a_deleted_item_leaves_no_trace_in_cached_vectors_or_cooccurrence(
    name: str, model: Recommender
) -> None:
    """Deleting an item drops its tags' part of its cached vector at once (as a full
    refresh would), and a late rating of it does not bring it back into the users'
    recent items or the neighbour lists."""
    item = model.items.id_of(0)
    row = 0
    model.delete_item(item)
    vectors = model.vectors
    cached = vectors.Q[row].copy(), float(vectors.bias[row])
    model.mf.full_refreshes += 1  # as when the model's refresh is due: every row rewritten
    model._vectors()
    assert np.allclose(cached[0], vectors.Q[row]) and cached[1] == vectors.bias[row]
    assert model.tags.names(row) == []
    model.learn_many(_users()[:2], [item, item], [5.0, 5.0], [model.now + 1] * 2)
    assert not (model.cooc.recent == row).any()
    assert not (model.cooc.nbr == row).any()


def test_similar_items_share_a_tag_or_cooccurred(name: str, model: Recommender) -> None:
    model.upsert_item("loner", {"nothing-else-has-this": 1.0})
    assert model.similar_items("loner", K) == []
    some = model.items.id_of(0)
    assert all(r.score > 0 for r in model.similar_items(some, K))
    model.delete_item(some)
    assert model.similar_items(some, K) == []


def test_similar_many_lists_what_similar_items_lists_for_each(
    name: str, model: Recommender
) -> None:
    items = [*sorted(_live_items())[:12], GHOST_ITEM]
    batched = model.similar_many(items, K)
    assert len(batched) == len(items) and batched[-1] == []
    assert any(batched)
    for item, recs in zip(items, batched, strict=True):
        one = model.similar_items(item, K)
        assert [r[2:] for r in recs] == [r[2:] for r in one]  # reason, source, because
        assert [r.item for r in recs] == [r.item for r in one]
        assert np.allclose([r.score for r in recs], [r.score for r in one], atol=1e-5)
        assert item not in [r.item for r in recs]


# ---------------------------------------------------------------------------- consistency


@pytest.mark.parametrize("k", [1, K, 40])
def test_single_and_batched_paths_agree(name: str, k: int) -> None:
    model = _trained(name)
    users = [*_users(), GHOST_USER]
    single = [model.recommend(u, k) for u in users]
    many = model.recommend_many(users, k)
    ids = model.top_items(users, k)
    for u, one, batch, just_ids in zip(users, single, many, ids, strict=True):
        _assert_same_up_to_ties(one, batch, f"recommend vs recommend_many for {u}")
        assert _items(batch) == just_ids, f"recommend_many vs top_items for {u}"


def _assert_same_up_to_ties(one: list, other: list, what: str) -> None:
    """Same scores place by place; the items too, except that items of equal score (to
    float32 rounding: one user's product and a batch's round differently) may swap or
    be cut at the end of the list."""
    a, b = [r.score for r in one], [r.score for r in other]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=what)
    score_of = {r.item: r.score for r in other}
    for p, (x, y) in enumerate(zip(one, other, strict=True)):
        if x.item != y.item:  # x is tied with y: swapped with it, or cut at the end
            where = score_of.get(x.item, b[-1])
            assert np.isclose(where, a[p], rtol=1e-5, atol=1e-6), (what, p, x.item, y.item)


# ---------------------------------------------------------------------------- scale


def test_predictions_are_clipped_to_a_custom_scale(name: str) -> None:
    model = Recommender(_config(name, 0, scale=(0.5, 5.0), relevant=3.0))
    for j in range(6):
        model.upsert_item(f"i{j}", {f"t{j % 2}": 1.0})
    t = 0.0
    for _ in range(20):
        for u in range(4):
            for j in range(6):
                t += 1.0
                model.learn_rating(f"u{u}", f"i{j}", 5.0 if (u + j) % 2 else 0.5, t)
    # (Ratings outside the scale are refused: biases set far out push the raw model past it.)
    model.mf.user_bias[:4] += np.array([9.0, -9.0, 9.0, -9.0], np.float32)
    raw = model.mf.raw(np.repeat(np.arange(4), 6), np.tile(np.arange(6), 4))
    assert raw.min() < 0.5 and raw.max() > 5.0  # so the clipping below is exercised
    users = [f"u{u}" for u in range(4)] + [GHOST_USER]
    items = [f"i{j}" for j in range(6)] + [GHOST_ITEM]
    uu = [u for u in users for _ in items]
    ii = items * len(users)
    preds = model.predict_many(uu, ii)
    assert np.all(np.isfinite(preds))
    assert preds.min() == pytest.approx(0.5) and preds.max() == pytest.approx(5.0)
    for u, i, p in zip(uu, ii, preds.tolist(), strict=True):
        assert model.predict_rating(u, i) == pytest.approx(p)
        assert 0.5 <= p <= 5.0


# ---------------------------------------------------------------------------- explanations


def test_every_recommendation_is_explained(name: str) -> None:
    model = _trained(name)
    rated = _rated()
    users = _users()
    lists = [model.recommend(u, K) for u in users]
    lists += model.recommend_many(users, K)
    seen_sources: set[str] = set()
    for u, recs in zip(users + users, lists, strict=True):
        for r in recs:
            assert isinstance(r.reason, str) and r.reason.strip()
            assert r.source in OWN_SOURCES[name], (u, r)
            seen_sources.add(r.source)
            if r.source in {"co-occurrence", "collaborative"} and r.because is not None:
                assert r.because in rated[u], (u, r)
            if r.source == "co-occurrence":
                assert r.because is not None, (u, r)
    assert seen_sources  # the lists were not all empty
    for r in model.recommend(GHOST_USER, K):
        assert r.source == "popular" and r.reason.strip()
    item = sorted(_live_items())[0]
    for r in model.similar_items(item, K):
        assert r.reason.strip() and r.source in SOURCES and r.item != item


def test_ties_rank_the_same_in_every_path(name: str) -> None:
    """Items with equal scores come out in one order whichever method ranks them."""
    model = Recommender(_config(name, 0))
    model.upsert_item("liked", {"a": 1.0})
    model.upsert_item("meh", {"b": 1.0})
    for j in range(3):
        model.upsert_item(f"twin{j}", {"a": 1.0})  # identical items: identical scores
    model.learn_rating("ann", "liked", 5.0, 1.0)
    model.learn_rating("ann", "meh", 1.0, 2.0)
    for k in (1, 2, 3):
        single = _items(model.recommend("ann", k))
        assert single == _items(model.recommend_many(["ann"], k)[0]), k
        assert single == model.top_items(["ann"], k)[0], k


def test_collaborative_reasons_name_the_closest_recent_like(name: str) -> None:
    """ "Because you liked X" names, of the user's last 50 ratings at or above their
    mean of items still listed, the one whose factors have the largest cosine with the
    item's (the earliest of equals), checked by hand for every listed item."""
    model = _trained(name)
    users = _users()
    q, norm = model._vectors().Q, model.vectors.norm
    checked = 0
    for user, recs in zip(users, model.recommend_many(users, K), strict=True):
        row = model.users.get(user)
        hist = list(model.history[row])[-50:]
        ratings = list(model.history_ratings[row])[-50:]
        mean = model._user_means(np.array([row]))[0]
        likes = [
            i for i, r in zip(hist, ratings, strict=True) if r >= mean and not model.deleted[i]
        ]
        for r in recs:
            if r.source != "collaborative" or r.because is None:
                continue
            item = model.items.get(r.item)
            cos = [float(q[i] @ q[item]) / max(float(norm[i]), 1e-9) for i in likes]
            best = max(cos)
            near = [i for i, c in zip(likes, cos, strict=True) if c >= best - 1e-5]
            want = {model.items.id_of(i) for i in near}
            assert r.because in want, (user, r)
            checked += 1
    if "mf" in MODELS[name]:
        assert checked > 0


# ---------------------------------------------------------------------------- compaction


def _outputs(model: Recommender) -> tuple[list, list[float]]:
    """Every user's list (items, and reasons other than collaborative ones) and the
    scores and the predictions of every pair rated. (Not collaborative reasons: the liked
    item they name is sought among the user's 50 latest ratings, and compacting removes
    the deleted items'; where those were the only likes, popularity spoke instead.)"""
    users = _users()
    ranked = model.recommend_many(users)
    lists = [
        [(r.item, r.reason if r.source not in ("collaborative", "popular") else "") for r in recs]
        for recs in ranked
    ]
    scores = [r.score for recs in ranked for r in recs]
    pairs = [(e.user, e.item) for e in _events() if isinstance(e, Rating)]
    known = [(u, i) for u, i in pairs if i in model.items and i not in _deleted_items()]
    preds = model.predict_many([u for u, _ in known], [i for _, i in known]).tolist()
    return [lists, model.popular(K)], scores + preds


def test_compacting_changes_no_list_score_or_prediction(name: str) -> None:
    """Deleted items' rows are freed; every list, reason, score and prediction stays
    the same, now and after the rest of the stream is learned by both models."""
    events = _events()
    cut = max(n for n, e in enumerate(events) if isinstance(e, ItemDelete)) + 1
    kept = _build(name, 1, cut)
    compacted = copy.deepcopy(kept)
    n_items = kept.n_items
    assert compacted.compact() == kept.n_deleted == len(_deleted_items()) > 0
    assert compacted.n_items == n_items - kept.n_deleted and compacted.n_deleted == 0
    assert not set(compacted.items.ids) & _deleted_items()
    for step in (None, events[cut:]):
        if step is not None:
            _feed(kept, step)
            _feed(compacted, step)
        (lists_a, numbers_a), (lists_b, numbers_b) = _outputs(kept), _outputs(compacted)
        assert lists_a == lists_b
        np.testing.assert_allclose(numbers_a, numbers_b, rtol=1e-5, atol=1e-6)
    assert compacted.compact() == 0  # nothing deleted since


def test_an_item_listed_again_after_compacting_is_never_shown_to_its_raters(name: str) -> None:
    """Compacting forgets a deleted item's row, not who rated it: listed again (or
    brought back by a rating), it stays out of its raters' lists, as without compacting,
    and ``has_rated`` says so before and after (a pickled model keeps them too)."""
    events = _events()
    cut = max(n for n, e in enumerate(events) if isinstance(e, ItemDelete)) + 1
    kept = _build(name, 1, cut)
    compacted = copy.deepcopy(kept)
    assert compacted.compact() > 0
    compacted = pickle.loads(pickle.dumps(compacted))
    gone = sorted(_deleted_items())
    users = _users()
    pairs = [(u, i) for u in users for i in gone]
    rated = kept.has_rated([u for u, _ in pairs], [i for _, i in pairs])
    assert any(rated)
    assert compacted.has_rated([u for u, _ in pairs], [i for _, i in pairs]) == rated
    back, by_rating = gone[: len(gone) // 2 + 1], gone[len(gone) // 2 + 1 :]
    for model in (kept, compacted):
        model.upsert_items(back, [{"relisted": 1.0}] * len(back), [1e9] * len(back))
        for item in by_rating:  # (an unknown item's rating lists it)
            model.learn_rating("somebody-new", item, 4.0, 1e9)
    assert compacted.has_rated([u for u, _ in pairs], [i for _, i in pairs]) == rated
    listed = [[r.item for r in recs] for recs in compacted.recommend_many(users, 50)]
    for user, items in zip(users, listed, strict=True):
        assert not set(items) & {
            i for (u, i), r in zip(pairs, rated, strict=True) if r and u == user
        }
    if name != "popularity":  # (its lists are the same for all: nobody's gets them)
        assert {i for items in listed for i in items} & set(gone)  # (listed for the others)


def test_compacting_every_item_keeps_the_predictions_of_unknown_items(name: str) -> None:
    model = _build(name, 1, 300)
    users = _users()[:5]
    before = model.predict_many(users, [GHOST_ITEM] * len(users))
    for item in list(model.items.ids):
        model.delete_item(item)
    assert model.compact() > 0 and model.n_items == 0
    np.testing.assert_allclose(model.predict_many(users, [GHOST_ITEM] * len(users)), before)
    assert model.recommend_many(users) == [[] for _ in users]
