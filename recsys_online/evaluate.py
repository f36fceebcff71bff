"""Prequential (test-then-train) evaluation: predict and rank before learning each event."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from recsys_online.events import Event, ItemDelete, ItemUpsert, Rating
from recsys_online.recommender import Recommender


def ndcg_at_rank(rank: int | None) -> float:
    """NDCG of one relevant item found at 0-based ``rank`` (``None``: not in the list).

    With a single relevant item the ideal DCG is 1, so NDCG is ``1 / log2(rank + 2)``.

    >>> ndcg_at_rank(0), round(ndcg_at_rank(2), 3), ndcg_at_rank(None)
    (1.0, 0.5, 0.0)
    """
    return 0.0 if rank is None else 1.0 / math.log2(rank + 2)


def rank_in(listed: Sequence[str], item: str) -> int | None:
    """0-based position of ``item`` in a top-K list, ``None`` when it is not in it.

    >>> rank_in(["a", "b"], "b"), rank_in(["a", "b"], "c")
    (1, None)
    """
    return listed.index(item) if item in listed else None


class Window:
    """The last ``size`` values of a stream, appended in batches: a ring of float64.

    River's ``utils.Rolling`` does the same one value at a time (about 3 us a value per
    metric); a worker evaluates thousands of ratings per batch, so here a batch is one
    slice assignment.

    >>> w = Window(3)
    >>> w.extend([1.0, 2.0]); w.extend([3.0, 4.0, 5.0, 6.0]); w.mean()
    5.0
    >>> Window(3).mean()  # nothing held: no figure
    nan
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = size
        # Grown as values come, up to ``size``: a window of a million (a benchmark's
        # whole-run figures) over a short stream holds what came, not 8 MB of zeros,
        # in memory and in every model snapshot.
        self._ring = np.zeros(min(size, 1024), np.float64)
        self._next = 0  # where the next value goes
        self._full = False

    def extend(self, values) -> None:
        values = np.asarray(values, np.float64)[-self.size :]
        n, at = len(values), self._next
        if len(self._ring) < self.size and at + n >= len(self._ring):
            grown = np.zeros(min(self.size, max(2 * len(self._ring), at + n + 1)), np.float64)
            grown[:at] = self._ring[:at]  # (not wrapped yet: the ring is still filling)
            self._ring = grown
        size = len(self._ring)
        head = min(n, size - at)
        self._ring[at : at + head] = values[:head]
        self._ring[: n - head] = values[head:]
        self._full = self._full or at + n >= self.size
        self._next = (at + n) % size

    def __len__(self) -> int:
        return self.size if self._full else self._next

    def mean(self) -> float:
        n = len(self)
        return float(self._ring[:n].mean()) if n else math.nan

    def values(self) -> np.ndarray:
        """The values held, oldest first."""
        if not self._full:
            return self._ring[: self._next].copy()
        return np.concatenate((self._ring[self._next :], self._ring[: self._next]))

    def resized(self, size: int) -> Window:
        """A window of ``size`` holding the latest of these values.

        >>> w = Window(3); w.extend([1.0, 2.0, 3.0, 4.0])
        >>> w.resized(2).values().tolist(), w.resized(5).values().tolist()
        ([3.0, 4.0], [2.0, 3.0, 4.0])
        """
        out = Window(size)
        out.extend(self.values())
        return out


class RankingScore:
    """Cumulative and rolling NDCG@K and Recall@K (hit rate) over relevant events.

    Before any relevant event there is no figure: NaN, not 0 (which would read as a
    model that never ranks a liked item).

    >>> r = RankingScore(window=10); r.summary()["ndcg_at_k"]
    nan
    >>> r.update_many([0, None]); r.summary()["recall_at_k"]
    0.5
    """

    def __init__(self, window: int) -> None:
        self.n = 0
        self._ndcg = self._recall = 0.0
        self.rolling_ndcg, self.rolling_recall = Window(window), Window(window)

    def update(self, rank: int | None) -> None:
        self.update_many([rank])

    def update_many(self, ranks: Sequence[int | None]) -> None:
        """Score a batch of relevant events by the 0-based rank of each (``None``: not in
        the list)."""
        gains = [ndcg_at_rank(r) for r in ranks]
        hits = [float(r is not None) for r in ranks]
        self.n += len(gains)
        self._ndcg += math.fsum(gains)
        self._recall += math.fsum(hits)
        self.rolling_ndcg.extend(gains)
        self.rolling_recall.extend(hits)

    def resize(self, window: int) -> None:
        """Roll over the latest ``window`` events from now on (those held are kept)."""
        self.rolling_ndcg = self.rolling_ndcg.resized(window)
        self.rolling_recall = self.rolling_recall.resized(window)

    def summary(self) -> dict[str, float | int]:
        n = self.n or math.nan
        return {
            "n": self.n,
            "ndcg_at_k": self._ndcg / n,
            "recall_at_k": self._recall / n,
            "rolling_ndcg_at_k": self.rolling_ndcg.mean(),
            "rolling_recall_at_k": self.rolling_recall.mean(),
        }


