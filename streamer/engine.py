"""What a worker does with events, apart from Kafka and Redis: evaluate, learn, re-rank."""

from __future__ import annotations

import heapq
import math
import time
import zlib
from array import array
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from recsys_online.evaluate import ErrorScore, RankingScore, rank_in
from recsys_online.events import Rating
from recsys_online.factors import RATES, FactorParams
from recsys_online.ids import IdIndex, grown, row_map
from recsys_online.recommender import Recommendation, Recommender, RecommenderConfig
from streamer.metrics import (
    DEADLETTER_FIELD,
    FRESHNESS_BUCKETS,
    REFRESH_BUCKETS,
    Histogram,
    Quantiles,
    deadletter_kind,
)
from streamer.settings import Settings
from streamer.similar import Shard, SimilarDue

Lists = dict[str, list[Recommendation]]

# A "more like this" list no rating moved is written again after this long, so it
# follows the items around it (their tags, their own ratings); sooner where the lists'
# TTL is shorter, so that none expires first (:func:`similar_max_age`).
SIMILAR_MAX_AGE_S = 3600.0


def similar_max_age(settings: Settings) -> float:
    """How old a "more like this" list gets before it is written again: an hour, or 90%
    of the lists' TTL (``RECSYS_RECS_TTL_S``) where that is shorter (a list written at
    the hour with a 10-minute TTL was missing 50 minutes of every hour).

    >>> similar_max_age(Settings()), similar_max_age(Settings(recs_ttl_s=600))
    (3600.0, 540.0)
    """
    return min(SIMILAR_MAX_AGE_S, 0.9 * settings.recs_ttl_s)


def _without_secrets(settings: Settings) -> Settings:
    """``settings`` with no credential: the Redis URL the default one, the Kafka user and
    password blank (the engine reads neither; a restore adopts the running worker's).

    >>> s = _without_secrets(Settings(redis_url="redis://:pw@h:6379/0", kafka_sasl_password="x"))
    >>> s.redis_url == Settings().redis_url, s.kafka_sasl_password
    (True, '')
    """
    return replace(
        settings,
        redis_url=Settings.redis_url,
        kafka_sasl_username="",
        kafka_sasl_password="",
    )


def event_time_steps(ratings: Sequence[Rating], window_s: float) -> list[list[Rating]]:
    """``ratings`` cut into learning steps in which no user appears twice and which
    follow event time: the ratings (sorted by time, ties kept in order) are cut into
    windows of ``window_s`` seconds of event time, and each window into rounds, round j
    holding each user's j-th rating of the window.

    So every user's ratings keep their order and no step mixes ratings further apart in
    time than the window. A live micro-batch (a fraction of a second of event time) takes
    as many steps as its most active user has ratings in it, usually one; a backlog,
    where one batch can span days, takes at least one step per window.

    >>> rs = [Rating(u, str(n), 4.0, t) for n, (u, t) in enumerate(
    ...     [("a", 0), ("b", 1), ("a", 2), ("c", 3), ("d", 50), ("e", 9)])]
    >>> [" ".join(r.user + r.item for r in step) for step in event_time_steps(rs, 10.0)]
    ['a0 b1 c3 e5', 'a2', 'd4']
    """
    steps: list[list[Rating]] = []
    window: list[Rating] = []
    begins = -math.inf
    for r in sorted(ratings, key=lambda r: r.timestamp):
        if r.timestamp > begins + window_s:
            steps += _user_rounds(window)
            window, begins = [], r.timestamp
        window.append(r)
    return steps + _user_rounds(window)


def _user_rounds(ratings: list[Rating]) -> list[list[Rating]]:
    """Round j holds each user's j-th rating, in the given order."""
    rounds: list[list[Rating]] = []
    seen: Counter[str] = Counter()
    for r in ratings:
        j = seen[r.user]
        seen[r.user] += 1
        if j == len(rounds):
            rounds.append([])
        rounds[j].append(r)
    return rounds


def learning_rates(settings: Settings) -> dict[str, object]:
    """The :class:`FactorParams` the worker's settings give, by name, beside the factor
    count and seed (which a snapshot must match: ``Settings.MODEL_SETTINGS``)."""
    return {name: getattr(settings, name) for name in (*RATES, "adaptive")}


