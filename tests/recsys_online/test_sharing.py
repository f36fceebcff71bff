"""Several models learning one catalog from different users, exchanging item changes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from recsys_online.recommender import Recommender
from recsys_online.sharing import ItemChanges

ITEMS = [f"i{j}" for j in range(40)]
TAGS = [{f"t{j % 6}": 1.0, f"g{j % 4}": 0.5} for j in range(40)]


def stream(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for step in range(n):
        user = f"u{rng.integers(24)}"
        yield user, ITEMS[rng.integers(len(ITEMS))], float(rng.integers(1, 6)), 1.7e9 + 60 * step


def models(n: int) -> list[Recommender]:
    out = []
    for _ in range(n):
        m = Recommender()
        m.upsert_items(ITEMS, TAGS)
        out.append(m)
    return out


def exchange(a: Recommender, b: Recommender) -> tuple[int, int]:
    ca, cb = a.take_item_changes(), b.take_item_changes()
    return b.apply_item_changes(ca), a.apply_item_changes(cb)


def owner(user: str) -> int:
    return int(user[1:]) % 2


def test_two_models_exchanging_after_each_rating_count_as_one() -> None:
    """Co-occurrence weights and popularity are sums over ratings: two models that each
    learn half the users and exchange after every rating hold exactly what one model
    learning every rating holds (neighbours, weights, popularity). Item rating counts stay
    each model's own."""
    one, a, b = models(3)
    a.track_item_changes()
    b.track_item_changes()
    for user, item, rating, t in stream(600):
        one.learn_many([user], [item], [rating], [t])
        (a, b)[owner(user)].learn_many([user], [item], [rating], [t])
        exchange(a, b)
    for m in (a, b):
        assert m.cooc.count.sum() < one.cooc.count.sum()  # (its own users' ratings only)
        np.testing.assert_allclose(m.popularity.log_mass, one.popularity.log_mass, rtol=1e-12)
        for row in range(len(ITEMS)):
            theirs = dict(
                zip(one.cooc.nbr[row].tolist(), one.cooc.weight[row].tolist(), strict=True)
            )
            ours = dict(zip(m.cooc.nbr[row].tolist(), m.cooc.weight[row].tolist(), strict=True))
            assert ours.keys() == theirs.keys()
            assert ours == pytest.approx(theirs, rel=1e-5)
        assert [r.item for r in m.popular(5)] == [r.item for r in one.popular(5)]


def test_without_the_exchange_each_model_sees_only_its_own_users() -> None:
    """The control for the test above: the same split without exchanging differs."""
    one, a, b = models(3)
    for user, item, rating, t in stream(600):
        one.learn_many([user], [item], [rating], [t])
        (a, b)[owner(user)].learn_many([user], [item], [rating], [t])
    assert not np.allclose(a.cooc.weight, one.cooc.weight)
    assert not np.allclose(a.popularity.log_mass, one.popularity.log_mass)


def test_item_and_tag_vectors_move_by_the_other_models_learning() -> None:
    """What one model's SGD changed in item vectors, item biases, tag embeddings and tag
    biases is added to the other's, and is not sent back as the receiver's own."""
    a, b = models(2)
    a.track_item_changes()
    b.track_item_changes()
    before_v, before_e = b.mf.V[:40].copy(), b.mf.E.copy()
    a_v, a_e = a.mf.V[:40].copy(), a.mf.E.copy()
    for user, item, rating, t in stream(200):
        a.learn_many([user], [item], [rating], [t])
    changes = a.take_item_changes()
    assert len(changes.items) and len(changes.tags)
    b.apply_item_changes(changes)
    np.testing.assert_allclose(b.mf.V[:40] - before_v, a.mf.V[:40] - a_v, atol=1e-6)
    np.testing.assert_allclose(b.mf.E - before_e, a.mf.E - a_e, atol=1e-6)
    np.testing.assert_array_equal(b.w_warm, models(1)[0].w_warm)  # the blend: not shared
    assert len(b.take_item_changes()) == 0  # nothing of its own
    assert len(a.take_item_changes()) == 0  # taken: starts afresh


def test_own_changes_exclude_what_arrived_from_elsewhere() -> None:
    """A model that both learns and receives sends only its own learning's change."""
    a, b = models(2)
    a.track_item_changes()
    b.track_item_changes()
    v_before = b.mf.V[0].copy()
    b.learn_many(["u1"], ["i0"], [5.0], [1.7e9])  # b keeps i0's vector from before
    a.learn_many(["u2"], ["i0"], [1.0], [1.7e9])
    from_a = a.take_item_changes()
    b.apply_item_changes(from_a)
    own = b.take_item_changes()
    at = own.items.index("i0")
    expected = b.mf.V[0] - v_before - from_a.dv[from_a.items.index("i0")]
    np.testing.assert_allclose(own.dv[at], expected, atol=1e-6)
    assert own.rated == ["i0"]