def _cold(errors: ErrorScore, ranking: RankingScore) -> dict[str, float | int]:
    """The figures of the cold users' (or items') ratings: how many were predicted and
    their errors, how many were relevant (``n``) and their ranking."""
    return {"ratings": errors.n, **errors.summary(), **ranking.summary()}


class ErrorScore:
    """Cumulative and rolling RMSE and MAE of rating predictions.

    >>> e = ErrorScore(window=2)
    >>> e.update_many([4.0, 2.0, 5.0], [3.0, 2.0, 3.0])
    >>> e.summary()
    {'rmse': 1.2909944487358056, 'mae': 1.0, 'rolling_rmse': 1.4142135623730951, 'rolling_mae': 1.0}
    """

    def __init__(self, window: int) -> None:
        self.n = 0
        self._squared = self._absolute = 0.0
        self.rolling_squared, self.rolling_absolute = Window(window), Window(window)

    def update(self, y: float, y_pred: float) -> None:
        self.update_many([y], [y_pred])

    def update_many(self, y, y_pred) -> None:
        """Score a batch of predictions against the ratings."""
        err = np.asarray(y, np.float64) - np.asarray(y_pred, np.float64)
        squared, absolute = err * err, np.abs(err)
        self.n += len(err)
        self._squared += float(squared.sum())
        self._absolute += float(absolute.sum())
        self.rolling_squared.extend(squared)
        self.rolling_absolute.extend(absolute)

    def resize(self, window: int) -> None:
        """Roll over the latest ``window`` predictions from now on (those held are kept)."""
        self.rolling_squared = self.rolling_squared.resized(window)
        self.rolling_absolute = self.rolling_absolute.resized(window)

    def summary(self) -> dict[str, float]:
        """Cumulative and rolling RMSE and MAE; NaN before any prediction (not 0, which
        would read as perfect)."""
        n = self.n or math.nan
        return {
            "rmse": math.sqrt(self._squared / n),
            "mae": self._absolute / n,
            "rolling_rmse": math.sqrt(self.rolling_squared.mean()),
            "rolling_mae": self.rolling_absolute.mean(),
        }


@dataclass
class Checkpoint:
    """Figures of a prequential run so far. ``cold_users``/``cold_items`` restrict the
    error and ranking figures to raters with fewer than ``cold_ratings`` earlier ratings,
    and to items with fewer than ``cold_ratings`` earlier ratings (new items)."""

    events: int
    ratings: int
    k: int
    rmse: float
    mae: float
    rolling_rmse: float
    rolling_mae: float
    relevant: int  # relevant ratings ranked (re-ratings of an item are not: see prequential)
    ndcg_at_k: float
    recall_at_k: float
    rolling_ndcg_at_k: float
    rolling_recall_at_k: float
    coverage: float  # share of the live catalog that appeared in some served list
    elapsed_s: float
    events_per_s: float
    cold_users: dict[str, float | int] = field(default_factory=dict)
    cold_items: dict[str, float | int] = field(default_factory=dict)
    refused: int = 0  # ratings of deleted items, neither scored nor learned

    def as_dict(self) -> dict:
        return asdict(self)


