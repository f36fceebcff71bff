"""Tests for recsys_online.synth: determinism, counts, and the structure it claims to plant."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest

from recsys_online import datasets, synth
from recsys_online.events import ItemDelete, ItemUpsert, Rating
from recsys_online.movielens_format import N_GENRES, write_movielens_100k
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


def _consecutive(stream: SyntheticStream) -> tuple[np.ndarray, np.ndarray]:
    """Each user's consecutive items in time order: (item before, item after)."""
    order = np.lexsort((stream.timestamps, stream.users))
    users, items = stream.users[order], stream.items[order]
    same_user = users[1:] == users[:-1]
    return items[:-1][same_user], items[1:][same_user]


def _is_related(stream: SyntheticStream, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (stream.item_related[before] == after[:, None]).any(axis=1)


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


@pytest.mark.parametrize(("seed", "n_ratings"), [(9, 1_000), (11, 300)])
def test_a_few_ratings_over_many_users_come_out_exactly(seed: int, n_ratings: int) -> None:
    # These seeds draw sessions whose lengths fall short of the ratings asked for in one
    # batch: the short batch is kept whole and topped up by the next.
    ds = generate(n_users=20_000, n_items=10_000, n_ratings=n_ratings, seed=seed)
    assert len(ds.ratings) == n_ratings
    assert len({(r.user, r.item) for r in ds.ratings}) == n_ratings


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


def test_items_form_symmetric_topical_franchises_of_similar_popularity(
    stream: SyntheticStream,
) -> None:
    c = stream.config
    related = stream.item_related
    assert related.shape == (c.n_items, c.n_related) and related.dtype == np.int32
    rows, cols = np.nonzero(related >= 0)
    a, b = rows, related[rows, cols].astype(np.intp)
    assert np.all(a != b)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    assert all((j, i) in pairs for i, j in pairs)  # "related" is symmetric
    assert (related >= 0).sum(axis=1).mean() > 0.9 * c.n_related  # few short franchises
    assert (stream.item_topics[a] == stream.item_topics[b]).mean() > 0.75  # mostly one topic
    log_popularity = np.log(stream.item_popularity)
    assert np.corrcoef(log_popularity[a], log_popularity[b])[0, 1] > 0.3  # hits with hits
    cold = stream.item_arrival > c.t0
    assert (cold[a] & ~cold[b]).any()  # a late item (a sequel) relates to an early one


def test_consecutive_items_are_related_far_more_often_than_chance(
    stream: SyntheticStream,
) -> None:
    before, after = _consecutive(stream)
    related = _is_related(stream, before, after)
    shuffled = np.random.default_rng(0).permutation(after)
    chance = _is_related(stream, before, shuffled).mean()
    assert related.mean() > 0.25 and related.mean() > 10 * chance  # 0.36 and 0.02 when written
    # Late arrivals are reached through their relations too, once they have arrived.
    cold = stream.item_arrival > stream.config.t0
    assert (related & cold[after] & ~cold[before]).sum() > 50
    # It is the related picks that do it: without them only the topic focus is left.
    plain = simulate(dataclasses.replace(stream.config, related_share=0.0))
    before, after = _consecutive(plain)
    assert _is_related(plain, before, after).mean() < related.mean() / 2  # 0.09 when written
    np.testing.assert_array_equal(plain.item_related, stream.item_related)


def test_next_item_is_predictable_from_the_last_one_beyond_popularity(
    stream: SyntheticStream,
) -> None:
    """A counting proxy of "because you rated X": learn item-to-next-item transitions on the
    first half of the stream; on the second half they put the next item in a top-10 list far
    more often than the 10 most popular items do."""

    def hits(s: SyntheticStream) -> tuple[float, float]:
        n = s.config.n_items
        order = np.lexsort((s.timestamps, s.users))
        users, items, times = s.users[order], s.items[order], s.timestamps[order]
        same_user = users[1:] == users[:-1]
        before, after = items[:-1][same_user], items[1:][same_user]
        early = times[1:][same_user] < np.median(s.timestamps)
        counts = np.zeros((n, n))
        np.add.at(counts, (before[early], after[early]), 1.0)
        counts += counts.T
        popularity = np.bincount(s.items[s.timestamps < np.median(s.timestamps)], minlength=n)
        scores = counts[before[~early]] + 1e-3 * popularity / popularity.max()
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        transitions = (top == after[~early][:, None]).any(axis=1).mean()
        popular = np.isin(after[~early], np.argsort(-popularity)[:10]).mean()
        return float(transitions), float(popular)

    transitions, popular = hits(stream)
    assert transitions > 2 * popular and popular > 0.05  # 0.35 vs 0.13 when written
    # Topic-level sessions alone make transitions less telling (0.20 when written).
    plain, _ = hits(simulate(dataclasses.replace(stream.config, related_share=0.0)))
    assert transitions > 1.4 * plain


def test_relations_and_related_picks_are_deterministic() -> None:
    config = SynthConfig(**SMALL, seed=5)
    a, b = simulate(config), simulate(config)
    np.testing.assert_array_equal(a.item_related, b.item_related)
    for name in ("users", "items", "ratings", "timestamps", "sessions"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    other = simulate(dataclasses.replace(config, seed=6))
    assert not np.array_equal(other.item_related, a.item_related)


def test_huge_pair_sets_give_the_same_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sorted-keys record of rated pairs (for catalogs too big for a bitset) agrees."""
    config = SynthConfig(**SMALL, n_deletes=10, seed=9)
    bitset = simulate(config)
    monkeypatch.setattr(synth, "_BITSET_PAIRS", 0)
    monkeypatch.setattr(synth, "_FRESH_KEYS", 1000)  # exercise merging the two sorted runs
    keys = simulate(config)
    for name in ("users", "items", "ratings", "timestamps", "sessions"):
        np.testing.assert_array_equal(getattr(keys, name), getattr(bitset, name))


def test_without_relations() -> None:
    s = simulate(SynthConfig(**SMALL, n_related=0, seed=2))
    assert s.item_related.shape == (SMALL["n_items"], 0) and len(s) == SMALL["n_ratings"]
    single = simulate(SynthConfig(n_users=50, n_items=1, n_ratings=20, n_tags=1, seed=1))
    assert len(single) == 20 and np.all(single.item_related == -1)


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


def test_movielens_100k_round_trips_through_load(tmp_path: Path) -> None:
    ds = generate(n_users=50, n_items=80, n_ratings=600, n_deletes=5, seed=2)
    t0 = SynthConfig().t0
    data, item_file, genre_file = synth.write_movielens_100k(ds, tmp_path / "ml")
    assert (data.name, item_file.name, genre_file.name) == ("u.data", "u.item", "u.genre")
    assert datasets._detect_format(data, None) == "movielens-100k"
    back = datasets.load(tmp_path / "ml" / "u.data")

    users = {user: str(k) for k, user in enumerate(sorted({r.user for r in ds.ratings}), 1)}
    items = {item: str(k) for k, item in enumerate(ds.items, 1)}
    assert back.ratings == [
        Rating(users[r.user], items[r.item], r.rating, r.timestamp) for r in ds.ratings
    ]
    assert sorted(int(user) for user in users.values()) == list(range(1, len(users) + 1))

    # Genres: the 19 tags most items carry, named after them; other tags are dropped.
    counts: dict[str, int] = {}
    for up in ds.items.values():
        for tag in up.tags:
            counts[tag] = counts.get(tag, 0) + 1
    genres = sorted(counts, key=lambda tag: (-counts[tag], tag))[:N_GENRES]
    lines = genre_file.read_text(encoding="latin-1").splitlines()
    assert lines == [f"{genre}|{k}" for k, genre in enumerate(genres)]
    assert list(back.items) == [items[item] for item in ds.items]  # all of the catalog
    for item, up in ds.items.items():
        got = back.items[items[item]]
        assert got.tags == {tag: 1.0 for tag in up.tags if tag in genres}
        assert got.title == up.title and got.timestamp == datasets.UNKNOWN_ARRIVAL
    assert back.deletes == []  # the layout has no deletes

    # u.item: 24 '|'-separated latin-1 fields, the release date is the arrival day.
    rows = [line.split("|") for line in item_file.read_text(encoding="latin-1").splitlines()]
    assert {len(row) for row in rows} == {5 + N_GENRES}
    release = {
        row[2] for row, up in zip(rows, ds.items.values(), strict=True) if up.timestamp == t0
    }
    assert release == {"14-Nov-2023"}  # t0 = 1_700_000_000 is 2023-11-14 UTC
    cold = [row[2] for row, up in zip(rows, ds.items.values(), strict=True) if up.timestamp > t0]
    assert cold and all(day.endswith(("-2023", "-2024")) and day != "14-Nov-2023" for day in cold)
    # Items appear when first rated, so replaying the sample works as for the real data set.
    replayed = [e for e in back.events() if isinstance(e, Rating)]
    assert len(replayed) == len(ds)


def test_movielens_100k_pads_genres_and_cleans_titles(tmp_path: Path) -> None:
    ds = datasets.Dataset(
        ratings=[Rating("b", "x", 4.0, 5.0), Rating("a", "y", 4.5, 6.0)],
        items={
            "x": ItemUpsert("x", {"drama": 1.0, "noir": 0.0}, 0.0, "Pipe | Dream"),
            "y": ItemUpsert("y", {}, 0.0, "Ωmega"),
        },
    )
    data, _, genre_file = write_movielens_100k(ds, tmp_path)
    genres = [line.split("|")[0] for line in genre_file.read_text().splitlines()]
    assert genres[0] == "drama" and genres[1:] == [f"unused{k}" for k in range(1, N_GENRES)]
    back = datasets.load(data)
    assert back.items["1"].tags == {"drama": 1.0} and back.items["1"].title == "Pipe / Dream"
    assert back.items["2"].title == "?mega" and back.ratings[1].rating == 4.5
    with pytest.raises(ValueError, match="genre"):
        write_movielens_100k(
            datasets.Dataset(ratings=[], items={"z": ItemUpsert("z", {"a|b": 1.0})}), tmp_path
        )


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="half of all"):
        SynthConfig(n_users=10, n_items=10, n_ratings=60)
    with pytest.raises(ValueError, match="cold_item_share"):
        SynthConfig(cold_item_share=1.5)
    with pytest.raises(ValueError, match="rating_step"):
        SynthConfig(rating_step=0.25)
    with pytest.raises(ValueError, match="related_share"):
        SynthConfig(related_share=1.2)
    with pytest.raises(ValueError, match="n_related"):
        SynthConfig(n_related=-1)
    with pytest.raises(ValueError, match="n_ratings must be >= 1"):
        SynthConfig(n_ratings=0)
    with pytest.raises(ValueError, match="unknown arrival"):  # 0.0 is UNKNOWN_ARRIVAL
        SynthConfig(t0=0)
    dense = simulate(SynthConfig(n_users=10, n_items=10, n_ratings=50, cold_item_share=0.0))
    assert len(dense) == 50


def test_generate_mirrors_config_defaults() -> None:
    parameters = inspect.signature(generate).parameters
    fields = {f.name: f.default for f in dataclasses.fields(SynthConfig)}
    assert {name: p.default for name, p in parameters.items()} == fields


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"drift": float("inf")}, "drift must be a finite number"),
        ({"noise": float("nan")}, "noise must be a finite number"),
        ({"span_days": float("nan")}, "span_days must be a finite number"),
        ({"selectivity": -1.0}, "selectivity must be >= 0"),
        # Finite, but past float32 (drift 1e39: every rating NaN, then an IndexError)
        # or past what the power laws' weights hold (1,000: weights 0, a division by 0).
        ({"drift": 1e39}, "drift must be <= 1000"),
        ({"popularity_exponent": 1000.0}, "popularity_exponent must be <= 10"),
        ({"activity_exponent": 1000.0}, "activity_exponent must be <= 10"),
    ],
)
def test_settings_that_are_no_numbers_are_refused(setting: dict, message: str) -> None:
    """NaN passed every bound (drift=inf ended in an IndexError, noise=nan gave NaN
    ratings)."""
    with pytest.raises(ValueError, match=message):
        synth.generate(n_users=20, n_items=30, n_ratings=100, **setting)
