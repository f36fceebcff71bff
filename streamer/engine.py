"""What a worker does with events, apart from Kafka and Redis: evaluate, learn, re-rank."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from recsys_online.evaluate import ErrorScore, RankingScore
from recsys_online.events import Rating
from recsys_online.factors import FactorParams
from recsys_online.recommender import Recommendation, Recommender, RecommenderConfig
from streamer.settings import Settings

Lists = dict[str, list[Recommendation]]


class StreamEngine:
    """A worker's model and live metrics; every method is synchronous and does no I/O.

    ``learn_ratings`` is test-then-train for a micro-batch: each rating's prediction comes
    from the state before the batch, and its rank is taken in the list that user was last
    served (the list the app could show when the user acted); then the batch is learned
    and the lists of the users it touched are recomputed in one batched ranking.

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
        self.events = 0
        self.deadletters = 0
        self.freshness_ms: deque[float] = deque(maxlen=s.metrics_window)
        self._rate: deque[tuple[float, int]] = deque(maxlen=64)  # (time, events) samples

    # ------------------------------------------------------------------ events
    def learn_ratings(self, ratings: Sequence[Rating]) -> Lists:
        """Evaluate, learn and re-rank a micro-batch; returns the touched users' new lists."""
        if not ratings:
            return {}
        model, k = self.model, self.settings.k
        users = [r.user for r in ratings]
        items = [r.item for r in ratings]
        values = [r.rating for r in ratings]
        for y, y_pred in zip(values, model.predict_many(users, items).tolist(), strict=True):
            self.errors.update(y, y_pred)
        relevant = [n for n, v in enumerate(values) if v >= self.settings.relevant]
        unserved = sorted({users[n] for n in relevant if users[n] not in self.served})
        before = dict(zip(unserved, model.top_items(unserved, k), strict=True))
        for n in relevant:
            shown = self.served.get(users[n]) or before.get(users[n], [])
            self.ranking.update(shown.index(items[n]) if items[n] in shown else None)
        model.learn_many(users, items, values, [r.timestamp for r in ratings])
        self.events += len(ratings)
        self._rate.append((time.monotonic(), self.events))
        self.version += 1
        touched = list(dict.fromkeys(users))
        return self._serve(touched)

    def relearn(self, ratings: Sequence[Rating]) -> None:
        """Learn ratings replayed from the log (already evaluated when they were live)."""
        if not ratings:
            return
        self.model.learn_many(
            [r.user for r in ratings],
            [r.item for r in ratings],
            [r.rating for r in ratings],
            [r.timestamp for r in ratings],
        )
        self.events += len(ratings)
        self.version += 1

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
            return {}
        lists = dict(zip(users, self.model.recommend_many(users, self.settings.k), strict=True))
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
        self.freshness_ms.extend(max(0.0, now_ms - t) for t in produced_ms)

    def events_per_s(self) -> float:
        """Learning throughput over the recent samples."""
        if len(self._rate) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def metrics(self, lag: int = 0) -> dict[str, float | int]:
        """The live figures published to Redis and Prometheus."""
        fresh = np.asarray(self.freshness_ms, dtype=np.float64)
        rank = self.ranking.summary()
        err = self.errors.summary()
        return {
            "events": self.events,
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