def test_ratings_learned_again_are_not_among_the_changes_taken() -> None:
    """History learned again (a worker's replay of ratings the others had when they were
    live) is learned without being shared: interleaved with live learning of the same
    items and tags, the take holds exactly the live learning's change, its items and its
    pairs."""
    (a,) = models(1)
    a.track_item_changes()
    history = list(stream(60, seed=3))
    v0, e0 = a.mf.V[:2].copy(), a.mf.E.copy()
    a.learn_many(["u1", "u1"], ["i0", "i1"], [5.0, 4.0], [1.7e9, 1.7e9 + 1])  # live
    live_v, live_e = a.mf.V[:2] - v0, a.mf.E - e0
    users, items, ratings, times = (list(x) for x in zip(*history, strict=True))
    a.learn_many(users, items, ratings, times, shared=False)  # learned again
    a.learn_many(["u9"], ["i0"], [2.0], [1.7e9 + 9], shared=False)
    taken = a.take_item_changes()
    assert sorted(taken.items) == ["i0", "i1"] and sorted(taken.rated) == ["i0", "i1"]
    for n, item in enumerate(("i0", "i1")):
        np.testing.assert_allclose(taken.dv[taken.items.index(item)], live_v[n], atol=1e-6)
    for n, tag in enumerate(taken.tags):
        row = a.tags.index.get(tag)
        np.testing.assert_allclose(taken.de[n], live_e[row], atol=1e-6)
    assert len(taken.pair_w) == 2 and taken.pair_w.sum() > 0  # the pair (i0, i1) alone


def test_pending_pairs_past_the_limit_are_not_summed_again_at_every_call(monkeypatch) -> None:
    """More distinct pairs pending than the limit: they are summed again only once their
    count doubles, not at every learning call (which sorted them all each time)."""
    import recsys_online.sharing as sharing

    monkeypatch.setattr(sharing, "_PAIRS_PENDING", 50)
    sums = []
    summed = sharing._summed_pairs
    monkeypatch.setattr(sharing, "_summed_pairs", lambda p: sums.append(1) or summed(p))
    (a,) = models(1)
    a.track_item_changes()
    for user, item, rating, t in stream(1500, seed=8):
        a.learn_many([user], [item], [rating], [t])
    assert a._own._distinct_pairs > 300  # far past the limit
    assert 2 <= len(sums) <= 40


def test_unknown_and_deleted_items_are_skipped() -> None:
    a, b = models(2)
    a.track_item_changes()
    a.upsert_item("new", {"t1": 1.0})  # only a knows it
    rated = [("u1", "new"), ("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2"), ("u3", "i3")]
    for user, item in [*rated, ("u3", "i1")]:
        a.learn_many([user], [item], [5.0], [1.7e9])
    b.delete_item("i2")
    changes = a.take_item_changes()
    counts_before, weights_before = b.cooc.count.copy(), b.cooc.weight.copy()
    mass_before = b.popularity.log_mass.copy()
    b.apply_item_changes(changes)
    row_i2 = b.items.get("i2")
    assert b.items.get("new") is None
    assert b.cooc.count[row_i2] == counts_before[row_i2]
    np.testing.assert_array_equal(b.cooc.count, counts_before)  # counts: not shared
    assert b.popularity.log_mass[b.items.get("i1")] > mass_before[b.items.get("i1")]
    assert b.popularity.log_mass[row_i2] > mass_before[row_i2]  # (a deleted item: harmless)
    assert not (b.cooc.nbr == row_i2).any()
    # Of i1's pairs, only the one with i3 is known and live on b.
    assert b.cooc.nbr[b.items.get("i1")][b.cooc.weight[b.items.get("i1")] > 0].tolist() == [
        b.items.get("i3")
    ]
    assert (b.cooc.weight != weights_before).sum() == 2


