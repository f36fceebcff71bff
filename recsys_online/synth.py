"""Synthetic rating streams with planted, documented structure, for tests and benchmarks.

:func:`generate` returns a :class:`~recsys_online.datasets.Dataset`; :func:`simulate` returns
the same stream as numpy arrays together with the ground truth that produced it (factors,
biases, topics, popularity, item relations). :func:`write` saves a dataset as plain CSV and
:func:`~recsys_online.movielens_format.write_movielens_100k` (re-exported here) in the
MovieLens 100K layout. The same configuration and ``seed`` always give the same stream. The
simulation is vectorised with numpy: ten million ratings take well under a minute.

What is planted
---------------
*Tags carry signal.* Tags fall into topic clusters (``n_topics``, default ``n_tags // 5``):
each topic has a latent vector and each tag's vector is its topic's vector plus tag-specific
noise. Every item has a primary topic and 2-5 tags, most from that topic (each extra tag is
from it with probability 0.75), and its latent factor vector is the normalised sum of its tags'
vectors plus item-specific noise; ``tag_signal`` (default 0.6) is the share of the factors'
variance the tags explain. A new item's tags therefore predict who will like it, but not
perfectly.

*Tastes.* Each user's taste vector leans towards 1-3 favourite topics (plus personal noise);
with ``drift > 0`` it random-walks over time (a Brownian motion whose spread over the whole
stream is ``drift`` times the taste scale).

*Popularity and activity are power laws.* Item pick weights are Zipf-like,
``rank ** -popularity_exponent``, over a random ranking (so new items can be popular too);
session counts per user are Zipf-like too, ``rank ** -activity_exponent``, with no user
expected to rate more than a third of the catalog. Popular items are a little better
(item bias grows with log popularity).

*Selection bias.* Users pick what they expect to like: an item's pick chance grows with its
popularity times ``exp(selectivity * (b_i + p_u . q_i))`` (a softmax over a handful of
popularity-drawn candidates), so the log, like a real one, leans towards high ratings. Users
never re-rate an item: items they rated are skipped, so heavy users reach into the long tail.

*Item-level relations ("X then Y").* Real catalogs relate specific items: sequels, series,
one director's films, an artist's albums. Here items form franchises of ``n_related + 1``
(default 6), so each item has ``n_related`` related items, its franchise mates, and the
relation is symmetric. Each item joins a franchise in its primary topic (in another topic with
chance 0.1); within a topic, items are ranked by log popularity plus standard normal noise and
cut into consecutive runs, so franchise mates have similar popularity: a hit's franchise is
mostly hits (popular franchises), a niche item's mostly niche. A topic's last run may be
shorter. Arrival times play no part, so an item arriving late (a sequel) is related to earlier
ones and vice versa; it is still never rated before it arrives. ``item_related`` holds them.

*Sessions.* Each user is active in a window that opens anywhere in the first 80% of the span
(new users keep arriving) and rates in sessions of mean ``session_length`` ratings, about two
minutes apart. A session's first item is picked as above. Each later pick is, with
probability ``related_share`` (default 0.55), a *related pick*: the same popularity-times-taste
softmax (and novelty boost) as above, but over the related items of the session's last three
picks, those of each older pick weighing half as much as those of the next newer one; only
available items count (arrived, not deleted, not yet rated by the user). Otherwise, or when
no related item is available, the pick is, with probability ``session_focus``, among the
first item's topic, else catalog-wide. So a user's next item is very often one of a handful
of specific items: item-to-item "because you rated X" co-occurrence is a strong signal, as in
real logs, while session-opening picks keep popularity a strong baseline. Related picks look
back within the session only (a user's sessions are typically days apart) and a session's
first pick is never one.

``related_share`` and ``n_related`` were calibrated on ``generate(n_users=1000, n_items=2000,
n_ratings=50_000)`` replayed prequentially (``recsys_online.evaluate.prequential``, K=10)
with the project's models as of commit 39e5221: recency-weighted co-occurrence reaches
2.2-2.3x the NDCG@10 of popularity (0.228 vs 0.105 for seed 0, 0.232 vs 0.102 for seed 1),
as on MovieLens 100K (2.2x, as the project's issue reports a prequential replay of it in
time order; no benchmark here runs it), and rating-only MF about 0.5x (0.053 and 0.049; 0.5x
there too). The ratings themselves come from a biased factor model whose item factors
are built from tag vectors: the family of the project's own rating model, which the
benchmarks on these streams should be read with.
Before relations were planted co-occurrence reached 0.84x. The ratio grows with ratings per
item, as co-occurrence learns more of the relations: 2.6x for the default 100_000 ratings;
from ``related_share`` 0.4 to 0.85 it runs from about 1.6x to 3.1x on the calibration stream.

*Ratings.* ``clip(round(mu + b_u + b_i + p_u(t) . q_i + noise * N(0, 1)), 1, 5)``, in whole
stars (or half stars with ``rating_step=0.5``). With the selection bias the mean lands around
3.5 (3.4-3.7 depending on density) and about half the ratings are 4 or more, as in MovieLens.
Drift adds to the tastes, widening them, so the bias grows with it: the mean is about 3.7
with ``drift=2`` and 4.1 with ``drift=5`` (1,000 users x 2,000 items, 100,000 ratings).

*Catalog changes.* Timestamps are whole seconds from ``t0`` (default 1_700_000_000) over
``span_days``. A ``cold_item_share`` of items arrives partway through (between 5% and 90% of
the span; ``ItemUpsert.timestamp`` is the arrival) and is never rated before it; just after
arriving it draws extra attention (up to ``1 + novelty`` times its usual pick weight, fading
over a twentieth of the span). The other items arrive at ``t0``. ``n_deletes`` items leave
partway (``ItemDelete``) and are never rated after.
"""

