"""Event-time order across partitions, for a worker reading several at once."""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Collection
from typing import Generic, TypeVar

T = TypeVar("T")


class EventTimeMerge(Generic[T]):
    """Hold events of several partitions and release them in event-time order.

    Kafka keeps order within a partition only. A worker catching up on a backlog gets its
    partitions in runs (one partition's next few hundred events, then another's), and
    partitions drift apart in event time; learned in that order, the model would see
    each user's neighbours' future, then their past. So events are held until every
    partition that still has events to deliver has delivered up to their time: an event
    is released once its timestamp is at most the latest timestamp seen from each
    *waiting* partition (one whose consumer position is behind its end). A caught-up
    worker waits for nothing, so live events pass straight through.

    Two bounds keep a slow or silent partition from holding the rest: at most
    ``max_held`` events are held (the oldest go first), and once any event has waited
    ``max_hold_s`` seconds of wall time, everything held is released.

    Examples
    --------
    >>> m = EventTimeMerge()
    >>> m.add(0, 10.0, "a@10"); m.add(0, 30.0, "a@30"); m.add(1, 20.0, "b@20")
    >>> m.release(waiting={0, 1})  # partition 1 has reached 20 only
    ['a@10', 'b@20']
    >>> m.release(waiting={0})  # partition 1 is caught up: it cannot hold anything back
    ['a@30']
    >>> m.add(1, 5.0, "late"); m.release(waiting=set())
    ['late']
    """

    def __init__(self, max_held: int = 20_000, max_hold_s: float = 2.0) -> None:
        self.max_held = max_held
        self.max_hold_s = max_hold_s
        self._heap: list[tuple[float, int, float, T]] = []  # (timestamp, seq, held since, x)
        self._seq = itertools.count()
        self.frontier: dict[int, float] = {}  # partition -> latest timestamp seen

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, partition: int, timestamp: float, event: T) -> None:
        """Hold one event (events of a partition are added in that partition's order)."""
        heapq.heappush(self._heap, (timestamp, next(self._seq), time.monotonic(), event))
        self.frontier[partition] = max(self.frontier.get(partition, -math.inf), timestamp)

    def release(self, waiting: Collection[int], now: float | None = None) -> list[T]:
        """The held events that no waiting partition can still precede, oldest first,
        plus any beyond the two bounds."""
        bound = min((self.frontier.get(p, -math.inf) for p in waiting), default=math.inf)
        if self.oldest_held_s(now) > self.max_hold_s:
            bound = math.inf  # something waited too long: let everything go, in order
        heap, out = self._heap, []
        while heap and (heap[0][0] <= bound or len(heap) > self.max_held):
            out.append(heapq.heappop(heap)[3])
        return out

    def oldest_held_s(self, now: float | None = None) -> float:
        """Wall time the oldest held event has waited (0 when nothing is held)."""
        if not self._heap:
            return 0.0
        now = time.monotonic() if now is None else now
        return now - min(since for _, _, since, _ in self._heap)

    def clear(self) -> None:
        """Drop everything held (the model is being rebuilt from the log)."""
        self._heap.clear()
        self.frontier.clear()