def prequential(
    model: Recommender,
    events: Iterable[Event],
    k: int = 10,
    relevant: float = 4.0,
    window: int = 1000,
    checkpoint_every: int = 10_000,
    batch_size: int = 64,
    cold_ratings: int = 5,
) -> Iterator[Checkpoint]:
    """Run ``events`` through ``model`` test-then-train, yielding :class:`Checkpoint` s.

    For every rating, before the model learns it: the rating is predicted (error figures),
    and when it is relevant (``>= relevant``) the user's current top-``k`` list is computed
    and the item's rank in it scored (NDCG@K, Recall@K). Ratings are learned in
    micro-batches of up to ``batch_size`` in which no user appears twice, so every event
    sees all earlier events of its own user; item-side state may lag by less than one
    batch, as in a streaming worker that consumes in batches (``batch_size=1`` is strictly
    sequential). The last checkpoint covers the whole stream.

    As in the streaming worker: a rating of an item the user rated before counts in the
    error figures but is not ranked (lists exclude rated items, so it could only be a
    miss), and a rating of a deleted item is refused (counted in ``refused``, neither
    scored nor learned).

    Examples
    --------
    >>> from recsys_online.recommender import RecommenderConfig
    >>> model = Recommender(RecommenderConfig(signals=("pop",)))
    >>> stream = [Rating("a", "x", 5.0, 1.0), Rating("b", "x", 4.0, 2.0),
    ...           Rating("c", "y", 5.0, 3.0), Rating("b", "y", 5.0, 4.0)]
    >>> last = list(prequential(model, stream, k=1, batch_size=1))[-1]
    >>> last.ratings, last.relevant, last.recall_at_k
    (4, 4, 0.5)
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")  # (before any learning)
    if checkpoint_every < 1 or batch_size < 1:
        raise ValueError(
            f"checkpoint_every and batch_size must be >= 1, got {checkpoint_every} and {batch_size}"
        )
    errors, ranking = ErrorScore(window), RankingScore(window)
    cold_user_rank, cold_item_rank = RankingScore(window), RankingScore(window)
    cold_user_error, cold_item_error = ErrorScore(window), ErrorScore(window)
    user_count: dict[str, int] = {}
    item_count: dict[str, int] = {}
    served: set[str] = set()
    n_events = n_ratings = refused = 0
    started = time.perf_counter()
    batch: list[Rating] = []
    batch_users: set[str] = set()

    def flush() -> None:
        nonlocal n_ratings
        if not batch:
            return
        users = [r.user for r in batch]
        items = [r.item for r in batch]
        preds = model.predict_many(users, items)
        # Cold flags follow the stream order, event by event, even inside a batch.
        cold_user, cold_item = [], []
        errors.update_many([r.rating for r in batch], preds)
        for r in batch:
            cold_user.append(user_count.get(r.user, 0) < cold_ratings)
            cold_item.append(item_count.get(r.item, 0) < cold_ratings)
            user_count[r.user] = user_count.get(r.user, 0) + 1
            item_count[r.item] = item_count.get(r.item, 0) + 1
        y, predicted = np.array([r.rating for r in batch]), np.asarray(preds)
        for cold, score in ((cold_user, cold_user_error), (cold_item, cold_item_error)):
            if any(cold):
                score.update_many(y[cold], predicted[cold])
        # A re-rating of an item the user rated before is not ranked: their lists
        # exclude every item they rated, so it could only count as a miss.
        again = model.has_rated(users, items)
        rel = [n for n, r in enumerate(batch) if r.rating >= relevant and not again[n]]
        lists = model.top_items([users[n] for n in rel], k) if rel else []
        for n, recs in zip(rel, lists, strict=True):
            served.update(recs)
            rank = rank_in(recs, items[n])
            ranking.update(rank)
            if cold_user[n]:
                cold_user_rank.update(rank)
            if cold_item[n]:
                cold_item_rank.update(rank)
        model.learn_many(users, items, [r.rating for r in batch], [r.timestamp for r in batch])
        n_ratings += len(batch)
        batch.clear()
        batch_users.clear()

    def checkpoint() -> Checkpoint:
        elapsed = time.perf_counter() - started
        live = int(model.active[: model.n_items].sum())
        served_live = sum(1 for item in served if not model.is_deleted(item))
        return Checkpoint(
            events=n_events,
            ratings=n_ratings,
            k=k,
            **errors.summary(),
            relevant=ranking.n,
            **{key: v for key, v in ranking.summary().items() if key != "n"},
            coverage=served_live / live if live else 0.0,
            elapsed_s=elapsed,
            events_per_s=n_events / elapsed if elapsed > 0 else 0.0,
            cold_users=_cold(cold_user_error, cold_user_rank),
            cold_items=_cold(cold_item_error, cold_item_rank),
            refused=refused,
        )

    for event in events:
        n_events += 1
        if isinstance(event, Rating):
            if model.is_deleted(event.item):  # as the worker: dead-lettered, not learned
                refused += 1
            else:
                if event.user in batch_users:
                    flush()
                batch.append(event)
                batch_users.add(event.user)
                if len(batch) >= batch_size:
                    flush()
        else:
            flush()
            if isinstance(event, ItemUpsert):
                model.upsert_item(event.item, event.tags, event.timestamp)
            elif isinstance(event, ItemDelete):
                model.delete_item(event.item)
            else:
                raise TypeError(f"not an event: {event!r}")
        if n_events % checkpoint_every == 0:
            flush()
            yield checkpoint()
    if n_events % checkpoint_every or n_events == 0:
        flush()
        yield checkpoint()
