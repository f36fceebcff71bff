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
        assert len(a._own.pairs) <= 200  # summed: at most the distinct pairs + one step
        assert a._own._n_pairs <= len(ITEMS) * (len(ITEMS) - 1) + 20
        monkeypatch.undo()
        b.learn_many([user], [item], [rating], [t])
    assert len(b._own.pairs) > 100  # the control: not summed under the default limit
    got, want = a.take_item_changes(), b.take_item_changes()
    assert len(got.pair_w) == len(want.pair_w)
    assert got.pair_w.sum() == pytest.approx(want.pair_w.sum(), rel=1e-5)
