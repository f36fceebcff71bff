"""Tests for the ranking signals: content cosine, co-occurrence and decayed popularity."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from recsys_online import cooc as cooc_module
from recsys_online.content import ContentModel
from recsys_online.cooc import COUNT_FLOOR, CoOccurrence
from recsys_online.popularity import Popularity
from recsys_online.recommender import HYBRID, Recommender, RecommenderConfig
from recsys_online.tags import ItemTags

# ---------------------------------------------------------------------------- content

CATALOG = [
    {"space": 1.0, "war": 2.0},
    {"space": 1.0},
    {"romance": 1.0, "war": 0.5},
    {"comedy": 3.0},
    {"space": 2.0, "comedy": 1.0, "romance": 1.0},
    {"noir": 1.0, "space": 0.5},
]


def _tfidf(catalog: list[dict[str, float]]) -> np.ndarray:
    """Unit TF-IDF rows by hand: weight x (ln((1 + n) / (1 + df)) + 1)."""
    names = sorted({t for tags in catalog for t in tags})
    x = np.array([[tags.get(t, 0.0) for t in names] for tags in catalog])
    df = (x > 0).sum(axis=0)
    x = x * (np.log((1 + len(catalog)) / (1 + df)) + 1.0)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _content(catalog: list[dict[str, float]], dim: int = 8) -> ContentModel:
    tags = ItemTags()
    for row, item_tags in enumerate(catalog):
        tags.set(row, item_tags)
    cm = ContentModel(tags, dim=dim)
    cm.ensure(n_users=2, n_items=len(catalog))
    cm.refresh()
    return cm


def test_item_cosine_equals_tfidf_cosine_by_hand() -> None:
    cm = _content(CATALOG)
    x = _tfidf(CATALOG)
    got = np.array([cm.similar_items(row) for row in range(len(CATALOG))])
    np.testing.assert_allclose(got, x @ x.T, atol=1e-6)
    assert got[0, 3] == 0.0  # no tag in common


def test_user_cosine_equals_mean_centred_profile_by_hand() -> None:
    cm = _content(CATALOG)
    x = _tfidf(CATALOG)
    items, ratings, means = np.array([0, 3, 4]), np.array([5.0, 2.0, 4.0]), np.full(3, 3.5)
    cm.learn(np.zeros(3, np.int64), items, ratings, means)
    profile = ((ratings - means)[:, None] * x[items]).sum(axis=0)
    want = x @ profile / np.linalg.norm(profile)
    np.testing.assert_allclose(cm.item_scores(0), want, atol=1e-6)
    np.testing.assert_allclose(cm.item_scores_many(np.array([0, 1]))[0], want, atol=1e-6)
    assert np.all(cm.item_scores(1) == 0.0)  # no ratings, no profile


def test_tfidf_cosine_holds_for_a_catalog_with_exactly_dim_tags() -> None:
    catalog = [{f"t{j}": 1.0 + j, f"t{(j + 1) % 8}": 1.0} for j in range(8)]
    cm = _content(catalog, dim=8)
    x = _tfidf(catalog)
    got = np.array([cm.similar_items(row) for row in range(len(catalog))])
    np.testing.assert_allclose(got, x @ x.T, atol=1e-6)


def _flat_world() -> Recommender:
    """Everyone rates 4.0 (so the global mean is exactly 4.0)."""
    rec = Recommender(RecommenderConfig(signals=("content",)))
    for row, tags in enumerate(CATALOG):
        rec.upsert_item(f"i{row}", tags)
    t = 0.0
    for u in range(3):
        for row in range(len(CATALOG)):
            t += 1.0
            rec.learn_rating(f"crowd{u}", f"i{row}", 4.0, t)
    return rec


def test_user_who_rates_everything_the_same_has_no_profile() -> None:
    rec = _flat_world()
    for row in (0, 1, 3):
        rec.learn_rating("flat", f"i{row}", 4.0, 100.0 + row)
    rec.learn_rating("picky", "i0", 5.0, 200.0)  # space + war: above the mean
    rec.learn_rating("picky", "i3", 3.0, 201.0)  # comedy: below the mean
    flat = rec.content.profile[rec.users.get("flat")]
    picky = rec.content.profile[rec.users.get("picky")]
    assert np.linalg.norm(flat) < 1e-6
    assert np.linalg.norm(picky) > 0.5
    assert np.all(rec.content.item_scores(rec.users.get("flat")) == 0.0)
    # The picky profile points to space and war and away from comedy.
    scores = rec.content.item_scores(rec.users.get("picky"))
    assert int(np.argmax(scores)) == 0 and int(np.argmin(scores)) == 3
    assert scores[1] > 0 and scores[2] > 0 and scores[5] > 0  # space / war / space
    assert scores[4] < 0  # mostly comedy and romance


# ---------------------------------------------------------------------------- co-occurrence


def _overflowing(seed: int) -> CoOccurrence:
    """Item 0 meets item 1 forty times and items 2-31 once each, in a shuffled order,
    with room for only two neighbours per item."""
    co = CoOccurrence(window=2, n_neighbours=2)
    co.ensure(n_users=200, n_items=40)
    partners = [1] * 40 + list(range(2, 32))
    np.random.default_rng(seed).shuffle(partners)
    for user, item in enumerate(partners):
        co.learn(user, 0)
        co.learn(user, item)
    return co


@pytest.mark.parametrize("seed", range(3))
def test_heavy_pair_survives_when_neighbours_overflow(seed: int) -> None:
    """SpaceSaving keeps a pair heavier than total / n_neighbours, whatever the order."""
    co = _overflowing(seed)
    assert 1 in co.nbr[0].tolist()
    assert co.weight[0].sum() == pytest.approx(70.0)  # newcomers inherit evicted weight
    assert co.weight[0][co.nbr[0] == 1][0] >= 40.0
    assert 0 in co.nbr[1].tolist()


@pytest.mark.parametrize("seed", range(3))
def test_inherited_weight_does_not_outrank_a_heavy_pair(seed: int) -> None:
    """With the true weights, the documented score ranks item 1 first for a user who just
    rated item 0: 40 / (sqrt(71) * 40 ** 0.5) = 0.75 against at most
    1 / (sqrt(71) * 1 ** 0.5) = 0.12 for a one-off partner. Scores use SpaceSaving's
    guaranteed weight (weight minus inherited error), a lower bound of the true count, so
    a one-off partner that took the lightest slot cannot score above that by inheriting
    the evicted weight, and the heavy pair never scores above its true value."""
    co = _overflowing(seed)
    co.learn(199, 0)
    scores = co.item_scores(199)
    true_heavy = 40 / (math.sqrt(71) * math.sqrt(40))
    assert 0.5 * true_heavy < scores[1] <= true_heavy * (1 + 1e-5)
    one_off = 1 / math.sqrt(71)
    assert np.all(np.delete(scores, 1) <= one_off * (1 + 1e-5)), scores[scores > 0]
    assert int(np.argmax(scores)) == 1, scores[scores > 0]


@pytest.mark.parametrize("one_call", [True, False])
def test_many_newcomers_at_once_keep_the_heaviest_neighbours(one_call: bool) -> None:
    """Twenty light newcomers for a row of four neighbours, in one call (a large batch,
    or another worker's changes) or one at a time: either way SpaceSaving keeps the heavy
    pair, and newcomers replace only the light ones. (Filling the four lightest slots
    with the four heaviest newcomers in one call replaced the heavy pair.)"""
    co = CoOccurrence(window=2, n_neighbours=4)
    co.ensure(n_users=1, n_items=30)
    co.add_pairs(np.array([0, 0, 0, 0]), np.array([1, 2, 3, 4]), np.array([10, 0.1, 0.1, 0.1]))
    rows, others = np.zeros(20, np.int64), np.arange(5, 25)
    ws = np.linspace(0.04, 0.06, 20).astype(np.float32)
    if one_call:
        co.add_pairs(rows, others, ws)
    else:
        for n in range(20):
            co.add_pairs(rows[n : n + 1], others[n : n + 1], ws[n : n + 1])
    assert 1 in co.nbr[0].tolist()
    heavy = co.nbr[0].tolist().index(1)
    assert co.weight[0, heavy] - co.error[0, heavy] == pytest.approx(10.0)
    assert (co.nbr[0] >= 5).any()  # newcomers did come in, in the light slots
    assert co.weight[0].sum() <= 10.3 + ws.sum() + 1e-5


@pytest.mark.parametrize("seed", range(3))
def test_a_batch_of_distinct_users_learns_what_the_ordered_loop_learns(seed: int) -> None:
    """The array path (no user twice in a batch) adds the same pairs in the same order and
    leaves the same rings as the loop, to the bit, on small rings and neighbour lists
    that overflow (SpaceSaving evictions) and with re-rated items."""
    rng = np.random.default_rng(seed)
    fast, loop = CoOccurrence(window=4, n_neighbours=3), CoOccurrence(window=4, n_neighbours=3)
    for co in (fast, loop):
        co.ensure(n_users=30, n_items=25)
    for _ in range(60):
        users = rng.choice(30, size=int(rng.integers(2, 20)), replace=False).tolist()
        items = rng.integers(0, 25, size=len(users)).tolist()
        fast.learn_many(users, items)
        loop._learn_in_order(users, items)
    for name in ("recent", "nbr", "weight", "error", "count", "damping"):
        assert np.array_equal(getattr(fast, name), getattr(loop, name)), name
    assert (fast.nbr >= 0).sum() > 40  # (the lists filled up: evictions happened)


def test_scores_by_hand() -> None:
    co = CoOccurrence(window=3, n_neighbours=4, decay=0.5, beta=1.0, count_floor=1.0)
    co.ensure(n_users=2, n_items=3)
    co.learn(0, 0)
    co.learn(0, 1)  # pair (0, 1) gains 1
    co.learn(1, 2)
    # User 1's ring holds item 2 only; item 2 has no neighbours yet.
    assert np.all(co.item_scores(1) == 0.0)
    co.learn(1, 0)  # pair (2, 0) gains 1; ring of user 1 is [0, 2]
    # Score of item 1 for user 1: from ring item 0 (recency 1): w01 / (sqrt(n0) * n1)
    #   = 1 / (sqrt(2) * 1); item 2 is rated by user 1 but still scores via item 0.
    scores = co.item_scores(1)
    assert scores[1] == pytest.approx(1.0 / math.sqrt(2.0), rel=1e-6)
    # Item 2 from ring item 0: w02 / (sqrt(2) * n2 = 1) = 1 / sqrt(2).
    assert scores[2] == pytest.approx(1.0 / math.sqrt(2.0), rel=1e-6)
    # Item 0 from ring item 2 (recency 0.5): 0.5 * w20 / (sqrt(1) * n0 = 2) = 0.25.
    assert scores[0] == pytest.approx(0.25, rel=1e-6)
    np.testing.assert_allclose(co.item_scores_many(np.array([1]))[0], scores, rtol=1e-6)
    assert co.because_of(1, 1) == 0


@pytest.mark.parametrize("limit", [0, 1 << 30])
def test_ring_contributions_by_hand(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each ring place adds to each asked item, on both of its paths (one broadcast,
    or one item place at a time for large batches), equals a loop over every user, place,
    neighbour slot and item, including items asked twice and items no one neighbours."""
    monkeypatch.setattr(cooc_module, "_BROADCAST_LIMIT", limit)
    rng = np.random.default_rng(4)
    co = CoOccurrence(window=4, n_neighbours=5)
    co.ensure(n_users=12, n_items=30)
    for _ in range(400):
        co.learn(int(rng.integers(12)), int(rng.integers(30)))
    users = np.arange(12)
    items = rng.integers(0, 30, (12, 7))
    items[:, 1] = items[:, 0]
    got = co.ring_contributions(users, items)
    nbr, w = co.ring_weights(users)
    want = np.zeros(got.shape, np.float64)
    for b in range(12):
        for place in range(co.window):
            for slot in range(co.n_neighbours):
                for j in range(items.shape[1]):
                    if nbr[b, place, slot] == items[b, j]:
                        want[b, place, j] += w[b, place, slot]
    assert (want > 0).sum() > 20  # (the rings and neighbour lists are well filled)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_forget_item_removes_it_everywhere() -> None:
    co = CoOccurrence(window=3, n_neighbours=3)
    co.ensure(n_users=4, n_items=5)
    for user, items in enumerate([[0, 1, 2], [1, 3], [2, 1], [4, 0]]):
        for item in items:
            co.learn(user, item)
    assert (co.nbr == 1).any() and (co.recent == 1).any()
    co.forget_item(1)
    assert not (co.nbr[: co.n_items] == 1).any(), "still someone's neighbour"
    assert np.all(co.nbr[1] == -1) and np.all(co.weight[1] == 0.0), "kept its own neighbours"
    assert np.all(co.weight[co.nbr == -1] == 0.0)
    for user in range(4):
        assert co.item_scores(user)[1] == 0.0
        assert co.because_of(user, 1) is None
    assert not (co.recent[: co.n_users] == 1).any(), "still in a user's recent ring"


# ---------------------------------------------------------------------------- popularity


def _decayed_counts(pop: Popularity, now: float) -> np.ndarray:
    return np.expm1(pop.item_scores(now=now).astype(np.float64))


@pytest.mark.parametrize("half_life", [10.0, 7 * 86400.0])
def test_one_half_life_ago_counts_half(half_life: float) -> None:
    t0 = 1_700_000_000.0
    pop = Popularity(half_life=half_life)
    pop.ensure(3)
    pop.learn(np.array([0, 1]), np.array([t0, t0 + half_life]))
    counts = _decayed_counts(pop, now=t0 + half_life)
    np.testing.assert_allclose(counts, [0.5, 1.0, 0.0], rtol=1e-5)
    # Two ratings a half-life old weigh as much as one now; a rating two ago is a quarter.
    pop.learn(np.array([0]), np.array([t0]))
    counts = _decayed_counts(pop, now=t0 + 2 * half_life)
    np.testing.assert_allclose(counts, [0.5, 0.5, 0.0], rtol=1e-5)


def test_out_of_order_ratings_decay_by_their_own_time() -> None:
    pop = Popularity(half_life=10.0)
    pop.ensure(2)
    pop.learn(np.array([1]), np.array([100.0]))
    pop.learn(np.array([0]), np.array([90.0]))  # older than the first rating seen
    np.testing.assert_allclose(_decayed_counts(pop, now=100.0), [0.5, 1.0], rtol=1e-5)


def test_decay_is_exact_over_a_long_stream() -> None:
    """A year of one-day half-lives: log space never overflows nor loses the count."""
    day = 86400.0
    pop = Popularity(half_life=day)
    pop.ensure(2)
    pop.learn(np.array([0]), np.array([0.0]))
    pop.learn(np.array([1, 1]), np.array([365 * day, 364 * day]))
    np.testing.assert_allclose(_decayed_counts(pop, now=365 * day)[1], 1.5, rtol=1e-5)
    assert _decayed_counts(pop, now=365 * day)[0] == pytest.approx(0.0, abs=1e-12)


def test_counts_below_the_floor_damp_as_the_floor() -> None:
    """An item rated once or twice is damped as if rated ``count_floor`` times: its few
    pairs are thin evidence, and dividing by its own small count made it the most specific
    neighbour of all (docs/benchmarks.md, "Co-occurrence damping")."""
    co = CoOccurrence(window=3, n_neighbours=4, decay=0.5, beta=1.0, count_floor=4.0)
    co.ensure(n_users=8, n_items=3)
    co.learn(0, 0)
    co.learn(0, 1)  # pair (0, 1) gains 1; n0 = n1 = 1, both below the floor
    co.learn(1, 0)  # n0 = 2, ring of user 1 is [0]
    # Item 1 for user 1: w01 / (sqrt(max(n0, 4)) * max(n1, 4)) = 1 / (2 * 4).
    assert co.item_scores(1)[1] == pytest.approx(1.0 / 8.0, rel=1e-6)
    for u in range(2, 8):
        co.learn(u, 1)  # n1 = 7: above the floor, damped by its own count
    assert co.item_scores(1)[1] == pytest.approx(1.0 / (2.0 * 7.0), rel=1e-6)
    with pytest.raises(ValueError, match="count_floor"):
        CoOccurrence(count_floor=0.0)


def test_a_model_pickled_before_the_floor_damps_from_the_floor_after_loading() -> None:
    co = CoOccurrence(window=3, n_neighbours=4, beta=0.5, count_floor=1.0)
    co.ensure(n_users=1, n_items=2)
    co.learn(0, 0)
    state = co.__dict__.copy()
    del state["count_floor"]
    old = CoOccurrence.__new__(CoOccurrence)
    old.__setstate__(state)
    assert old.count_floor == COUNT_FLOOR == 2.0
    np.testing.assert_allclose(old.damping[:2], [2**-0.5, 2**-0.5])  # rated once or not


def _declaring_model(n_items: int) -> Recommender:
    """``n_items`` items, each with a tag of its own and a common one."""
    rec = Recommender(RecommenderConfig(seed=3))
    rec.upsert_items(
        [f"i{n}" for n in range(n_items)],
        [{f"tag{n}": 1.0, "common": 0.5} for n in range(n_items)],
    )
    return rec


def test_a_declared_tag_no_item_carries_matches_nothing_and_grows_nothing() -> None:
    # Its hashed column is shared with real tags: counted, it matched their items, under
    # a reason naming a tag the user never declared, and every declaration grew the tag
    # table for good. (200 tags: more than the 64 content columns.)
    rec = _declaring_model(200)
    n_tags, e_rows = rec.tags.n_tags, len(rec.mf.E)
    rec.upsert_user("ann", {"knitting": 1.0})
    assert rec.recommend("ann", 5) == rec.popular(5)
    rec.upsert_user("bob", {"knitting": 1.0, "tag8": 1.0})
    recs = rec.recommend("bob", 5)
    assert recs[0].item == "i8" and recs[0].reason == "matches your tags tag8"
    for n in range(300):
        rec.upsert_user(f"spam{n}", {f"made-up-{n}-{j}": 1.0 for j in range(8)})
    assert (rec.tags.n_tags, len(rec.mf.E)) == (n_tags, e_rows)


def test_a_declared_tag_counts_once_an_item_carries_it() -> None:
    # (Fewer tags than content columns: the new tag's column is its own.)
    rec = _declaring_model(40)
    rec.upsert_user("ann", {"knitting": 1.0})
    rec.upsert_user("cid", {"knitting": 1.0})
    rec.upsert_user("cid", {"tag3": 1.0})  # declared again: knitting withdrawn
    rec = pickle.loads(pickle.dumps(rec))  # (a snapshot keeps what waits)
    rec.upsert_item("yarn", {"knitting": 1.0})
    recs = rec.recommend("ann", 5)
    assert recs[0].item == "yarn" and recs[0].reason == "matches your tags knitting"
    assert "yarn" not in [r.item for r in rec.recommend("cid", 5)]
    rec.upsert_user("ann", {})  # withdrawn whole: popularity again, nothing left waiting
    assert rec.recommend("ann", 5) == rec.popular(5) and not rec._waiting


@pytest.mark.parametrize("signals", [("content",), HYBRID])
def test_past_content_dim_tags_matches_your_tags_names_only_tags_the_user_met(signals) -> None:
    """With more tags than content columns, a profile column holds several tags: a tag
    the user never met agreed through one they liked, and was named as theirs ("matches
    your tags t48" for a user who rated only t0 and t1). Named tags are those of items
    the user rated at or above their mean (among their last 50), or declared."""
    rng = np.random.default_rng(3)
    rec = Recommender(RecommenderConfig(signals=signals, content_dim=8))
    items = [f"i{j}" for j in range(120)]
    tags = [{f"t{int(t)}": 1.0 for t in rng.choice(60, 2, replace=False)} for _ in items]
    rec.upsert_items(items, tags)
    users = [f"u{j}" for j in range(30)]
    t = 0.0
    for user in users:
        for item in rng.choice(120, 6, replace=False):
            rec.learn_rating(user, items[item], float(rng.choice([1.0, 2.0, 5.0])), t := t + 1)
    rec.upsert_user("u0", {"t59": 1.0})
    named = 0
    for user, recs in zip(users, rec.recommend_many(users, 10), strict=True):
        row = rec.users.get(user)
        mean = rec._user_means(np.array([row]))[0]
        met = {"t59"} if user == "u0" else set()
        for item, rating in zip(rec.history[row], rec.history_ratings[row], strict=True):
            if rating >= mean:
                met |= set(rec.tags.names(item))
        for r in recs:
            if r.reason.startswith("matches your tags "):
                shown = set(r.reason.removeprefix("matches your tags ").split(", "))
                assert shown <= met, (user, r, met)
                named += 1
    assert named > 0


@pytest.mark.parametrize("declared_first", [False, True])
def test_past_content_dim_tags_a_declared_tag_counts_as_met(declared_first: bool) -> None:
    """A cold user who declared t3 is told "matches your tags t3" for the item carrying
    it, past 64 tags as below (the declarations kept only those waiting for a tag)."""
    items = [f"i{t}" for t in range(100)]
    rec = Recommender()
    if declared_first:
        rec.upsert_user("cat", {"t3": 1.0})
    rec.upsert_items(items, [{f"t{t}": 1.0} for t in range(100)])
    if not declared_first:
        rec.upsert_user("cat", {"t3": 1.0})
    [listed] = [r for r in rec.recommend("cat", 3) if r.item == "i3"]
    assert (listed.source, listed.reason) == ("content", "matches your tags t3")


def test_a_user_seeded_by_declared_tags_is_told_so_not_popular_now() -> None:
    """A user who rated nothing and declared tag00: the list holds tag00's items (the
    tags set it apart from the popular list), each said to match tag00. Popular items'
    lift outweighed the tags' everywhere, and the whole list read "popular now"."""
    rec = Recommender()
    rec.upsert_items([f"i{j}" for j in range(50)], [{f"tag{j % 5:02d}": 1.0} for j in range(50)])
    users = [f"u{n}" for n in range(200)]
    rec.learn_many(users, [f"i{(n * 7) % 50}" for n in range(200)], [4.0] * 200, list(range(200)))
    rec.upsert_user("newbie", {"tag00": 1.0})
    listed = rec.recommend("newbie", 5)
    assert {int(r.item[1:]) % 5 for r in listed} == {0}
    assert [(r.source, r.reason) for r in listed] == [("content", "matches your tags tag00")] * 5
    # (a user with ratings is told as before)
    assert {r.reason for r in rec.recommend("u3", 5)} == {"popular now"}
