"""Tests for recsys_online.synth: determinism, counts, and the structure it claims to plant."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest

from recsys_online import datasets, synth
from recsys_online.events import ItemDelete, ItemUpsert, Rating
from recsys_online.synth import SynthConfig, SyntheticStream, generate, simulate

SMALL = {"n_users": 600, "n_items": 400, "n_ratings": 30_000}


@pytest.fixture(scope="module")
def stream() -> SyntheticStream:
    return simulate(SynthConfig(**SMALL, n_deletes=20, seed=7))


@pytest.fixture(scope="module")
def default_stream() -> SyntheticStream:
    return simulate(SynthConfig())


def _tag_matrix(stream: SyntheticStream) -> np.ndarray:
    column = {name: k for k, name in enumerate(stream.tag_names)}
    tags = np.zeros((len(stream.item_ids), len(stream.tag_names)), dtype=np.int64)
    for item, item_tags in enumerate(stream.item_tags):
        tags[item, [column[t] for t in item_tags]] = 1
    return tags


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a = generate(**SMALL, seed=3)
    b = generate(**SMALL, seed=3)
    assert a.ratings == b.ratings and a.items == b.items and a.deletes == b.deletes
    assert generate(**SMALL, seed=4).ratings != a.ratings


def test_counts_ids_and_order(stream: SyntheticStream) -> None:
    ds = stream.to_dataset()
    assert len(ds) == len(stream) == SMALL["n_ratings"]
    assert len(ds.items) == SMALL["n_items"]
    assert len(ds.deletes) == 20
    assert len({(r.user, r.item) for r in ds.ratings}) == len(ds)  # no pair rated twice
    stamps = np.array([r.timestamp for r in ds.ratings])
    assert np.all(np.diff(stamps) >= 0) and np.all(stamps >= stream.config.t0)
    assert np.all(stamps == np.floor(stamps))  # whole seconds
    assert all(1 <= len(up.tags) <= 5 for up in ds.items.values())
    assert np.mean([len(up.tags) >= 2 for up in ds.items.values()]) > 0.95


def test_ratings_scale_mean_and_share_of_high(default_stream: SyntheticStream) -> None:
    r = default_stream.ratings
    assert set(np.unique(r)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 3.3 < r.mean() < 3.8
    assert 0.4 < (r >= 4).mean() < 0.7
    assert (r <= 2).mean() > 0.08  # low ratings exist too
    half = simulate(SynthConfig(**SMALL, rating_step=0.5)).ratings
    assert set(np.unique(half * 2) % 1) == {0.0} and (half * 2 % 2 == 1).any()


def test_popularity_and_activity_are_skewed(default_stream: SyntheticStream) -> None:
    s = default_stream
    per_item = np.sort(np.bincount(s.items, minlength=s.config.n_items))[::-1]
    assert per_item[: s.config.n_items // 10].sum() > 0.4 * len(s)
    per_user = np.sort(np.bincount(s.users, minlength=s.config.n_users))[::-1]
    assert per_user[: s.config.n_users // 10].sum() > 0.3 * len(s)
    assert per_user.max() <= 0.5 * s.config.n_items


def test_cold_items_arrive_late_and_are_never_rated_early(stream: SyntheticStream) -> None:
    c = stream.config
    cold = stream.item_arrival > c.t0
    assert abs(cold.mean() - c.cold_item_share) < 0.1
    assert np.all(stream.timestamps >= stream.item_arrival[stream.items])
    assert cold[stream.items].mean() > 0.05  # cold items do get rated once they arrive
    ds = stream.to_dataset()
    assert all(ds.items[stream.item_ids[i]].timestamp > c.t0 for i in np.flatnonzero(cold))


def test_deleted_items_are_never_rated_after(stream: SyntheticStream) -> None:
    deleted_at = stream.item_deleted_at[stream.items]
    assert np.isfinite(stream.item_deleted_at).sum() == 20
    assert np.all(stream.timestamps < deleted_at)


def test_event_stream_announces_items_before_ratings(stream: SyntheticStream) -> None:
    ds = stream.to_dataset().head(5_000)
    known: set[str] = set()
    gone: set[str] = set()
    last = 0.0
    for event in ds.events():
        assert event.timestamp >= last
        last = event.timestamp
        if isinstance(event, ItemUpsert):
            assert event.timestamp == ds.items[event.item].timestamp  # real arrival times
            known.add(event.item)
        elif isinstance(event, Rating):
            assert event.item in known and event.item not in gone
        elif isinstance(event, ItemDelete):
            gone.add(event.item)


def test_tags_predict_item_factors_and_ratings(stream: SyntheticStream) -> None:
    tags = _tag_matrix(stream)
    share = (tags @ tags.T) > 0
    upper = np.triu_indices(len(tags), 1)
    shared = share[upper]
    assert 0.05 < shared.mean() < 0.6  # both kinds of pair are plentiful

    # Ground truth: items sharing a tag have similar factor vectors.
    q = stream.item_factors / np.linalg.norm(stream.item_factors, axis=1, keepdims=True)
    cosine = (q @ q.T)[upper]
    assert cosine[shared].mean() > cosine[~shared].mean() + 0.2

    # Observable: user-centred ratings of items sharing a tag correlate more.
    c = stream.config
    ratings = np.zeros((c.n_users, c.n_items))
    rated = np.zeros((c.n_users, c.n_items), dtype=bool)
    ratings[stream.users, stream.items] = stream.ratings
    rated[stream.users, stream.items] = True
    user_mean = ratings.sum(1) / np.maximum(rated.sum(1), 1)
    centred = np.where(rated, ratings - user_mean[:, None], 0.0)
    norm = np.maximum(np.linalg.norm(centred, axis=0), 1e-9)
    similarity = ((centred.T @ centred) / np.outer(norm, norm))[upper]
    assert similarity[shared].mean() > similarity[~shared].mean() + 0.02


def test_sessions_keep_consecutive_items_related(stream: SyntheticStream) -> None:
    tags = _tag_matrix(stream)
    order = np.lexsort((stream.timestamps, stream.users))
    users, items = stream.users[order], stream.items[order]
    same_user = users[1:] == users[:-1]
    before, after = items[:-1][same_user], items[1:][same_user]
    consecutive = ((tags[before] * tags[after]).sum(1) > 0).mean()
    shuffled = np.random.default_rng(0).permutation(after)
    chance = ((tags[before] * tags[shuffled]).sum(1) > 0).mean()
    assert consecutive > 2 * chance
    # Sessions are runs of one user's ratings minutes apart.
    sessions = stream.sessions[order]
    same_session = same_user & (sessions[1:] == sessions[:-1])
    gaps = np.diff(stream.timestamps[order])[same_session]
    assert np.median(gaps) < 600
    assert 2.5 < len(stream) / len(np.unique(stream.sessions)) < 6


def test_drift_moves_tastes_away_from_their_start() -> None:
    def agreement(drift: float) -> float:
        s = simulate(SynthConfig(**SMALL, drift=drift, seed=1))
        static = np.einsum("nf,nf->n", s.user_factors[s.users], s.item_factors[s.items])
        late = s.timestamps > np.median(s.timestamps)
        return float(np.corrcoef(static[late], s.ratings[late])[0, 1])

    assert agreement(3.0) < agreement(0.0) - 0.05


def test_write_round_trips_through_load(tmp_path: Path) -> None:
    ds = generate(n_users=50, n_items=80, n_ratings=600, n_deletes=5, seed=2)
    ratings_path, items_path = synth.write(ds, tmp_path / "out")
    assert (ratings_path.name, items_path.name) == ("ratings.csv", "items.csv")
    back = datasets.load(tmp_path / "out")
    assert back.ratings == ds.ratings and back.items == ds.items and back.deletes == ds.deletes


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="half of all"):
        SynthConfig(n_users=10, n_items=10, n_ratings=60)
    with pytest.raises(ValueError, match="cold_item_share"):
        SynthConfig(cold_item_share=1.5)
    with pytest.raises(ValueError, match="rating_step"):
        SynthConfig(rating_step=0.25)
    dense = simulate(SynthConfig(n_users=10, n_items=10, n_ratings=50, cold_item_share=0.0))
    assert len(dense) == 50


def test_generate_mirrors_config_defaults() -> None:
    parameters = inspect.signature(generate).parameters
    fields = {f.name: f.default for f in dataclasses.fields(SynthConfig)}
    assert {name: p.default for name, p in parameters.items()} == fields
