"""What a worker does with events, apart from Kafka and Redis: evaluate, learn, re-rank."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from recsys_online.evaluate import ErrorScore, RankingScore
from recsys_online.events import Rating
from recsys_online.factors import FactorParams
from recsys_online.recommender import Recommendation, Recommender, RecommenderConfig
from streamer.metrics import FRESHNESS_BUCKETS, REFRESH_BUCKETS, Histogram
from streamer.settings import Settings

Lists = dict[str, list[Recommendation]]


def user_unique_runs(ratings: Sequence[Rating]) -> list[list[Rating]]:
    """``ratings`` in rounds in which no user appears twice: round j holds each user's
    j-th rating of the batch, so every user's ratings keep their order, and a batch takes
    as many rounds as its most active user has ratings in it (usually a few).

    >>> rs = [Rating(u, str(n), 4.0, 0.0) for n, u in enumerate("abacb")]
    >>> [" ".join(r.user + r.item for r in run) for run in user_unique_runs(rs)]
    ['a0 b1 c3', 'a2 b4']
    """
    rounds: list[list[Rating]] = []
    seen: Counter[str] = Counter()
    for r in ratings:
        j = seen[r.user]
        seen[r.user] += 1
        if j == len(rounds):
            rounds.append([])
        rounds[j].append(r)
    return rounds


class StreamEngine:
    """A worker's model and live metrics; every method is synchronous and does no I/O.

    ``learn_ratings`` is test-then-train for a micro-batch, in user-unique rounds: each
    rating's prediction comes from the state after its user's earlier ratings, and its
    rank is taken in the list that user was last served (the list the app could show when
    the user acted); the lists of the users the batch touched are then recomputed in one
    batched ranking.

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
            scale=(s.rating_low, s.rating_high), relevant=s.relevant, seed=s.seed
        )
        config.factors = replace(FactorParams(), n_factors=s.n_factors, seed=s.seed)
        self.model = Recommender(config)
        self.errors = ErrorScore(s.metrics_window)
        self.ranking = RankingScore(s.metrics_window)
        self.max_tracked_users = max_tracked_users
        self.served: OrderedDict[str, list[str]] = OrderedDict()  # LRU of last lists
        self.version = 0
        self.catalog_changes = 0  # item upserts seen; a refresh is due when it moves
        self._refreshed_at_change = 0
        self.events = 0  # ratings in the model: live and replayed from the log
        self.evaluated = 0  # live ratings evaluated then learned (never counts replays)
        self.deadletters = 0
        self.freshness_ms: deque[float] = deque(maxlen=s.metrics_window)
        self.freshness_hist = Histogram(FRESHNESS_BUCKETS)  # seconds, since the start
        self.refresh_hist = Histogram(REFRESH_BUCKETS)  # seconds to rank + publish a batch
        self.last_rank_s = 0.0  # the last batched ranking call, for refresh_hist
        # (time, events learned) after each batch, over the last RATE_WINDOW_S seconds
        self._rate: deque[tuple[float, int]] = deque()

    # ------------------------------------------------------------------ events
    def learn_ratings(self, ratings: Sequence[Rating]) -> Lists:
        """Evaluate, learn and re-rank a micro-batch; returns the touched users' new lists.

        The batch is taken in rounds in which no user appears twice (see
        :func:`user_unique_runs`), as the replay evaluator takes its micro-batches: each
        rating is predicted and ranked after its user's earlier ratings were learned, and
        a user whose next rating is relevant is re-ranked first, so that rating is scored
        against the list the user would have been shown. Learning a user's ratings one
        round at a time is also what keeps heavy users from taking one oversized step.
        """
        if not ratings:
            return {}
        rounds = user_unique_runs(ratings)
        for j, run in enumerate(rounds):
            self._evaluate_and_learn(run)
            # Users whose next rating in the batch is relevant are scored against the
            # list they would see now: rank them (ids only; the published lists, with
            # reasons, are computed once at the end).
            if j + 1 < len(rounds):
                relevant = self.settings.relevant
                again = [r.user for r in rounds[j + 1] if r.rating >= relevant]
                if again:
                    lists = self.model.top_items(again, self.settings.k)
                    self.served.update(zip(again, lists, strict=True))
        self.events += len(ratings)
        self.evaluated += len(ratings)
        self._rate.append((time.monotonic(), self.events))
        self.version += 1
        return self._serve(dict.fromkeys(r.user for r in ratings))

    def _evaluate_and_learn(self, run: Sequence[Rating]) -> None:
        model, k = self.model, self.settings.k
        users = [r.user for r in run]
        items = [r.item for r in run]
        values = [r.rating for r in run]
        for y, y_pred in zip(values, model.predict_many(users, items).tolist(), strict=True):
            self.errors.update(y, y_pred)
        relevant = [n for n, v in enumerate(values) if v >= self.settings.relevant]
        unserved = sorted({users[n] for n in relevant if users[n] not in self.served})
        before = dict(zip(unserved, model.top_items(unserved, k), strict=True))
        for n in relevant:
            shown = self.served.get(users[n]) or before.get(users[n], [])
            self.ranking.update(shown.index(items[n]) if items[n] in shown else None)
        model.learn_many(users, items, values, [r.timestamp for r in run])

    def relearn(self, ratings: Sequence[Rating]) -> None:
        """Learn ratings replayed from the log (already evaluated when they were live), in
        the same user-unique runs as live learning."""
        if not ratings:
            return
        for run in user_unique_runs(ratings):
            self.model.learn_many(
                [r.user for r in run],
                [r.item for r in run],
                [r.rating for r in run],
                [r.timestamp for r in run],
            )
        self.events += len(ratings)
        self.version += 1

    LIVE_FIGURES = (
        "evaluated",
        "deadletters",
        "errors",
        "ranking",
        "freshness_ms",
        "freshness_hist",
        "refresh_hist",
    )

    def successor(self) -> StreamEngine:
        """An empty model for a rebuild (after a rebalance) that keeps this worker's live
        figures: the evaluation windows, counters and histograms go on, so monitoring
        sees no reset, while ``events`` counts the new model's ratings from zero."""
        new = StreamEngine(self.settings, self.max_tracked_users)
        for name in self.LIVE_FIGURES:
            setattr(new, name, getattr(self, name))
        return new

    def serve(self, users: Iterable[str]) -> Lists:
        """Fresh lists for these users (and remember them as served)."""
        return self._serve(users)

    def upsert_item(self, item: str, tags: dict[str, float], timestamp: float = 0.0) -> None:
        """A new or changed catalog item; matching users see it at the next refresh."""
        self.model.upsert_item(item, tags, timestamp)
        self.catalog_changes += 1

    def delete_item(self, item: str) -> Lists:
        """Remove an item; returns fresh lists for every tracked user who was shown it."""
        self.model.delete_item(item)
        shown = [u for u, items in self.served.items() if item in items]
        return self._serve(shown)

    def upsert_user(self, user: str, tags: dict[str, float]) -> Lists:
        """Declared user tags: the user's list is recomputed from them at once."""
        self.model.upsert_user(user, tags)
        return self._serve([user])

    def refresh(self) -> Lists:
        """Recompute the lists of the most recently served users if the catalog changed
        since the last refresh (new items reach them); otherwise their lists are as fresh
        as their last event made them, and nothing is done."""
        if self.catalog_changes == self._refreshed_at_change:
            return {}
        self._refreshed_at_change = self.catalog_changes
        recent = list(self.served)[-self.settings.refresh_users :]
        return self._serve(recent)

    def popular(self) -> list[Recommendation]:
        """The list for users the model does not know."""
        return self.model.popular(self.settings.k)

    def _serve(self, users: Iterable[str]) -> Lists:
        users = list(users)
        if not users:
            self.last_rank_s = 0.0
            return {}
        started = time.perf_counter()
        lists = dict(zip(users, self.model.recommend_many(users, self.settings.k), strict=True))
        self.last_rank_s = time.perf_counter() - started
        for user, recs in lists.items():
            self.served[user] = [r.item for r in recs]
            self.served.move_to_end(user)
        while len(self.served) > self.max_tracked_users:
            self.served.popitem(last=False)
        return lists

    # ------------------------------------------------------------------ metrics
    def record_freshness(self, produced_ms: Iterable[float], published_at: float) -> None:
        """Milliseconds from each event's produce time to the list reaching Redis."""
        now_ms = published_at * 1000.0
        fresh = [max(0.0, now_ms - t) for t in produced_ms]
        self.freshness_ms.extend(fresh)
        self.freshness_hist.observe_many(ms / 1000.0 for ms in fresh)

    def record_refresh(self, publish_s: float) -> None:
        """One list refresh took the last ranking call plus ``publish_s`` to reach Redis."""
        self.refresh_hist.observe_many([self.last_rank_s + publish_s])

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
        (so the figure falls to zero when the stream stops).

        >>> engine = StreamEngine(Settings())
        >>> engine._rate.extend([(0.0, 0), (1.0, 100), (2.0, 300)])
        >>> engine.events = 300
        >>> engine.events_per_s(now=4.0), engine.events_per_s(now=20.0)
        (75.0, 0.0)
        """
        now = time.monotonic() if now is None else now
        samples = self._rate
        # Keep the last sample before the window: it is the window's baseline.
        while len(samples) > 1 and samples[1][0] < now - self.RATE_WINDOW_S:
            samples.popleft()
        if not samples:
            return 0.0
        t0, n0 = samples[0]
        return (self.events - n0) / (now - t0) if now > t0 else 0.0

    def metrics(self, lag: int = 0) -> dict[str, float | int]:
        """The live figures published to Redis and Prometheus."""
        fresh = np.asarray(self.freshness_ms, dtype=np.float64)
        rank = self.ranking.summary()
        err = self.errors.summary()
        return {
            "events": self.events,
            "evaluated": self.evaluated,
            "rmse": err["rolling_rmse"],
            "mae": err["rolling_mae"],
            "rmse_total": err["rmse"],
            "ndcg_at_k": rank["rolling_ndcg_at_k"],
            "recall_at_k": rank["rolling_recall_at_k"],
            "ndcg_at_k_total": rank["ndcg_at_k"],
            "recall_at_k_total": rank["recall_at_k"],
            "k": self.settings.k,
            "events_per_s": self.events_per_s(),
            "deadletters": self.deadletters,
            "lag": lag,
            "freshness_ms_p50": float(np.percentile(fresh, 50)) if len(fresh) else 0.0,
            "freshness_ms_p99": float(np.percentile(fresh, 99)) if len(fresh) else 0.0,
            "model_version": self.version,
            "users": self.model.n_users,
            "mean_rating": self.model.mf.mu,
            "items": int(self.model.active[: self.model.n_items].sum()),
        }
