"""Tests for recsys_online.factors: exact SGD steps, learning, tag cold start, growth."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from recsys_online.factors import FactorModel, FactorParams, ItemVectors
from recsys_online.recommender import Recommender, RecommenderConfig
from recsys_online.tags import ItemTags

STATE = ("user_bias", "item_bias", "tag_bias", "P", "V", "E")


def _assert_same_state(a: FactorModel, b: FactorModel) -> None:
    assert a.n_ratings == b.n_ratings
    assert a.mu == pytest.approx(b.mu, rel=1e-6)
    for name in STATE:
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6, err_msg=name
        )
    assert a._acc.keys() == b._acc.keys()
    for name, acc in a._acc.items():  # AdaGrad's squared-gradient sums
        n = min(len(acc), len(b._acc[name]))
        np.testing.assert_allclose(acc[:n], b._acc[name][:n], rtol=1e-5, atol=1e-7, err_msg=name)


def _warm_model(adaptive: bool = False) -> FactorModel:
    """A small model with tagged and untagged items that has already learned a little."""
    tags = ItemTags()
    tags.set(0, {"a": 1.0, "b": 3.0})
    tags.set(1, {})
    tags.set(2, {"b": 1.0})
    tags.set(3, {"a": 2.0, "c": 1.0, "d": 1.0})
    m = FactorModel(FactorParams(n_factors=4, seed=3, adaptive=adaptive), tags)
    m.ensure(n_users=3, n_items=4)
    rng = np.random.default_rng(0)
    for _ in range(30):
        m.learn(rng.integers(0, 3, 4), rng.integers(0, 4, 4), rng.uniform(1, 5, 4))
    return m


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize(("u", "i", "r"), [(1, 0, 5.0), (2, 1, 1.0), (0, 3, 4.5), (0, 2, 9.0)])
def test_single_event_and_batch_paths_take_the_same_step(
    u: int, i: int, r: float, adaptive: bool
) -> None:
    m = _warm_model(adaptive)
    one, batch = copy.deepcopy(m), copy.deepcopy(m)
    p_one = one._learn_one(u, i, r)
    p_batch = batch._learn_batch(np.array([u]), np.array([i]), np.array([r]))
    assert p_one == pytest.approx(float(p_batch[0]), rel=1e-6)
    _assert_same_state(one, batch)
    # The step did change the model (the comparison above is not of two untouched copies).
    assert not np.allclose(one.P[u], m.P[u]) and one.n_ratings == m.n_ratings + 1
    assert bool(one._acc) == adaptive  # AdaGrad state exists exactly when it is used


@pytest.mark.parametrize("adaptive", [False, True])
def test_learn_of_one_event_equals_the_batch_step(adaptive: bool) -> None:
    m = _warm_model(adaptive)
    via_learn, via_batch = copy.deepcopy(m), copy.deepcopy(m)
    via_learn.learn(np.array([1]), np.array([3]), np.array([2.0]))
    via_batch._learn_batch(np.array([1]), np.array([3]), np.array([2.0]))
    _assert_same_state(via_learn, via_batch)


def _reference_batch_step(m: FactorModel, users, items, ratings) -> None:
    """The batch step written the plain way: one gradient per entry, scattered with
    ``np.add.at`` (AdaGrad's row-wise scale read after all squares were added; plain
    SGD's gradients of a row met n times each weighing 1/n)."""
    p = m.params
    pred = m.raw(users, items)
    m.n_ratings += len(ratings)
    m.mu += float((ratings - m.mu).sum()) / m.n_ratings
    err = np.clip(ratings - pred, -p.clip_error, p.clip_error).astype(np.float32)
    pu, qi = m.P[users].copy(), m.items(items)[0]
    t, s = m.tags.rows[items], m.tags.shares_of(items)
    has = s > 0
    es = (err[:, None] * s)[has]
    tag_rows = t[has]
    grads = [
        ("user_bias", users, err - p.l2_bias * m.user_bias[users], p.lr_bias),
        ("item_bias", items, err - p.l2_bias * m.item_bias[items], p.lr_bias),
        ("tag_bias", tag_rows, es - p.l2_bias * m.tag_bias[tag_rows], p.lr_bias),
        ("P", users, err[:, None] * qi - p.l2_factor * pu, p.lr_factor),
        ("V", items, err[:, None] * pu - p.l2_factor * m.V[items], p.lr_factor),
        (
            "E",
            tag_rows,
            es[:, None] * pu[np.nonzero(has)[0]] - p.l2_factor * m.E[tag_rows],
            p.lr_factor,
        ),
    ]
    for name, rows, grad, lr in grads:
        param = getattr(m, name)
        if p.adaptive:
            acc = m._accumulator(name, param)
            sq = (grad * grad).mean(axis=-1) if param.ndim == 2 else grad * grad
            np.add.at(acc, rows, sq)
            scale = 1.0 / np.sqrt(acc[rows] + 1e-8)
            grad = grad * (scale[:, None] if param.ndim == 2 else scale)
        else:
            share = 1.0 / np.bincount(rows, minlength=len(param))[rows]
            grad = grad * (share[:, None] if param.ndim == 2 else share)
        np.add.at(param, rows, (lr * grad).astype(np.float32))
    m._count(len(ratings))


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("many_tags", [False, True])
def test_batch_step_sums_the_gradients_of_repeated_rows(adaptive: bool, many_tags: bool) -> None:
    # Users, items and tags repeat within the batch: the fast step (sorted sums, tag
    # gradients by matrix product) must equal scattering every entry's gradient.
    m = _warm_model(adaptive)
    if many_tags:  # a tag vocabulary far larger than the batch: the sort-based path
        for j in range(5000):
            m.tags.index.row(f"extra{j}")
        m.ensure(n_items=4)
    rng = np.random.default_rng(5)
    users, items = rng.integers(0, 3, 40), rng.integers(0, 4, 40)
    ratings = rng.uniform(1, 5, 40).astype(np.float32)
    fast, reference = copy.deepcopy(m), copy.deepcopy(m)
    fast._learn_batch(users, items, ratings)
    _reference_batch_step(reference, users, items, ratings)
    _assert_same_state(fast, reference)
    assert not np.allclose(fast.E, m.E[: len(fast.E)])


def _planted(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rank-2 rating matrix (80 x 60) and a 80/20 split of its cells."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(80, 2)), rng.normal(size=(60, 2))
    ratings = np.clip(3.0 + 0.8 * (u @ v.T) / np.sqrt(2.0), 1.0, 5.0)
    cells = rng.permutation(ratings.size)
    return ratings, cells[ratings.size // 5 :], cells[: ratings.size // 5]


def _fit(params: FactorParams, seed: int, epochs: int = 15) -> tuple[float, float]:
    """Held-out RMSE of the model and of the global training mean on a planted matrix."""
    ratings, train, test = _planted(seed)
    n_items = ratings.shape[1]
    flat = ratings.ravel()
    m = FactorModel(params)
    m.ensure(n_users=ratings.shape[0], n_items=n_items)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(train)
        for start in range(0, len(order), 32):
            cells = order[start : start + 32]
            m.learn(cells // n_items, cells % n_items, flat[cells])
    pred = m.predict(test // n_items, test % n_items)
    rmse = float(np.sqrt(np.mean((pred - flat[test]) ** 2)))
    baseline = float(np.sqrt(np.mean((flat[train].mean() - flat[test]) ** 2)))
    return rmse, baseline


@pytest.mark.parametrize("seed", [0, 1])
def test_plain_sgd_learns_a_planted_low_rank_matrix(seed: int) -> None:
    params = FactorParams(n_factors=8, seed=seed, adaptive=False, lr_bias=0.02, lr_factor=0.02)
    rmse, baseline = _fit(params, seed)
    assert baseline > 0.5  # the planted structure is far from the global mean
    assert rmse < 0.3 * baseline


@pytest.mark.parametrize("adaptive", [False, True])
def test_a_batch_meeting_a_row_many_times_stays_bounded(adaptive: bool) -> None:
    """Plain SGD added up a row's gradients: an item rated 3,000 times in a batch moved
    3,000 steps from one stale state, and the factors diverged (|V| 8e9 in 8 batches).
    A row met n times moves by the mean of its gradients; AdaGrad's squares bound it."""
    m = FactorModel(FactorParams(adaptive=adaptive))
    m.ensure(n_users=3000, n_items=1)
    for _ in range(8):
        m.learn(np.arange(3000), np.zeros(3000, np.int64), np.full(3000, 3.0))
    assert np.abs(m.V[0]).max() < 2.0 and np.abs(m.P).max() < 2.0
    assert m.raw(np.arange(5), np.zeros(5, np.int64)) == pytest.approx(3.0, abs=0.3)


@pytest.mark.parametrize("seed", [0, 1])
def test_adagrad_learns_a_planted_low_rank_matrix(seed: int) -> None:
    params = FactorParams(n_factors=8, seed=seed, adaptive=True, lr_bias=0.1, lr_factor=0.1)
    rmse, baseline = _fit(params, seed)
    assert rmse < 0.3 * baseline


def test_default_params_learn_a_planted_low_rank_matrix() -> None:
    rmse, baseline = _fit(FactorParams(n_factors=8, seed=2), seed=2)
    assert rmse < 0.3 * baseline


def _two_camps(model_tags: ItemTags, params: FactorParams) -> FactorModel:
    """Users 0-19 love items tagged "a" (rows 0-9), users 20-39 those tagged "b" (10-19)."""
    for j in range(10):
        model_tags.set(j, {"a": 1.0})
        model_tags.set(10 + j, {"b": 1.0})
    m = FactorModel(params, model_tags)
    m.ensure(n_users=40, n_items=20)
    users, items = np.repeat(np.arange(40), 20), np.tile(np.arange(20), 40)
    ratings = np.where((users < 20) == (items < 10), 5.0, 1.0)
    rng = np.random.default_rng(params.seed)
    for _ in range(10):
        order = rng.permutation(len(users))
        for start in range(0, len(order), 32):
            b = order[start : start + 32]
            m.learn(users[b], items[b], ratings[b])
    return m


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_new_item_is_scored_from_its_tags(seed: int, adaptive: bool) -> None:
    tags = ItemTags()
    params = FactorParams(n_factors=8, seed=seed, adaptive=adaptive, lr_bias=0.1, lr_factor=0.1)
    m = _two_camps(tags, params)
    n_before = m.n_ratings
    new = 20
    tags.set(new, {"a": 1.0})
    m.set_item_tags(new)
    camp_a = m.predict(np.arange(20), np.full(20, new))
    camp_b = m.predict(np.arange(20, 40), np.full(20, new))
    assert m.n_ratings == n_before  # scored with no rating of the new item
    assert camp_a.min() > camp_b.max()
    assert camp_a.mean() - camp_b.mean() > 1.0
    # Control: a new item without tags gives neither camp a clear preference.
    tags.set(new + 1, {})
    m.set_item_tags(new + 1)
    plain_a = m.predict(np.arange(20), np.full(20, new + 1)).mean()
    plain_b = m.predict(np.arange(20, 40), np.full(20, new + 1)).mean()
    assert abs(plain_a - plain_b) < 0.5


def test_recommender_scores_a_new_item_from_its_tags() -> None:
    config = RecommenderConfig(signals=("mf",), factors=FactorParams(n_factors=8, seed=0))
    rec = Recommender(config)
    for j in range(10):
        rec.upsert_item(f"a{j}", {"a": 1.0})
        rec.upsert_item(f"b{j}", {"b": 1.0})
    rng = np.random.default_rng(0)
    pairs = [(f"u{u}", f"{c}{j}") for u in range(40) for c in "ab" for j in range(10)]
    t = 0.0
    for _ in range(5):
        for n in rng.permutation(len(pairs)).tolist():
            user, item = pairs[n]
            likes = (int(user[1:]) < 20) == item.startswith("a")
            t += 1.0
            rec.learn_rating(user, item, 5.0 if likes else 1.0, t)
    rec.upsert_item("fresh", {"a": 1.0})
    camp_a = rec.predict_many([f"u{u}" for u in range(20)], ["fresh"] * 20)
    camp_b = rec.predict_many([f"u{u}" for u in range(20, 40)], ["fresh"] * 20)
    assert camp_a.min() > camp_b.max()


def test_growth_keeps_learned_rows_and_initialises_new_ones() -> None:
    for adaptive in (False, True):
        m = _warm_model(adaptive=adaptive)
        before = {name: getattr(m, name)[: len(getattr(m, name))].copy() for name in STATE}
        sizes = {"user_bias": 3, "P": 3, "item_bias": 4, "V": 4}
        sizes |= {"tag_bias": m.tags.n_tags, "E": m.tags.n_tags}
        m.tags.set(50, {"brand-new-tag": 1.0})
        m.ensure(n_users=300, n_items=51)
        m.set_item_tags(50)
        for name, n in sizes.items():
            np.testing.assert_array_equal(getattr(m, name)[:n], before[name][:n], err_msg=name)
        assert m.n_users == 300 and m.n_items == 51
        assert len(m.P) >= 300 and len(m.V) >= 51 and len(m.E) >= m.tags.n_tags
        new_p = m.P[3:300]
        assert np.all(np.isfinite(new_p)) and 0.05 < new_p.std() < 0.2  # init_std = 0.1
        # The grown model keeps learning, new rows included (AdaGrad state grows too).
        m.learn(np.array([299, 0]), np.array([50, 1]), np.array([5.0, 1.0]))
        assert np.all(np.isfinite(m.P[:300])) and np.all(np.isfinite(m.items(np.arange(51))[0]))


def test_item_vectors_are_computed_from_the_parameters_at_once() -> None:
    """The model keeps no copy of the item vectors: what a tag learned from one item's
    rating moves the prediction of every item with that tag at once."""
    m = _warm_model(adaptive=True)
    q, b = m.items(np.arange(4))
    shares, t = m.tags.shares_of(np.arange(4)), m.tags.rows[:4]
    np.testing.assert_allclose(q, m.V[:4] + np.einsum("nw,nwk->nk", shares, m.E[t]), atol=1e-6)
    np.testing.assert_allclose(b, m.item_bias[:4] + np.einsum("nw,nw->n", shares, m.tag_bias[t]))
    before = m.predict(np.array([0]), np.array([2]))  # item 2 carries tag "b", as item 0
    m.learn(np.array([1, 2]), np.array([0, 0]), np.array([5.0, 5.0]))
    assert m.predict(np.array([0]), np.array([2])) != before
    assert not any(hasattr(m, name) for name in ("Q", "item_bias_eff", "Q_norm"))


def test_stacked_item_vectors_follow_updates_and_full_refreshes() -> None:
    m = _warm_model(adaptive=True)
    m.refresh_every = 10**9
    vectors = ItemVectors(m)
    assert vectors.behind()
    vectors.update(np.zeros(0, np.int64))  # first use: every row
    assert not vectors.behind()
    np.testing.assert_allclose(vectors.Q[:4], m.items(np.arange(4))[0], atol=1e-6)
    m.learn(np.array([1, 2]), np.array([0, 0]), np.array([5.0, 5.0]))
    vectors.update(np.array([0]))  # the row learned is exact; item 2 waits for a refresh
    np.testing.assert_allclose(vectors.Q[0], m.items(np.array([0]))[0][0], atol=1e-6)
    assert not np.allclose(vectors.Q[2], m.items(np.array([2]))[0][0])
    m.full_refreshes += 1
    assert vectors.behind()
    vectors.update(np.zeros(0, np.int64))
    q = m.items(np.arange(4))[0]
    np.testing.assert_allclose(vectors.Q[:4], q, atol=1e-6)
    np.testing.assert_allclose(vectors.norm[:4], np.linalg.norm(q, axis=1), rtol=1e-5)
    m.ensure(n_items=6)  # new rows: written at the next update, whatever rows it names
    vectors.update(np.array([1]))
    np.testing.assert_allclose(vectors.Q[4:6], m.items(np.arange(4, 6))[0], atol=1e-6)


def test_a_model_pickled_with_its_cached_vectors_still_loads() -> None:
    """Snapshots written when the model kept ``Q``, ``item_bias_eff``, ``Q_norm`` and
    the tags their ``shares``."""
    m = _warm_model(adaptive=True)
    state = dict(m.__dict__)
    tags_state = dict(m.tags.__dict__, shares=m.tags.shares_of(np.arange(len(m.tags.rows))))
    state["Q"], state["item_bias_eff"], state["Q_norm"] = m.V.copy(), m.item_bias, m.item_bias
    old = FactorModel.__new__(FactorModel)
    old_tags = ItemTags.__new__(ItemTags)
    old_tags.__setstate__(tags_state)
    old.__setstate__({**state, "tags": old_tags})
    assert not hasattr(old, "Q") and not hasattr(old_tags, "shares")
    users, items = np.array([0, 1, 2]), np.array([0, 1, 3])
    np.testing.assert_allclose(old.predict(users, items), m.predict(users, items))


def test_a_recommender_pickled_without_stacked_vectors_rebuilds_them() -> None:
    import pickle

    rec = Recommender(RecommenderConfig(factors=FactorParams(n_factors=8, seed=0)))
    for j in range(30):
        rec.upsert_item(f"i{j}", {f"t{j % 4}": 1.0})
    rng = np.random.default_rng(0)
    for n in range(300):
        rec.learn_rating(f"u{n % 20}", f"i{rng.integers(0, 30)}", float(rng.integers(1, 6)), n)
    want = [[r.item for r in recs] for recs in rec.recommend_many(["u1", "u2"], 5)]
    again = pickle.loads(pickle.dumps(rec))  # (stale rows and all: ranks the same)
    assert [[r.item for r in recs] for recs in again.recommend_many(["u1", "u2"], 5)] == want
    state = dict(again.__dict__)
    del state["vectors"]  # as pickled when the model kept the vectors
    older = Recommender.__new__(Recommender)
    older.__setstate__(state)
    assert older.vectors.behind()
    lists = older.recommend_many(["u1", "u2"], 5)
    assert not older.vectors.behind() and [len(x) for x in lists] == [5, 5]
    np.testing.assert_allclose(older.vectors.Q[:30], older.mf.items(np.arange(30))[0], atol=1e-6)


def test_the_remembered_items_answer_is_forgotten_on_every_change() -> None:
    """items() remembers its last answer for a predict-then-learn pair; any write to the
    parameters or the tags must make it compute again."""
    m = _warm_model(adaptive=True)
    rows = np.array([0, 2, 3])

    def fresh() -> np.ndarray:
        t, s = m.tags.rows[rows], m.tags.shares_of(rows)
        return m.V[rows] + np.einsum("nw,nwk->nk", s, m.E[t])

    first = m.items(rows)[0]
    assert m.items(rows.copy())[0] is first and not first.flags.writeable
    m.learn(np.array([0, 1]), np.array([0, 3]), np.array([5.0, 1.0]))  # a step
    np.testing.assert_allclose(m.items(rows)[0], fresh(), atol=1e-6)
    m.add_to_items(np.array([2, 2]), np.ones((2, 4), np.float32), np.ones(2, np.float32))
    np.testing.assert_allclose(m.items(rows)[0], fresh(), atol=1e-6)
    m.tags.set(3, {"a": 1.0})  # new tags (an existing tag: no new embedding)
    np.testing.assert_allclose(m.items(rows)[0], fresh(), atol=1e-6)
    m._learn_one(1, 2, 4.0)
    np.testing.assert_allclose(m.items(rows)[0], fresh(), atol=1e-6)
    remembered = m._memo
    m.items(np.zeros(5000, np.int64))  # a catalog-sized answer is not kept
    assert m._memo is remembered
    m.ensure(n_users=m.n_users + 5)  # new users: the item vectors stand
    assert m.items(rows)[0] is remembered[2]
    spare = np.array([m.n_items])  # a row of spare capacity, read before its item exists
    assert m.n_items < len(m.V)
    m.items(spare)
    m.ensure(n_items=m.n_items + 1)  # ... then initialised: read again
    np.testing.assert_allclose(m.items(spare)[0], m.V[spare], atol=1e-6)


def test_items_of_one_row_given_as_a_scalar() -> None:
    m = _warm_model(adaptive=True)
    for row in (3, np.int64(3), np.array(3)):
        q, b = m.items(row)
        assert q.shape == (4,) and b.shape == ()
        np.testing.assert_allclose(q, m.items(np.array([3]))[0][0])