from __future__ import annotations

import gc
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recsys_online.datasets import UNKNOWN_ARRIVAL, Dataset, save_csv
from recsys_online.events import ItemDelete, ItemUpsert, Rating
from recsys_online.movielens_format import write_movielens_100k

__all__ = [
    "SynthConfig",
    "SyntheticStream",
    "generate",
    "simulate",
    "write",
    "write_movielens_100k",
]

_DAY = 86_400.0
_FOCUS_TAG_SHARE = 0.75  # chance each extra tag of an item comes from its primary topic
_TAG_OWN_SHARE = 0.3  # share of a tag vector's variance that is its own, not its topic's
_TASTE_TOPIC_SHARE = 0.7  # share of a taste vector's variance from favourite topics
_AFFINITY_STD = 0.6  # std of p_u . q_i over random (user, item) pairs, in stars
_MU = 2.94  # global mean before selection bias (the log's mean ends near 3.5)
_USER_BIAS_STD = 0.5
_ITEM_BIAS_STD = 0.4
_ITEM_BIAS_POPULARITY = 0.2  # item bias per std of log popularity
_MAX_USER_SHARE_OF_CATALOG = 1 / 3
_GAP_SECONDS = 120.0  # mean time between ratings within a session
_CANDIDATES = 8  # popularity-drawn candidates per pick
_DRIFT_TERMS = 8  # terms of the Brownian-motion (Karhunen-Loeve) expansion
_ATTEMPTS = 8  # candidate draws per pick before giving up (half in-topic, half catalog-wide)
_RELATED_TOPIC_SHARE = 0.9  # chance an item's franchise is in its primary topic
_FRANCHISE_NOISE = 1.0  # std of the noise on log popularity when forming franchises
_RELATED_WINDOW = 3  # a related pick follows one of the session's last this-many picks
_RELATED_RECENCY = 0.5  # weight of each older pick in that window relative to the next newer
_CHUNK = 1 << 16  # events per vectorised block
_BATCH_EVENTS = 1 << 21  # sessions are simulated in batches of about this many events
_BITSET_PAIRS = 1 << 31  # (user, item) pair sets up to this size are bitsets (256 MB)
_FRESH_KEYS = 1 << 18  # larger pair sets: recent keys kept apart until there are this many


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of a synthetic stream; see :func:`generate` for their meaning."""

    n_users: int = 1000
    n_items: int = 2000
    n_ratings: int = 100_000
    n_tags: int = 50
    n_factors: int = 8
    seed: int = 0
    cold_item_share: float = 0.3
    drift: float = 0.0
    noise: float = 0.5
    n_topics: int | None = None
    n_deletes: int = 0
    popularity_exponent: float = 1.0
    activity_exponent: float = 1.0
    session_length: float = 4.0
    session_focus: float = 0.8
    n_related: int = 5
    related_share: float = 0.55
    selectivity: float = 1.5
    tag_signal: float = 0.6
    novelty: float = 2.0
    rating_step: float = 1.0
    span_days: float = 365.0
    t0: int = 1_700_000_000

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_tags", "n_factors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_ratings < 1:
            raise ValueError(f"n_ratings must be >= 1, got {self.n_ratings}")
        if self.n_ratings > 0.5 * self.n_users * self.n_items:
            raise ValueError(
                f"n_ratings={self.n_ratings} is more than half of all "
                f"{self.n_users}x{self.n_items} user-item pairs; each pair is rated at most once"
            )
        if self.n_topics is not None and not 1 <= self.n_topics <= self.n_tags:
            raise ValueError(f"n_topics must be in 1..n_tags, got {self.n_topics}")
        if not 0 <= self.n_deletes <= self.n_items:
            raise ValueError(f"n_deletes must be in 0..n_items, got {self.n_deletes}")
        if self.n_related < 0:
            raise ValueError(f"n_related must be >= 0, got {self.n_related}")
        if self.t0 == UNKNOWN_ARRIVAL:  # items arriving at t0 would be "arrival unknown"
            raise ValueError(f"t0 cannot be {UNKNOWN_ARRIVAL} (it marks an unknown arrival)")
        for name, value in vars(self).items():  # (NaN passed every bound below)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.selectivity < 0:
            raise ValueError(f"selectivity must be >= 0, got {self.selectivity}")
        for name in ("cold_item_share", "session_focus", "related_share", "tag_signal"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("drift", "noise", "popularity_exponent", "activity_exponent", "novelty"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        # Past these, tastes overflow float32 (drift 3e38: every rating NaN) or the power
        # laws' weights underflow to 0 (an exponent of 1,000); real streams sit far below.
        for name, most in _MOST.items():
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be <= {most:g}, got {getattr(self, name)}")
        if self.session_length < 1:
            raise ValueError(f"session_length must be >= 1, got {self.session_length}")
        if self.rating_step not in (0.5, 1.0):
            raise ValueError(f"rating_step must be 0.5 or 1.0, got {self.rating_step}")
        if self.span_days <= 0:
            raise ValueError(f"span_days must be > 0, got {self.span_days}")

    @property
    def topics(self) -> int:
        """Number of topic clusters actually used."""
        return self.n_topics if self.n_topics is not None else max(1, self.n_tags // 5)

    @property
    def span_seconds(self) -> float:
        """Length of the stream in seconds."""
        return self.span_days * _DAY


#: Upper bounds of the settings that have one only for the arithmetic's sake.
_MOST = {
    "drift": 1000.0,
    "noise": 1000.0,
    "novelty": 1000.0,
    "selectivity": 1000.0,
    "popularity_exponent": 10.0,
    "activity_exponent": 10.0,
}


@dataclass
class SyntheticStream:
    """A generated stream as arrays (time-ordered), plus the ground truth behind it.

    Users and items are row numbers; their ids are ``user_ids[u]`` and ``item_ids[i]``.
    ``item_deleted_at`` is ``inf`` for items never deleted. ``user_factors`` are the tastes
    at ``t0`` (before any drift). ``item_related[i]`` lists the items related to ``i`` (its
    franchise mates, see the module docstring), padded with -1 where the franchise is smaller.
    """

    config: SynthConfig
    users: np.ndarray  # (n,) int32
    items: np.ndarray  # (n,) int32
    ratings: np.ndarray  # (n,) float32
    timestamps: np.ndarray  # (n,) float64, whole seconds, non-decreasing
    sessions: np.ndarray  # (n,) int64 session number of each rating
    user_ids: list[str]
    item_ids: list[str]
    item_tags: list[dict[str, float]]
    item_topics: np.ndarray  # (n_items,) primary topic
    item_related: np.ndarray  # (n_items, n_related) int32 related items, -1 where fewer
    item_arrival: np.ndarray  # (n_items,) seconds
    item_deleted_at: np.ndarray  # (n_items,) seconds or inf
    item_popularity: np.ndarray  # (n_items,) pick weight, sums to 1
    user_activity: np.ndarray  # (n_users,) session weight, sums to 1
    user_factors: np.ndarray  # (n_users, n_factors) float32
    item_factors: np.ndarray  # (n_items, n_factors) float32
    tag_factors: np.ndarray  # (n_tags, n_factors) float32
    tag_names: list[str]
    user_bias: np.ndarray
    item_bias: np.ndarray
    mu: float = _MU
    name: str = field(default="synth")

    def __len__(self) -> int:
        return len(self.ratings)

    def to_dataset(self) -> Dataset:
        """The stream as a :class:`~recsys_online.datasets.Dataset` of event records."""
        gc_was_enabled = gc.isenabled()
        gc.disable()  # millions of new records: generational GC passes would dominate
        try:
            return self._to_dataset()
        finally:
            if gc_was_enabled:
                gc.enable()

    def _to_dataset(self) -> Dataset:
        step = self.config.rating_step
        # Share one float object per rating value and one str per id: far less memory.
        values = np.array([1.0 + k * step for k in range(int(4 / step) + 1)], dtype=object)
        codes = np.rint((self.ratings - 1.0) / step).astype(np.intp)
        users = np.array(self.user_ids, dtype=object)[self.users].tolist()
        items = np.array(self.item_ids, dtype=object)[self.items].tolist()
        ratings = list(map(Rating, users, items, values[codes].tolist(), self.timestamps.tolist()))
        catalog = {
            item: ItemUpsert(item, tags, float(arrival), f"Item {k}")
            for k, (item, tags, arrival) in enumerate(
                zip(self.item_ids, self.item_tags, self.item_arrival.tolist(), strict=True)
            )
        }
        deleted = np.flatnonzero(np.isfinite(self.item_deleted_at))
        deleted = deleted[np.argsort(self.item_deleted_at[deleted], kind="stable")]
        deletes = [ItemDelete(self.item_ids[i], float(self.item_deleted_at[i])) for i in deleted]
        return Dataset(ratings=ratings, items=catalog, deletes=deletes, name=self.name)


def generate(
    n_users: int = 1000,
    n_items: int = 2000,
    n_ratings: int = 100_000,
    n_tags: int = 50,
    n_factors: int = 8,
    seed: int = 0,
    cold_item_share: float = 0.3,
    drift: float = 0.0,
    noise: float = 0.5,
    *,
    n_topics: int | None = None,
    n_deletes: int = 0,
    popularity_exponent: float = 1.0,
    activity_exponent: float = 1.0,
    session_length: float = 4.0,
    session_focus: float = 0.8,
    n_related: int = 5,
    related_share: float = 0.55,
    selectivity: float = 1.5,
    tag_signal: float = 0.6,
    novelty: float = 2.0,
    rating_step: float = 1.0,
    span_days: float = 365.0,
    t0: int = 1_700_000_000,
) -> Dataset:
    """Generate a synthetic rating stream (see the module docstring for what it plants).

    Parameters
    ----------
    n_users, n_items
        Potential users and catalog size (users who never rate do not appear).
    n_ratings
        Exact number of ratings; each (user, item) pair at most once.
    n_tags, n_topics
        Tag vocabulary and the number of topic clusters it falls into (default ``n_tags // 5``).
    n_factors
        Dimension of the latent tastes and item factors.
    seed
        Everything random comes from this seed.
    cold_item_share
        Share of items arriving partway through the stream.
    drift
        Taste random-walk strength: spread over the whole span, in units of the taste scale.
    noise
        Std of the rating noise, in stars.
    n_deletes
        Items deleted partway through.
    popularity_exponent, activity_exponent
        Zipf exponents of item pick weights and user activity.
    session_length, session_focus
        Mean ratings per session; chance a later pick (not a related one) stays in the
        session's topic.
    n_related, related_share
        Related items per item ("X then Y": sequels, series, same artist), and the chance
        that a pick after the first of a session is among the related items of the
        session's last few picks.
    selectivity
        How strongly users pick items they will like (0: popularity only).
    tag_signal
        Share of item-factor variance explained by the item's tags.
    novelty
        Extra pick weight of a just-arrived item (fades over a twentieth of the span).
    rating_step
        1.0 for whole stars, 0.5 for half stars.
    span_days, t0
        Length of the stream and its first second (epoch seconds).

    Examples
    --------
    >>> ds = generate(n_users=50, n_items=80, n_ratings=500, seed=1)
    >>> len(ds), len(ds.items)
    (500, 80)
    >>> all(1.0 <= r.rating <= 5.0 for r in ds.ratings)
    True
    >>> generate(n_users=50, n_items=80, n_ratings=500, seed=1).ratings == ds.ratings
    True
    """
    config = SynthConfig(
        n_users=n_users,
        n_items=n_items,
        n_ratings=n_ratings,
        n_tags=n_tags,
        n_factors=n_factors,
        seed=seed,
        cold_item_share=cold_item_share,
        drift=drift,
        noise=noise,
        n_topics=n_topics,
        n_deletes=n_deletes,
        popularity_exponent=popularity_exponent,
        activity_exponent=activity_exponent,
        session_length=session_length,
        session_focus=session_focus,
        n_related=n_related,
        related_share=related_share,
        selectivity=selectivity,
        tag_signal=tag_signal,
        novelty=novelty,
        rating_step=rating_step,
        span_days=span_days,
        t0=t0,
    )
    return simulate(config).to_dataset()


def write(dataset: Dataset, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``dataset`` as ``ratings.csv`` and ``items.csv`` in ``out_dir`` (created if
    missing); ``datasets.load(out_dir)`` reads it back. Returns the two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ratings_path, items_path = out / "ratings.csv", out / "items.csv"
    save_csv(dataset, ratings_path, items_path)
    return ratings_path, items_path


# ---------------------------------------------------------------------------------------------
# Simulation


@dataclass
class _AliasTable:
    """Weighted sampling in O(1) within blocks of items (Vose's alias method, per block)."""

    members: np.ndarray  # item in each slot; block b owns slots start[b] : start[b] + size[b]
    accept: np.ndarray  # chance of keeping a slot's own item
    alias: np.ndarray  # slot whose item is taken otherwise
    start: np.ndarray
    size: np.ndarray

    @classmethod
    def build(cls, blocks: list[np.ndarray], weights: np.ndarray) -> _AliasTable:
        """One block per array of item numbers, each sampled proportionally to ``weights``."""
        accept: list[float] = []
        alias: list[int] = []
        for block in blocks:
            a, b = _alias_block(weights[block].tolist())
            offset = len(alias)
            accept += a
            alias += [offset + k for k in b]
        size = np.array([len(block) for block in blocks], dtype=np.intp)
        return cls(
            members=np.concatenate(blocks).astype(np.intp),
            accept=np.array(accept),
            alias=np.array(alias, dtype=np.intp),
            start=np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.intp),
            size=size,
        )

    def sample(self, blocks: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` items per entry of ``blocks``, drawn from that block: shape (len, n)."""
        size = self.size[blocks][:, None]
        x = rng.random((len(blocks), n)) * size
        k = np.minimum(x.astype(np.intp), size - 1)
        slot = self.start[blocks][:, None] + k
        slot = np.where(x - k < self.accept[slot], slot, self.alias[slot])
        return self.members[slot]


def _alias_block(weights: list[float]) -> tuple[list[float], list[int]]:
    """Vose's alias table for one block: (accept chance, alias index) per slot."""
    n = len(weights)
    total = sum(weights)
    scaled = [w * n / total for w in weights]
    accept = [1.0] * n
    alias = list(range(n))
    small = [k for k, w in enumerate(scaled) if w < 1.0]
    large = [k for k, w in enumerate(scaled) if w >= 1.0]
    while small and large:
        s, g = small.pop(), large[-1]
        accept[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        if scaled[g] < 1.0:
            small.append(large.pop())
    return accept, alias


class _PairSet:
    """The (user, item) pairs rated so far: a bitset, or sorted keys if that would be huge.

    Sorted keys live in two sorted runs, a large one and a small recent one that is merged
    into the large one when it outgrows ``_FRESH_KEYS``: each addition then costs a merge
    with the small run rather than with every key so far.
    """

    def __init__(self, n_users: int, n_items: int) -> None:
        self.n_items = n_items
        n_pairs = n_users * n_items
        self.bits = np.zeros((n_pairs + 7) // 8, np.uint8) if n_pairs <= _BITSET_PAIRS else None
        self.sorted = np.empty(0, np.int64)
        self.fresh = np.empty(0, np.int64)

    def keys(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return users.astype(np.int64) * self.n_items + items

    def contains(self, keys: np.ndarray) -> np.ndarray:
        if self.bits is not None:
            return ((self.bits[keys >> 3] >> (keys & 7).astype(np.uint8)) & 1).astype(bool)
        flat = keys.ravel()
        # Binary searches for sorted needles walk the runs in order: several times faster.
        order = np.argsort(flat)
        needles = flat[order]
        hit = np.zeros(len(flat), dtype=bool)
        for run in (self.sorted, self.fresh):
            if len(run):
                hit |= run[np.minimum(np.searchsorted(run, needles), len(run) - 1)] == needles
        found = np.empty(len(flat), dtype=bool)
        found[order] = hit
        return found.reshape(keys.shape)

    def add(self, keys: np.ndarray) -> None:
        """Add distinct keys not yet in the set."""
        if self.bits is not None:
            np.bitwise_or.at(self.bits, keys >> 3, np.left_shift(1, keys & 7).astype(np.uint8))
            return
        # Two sorted runs: np.sort's stable sort (timsort) merges them in linear time.
        self.fresh = np.sort(np.concatenate([self.fresh, np.sort(keys)]), kind="stable")
        if len(self.fresh) > _FRESH_KEYS:
            self.sorted = np.sort(np.concatenate([self.sorted, self.fresh]), kind="stable")
            self.fresh = np.empty(0, np.int64)


@dataclass
class _World:
    """Everything fixed before the first rating: catalog, tastes, biases, schedules."""

    config: SynthConfig
    tag_factors: np.ndarray
    item_tags: list[list[int]]
    item_topics: np.ndarray
    item_related: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    item_popularity: np.ndarray
    item_arrival: np.ndarray
    item_deleted_at: np.ndarray
    user_factors: np.ndarray
    user_bias: np.ndarray
    user_activity: np.ndarray
    user_join: np.ndarray
    user_leave: np.ndarray
    drift_coefficients: np.ndarray | None
    picks: _AliasTable  # block k < n_topics: items of topic k; block n_topics: all items

    def tastes(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Taste vectors of ``users`` at ``times`` (with drift)."""
        tastes = self.user_factors[users]
        if self.drift_coefficients is None:
            return tastes
        c = self.config
        tau = np.clip((times - c.t0) / c.span_seconds, 0.0, 1.0)
        freq = (np.arange(_DRIFT_TERMS) + 0.5) * np.pi
        basis = (math.sqrt(2.0) * np.sin(np.outer(tau, freq)) / freq).astype(np.float32)
        return tastes + np.einsum("nk,nkf->nf", basis, self.drift_coefficients[users])


def simulate(config: SynthConfig) -> SyntheticStream:
    """Generate the stream described by ``config`` as arrays plus ground truth.

    Examples
    --------
    >>> stream = simulate(SynthConfig(n_users=40, n_items=60, n_ratings=300, seed=3))
    >>> len(stream), stream.item_factors.shape, bool(np.all(np.diff(stream.timestamps) >= 0))
    (300, (60, 8), True)
    """
    rng = np.random.default_rng(config.seed)
    world = _build_world(config, rng)
    users, items, ratings, times, sessions = _simulate_ratings(world, rng)
    width_u, width_i = len(str(config.n_users - 1)), len(str(config.n_items - 1))
    tag_names = [f"tag{t:0{len(str(config.n_tags - 1))}d}" for t in range(config.n_tags)]
    return SyntheticStream(
        config=config,
        users=users,
        items=items,
        ratings=ratings,
        timestamps=times,
        sessions=sessions,
        user_ids=[f"u{k:0{width_u}d}" for k in range(config.n_users)],
        item_ids=[f"i{k:0{width_i}d}" for k in range(config.n_items)],
        item_tags=[{tag_names[t]: 1.0 for t in tags} for tags in world.item_tags],
        item_topics=world.item_topics,
        item_related=world.item_related,
        item_arrival=world.item_arrival,
        item_deleted_at=world.item_deleted_at,
        item_popularity=world.item_popularity,
        user_activity=world.user_activity,
        user_factors=world.user_factors,
        item_factors=world.item_factors,
        tag_factors=world.tag_factors,
        tag_names=tag_names,
        user_bias=world.user_bias,
        item_bias=world.item_bias,
        name=f"synth(seed={config.seed}, ratings={config.n_ratings})",
    )


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Weights ``rank ** -exponent`` over a random ranking, summing to 1."""
    weights = (rng.permutation(n) + 1.0) ** -exponent
    return weights / weights.sum()


def _cap_shares(shares: np.ndarray, cap: float) -> np.ndarray:
    """Lower shares above ``cap`` to ``cap`` and spread the excess over the rest."""
    shares = shares.copy()
    cap = max(cap, 1.0 / len(shares))
    for _ in range(100):
        over = shares > cap * (1 + 1e-9)
        if not over.any():
            break
        excess = (shares[over] - cap).sum()
        shares[over] = cap
        under = shares < cap
        shares[under] += excess * shares[under] / shares[under].sum()
    return shares / shares.sum()


def _standardise(x: np.ndarray) -> np.ndarray:
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def _build_world(c: SynthConfig, rng: np.random.Generator) -> _World:
    n_topics, f = c.topics, c.n_factors
    scale = math.sqrt(_AFFINITY_STD / math.sqrt(f))  # so std(p . q) ~ _AFFINITY_STD

    # Topics and tags: a tag's vector is its topic's vector plus its own noise.
    topic_vectors = rng.standard_normal((n_topics, f))
    tag_topic = rng.permutation(np.arange(c.n_tags) % n_topics)
    tag_vectors = math.sqrt(1 - _TAG_OWN_SHARE) * topic_vectors[tag_topic]
    tag_vectors += math.sqrt(_TAG_OWN_SHARE) * rng.standard_normal((c.n_tags, f))
    topic_tags = [np.flatnonzero(tag_topic == k).tolist() for k in range(n_topics)]

    # Items: a primary topic (mildly skewed), 2-5 tags mostly from it.
    topic_weights = _zipf(n_topics, 0.5, rng)
    item_topics = rng.choice(n_topics, size=c.n_items, p=topic_weights)
    picker = random.Random(int(rng.integers(2**63)))
    item_tags = [_draw_tags(int(k), topic_tags, c.n_tags, picker) for k in item_topics]
    lengths = np.array([len(tags) for tags in item_tags])
    flat = np.fromiter((t for tags in item_tags for t in tags), dtype=np.intp)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tag_sum = np.add.reduceat(tag_vectors[flat], starts, axis=0) / np.sqrt(lengths)[:, None]
    own = rng.standard_normal((c.n_items, f))
    item_factors = scale * (
        math.sqrt(c.tag_signal) * _standardise(tag_sum) + math.sqrt(1 - c.tag_signal) * own
    )

    # Popularity (Zipf over a random ranking); popular items are a little better.
    popularity = _zipf(c.n_items, c.popularity_exponent, rng)
    item_bias = _ITEM_BIAS_POPULARITY * _standardise(np.log(popularity))
    item_bias += _ITEM_BIAS_STD * rng.standard_normal(c.n_items)

    # Arrivals and deletions, in whole seconds.
    span = c.span_seconds
    arrival = np.full(c.n_items, float(c.t0))
    cold = rng.random(c.n_items) < c.cold_item_share
    arrival[cold] = np.floor(c.t0 + span * rng.uniform(0.05, 0.9, cold.sum()))
    deleted_at = np.full(c.n_items, np.inf)
    doomed = rng.choice(c.n_items, size=c.n_deletes, replace=False)
    remaining = c.t0 + span - arrival[doomed]
    deleted_at[doomed] = np.floor(arrival[doomed] + remaining * rng.uniform(0.3, 0.9, c.n_deletes))

    # Users: tastes leaning to 1-3 favourite topics, biases, activity, active window.
    favourites = rng.choice(n_topics, size=(c.n_users, 3), p=topic_weights)
    mix = rng.gamma(1.0, size=(c.n_users, 3)) * (
        np.arange(3) < rng.integers(1, 4, c.n_users)[:, None]
    )
    mix /= mix.sum(axis=1, keepdims=True)
    leaning = np.einsum("uk,ukf->uf", mix, topic_vectors[favourites])
    user_factors = scale * (
        math.sqrt(_TASTE_TOPIC_SHARE) * _standardise(leaning)
        + math.sqrt(1 - _TASTE_TOPIC_SHARE) * rng.standard_normal((c.n_users, f))
    )
    user_bias = _USER_BIAS_STD * rng.standard_normal(c.n_users)
    per_user_cap = _MAX_USER_SHARE_OF_CATALOG * c.n_items / max(c.n_ratings, 1)
    activity = _cap_shares(_zipf(c.n_users, c.activity_exponent, rng), per_user_cap)
    join = c.t0 + span * rng.uniform(0.0, 0.8, c.n_users)
    leave = join + (c.t0 + span - join) * rng.uniform(0.2, 1.0, c.n_users)
    drift = None
    if c.drift > 0:
        drift = c.drift * scale * rng.standard_normal((c.n_users, _DRIFT_TERMS, f))

    topic_blocks = [np.flatnonzero(item_topics == k) for k in range(n_topics)]
    picks = _AliasTable.build([*topic_blocks, np.arange(c.n_items)], popularity)
    related = _draw_franchises(c, item_topics, popularity, topic_weights, rng)
    return _World(
        config=c,
        tag_factors=tag_vectors.astype(np.float32),
        item_tags=item_tags,
        item_topics=item_topics,
        item_related=related,
        item_factors=item_factors.astype(np.float32),
        item_bias=item_bias,
        item_popularity=popularity,
        item_arrival=arrival,
        item_deleted_at=deleted_at,
        user_factors=user_factors.astype(np.float32),
        user_bias=user_bias,
        user_activity=activity,
        user_join=join,
        user_leave=leave,
        drift_coefficients=None if drift is None else drift.astype(np.float32),
        picks=picks,
    )


def _draw_tags(
    topic: int, topic_tags: list[list[int]], n_tags: int, picker: random.Random
) -> list[int]:
    """2-5 distinct tags: the first from ``topic``, each other from it with prob. 0.75."""
    want = min(picker.randint(2, 5), n_tags)
    own = topic_tags[topic]
    n_own = 1 + sum(picker.random() < _FOCUS_TAG_SHARE for _ in range(want - 1))
    tags = picker.sample(own, min(n_own, len(own)))
    while len(tags) < want:
        tag = picker.randrange(n_tags)
        if tag not in tags:
            tags.append(tag)
    return tags


def _draw_franchises(
    c: SynthConfig,
    item_topics: np.ndarray,
    popularity: np.ndarray,
    topic_weights: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Related items: the other members of each item's franchise, (n_items, n_related) int32.

    Each item joins a franchise in its primary topic (another topic, drawn like primary
    topics, with chance ``1 - _RELATED_TOPIC_SHARE``). Within a topic, items are ranked by
    log popularity plus ``_FRANCHISE_NOISE`` times standard normal noise and cut
    into runs of ``n_related + 1``, so franchise members have similar popularity. A topic's
    least popular run may be shorter; its members have fewer related items (-1 padded).
    Arrival times play no part: an early item and a late one can share a franchise.
    """
    n, want = c.n_items, c.n_related
    related = np.full((n, want), -1, dtype=np.int32)
    if want == 0:
        return related
    home = item_topics.copy()
    away = rng.random(n) >= _RELATED_TOPIC_SHARE
    home[away] = rng.choice(c.topics, size=int(away.sum()), p=topic_weights)
    key = np.log(popularity) + _FRANCHISE_NOISE * rng.standard_normal(n)
    order = np.lexsort((-key, home))  # by topic, most popular first
    topic = home[order]
    pos = np.arange(n) - np.searchsorted(topic, topic)  # rank within the topic
    size = np.bincount(home, minlength=c.topics)[topic]
    group = want + 1
    start = np.arange(n) - pos % group  # first member of the franchise, in `order`
    members = np.minimum(group, size - pos + pos % group)
    slot = np.zeros(n, dtype=np.intp)
    for offset in range(group):
        other = start + offset
        ok = np.flatnonzero((offset < members) & (other != np.arange(n)))
        related[order[ok], slot[ok]] = order[other[ok]]
        slot[ok] += 1
    return related


def _simulate_ratings(
    world: _World, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Simulate sessions until there are ``n_ratings`` ratings, in time order.

    Users never re-rate an item (already-rated candidates are unavailable), so nearly every
    simulated pick is a rating; the rare failures are topped up with more sessions and the
    small surplus is thinned at random.
    """
    c = world.config
    pairs = _PairSet(c.n_users, c.n_items)
    parts: list[tuple[np.ndarray, ...]] = []
    have = 0
    n_sessions = 0
    stalls = 0
    while have < c.n_ratings:
        wanted = min(int((c.n_ratings - have) * 1.02) + 16, _BATCH_EVENTS)
        batch = _simulate_sessions(world, pairs, wanted, n_sessions, rng)
        if len(batch[0]) < 0.05 * wanted:
            stalls += 1
            if stalls > 20:
                raise RuntimeError(
                    "cannot place n_ratings ratings; the configuration is too dense "
                    "(fewer ratings, more users or items, or a lower popularity_exponent "
                    "or activity_exponent)"
                )
        n_sessions = int(batch[4][-1]) + 1 if len(batch[4]) else n_sessions
        parts.append(batch)
        have += len(batch[0])
    columns = [list(column) for column in zip(*parts, strict=True)]
    del parts
    keep = np.arange(have)
    if have > c.n_ratings:
        keep = np.sort(rng.choice(have, size=c.n_ratings, replace=False))
    keep = keep[np.argsort(np.concatenate(columns[3])[keep], kind="stable")]
    out = []
    for column in columns:  # one column at a time, freeing the pieces: lower peak memory
        out.append(np.concatenate(column)[keep])
        column.clear()
    users, items, ratings, times, sessions = out
    return users, items, ratings, times, sessions


def _simulate_sessions(
    world: _World, pairs: _PairSet, n_events: int, first_session: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """About ``n_events`` ratings in fresh sessions: (users, items, ratings, times, sessions)."""
    c = world.config
    # Session lengths (geometric, mean session_length), owners and start times.
    n_sessions = int(n_events / c.session_length * 1.1) + 8
    lengths = rng.geometric(1.0 / c.session_length, n_sessions)
    # (The draw can fall short of n_events: then every session is kept, and the caller
    # tops the ratings up with another batch.)
    n_sessions = min(int(np.searchsorted(np.cumsum(lengths), n_events)) + 1, n_sessions)
    lengths = lengths[:n_sessions]
    owner = rng.choice(c.n_users, size=n_sessions, p=world.user_activity)
    window = world.user_leave[owner] - world.user_join[owner]
    start = np.floor(world.user_join[owner] + rng.random(n_sessions) * window)

    # Events: session number, position in session, time (gaps of >= 1 s).
    session = np.repeat(np.arange(n_sessions), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    is_first = np.zeros(len(session), dtype=bool)
    is_first[first] = True
    gaps = 1.0 + np.floor(rng.exponential(_GAP_SECONDS - 1.0, len(session)))
    gaps[is_first] = 0.0
    elapsed = np.cumsum(gaps)
    times = start[session] + elapsed - np.repeat(elapsed[first], lengths)
    users = owner[session]

    # First picks of sessions from the whole catalog, popularity- and taste-driven.
    everything = c.topics  # the alias block holding all items
    items = np.full(len(session), -1, dtype=np.int64)
    heads = np.flatnonzero(is_first)
    _pick(world, pairs, heads, np.full(len(heads), everything), users, times, items, rng)
    topic_of_session = np.where(items[heads] >= 0, world.item_topics[items[heads]], everything)

    # Later picks, one position at a time so each can follow the session's earlier picks:
    # related to one of them with chance related_share, else mostly from the session's topic.
    related_share = c.related_share if c.n_related > 0 else 0.0
    position = 1
    while len(alive := np.flatnonzero(lengths > position)):
        tails = first[alive] + position
        related = rng.random(len(tails)) < related_share
        _pick_related(world, pairs, tails[related], position, users, times, items, rng)
        rest = tails[items[tails] < 0]  # not related picks, or nothing related was available
        focused = rng.random(len(rest)) < c.session_focus
        blocks = np.where(focused, topic_of_session[session[rest]], everything)
        _pick(world, pairs, rest, blocks, users, times, items, rng)
        position += 1

    ok = np.flatnonzero(items >= 0)  # a pick fails only if nothing suitable was available
    ratings = _rate(world, users[ok], items[ok], times[ok], rng)
    return (
        users[ok].astype(np.int32),
        items[ok].astype(np.int32),
        ratings,
        times[ok],
        session[ok].astype(np.int64) + first_session,
    )


def _choose(
    world: _World,
    pairs: _PairSet,
    users: np.ndarray,
    times: np.ndarray,
    tastes: np.ndarray,
    cand: np.ndarray,
    prior: np.ndarray | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """One item per row of ``cand`` (-1 entries are no candidate), or -1 if none is available.

    A softmax (Gumbel-max) over the row of ``selectivity * (b_i + p_u . q_i)``, plus the
    novelty boost and ``prior`` (log weights, if given); candidates not yet arrived,
    deleted, or already rated by the user are unavailable. The chosen pairs join ``pairs``.
    """
    c = world.config
    item = np.maximum(cand, 0)
    t = times[:, None]
    arrival = world.item_arrival[item]
    available = (cand >= 0) & (arrival <= t) & (world.item_deleted_at[item] > t)
    available &= ~pairs.contains(pairs.keys(users[:, None], item))
    affinity = world.item_bias[item] + np.einsum("nf,nmf->nm", tastes, world.item_factors[item])
    score = c.selectivity * affinity + rng.gumbel(size=cand.shape)
    if prior is not None:
        score += prior
    new = arrival > c.t0
    if c.novelty > 0 and new.any():
        age = np.maximum(t - arrival, 0.0)[new]
        score[new] += np.log1p(c.novelty * np.exp(-age / (c.span_seconds / 20)))
    score[~available] = -np.inf
    rows = np.arange(len(cand))
    best = np.argmax(score, axis=1)
    found = np.flatnonzero(available[rows, best])
    picked = item[found, best[found]]
    # Two events of one user in this block may pick the same item: keep the first.
    keys = pairs.keys(users[found], picked)
    _, once = np.unique(keys, return_index=True)
    once.sort()
    pairs.add(keys[once])
    chosen = np.full(len(cand), -1, dtype=np.int64)
    chosen[found[once]] = picked[once]
    return chosen


def _pick(
    world: _World,
    pairs: _PairSet,
    events: np.ndarray,
    blocks: np.ndarray,
    users: np.ndarray,
    times: np.ndarray,
    items_out: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Choose an item for each of ``events`` from its alias block, in place in ``items_out``.

    Each attempt draws ``_CANDIDATES`` candidates in proportion to popularity and lets
    :func:`_choose` pick among them; after half the attempts the block widens to the whole
    catalog. Events still without an item after ``_ATTEMPTS`` stay at -1.
    """
    everything = world.config.topics
    for lo in range(0, len(events), _CHUNK):
        idx = events[lo : lo + _CHUNK]
        u, t = users[idx], times[idx]
        tastes = world.tastes(u, t)
        block = blocks[lo : lo + _CHUNK].copy()
        chosen = np.full(len(idx), -1, dtype=np.int64)
        pending = np.arange(len(idx))
        for attempt in range(_ATTEMPTS):
            if attempt == _ATTEMPTS // 2:
                block[pending] = everything  # the topic is exhausted: widen to the catalog
            cand = world.picks.sample(block[pending], _CANDIDATES, rng)
            chosen[pending] = _choose(
                world, pairs, u[pending], t[pending], tastes[pending], cand, None, rng
            )
            pending = np.flatnonzero(chosen < 0)
            if len(pending) == 0:
                break
        items_out[idx] = chosen


def _pick_related(
    world: _World,
    pairs: _PairSet,
    events: np.ndarray,
    position: int,
    users: np.ndarray,
    times: np.ndarray,
    items_out: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """For events at ``position`` (>= 1) of their sessions, choose among the related items of
    the session's last ``_RELATED_WINDOW`` picks, in place; -1 where none is available.

    The candidates are those picks' related items, each weighted by its popularity times
    ``_RELATED_RECENCY ** k`` for a pick ``k`` places before the newest, then chosen by taste
    as in :func:`_choose`.
    """
    back = min(_RELATED_WINDOW, position)
    n_related = world.item_related.shape[1]
    prior = np.repeat(np.log(_RELATED_RECENCY) * np.arange(back), n_related)[None, :]
    for lo in range(0, len(events), _CHUNK):
        idx = events[lo : lo + _CHUNK]
        u, t = users[idx], times[idx]
        anchors = items_out[idx[:, None] - 1 - np.arange(back)]  # (n, back), newest first
        cand = world.item_related[np.maximum(anchors, 0)]  # (n, back, n_related)
        cand = np.where(anchors[:, :, None] >= 0, cand, -1).reshape(len(idx), -1)
        weight = prior + np.log(world.item_popularity[np.maximum(cand, 0)])
        items_out[idx] = _choose(world, pairs, u, t, world.tastes(u, t), cand, weight, rng)


def _rate(
    world: _World,
    users: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Ratings ``clip(round(mu + b_u + b_i + p_u(t) . q_i + noise * N(0, 1)), 1, 5)``."""
    c = world.config
    out = np.empty(len(users), dtype=np.float32)
    for lo in range(0, len(users), _CHUNK):
        u, i = users[lo : lo + _CHUNK], items[lo : lo + _CHUNK]
        tastes = world.tastes(u, times[lo : lo + _CHUNK])
        mean = (
            _MU
            + world.user_bias[u]
            + world.item_bias[i]
            + np.einsum("nf,nf->n", tastes, world.item_factors[i])
        )
        raw = mean + c.noise * rng.standard_normal(len(i))
        out[lo : lo + _CHUNK] = np.clip(np.rint(raw / c.rating_step) * c.rating_step, 1.0, 5.0)
    return out