class StreamEngine:
    """A worker's model and live metrics; every method is synchronous and does no I/O.

    ``learn_ratings`` is test-then-train for a micro-batch, in steps that follow event
    time with no user twice in a step (:func:`event_time_steps`): each rating's
    prediction comes from the state after the earlier steps, and its rank is taken in the
    list that user was last served (the list the app could show when the user acted) and
    in a list ranked at that moment; the lists of the users the batch touched are then
    recomputed in one batched ranking.

    Examples
    --------
    >>> engine = StreamEngine(Settings(k=2, n_factors=4))
    >>> engine.upsert_item("a", {"jazz": 1.0})
    >>> engine.upsert_item("b", {"jazz": 1.0})
    >>> lists = engine.learn_ratings([Rating("u1", "a", 5.0, 1.0)])
    >>> [r.item for r in lists["u1"]]
    ['b']
    >>> engine.metrics()["events"]
    1
    """

    def __init__(self, settings: Settings, max_tracked_users: int = 200_000) -> None:
        self.settings = s = settings
        config = RecommenderConfig(
            scale=(s.rating_low, s.rating_high),
            relevant=s.relevant,
            seed=s.seed,
            similar_content_weight=s.similar_content_weight,
        )
        config.factors = replace(
            FactorParams(), n_factors=s.n_factors, seed=s.seed, **learning_rates(s)
        )
        self.model = Recommender(config)
        if s.share_items_every_s > 0:  # other workers add in what this one learns
            self.model.track_item_changes()
        self.errors = ErrorScore(s.metrics_window)
        self.ranking = RankingScore(s.metrics_window)  # in the list last served
        # In a list ranked at the rating, for the share ``fresh_eval_share`` of ratings.
        self.ranking_now = RankingScore(s.metrics_window)
        # "More like this": a relevant rating's item in the list of the item the user rated
        # before it (as written to Redis), and in the popular list as served, the same ratings.
        self.similar_ranking = RankingScore(s.metrics_window)
        self.similar_popular = RankingScore(s.metrics_window)
        self.popular_served: list[str] = []
        self._sample_below = round(s.fresh_eval_share * 2**32)
        self.max_tracked_users = max_tracked_users
        self.served: OrderedDict[str, list[str]] = OrderedDict()  # LRU of last lists
        # Every served user's list as item rows (by user row; -1: no item), past the LRU:
        # a delete re-ranks every list it is in, whoever the LRU still holds.
        self.shown = np.full((0, s.k), -1, np.int32)
        self.shown_empty = np.zeros(0, bool)  # by user row: the list last written was empty
        self.version = 0
        # Per served user: the score of their list's last place, and the catalog version
        # the list was ranked at.
        self.floor: dict[str, tuple[float, int]] = {}
        self.catalog_version = 0  # upserts applied so far
        self.changed_items: dict[str, int] = {}  # since the last refresh: item -> version
        self.events = 0  # ratings in the model: live and replayed from the log
        self.evaluated = 0  # live ratings evaluated then learned (never counts replays)
        self.deadletters = 0
        self.deadletter_kinds: dict[str, int] = {}  # kind of reason -> dead letters
        # Ratings whose produce time was later than their list's write to Redis: the
        # producer's clock is ahead of the worker's (their freshness counts as 0).
        self.freshness_clock_ahead = 0
        # The event ids of the last ``settings.dedupe_window`` ratings that carried one.
        self.event_ids: OrderedDict[str, None] = OrderedDict()
        self.freshness_ms: deque[float] = deque(maxlen=s.metrics_window)
        self.freshness_hist = Histogram(FRESHNESS_BUCKETS)  # seconds, since the start
        self.freshness_all = Quantiles()  # ms, since the start: a whole run's p50 and p99
        self.refresh_hist = Histogram(REFRESH_BUCKETS)  # seconds to rank + publish a batch
        self.last_rank_s = 0.0  # the last batched ranking call, for refresh_hist
        self.rank_s_total = 0.0  # every ranking call's, summed (several calls, one write)
        # (time, events learned) after each batch, over the last RATE_WINDOW_S seconds
        self._rate: deque[tuple[float, int]] = deque(maxlen=10_000)  # trimmed when read, too
        # Event time: the latest rating learned. While ``live`` is False (a worker catching
        # up on a backlog), catalog upserts dated after it wait in ``pending``.
        self.watermark = -math.inf
        self._live = True
        self.pending: dict[str, tuple[dict[str, float], float]] = {}
        self._due: list[tuple[float, str]] = []  # heap of (timestamp, item) over ``pending``
        # Ids of deleted items whose rows were freed (compact_if_due): a few bytes each
        # instead of a row in every item array, so the worker still knows them as deleted.
        self.freed = IdIndex()
        # Deleted items (not freed) by their delete's event time: a rating made while the
        # item was listed, read after the delete (a worker catching up), is learned.
        self.deleted_at: dict[str, float] = {}
        self.freed_at = array("d")  # the same, for freed ids, by their row in ``freed``
        # Ratings partitions whose ratings reached the model through other workers'
        # shared item changes (RECSYS_SHARE_ITEMS_EVERY_S): learning one of them here too
        # would count its ratings twice, so the worker rebuilds first.
        self.shared_from: set[int] = set()
        # "More like this": which items' lists are due (``similar_lists``), by this clock.
        self.similar = SimilarDue(similar_max_age(s))
        self.similar_clock = time.time
        self.similar_gone: list[str] = []  # deleted since the last tick: keys to remove
        self._similar_content = 0  # the content vectors' full refreshes, as last seen

    # ------------------------------------------------------------------ events
    def learn_ratings(self, ratings: Sequence[Rating]) -> Lists:
        """Evaluate, learn and re-rank a micro-batch; returns the touched users' new lists.

        The batch is learned in steps that follow event time and in which no user appears
        twice (:func:`event_time_steps`, windows of ``settings.learn_window_s``). In each
        step every rating is predicted, and every relevant one ranked, from the state
        after all earlier steps (test-then-train), then the step is learned. The rank is
        taken in the list the user was last served (``ranking``: what the app showed) and
        in a list ranked at that moment (``ranking_now``: what the replay CLI measures);
        they differ when a list went stale between the user's visits. Catalog items due
        by a step's time enter before it. The lists of the users the batch touched are
        computed, with reasons, once at the end.
        """
        if not ratings:
            return {}
        if not self._rate:  # (the first batch since a start or restore counts in the rate)
            self._rate.append((time.monotonic(), self.events))
        touched: set[str] = set()
        for step in event_time_steps(ratings, self.settings.learn_window_s):
            self._advance(step)
            self._evaluate_and_learn(step, touched)
            touched.update(r.user for r in step)
        self.events += len(ratings)
        self.evaluated += len(ratings)
        self._rate.append((time.monotonic(), self.events))
        self.version += 1
        self._similar_moved_by(ratings)
        return self._serve(dict.fromkeys(r.user for r in ratings))

    def _evaluate_and_learn(self, step: Sequence[Rating], touched: set[str]) -> None:
        """Test, then train, one step: predict each rating and rank each relevant one in
        the user's list, then learn them all."""
        model = self.model
        users = [r.user for r in step]
        items = [r.item for r in step]
        values = [r.rating for r in step]
        self.errors.update_many(values, model.predict_many(users, items))
        # A re-rating of an item the user rated before is not ranked (as in the replay):
        # lists exclude every rated item, so it could only count as a miss.
        again = model.has_rated(users, items)
        # Nor a rating of an item deleted since (a delete read ahead of the ratings made
        # while it was listed, as a worker catching up reads them): no list holds it.
        relevant = [
            n
            for n, v in enumerate(values)
            if v >= self.settings.relevant and not again[n] and not self._gone(items[n])
        ]
        # A list ranked now, for the users whose served list is not what the app shows
        # (none yet, or changed by their earlier rating in this batch: it would have been
        # published by the time of this one) and for the sampled ratings of ``ranking_now``.
        raters = {users[n] for n in relevant}
        served = {u: self._as_served(u) for u in raters}
        stale = {u for u in raters if u in touched or served[u] is None}
        sample = [n for n in relevant if self._sampled(users[n], items[n])]
        ranked = sorted(stale.union(users[n] for n in sample))
        now = dict(zip(ranked, model.top_items(ranked, self.settings.k), strict=True))
        shown = [(now if users[n] in stale else served)[users[n]] for n in relevant]  # as served
        self.ranking.update_many(list(map(rank_in, shown, (items[n] for n in relevant))))
        self.ranking_now.update_many([rank_in(now[users[n]], items[n]) for n in sample])
        self._score_similar([users[n] for n in relevant], [items[n] for n in relevant])
        self._learn(step)

    def _gone(self, item: str) -> bool:
        """The item is deleted (its row held, or freed)."""
        return self.model.is_deleted(item) or self.was_freed(item)

    def _as_served(self, user: str) -> list[str] | None:
        """The list the app shows ``user``, as this worker last wrote it (None: none
        written that it knows of). Past the tracked users' cache, from the item rows it
        keeps of every list (:attr:`shown`); an empty list shows the popular one."""
        listed = self.served.get(user)
        if listed is None:
            row = self.model.users.get(user)
            if row is None or row >= len(self.shown):
                return None
            rows = self.shown[row]
            rows = rows[rows >= 0]
            if not len(rows):  # never written (unknown here), or written empty
                return self.popular_served if self._written_empty(row) else None
            listed = self.model.items.ids_of(rows.tolist())
        return listed or self.popular_served

    def _score_similar(self, users: list[str], items: list[str]) -> None:
        """Test the "more like this" lists before learning: for each relevant rating whose
        user rated an item before, whose list was written with something in it, the
        rating's item's rank in that list, and in the popular list as last served."""
        model = self.model
        if self.settings.similar_every_s <= 0 or not users:
            return
        u, i = model.users.get_many(users), model.items.get_many(items)
        recent, listed = model.cooc.recent, self.similar.listed
        ok = (u >= 0) & (u < len(recent)) & (i >= 0)
        before = np.full(len(u), -1, np.int64)
        before[ok] = recent[u[ok], 0]  # (newest first; -1: none)
        ok &= (before >= 0) & (before < len(listed))
        mine = self.similar.mine  # (lists another worker writes are its to test)
        if mine is not None:
            ok &= before < len(mine)
            ok[ok] = mine[before[ok]]
        shown = listed[before[ok]]
        written = (shown >= 0).any(axis=1)
        shown, wanted = shown[written], i[ok][written]
        if not len(wanted):
            return
        at = shown == wanted[:, None]
        place = np.where(at.any(axis=1), at.argmax(axis=1), -1).tolist()
        self.similar_ranking.update_many([p if p >= 0 else None for p in place])
        names = model.items.ids_of(wanted.tolist())
        self.similar_popular.update_many([rank_in(self.popular_served, x) for x in names])

    def _learn(self, step: Sequence[Rating], shared: bool = True) -> None:
        """Learn a step in slices of at most ``learn_step_max`` ratings, in order
        (``shared``: see :meth:`Recommender.learn_many`).

        One SGD call adds up the gradients of a row met several times, so a large step
        moves a popular item, its tags and the blend by many ratings' worth at once from
        one stale state: on a live-paced stream (steps of 1,000 distinct users) that cost
        RMSE 0.7977 against 0.7733 in slices of 64, and NDCG@10 0.3405 against 0.3926.
        """
        n = self.settings.learn_step_max
        for lo in range(0, len(step), n):
            part = step[lo : lo + n]
            self.model.learn_many(
                [r.user for r in part],
                [r.item for r in part],
                [r.rating for r in part],
                [r.timestamp for r in part],
                shared=shared,
            )

    def _sampled(self, user: str, item: str) -> bool:
        """The rating is in the ``fresh_eval_share`` sample that ``ranking_now`` covers:
        by a hash of the pair, so the same ratings in every process and run. A sample of
        users instead swings with a few heavy ones: on bench_stream's synthetic year,
        in-process, 0.2836 against 0.2607 for every rating; this sample, 0.2608."""
        return zlib.crc32(f"{user}\x00{item}".encode()) < self._sample_below

    def relearn(self, ratings: Sequence[Rating]) -> None:
        """Learn ratings replayed from the log (already evaluated when they were live), in
        the same steps as live learning. Not among the item changes shared with other
        workers: they had these ratings when they were live."""
        if not ratings:
            return
        self._rate.append((time.monotonic(), self.events))  # (the rate spans the replay)
        for step in event_time_steps(ratings, self.settings.learn_window_s):
            self._advance(step)
            self._learn(step, shared=False)
        self.events += len(ratings)
        self._rate.append((time.monotonic(), self.events))
        self.version += 1
        self._similar_moved_by(ratings)

    def _similar_moved_by(self, ratings: Sequence[Rating]) -> None:
        """Learned ``ratings`` moved the co-occurrence of each rated item and of the items
        in its rater's ring (the pairs go both ways): all their similar lists fall due.
        (Only the rated item's did: the list "rated next" is for, the earlier item's,
        waited for that item's own next rating, or the hour of a list's maximum age.)"""
        if self.settings.similar_every_s <= 0:
            return
        model = self.model
        users = model.users.get_many([r.user for r in ratings])
        users = users[(users >= 0) & (users < len(model.cooc.recent))]
        rings = model.cooc.recent[users].ravel()
        self._similar_rows_moved(
            np.concatenate([model.items.get_many([r.item for r in ratings]), rings])
        )

    def similar_moved(self, items: Sequence[str]) -> None:
        """These items' co-occurrence moved (rated here, or pairs another worker shared):
        their similar lists fall due, ``settings.similar_every_s`` after their last write."""
        if self.settings.similar_every_s > 0 and len(items):
            self._similar_rows_moved(self.model.items.get_many(items))

    def _similar_rows_moved(self, rows: np.ndarray) -> None:
        """:meth:`similar_moved` by item rows (-1: not an item here, skipped)."""
        self.similar.rated(rows[rows >= 0], self.similar_clock(), self.settings.similar_every_s)

    LIVE_FIGURES = (
        "version",  # (a list's model_version never goes back on a worker)
        "evaluated",
        "deadletters",
        "deadletter_kinds",
        "errors",
        "ranking",
        "ranking_now",
        "similar_ranking",
        "similar_popular",
        "freshness_ms",
        "freshness_hist",
        "freshness_all",
        "freshness_clock_ahead",
        "refresh_hist",
    )

    def successor(self) -> StreamEngine:
        """An empty model for a rebuild (after a rebalance) that keeps this worker's live
        figures: the evaluation windows, counters and histograms go on, so monitoring
        sees no reset, while ``events`` counts the new model's ratings from zero."""
        new = StreamEngine(self.settings, self.max_tracked_users)
        self.hand_over_live_figures(new)
        return new

    def add_counts_of(self, other: StreamEngine) -> None:
        """Add the dead letters ``other`` counted (a fresh worker's, before the snapshot
        it restores loaded: bad catalog or user events read meanwhile) to this engine's.

        >>> snap, fresh = StreamEngine(Settings(n_factors=2)), StreamEngine(Settings(n_factors=2))
        >>> snap.count_deadletter("malformed JSON: x"); fresh.count_deadletter("tags: bad")
        >>> snap.add_counts_of(fresh); snap.deadletters, sorted(snap.deadletter_kinds)
        (2, ['invalid', 'malformed'])
        """
        self.deadletters += other.deadletters
        for kind, n in other.deadletter_kinds.items():
            self.deadletter_kinds[kind] = self.deadletter_kinds.get(kind, 0) + n

    def hand_over_live_figures(self, to: StreamEngine) -> None:
        """Give ``to`` (a rebuild's model, or a snapshot loaded by a running worker) this
        engine's live figures, so that monitoring sees no reset or step back: its
        counters and windows go on from here, and lists' ``model_version`` from the
        larger of the two.

        >>> old, snap = StreamEngine(Settings(n_factors=2)), StreamEngine(Settings(n_factors=2))
        >>> old.version, old.deadletters, snap.version, snap.deadletters = 250, 8, 100, 3
        >>> old.hand_over_live_figures(snap)
        >>> snap.version, snap.deadletters
        (250, 8)
        """
        version = max(self.version, to.version)
        for name in self.LIVE_FIGURES:
            setattr(to, name, getattr(self, name))
        to.version = version

    def serve(self, users: Iterable[str]) -> Lists:
        """Fresh lists for these users (and remember them as served)."""
        return self._serve(users)

    def upsert_item(self, item: str, tags: dict[str, float], timestamp: float = 0.0) -> None:
        """A new or changed catalog item; matching users see it at the next refresh.

        While the engine is not :attr:`live` (catching up on a backlog), an upsert dated
        after the latest rating learned waits until the ratings reach its time, so users
        are not shown (and ranked against) items from their future, up to one learning
        step: a step's items come in at its latest rating's time, and a step spans at most
        ``settings.learn_window_s`` of event time. A rating of a waiting item brings it in
        at once. Setting ``live`` applies whatever waits.

        >>> engine = StreamEngine(Settings(k=2, n_factors=4))
        >>> engine.live = False
        >>> engine.upsert_item("old", {"jazz": 1.0}, timestamp=5.0)
        >>> engine.upsert_item("new", {"jazz": 1.0}, timestamp=50.0)
        >>> sorted(engine.pending), engine.knows_item("new")
        (['new', 'old'], True)
        >>> _ = engine.learn_ratings([Rating("u1", "old", 5.0, 10.0)])
        >>> sorted(engine.pending)
        ['new']
        >>> engine.live = True
        >>> engine.pending, engine.metrics()["items"]
        ({}, 2)
        """
        self.pending.pop(item, None)  # the latest upsert of an item wins
        self.deleted_at.pop(item, None)
        if self._live or timestamp <= self.watermark:
            self._apply_upsert(item, tags, timestamp)
        else:
            self.pending[item] = (tags, timestamp)
            heapq.heappush(self._due, (timestamp, item))
            if len(self._due) > 2 * len(self.pending) + 64:  # re-upserts leave stale entries
                self._due = [(ts, x) for x, (_, ts) in self.pending.items()]
                heapq.heapify(self._due)

    @property
    def live(self) -> bool:
        """True when the worker is caught up: catalog events apply as they come."""
        return self._live

    @live.setter
    def live(self, value: bool) -> None:
        self._live = value
        if value:
            self._release(math.inf)

    def __getstate__(self) -> dict:
        """The engine's state without the deployment's secrets: a snapshot file may sit
        on a shared volume, and a restore works under the settings it is started with
        (:meth:`adopt`). The Kafka password and Redis URL's credentials are left out."""
        state = self.__dict__.copy()
        state["settings"] = _without_secrets(self.settings)
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("event_ids", OrderedDict())  # (pickled before it existed)
        state.setdefault("freed", IdIndex())
        state.setdefault("deleted_at", {})
        state.setdefault("freed_at", array("d", [-math.inf]) * len(state["freed"]))
        state.setdefault("freshness_clock_ahead", 0)
        state.setdefault("shared_from", set())
        state.setdefault("freshness_all", Quantiles())
        state.setdefault("deadletter_kinds", {})
        state.setdefault("similar", SimilarDue(similar_max_age(state["settings"])))
        state.setdefault("similar_clock", time.time)
        state.setdefault("similar_gone", [])
        state.setdefault("_similar_content", 0)
        window = state["settings"].metrics_window
        state.setdefault("similar_ranking", RankingScore(window))
        state.setdefault("similar_popular", RankingScore(window))
        state.setdefault("popular_served", [])
        state.setdefault("rank_s_total", 0.0)
        # (time.monotonic() samples of another process: its clock may be far ahead, and
        # events_per_s read 0 until 10,000 batches pushed them out)
        state["_rate"] = deque(maxlen=10_000)
        # Histograms pickled with other buckets (an earlier version's) start afresh with
        # today's: kept, they would cap the quantiles at their old top bound for good,
        # and expose buckets the other workers' do not (Prometheus sums them by bound).
        for name, bounds in (
            ("freshness_hist", FRESHNESS_BUCKETS),
            ("refresh_hist", REFRESH_BUCKETS),
        ):
            hist = state.get(name)
            if hist is not None and hist.bounds.tolist() != list(bounds):
                state[name] = Histogram(bounds)
        old = "shown" not in state  # (pickled before it existed: from the LRU's lists)
        state.setdefault("shown", np.full((0, state["settings"].k), -1, np.int32))
        state.setdefault("shown_empty", np.zeros(len(state["shown"]), bool))
        self.__dict__.update(state)
        if old and self.served:
            lists = list(self.served.values())
            rows = np.full((len(lists), max(map(len, lists))), -1, np.int32)
            filled = np.arange(rows.shape[1]) < np.array([len(v) for v in lists])[:, None]
            rows[filled] = self.model.items.get_many([i for v in lists for i in v])
            self._note_shown(list(self.served), rows)

    def adopt(self, settings: Settings) -> None:
        """Work under ``settings`` from now on: an engine restored from a snapshot taken
        under other values of the settings a model does not depend on (those outside
        ``Settings.MODEL_SETTINGS``, which a snapshot must match) follows the current
        ones: the factors' step sizes, L2 and AdaGrad switch (the model learns on from
        its factors, a row AdaGrad starts on from its first step), the "more like this"
        content weight, the share of ratings ranked fresh, the dedupe window (ids past
        it, all of them at 0, are forgotten), the metrics window (the latest figures
        held are kept).

        >>> engine = StreamEngine(Settings(dedupe_window=5))
        >>> engine.remember(["a", "b"])
        >>> engine.adopt(Settings(dedupe_window=0, similar_content_weight=0.5))
        >>> engine.learned_id("a"), engine.model.config.similar_content_weight
        (False, 0.5)
        >>> engine.adopt(Settings(lr_factor=0.05, adaptive=False))
        >>> engine.model.mf.params.lr_factor, engine.model.mf.params.adaptive
        (0.05, False)
        >>> engine.adopt(Settings(metrics_window=7))
        >>> engine.freshness_ms.maxlen, engine.errors.rolling_squared.size
        (7, 7)
        """
        window = settings.metrics_window
        if window != self.settings.metrics_window:
            scores = (self.errors, self.ranking, self.ranking_now)
            for score in (*scores, self.similar_ranking, self.similar_popular):
                score.resize(window)
            self.freshness_ms = deque(self.freshness_ms, maxlen=window)
        self.settings = settings
        self.similar.max_age_s = similar_max_age(settings)  # (the TTL may have changed)
        self.model.config.similar_content_weight = settings.similar_content_weight
        factors = replace(self.model.config.factors, **learning_rates(settings))
        self.model.config.factors = self.model.mf.params = factors
        self._sample_below = round(settings.fresh_eval_share * 2**32)
        self.remember(())

    def repeats(self, event_id: str | None) -> bool:
        """True when a rating with this ``event_id`` was learned within the last
        ``settings.dedupe_window`` ids (a redelivered duplicate); else the id is
        remembered (:meth:`remember`). A rating without an id never repeats.

        >>> engine = StreamEngine(Settings(dedupe_window=2))
        >>> [engine.repeats(e) for e in ("a", "b", "a", None, None, "c", "a")]
        [False, False, True, False, False, False, False]
        """
        if self.learned_id(event_id):
            return True
        self.remember([event_id])
        return False

    def learned_id(self, event_id: str | None) -> bool:
        """A rating with this ``event_id`` is among the last ones learned."""
        return event_id is not None and event_id in self.event_ids

    def remember(self, event_ids: Iterable[str | None]) -> None:
        """Note the ids of ratings just learned (the oldest beyond the window go)."""
        window = self.settings.dedupe_window
        ids = self.event_ids
        if window > 0:
            for event_id in event_ids:
                if event_id is not None:
                    ids[event_id] = None
        while len(ids) > window:
            ids.popitem(last=False)

    def knows_item(self, item: str) -> bool:
        """The item is in the catalog (or waiting to enter it at its time)."""
        return item in self.pending or self.model.items.get(item) is not None

    def _advance(self, ratings: Sequence[Rating]) -> None:
        """Move event time to the step's latest rating; bring in the upserts due by then
        and those of items the step rates."""
        self.watermark = max(self.watermark, max(r.timestamp for r in ratings))
        self._release(self.watermark, {r.item for r in ratings} & self.pending.keys())

    def _release(self, until: float, also: Iterable[str] = ()) -> None:
        """Apply the waiting upserts dated up to ``until``, and those of ``also``, in one
        batch (in time order)."""
        due, ready = self._due, {}  # (a dict: an item is due once, in time order)
        while due and due[0][0] <= until:
            ts, item = heapq.heappop(due)
            entry = self.pending.get(item)
            if entry is not None and entry[1] == ts:  # else applied or replaced since
                ready[item] = None  # (the same upsert twice leaves two heap entries)
        ready.update((item, None) for item in also if item in self.pending)
        self._apply_upserts([(item, *self.pending.pop(item)) for item in ready])
        if not self.pending:
            due.clear()

    def _bring_in(self, item: str) -> None:
        """Apply a waiting item's upsert now."""
        self._release(-math.inf, [item])

    def _apply_upsert(self, item: str, tags: dict[str, float], timestamp: float) -> None:
        self._apply_upserts([(item, tags, timestamp)])

    def _apply_upserts(self, upserts: Sequence[tuple[str, dict[str, float], float]]) -> None:
        # An upsert that changes nothing (e.g. the catalog read again after a restore) is
        # skipped.
        todo = [u for u in upserts if not self.model.has_item(u[0], u[1])]
        if not todo:
            return
        items, tags, stamps = zip(*todo, strict=True)
        self.model.upsert_items(items, tags, stamps)
        for item in items:
            self.catalog_version += 1
            self.changed_items[item] = self.catalog_version
        if self.settings.similar_every_s > 0:
            self.similar.changed(self.model.items.get_many(items), self.similar_clock())

    def delete_item(self, item: str, timestamp: float | None = None) -> Lists:
        """Remove an item; returns fresh lists for every tracked user who was shown it.
        ``timestamp``: the delete's event time (:meth:`rated_while_listed`). Deleting an
        item already deleted, freed or not (the catalog read again, a tombstone after a
        delete), changes nothing but an earlier delete time: the earliest known stands,
        whether or not the item was freed meanwhile (an unknown one stays unknown).

        >>> engine = StreamEngine(Settings(k=2, n_factors=4))
        >>> engine.upsert_item("a", {"jazz": 1.0}); _ = engine.delete_item("a", 100.0)
        >>> _ = engine.delete_item("a", 200.0); engine.rated_while_listed("a", 150.0)
        False
        """
        freed = self.was_freed(item)
        if freed or (item not in self.pending and self.model.is_deleted(item)):
            known = self._deleted_at(item)
            if timestamp is not None and known is not None and timestamp < known:
                if freed:
                    self.freed_at[self.freed.row(item)] = timestamp
                else:
                    self.deleted_at[item] = timestamp
            return {}  # (deleted already: no list holds it, and no pass over them all)
        if timestamp is not None:
            self.deleted_at[item] = timestamp
        if item in self.pending:  # known, so its later ratings are refused as deleted
            self._bring_in(item)
        self.model.delete_item(item)
        if self.settings.similar_every_s > 0:
            self.similar.deleted(self.model.items.get(item), self.similar_clock())
        # Its "more like this" key is removed, also when the model never had the item:
        # every start reads every delete the catalog kept, and removes their keys again
        # (a key whose removal a crash, a rebuild or a restore cut short would otherwise
        # outlive the item until its TTL), a chunk at a time (RedisSink.delete_similar).
        self.similar_gone.append(item)
        return self._serve(self.shown_to(item))

    def shown_to(self, item: str) -> list[str]:
        """The users whose last list from this model holds ``item`` (one vectorised pass
        over every served user's list, not only the LRU's).

        >>> engine = StreamEngine(Settings(k=2, n_factors=4), max_tracked_users=1)
        >>> for item in "ab":
        ...     engine.upsert_item(item, {"jazz": 1.0})
        >>> _ = engine.upsert_user("u1", {"jazz": 1.0}); _ = engine.upsert_user("u2", {"jazz": 1.0})
        >>> list(engine.served), engine.shown_to("a")
        (['u2'], ['u1', 'u2'])
        """
        row = self.model.items.get(item)
        if row is None or not len(self.shown):
            return []
        return self.model.users.ids_of(np.flatnonzero((self.shown == row).any(axis=1)).tolist())

    def _written_empty(self, row: int) -> bool:
        return row < len(self.shown_empty) and bool(self.shown_empty[row])

    def _note_shown(self, users: list[str], rows: np.ndarray) -> None:
        """Record each user's new list, as item ``rows`` (-1 past its end), in
        :attr:`shown`."""
        at = self.model.users.get_many(users)
        have = at >= 0
        if not have.any():
            return
        if self.shown.shape[1] < rows.shape[1]:  # (a larger k than before a snapshot)
            wider = np.full((len(self.shown), rows.shape[1]), -1, np.int32)
            wider[:, : self.shown.shape[1]] = self.shown
            self.shown = wider
        need = int(at.max()) + 1
        if need > len(self.shown):  # (amortised growth, as the model's own arrays)
            bigger = np.full((max(need, 2 * len(self.shown)), self.shown.shape[1]), -1, np.int32)
            bigger[: len(self.shown)] = self.shown
            self.shown = bigger
        self.shown[at[have]] = -1
        self.shown[at[have], : rows.shape[1]] = rows[have]
        self.shown_empty = grown(self.shown_empty, len(self.shown))
        self.shown_empty[at[have]] = (rows[have] < 0).all(axis=1)

    def compact_if_due(self) -> int:
        """Free the rows of deleted items (:meth:`Recommender.compact`) once they exceed
        ``settings.compact_share`` of the item rows, while :attr:`live` (a replay is
        learning ratings of items deleted since, as they were learned live); returns
        how many were freed. The cost is one pass over the item arrays and the users'
        histories, so a share of the rows keeps it a constant cost per delete.

        >>> engine = StreamEngine(Settings(k=2, n_factors=4, compact_share=0.5))
        >>> for item in "abc":
        ...     engine.upsert_item(item, {"jazz": 1.0})
        >>> _ = engine.delete_item("a"); engine.compact_if_due()
        0
        >>> _ = engine.delete_item("b"); engine.compact_if_due(), engine.model.n_items
        (2, 1)
        """
        if not self._live or not self.compact_due():
            return 0
        model, n = self.model, self.model.n_items
        deleted = np.flatnonzero(model.deleted[:n])
        gone = model.items.ids_of(deleted.tolist())
        rows = self.freed.rows(gone).tolist()
        self.freed_at.extend([-math.inf] * (len(self.freed) - len(self.freed_at)))
        for item, row in zip(gone, rows, strict=True):
            self.freed_at[row] = self.deleted_at.pop(item, -math.inf)
        keep = np.flatnonzero(~model.deleted[:n])
        new_row = row_map(keep, n)
        self.similar.keep_items(keep, new_row)
        self.shown = new_row[self.shown]  # (a freed row, and -1, map to -1)
        return model.compact()

    def compact_due(self) -> bool:
        """Deleted items hold ``settings.compact_share`` of the item rows, or more."""
        share, model = self.settings.compact_share, self.model
        return share > 0 and model.n_deleted >= max(1.0, share * model.n_items)

    def rated_while_listed(self, item: str, timestamp: float) -> bool:
        """A rating at event time ``timestamp`` of a deleted item came before the delete
        (its time known and later): it was made while the item was listed.

        >>> engine = StreamEngine(Settings(k=2, n_factors=4))
        >>> engine.upsert_item("a", {"jazz": 1.0}); _ = engine.delete_item("a", 100.0)
        >>> engine.rated_while_listed("a", 99.0), engine.rated_while_listed("a", 100.0)
        (True, False)
        """
        deleted = self._deleted_at(item)
        return deleted is not None and timestamp < deleted

    def _deleted_at(self, item: str) -> float | None:
        """The event time of a deleted (or freed) item's delete, when known."""
        deleted = self.deleted_at.get(item)
        if deleted is None and self.was_freed(item):
            deleted = self.freed_at[self.freed.row(item)]
        return deleted

    def was_freed(self, item: str) -> bool:
        """True for an item deleted, then freed by :meth:`compact_if_due`, and not listed
        again since.

        >>> engine = StreamEngine(Settings(k=2, n_factors=4, compact_share=0.5))
        >>> engine.upsert_item("a", {"jazz": 1.0}); _ = engine.delete_item("a")
        >>> engine.compact_if_due(), engine.was_freed("a"), engine.knows_item("a")
        (1, True, False)
        >>> engine.upsert_item("a", {"jazz": 1.0}); engine.was_freed("a")
        False
        """
        return item in self.freed and not self.knows_item(item)

    def bring_back_deleted(self, item: str) -> None:
        """Give a freed item a row again, as deleted: a replayed rating of it is then
        learned as it was live (it updates the factors, never lists the item)."""
        if self.was_freed(item):
            deleted = self._deleted_at(item)
            self.model.delete_item(item)
            if deleted is not None:
                self.deleted_at[item] = deleted

    def upsert_user(self, user: str, tags: dict[str, float]) -> Lists:
        """Declared user tags: the user's list is recomputed from them at once. Declaring
        none for a user the model does not know (a users-topic tombstone for someone
        never seen) changes nothing and serves no list.

        >>> engine = StreamEngine(Settings(k=2, n_factors=4))
        >>> engine.upsert_user("ghost", {}), engine.model.users.get("ghost") is None
        ({}, True)
        """
        return self._serve([user]) if self.declare_user(user, tags) else {}

    def declare_user(self, user: str, tags: dict[str, float]) -> bool:
        """:meth:`upsert_user` without serving a list; False when the declaration changes
        nothing (none, for a user the model does not know)."""
        if not tags and self.model.users.get(user) is None:
            return False
        self.model.upsert_user(user, tags)
        return True

    REFRESH_CHUNK = 256  # changed items scored per pass (bounds memory on bulk imports)
    REFRESH_USERS = 1024  # users checked per pass (each pass a few ms at most)

    def refresh(self) -> Lists:
        """New or changed catalog items reach the most recently served users' lists.

        The items changed since each user's list was ranked are scored for them (users
        times items, not the catalog); a user is re-ranked only when one of them scores
        above the last place of that list. Returns the re-ranked users' lists ({} when the
        catalog did not change or no list needs the new items).
        """
        return self._serve(self.refresh_due())

    def refresh_due(self) -> list[str]:
        """The users :meth:`refresh` would re-rank (and the changed items are taken as
        seen): a caller can then :meth:`serve` them a slice at a time."""
        last = deque(self.refresh_steps(), maxlen=1)
        return last[0] if last else []

    def refresh_steps(self) -> Iterator[list[str]]:
        """:meth:`refresh_due` a pass at a time: ``REFRESH_USERS`` users against
        ``REFRESH_CHUNK`` changed items per pass, yielding the users due so far after
        each, the last yield being the answer, so a caller can let other work run
        between passes (a catalog loaded at start is thousands of items to check against
        thousands of users; even a few items against 5,000 users' lists took 10 ms in
        one go)."""
        if not self.changed_items:
            return
        version = dict(self.changed_items)  # changed item -> catalog version it changed at
        self.changed_items.clear()
        recent = list(self.served)[-self.settings.refresh_users :]
        if not recent:
            return
        due: list[str] = []
        for lo in range(0, len(recent), self.REFRESH_USERS):
            users = recent[lo : lo + self.REFRESH_USERS]
            for step in self._refresh_users(users, version):
                yield due + step
            due += step

    def _refresh_users(self, users: list[str], version: dict[str, int]) -> Iterator[list[str]]:
        """:meth:`refresh_steps` for some of the served users: after each chunk of the
        changed items (``version``: item -> catalog version), those of ``users`` due so
        far."""
        changed = list(version.items())
        floor, ranked_at = zip(*(self.floor.get(u, (-math.inf, 0)) for u in users), strict=True)
        floors = np.array(floor, np.float32)
        ranked = np.array(ranked_at, np.int64)[:, None]
        best = np.full(len(users), -np.inf, np.float32)
        # A list showing an item changed since it was ranked (its tags, so its place and
        # reason, may be gone): due whatever the item scores now. (Most lists show none
        # of the changed items: one set test each finds them.)
        keys, served = version.keys(), self.served
        showed = np.array(
            [
                not keys.isdisjoint(served[u]) and any(version.get(x, 0) > at for x in served[u])
                for u, at in zip(users, ranked_at, strict=True)
            ],
            bool,
        )
        score = self.model.item_scorer(users)  # the users' side once, for every chunk
        for lo in range(0, len(changed), self.REFRESH_CHUNK):
            items, versions = zip(*changed[lo : lo + self.REFRESH_CHUNK], strict=True)
            scores = score(items)
            scores[np.array(versions, np.int64)[None, :] <= ranked] = -np.inf  # seen then
            np.maximum(best, scores.max(axis=1), out=best)
            due = (best > floors) | showed
            yield [users[n] for n in np.flatnonzero(due).tolist()]

    def popular(self) -> list[Recommendation]:
        """The list for users the model does not know (remembered as served)."""
        recs = self.model.popular(self.settings.k)
        self.popular_served = [r.item for r in recs]
        return recs

    def similar_lists(
        self, limit: int = 256, now: float | None = None, shard: Shard | None = None
    ) -> Lists:
        """The "more like this" lists due (:class:`~streamer.similar.SimilarDue`), up to
        ``limit`` of them, by item, the longest due first (lists never written before
        any other): new and changed items' lists and those they enter or showed, those
        that showed an item deleted since, those a rating moved (at most every
        ``settings.similar_every_s``), and any older than an hour. {} when the setting
        is 0. With ``shard`` (the ratings partitions this worker holds, of how many),
        only the lists of the items :func:`~streamer.similar.shard_of` them: each
        item's list is one worker's.

        >>> engine = StreamEngine(Settings(k=2, n_factors=4))
        >>> for item in "abc":
        ...     engine.upsert_item(item, {"jazz": 1.0})
        >>> {item: [r.item for r in recs] for item, recs in engine.similar_lists().items()}
        {'a': ['b', 'c'], 'b': ['a', 'c'], 'c': ['a', 'b']}
        >>> engine.similar_lists()
        {}
        >>> _ = engine.delete_item("c")
        >>> {item: [r.item for r in recs] for item, recs in engine.similar_lists().items()}
        {'a': ['b'], 'b': ['a']}
        """
        if self.settings.similar_every_s <= 0:
            return {}
        model, now = self.model, self.similar_clock() if now is None else now
        n, k = model.n_items, self.settings.k
        if model.content.full_refreshes != self._similar_content:  # every vector moved
            self._similar_content = model.content.full_refreshes
            self.similar.rated(np.arange(n), now, self.settings.similar_every_s)

        def entering(rows: np.ndarray, among: np.ndarray) -> np.ndarray:
            """An upper bound of the score of ``rows`` in the lists of ``among``: the best
            content cosine (weighted as the lists weigh it), plus 1 (a co-occurrence
            share's most) where one of ``rows`` is a neighbour."""
            weight = model.config.similar_content_weight
            best = model.content_cosines(rows, among).max(axis=1) * weight
            return best + (row_map(rows, n) >= 0)[model.cooc.nbr[among]].any(axis=1)

        mine = self.similar.owned(n, shard, model.items.ids_of)
        rows = self.similar.take(n, model.active, limit, now, entering, mine)
        if not len(rows):
            return {}
        items = model.items.ids_of(rows.tolist())
        lists, listed, scores = model.similar_rows(rows, items, k)
        floor = np.where(listed[:, -1] >= 0, scores[:, -1], 0.0)  # (a full list's last)
        self.similar.wrote(rows, listed.astype(np.int32), floor, now)
        return dict(zip(items, lists, strict=True))

    def similar_owned(self) -> int:
        """Live items whose "more like this" list this worker writes (as of its last
        :meth:`similar_lists`: every live item for a worker alone; 0 when off)."""
        if self.settings.similar_every_s <= 0:
            return 0
        live, mine = self.model.active[: self.model.n_items], self.similar.mine
        if mine is None:
            return int(live.sum())
        n = min(len(live), len(mine))
        return int((live[:n] & mine[:n]).sum())

    def similar_deleted(self) -> list[str]:
        """Items deleted, not listed again, whose "more like this" keys are not removed
        yet: the worker removes them, after it wrote the lists due. (The engine
        decides, not the agent that keeps item metadata: a list written after that
        agent removed the key would outlive the item.) They stay queued (in a snapshot
        too) until :meth:`similar_removed` says their keys are gone: a stop or a crash
        while Redis is away leaves them to the next start, whose catalog read finds the
        items deleted already and queues nothing.

        >>> engine = StreamEngine(Settings(k=2, n_factors=4))
        >>> engine.upsert_item("a", {"jazz": 1.0}); _ = engine.delete_item("a")
        >>> _ = engine.delete_item("b"); engine.upsert_item("b", {"jazz": 1.0})
        >>> engine.similar_deleted(), engine.similar_deleted()
        (['a'], ['a'])
        >>> engine.similar_removed(["a"]); engine.similar_deleted()
        []
        """
        model = self.model
        self.similar_gone = [
            x
            for x in dict.fromkeys(self.similar_gone)
            if x not in model.items or model.is_deleted(x)
        ]
        return list(self.similar_gone)

    def similar_removed(self, items: Sequence[str]) -> None:
        """The "more like this" keys of ``items`` (:meth:`similar_deleted`) are removed."""
        done = set(items)
        self.similar_gone = [x for x in self.similar_gone if x not in done]

    def _serve(self, users: Iterable[str]) -> Lists:
        users = list(users)
        if not users:
            self.last_rank_s = 0.0
            return {}
        started = time.perf_counter()
        ranked, rows = self.model.recommend_rows(users, self.settings.k)
        lists = dict(zip(users, ranked, strict=True))
        self.last_rank_s = time.perf_counter() - started
        self.rank_s_total += self.last_rank_s
        k = self.settings.k
        self._note_shown(users, rows)
        for user, recs in lists.items():
            self.served[user] = [r.item for r in recs]
            self.served.move_to_end(user)
            last = recs[-1].score if len(recs) == k else -math.inf
            self.floor[user] = (last, self.catalog_version)
        while len(self.served) > self.max_tracked_users:
            user, _ = self.served.popitem(last=False)
            self.floor.pop(user, None)
        return lists

    # ------------------------------------------------------------------ metrics
    def record_freshness(self, produced_ms: Iterable[float], published_at: float) -> None:
        """Milliseconds from each event's produce time to the list reaching Redis.

        Produce times come from the producer's clock: one later than the write (a clock
        ahead of the worker's) counts as 0 ms, and in ``freshness_clock_ahead``, so a
        skew shows instead of flattering the figures. A record with no produce time
        (Kafka's -1 or none: 0 or less here, or NaN) is not measured.

        >>> engine = StreamEngine(Settings(k=2, n_factors=4))
        >>> engine.record_freshness([1000.0, 1020.0, -1.0, 0.0], published_at=1.01)
        >>> list(engine.freshness_ms), engine.metrics()["freshness_clock_ahead"]
        ([10.0, 0.0], 1)
        """
        now_ms = published_at * 1000.0
        fresh = [now_ms - t for t in produced_ms if t > 0]
        ahead = sum(ms < 0 for ms in fresh)
        if ahead:
            self.freshness_clock_ahead += ahead
            fresh = [max(0.0, ms) for ms in fresh]
        self.freshness_ms.extend(fresh)
        self.freshness_all.observe_many(fresh)
        self.freshness_hist.observe_many(ms / 1000.0 for ms in fresh)

    def record_refresh(self, seconds: float) -> None:
        """One list refresh took ``seconds``, from its ranking call to Redis."""
        self.refresh_hist.observe_many([seconds])

    def histograms(self) -> dict[str, tuple[Histogram, str]]:
        """The histograms the worker exposes to Prometheus, by metric name."""
        return {
            "recsys_freshness_seconds": (
                self.freshness_hist,
                "Seconds from a rating's produce time to its user's new list in Redis.",
            ),
            "recsys_refresh_seconds": (
                self.refresh_hist,
                "Seconds to rank a batch of users' lists and write them to Redis.",
            ),
        }

    RATE_WINDOW_S = 10.0

    def events_per_s(self, now: float | None = None) -> float:
        """Ratings learned per second over the last ``RATE_WINDOW_S`` seconds, up to ``now``
        (so the figure falls to zero when the stream stops). The count at the window's
        start is interpolated between the samples around it: after a pause, the ratings
        learned before it do not spread over the whole gap.

        >>> engine = StreamEngine(Settings())
        >>> engine._rate.extend([(0.0, 0), (1.0, 100), (2.0, 300)])
        >>> engine.events = 300
        >>> engine.events_per_s(now=4.0), engine.events_per_s(now=20.0)
        (75.0, 0.0)
        >>> engine._rate.extend([(3600.0, 1300), (3601.0, 2300)]); engine.events = 2300
        >>> round(engine.events_per_s(now=3601.0))  # 1,000 in the last second, 1 before
        100
        """
        now = time.monotonic() if now is None else now
        start = now - self.RATE_WINDOW_S
        samples = self._rate
        # Keep the last sample before the window: the window's baseline comes from it.
        while len(samples) > 1 and samples[1][0] <= start:
            samples.popleft()
        if not samples:
            return 0.0
        t0, n0 = samples[0]
        if t0 < start:
            if len(samples) > 1:  # the count at the window's start, between two samples
                t1, n1 = samples[1]
                n0 += (n1 - n0) * (start - t0) / (t1 - t0)
            t0 = start
        return (self.events - n0) / (now - t0) if now > t0 else 0.0

    def metrics(self, lag: int = 0) -> dict[str, float | int]:
        """The live figures published to Redis and Prometheus."""
        fresh = np.asarray(self.freshness_ms, dtype=np.float64)
        rank = self.ranking.summary()
        rank_now = self.ranking_now.summary()
        similar, similar_pop = self.similar_ranking.summary(), self.similar_popular.summary()
        err = self.errors.summary()
        return {
            "events": self.events,
            "evaluated": self.evaluated,
            "relevant": rank["n"],
            "relevant_fresh": rank_now["n"],
            "rmse": err["rolling_rmse"],
            "mae": err["rolling_mae"],
            "rmse_total": err["rmse"],
            "ndcg_at_k": rank["rolling_ndcg_at_k"],
            "recall_at_k": rank["rolling_recall_at_k"],
            "ndcg_at_k_total": rank["ndcg_at_k"],
            "recall_at_k_total": rank["recall_at_k"],
            "ndcg_at_k_fresh": rank_now["rolling_ndcg_at_k"],
            "recall_at_k_fresh": rank_now["rolling_recall_at_k"],
            "ndcg_at_k_fresh_total": rank_now["ndcg_at_k"],
            "recall_at_k_fresh_total": rank_now["recall_at_k"],
            "similar_ndcg_at_k": similar["rolling_ndcg_at_k"],
            "similar_recall_at_k": similar["rolling_recall_at_k"],
            "similar_recall_at_k_popular": similar_pop["rolling_recall_at_k"],
            "similar_recall_at_k_total": similar["recall_at_k"],
            "similar_recall_at_k_popular_total": similar_pop["recall_at_k"],
            "similar_evaluated": similar["n"],
            "similar_owned": self.similar_owned(),
            "k": self.settings.k,
            "events_per_s": self.events_per_s(),
            "deadletters": self.deadletters,
            "lag": lag,
            "freshness_ms_p50": float(np.percentile(fresh, 50)) if len(fresh) else math.nan,
            "freshness_ms_p99": float(np.percentile(fresh, 99)) if len(fresh) else math.nan,
            "freshness_ms_p50_total": self.freshness_all.quantile(0.5),
            "freshness_ms_p99_total": self.freshness_all.quantile(0.99),
            "freshness_clock_ahead": self.freshness_clock_ahead,
            "model_version": self.version,
            "users": self.model.n_users,
            "mean_rating": self.model.mf.mu if self.model.mf.n_ratings else math.nan,
            "items": int(self.model.active[: self.model.n_items].sum()),
            "items_deleted": self.model.n_deleted,
        } | {DEADLETTER_FIELD + kind: n for kind, n in sorted(self.deadletter_kinds.items())}

    def count_deadletter(self, reason: str) -> None:
        """One more dead letter, counted in all and by the kind of its reason.

        >>> engine = StreamEngine(Settings(k=2, n_factors=4))
        >>> engine.count_deadletter("item_id: unknown item 'x'")
        >>> engine.count_deadletter("malformed JSON: oops")
        >>> m = engine.metrics(); m["deadletters"], m["deadletters_unknown_item"]
        (2, 1)
        """
        self.deadletters += 1
        kind = deadletter_kind(reason)
        self.deadletter_kinds[kind] = self.deadletter_kinds.get(kind, 0) + 1
