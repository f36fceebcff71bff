"""Event-time order across partitions, for a worker reading several at once."""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
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

    Each partition's own order is kept (a merge of per-partition queues by their heads'
    times): what is held of a partition is always the tail of what it delivered, so "every
    offset below the first one held is learned" stays true for snapshots, even when a
    partition's timestamps are not in order (many producers share one).

    Two bounds keep a silent partition from holding the rest: a waiting partition that
    has delivered nothing for ``max_hold_s`` seconds of wall time stops counting, and at
    most ``max_held`` events are held (the oldest heads go first). ``release`` can also
    wait until ``min_batch`` events are due, so a backlog is learned in full micro-batches.

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
    >>> m.add(2, 50.0, "c@50"); m.add(2, 40.0, "c@40"); m.add(3, 45.0, "d@45")
    >>> m.release(waiting=set())  # c@40 came after c@50 in its partition: it stays after
    ['d@45', 'c@50', 'c@40']
    """

    def __init__(self, max_held: int = 20_000, max_hold_s: float = 2.0) -> None:
        self.max_held = max_held
        self.max_hold_s = max_hold_s
        # partition -> its held events in delivery order: (timestamp, held since, event)
        self._queues: dict[int, deque[tuple[float, float, T]]] = {}
        self._n = 0
        self.frontier: dict[int, float] = {}  # partition -> latest timestamp seen
        self._heard: dict[int, float] = {}  # partition -> wall time of its latest event
        self._started: float | None = None  # wall time of the first event

    def __len__(self) -> int:
        return self._n

    def add(self, partition: int, timestamp: float, event: T, now: float | None = None) -> None:
        """Hold one event (events of a partition are added in that partition's order)."""
        now = time.monotonic() if now is None else now
        queue = self._queues.get(partition)
        if queue is None:
            queue = self._queues[partition] = deque()
        queue.append((timestamp, now, event))
        self._n += 1
        self.frontier[partition] = max(self.frontier.get(partition, -math.inf), timestamp)
        self._heard[partition] = now
        if self._started is None:
            self._started = now

    def release(
        self,
        waiting: Collection[int],
        now: float | None = None,
        min_batch: int = 1,
        max_wait_s: float = 0.0,
    ) -> list[T]:
        """The held events that no waiting partition can still precede, oldest head first
        (plus the oldest heads beyond ``max_held``). While partitions are waiting, nothing
        is released until ``min_batch`` events are due or one has waited ``max_wait_s``."""
        now = time.monotonic() if now is None else now
        started = self._started if self._started is not None else now
        heard = [p for p in waiting if now - self._heard.get(p, started) <= self.max_hold_s]
        bound = min((self.frontier.get(p, -math.inf) for p in heard), default=math.inf)
        over = self._n > self.max_held
        taken: list[tuple[int, tuple[float, float, T]]] = []
        heads = [(q[0][0], p) for p, q in self._queues.items() if q]
        heapq.heapify(heads)
        while heads and (heads[0][0] <= bound or self._n - len(taken) > self.max_held):
            _, p = heapq.heappop(heads)
            queue = self._queues[p]
            taken.append((p, queue.popleft()))
            if queue:
                heapq.heappush(heads, (queue[0][0], p))
        if bound < math.inf and not over and len(taken) < min_batch:
            waited = taken and now - min(since for _, (_, since, _) in taken) >= max_wait_s
            if not waited:  # put them back, in their partitions' order
                for p, entry in reversed(taken):
                    self._queues[p].appendleft(entry)
                return []
        self._n -= len(taken)
        return [event for _, (_, _, event) in taken]

    def held(self) -> list[T]:
        """The events held, in no particular order."""
        return [event for queue in self._queues.values() for _, _, event in queue]

    def clear(self) -> None:
        """Drop everything held (the model is being rebuilt from the log)."""
        self._queues.clear()
        self._n = 0
        self.frontier.clear()
        self._heard.clear()
        self._started = None