def test_changes_pending_across_a_compaction_name_the_right_items() -> None:
    """Rows pending between two takes are renumbered when deleted rows are freed."""
    (a,) = models(1)
    a.track_item_changes()
    for user, item, rating, t in stream(300, seed=3):
        a.learn_many([user], [item], [rating], [t])
    reference = pickle.loads(pickle.dumps(a))
    reference.delete_item("i0")
    a.delete_item("i0")
    assert a.compact() == 1
    moved, kept = a.take_item_changes(), reference.take_item_changes()
    assert sorted(moved.items) == sorted(x for x in kept.items if x != "i0")
    assert sorted(moved.rated) == sorted(x for x in kept.rated if x != "i0")
    pairs = {
        (moved.pair_items[x], moved.pair_items[y]): w
        for x, y, w in zip(moved.pair_a, moved.pair_b, moved.pair_w, strict=True)
    }
    expected = {
        (kept.pair_items[x], kept.pair_items[y]): w
        for x, y, w in zip(kept.pair_a, kept.pair_b, kept.pair_w, strict=True)
        if "i0" not in (kept.pair_items[x], kept.pair_items[y])
    }
    assert pairs == pytest.approx(expected)


def test_a_model_that_does_not_track_has_nothing_to_take() -> None:
    (a,) = models(1)
    a.learn_many(["u1"], ["i1"], [4.0], [1.0])
    changes = a.take_item_changes()
    assert isinstance(changes, ItemChanges) and len(changes) == 0
    assert changes.dv.shape == (0, a.mf.V.shape[1])


def test_long_replays_keep_pending_pairs_summed(monkeypatch) -> None:
    """Pairs pending between two takes are summed per pair once they pile up, so their
    memory follows the distinct pairs, not the ratings; the sums stay the same."""
    import recsys_online.sharing as sharing

    a, b = models(2)
    a.track_item_changes()
    b.track_item_changes()
    for user, item, rating, t in stream(800, seed=5):
        monkeypatch.setattr(sharing, "_PAIRS_PENDING", 200)
        a.learn_many([user], [item], [rating], [t])
        assert len(a._own.pairs) <= 200  # summed: at most twice the distinct pairs + one step
        assert a._own._n_pairs <= 2 * len(ITEMS) * (len(ITEMS) - 1) + 20
        monkeypatch.undo()
        b.learn_many([user], [item], [rating], [t])
    assert len(b._own.pairs) > 100  # the control: not summed under the default limit
    got, want = a.take_item_changes(), b.take_item_changes()
    assert len(got.pair_w) == len(want.pair_w)
    assert got.pair_w.sum() == pytest.approx(want.pair_w.sum(), rel=1e-5)


def test_a_model_receiving_ratings_of_a_later_day_scores_popularity_at_that_day() -> None:
    """Popularity taken from another model's changes is read at the latest time either
    model saw: the receiver read it a day behind, and inflated it (1.166 against 1.0986)."""
    a, b = Recommender(), Recommender()
    for m in (a, b):
        m.upsert_items(["x", "y", "z"], [{"jazz": 1.0}, {"rock": 1.0}, {"jazz": 1.0}], [1.7e9] * 3)
        m.track_item_changes()
    t = 1.7e9 + 86400.0
    a.learn_many(["u1", "u2", "u3"], ["x", "x", "y"], [5.0, 4.0, 5.0], [t, t, t])
    b.apply_item_changes(a.take_item_changes())
    assert b.now == a.now == t
    assert [r.item for r in b.popular(3)] == [r.item for r in a.popular(3)]
    assert [r.score for r in b.popular(3)] == pytest.approx([r.score for r in a.popular(3)])


def test_tag_changes_from_elsewhere_reach_the_vectors_ranking_reads() -> None:
    """Ranking reads each item's stacked vector (its own plus its tags'). Another
    model's tag changes must restack the items carrying those tags at once: restacking
    waited for this model's own next full refresh, which others' learning never brings
    (the ranked vectors were then up to 0.6 off the model's, on 50 items)."""
    items = [f"i{j}" for j in range(50)]
    a, b = Recommender(), Recommender()
    for m in (a, b):
        m.upsert_items(items, [{f"t{j % 5}": 1.0} for j in range(50)])
        m.track_item_changes()
    rng = np.random.default_rng(0)
    b.learn_many(["ub"], ["i0"], [4.0], [1.7e9])
    b.recommend("ub")  # (its stacked vectors in use)
    for step in range(1500):
        user, item = f"u{rng.integers(40)}", items[rng.integers(50)]
        a.learn_many([user], [item], [float(rng.integers(1, 6))], [1.7e9 + step])
    changes = a.take_item_changes()
    b.apply_item_changes(changes)
    assert b.mf.full_refreshes == 0  # (none of its own)
    q = b.mf.items(np.arange(50))[0]
    np.testing.assert_allclose(b.vectors.Q[:50], q, atol=1e-5)
