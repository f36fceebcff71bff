"""EventTimeMerge: partitions read in runs come out in event-time order."""

from __future__ import annotations

import random

from streamer.ordering import EventTimeMerge


def test_runs_of_drifting_partitions_come_out_in_time_order() -> None:
    rng = random.Random(3)
    # Four partitions, each in time order, at different rates (they drift apart in time).
    parts = {p: sorted(rng.uniform(0, 1000) for _ in range(200 + 150 * p)) for p in range(4)}
    pos = dict.fromkeys(parts, 0)
    merge: EventTimeMerge[tuple[int, float]] = EventTimeMerge(max_held=10**6, max_hold_s=1e9)
    out: list[tuple[int, float]] = []
    while any(pos[p] < len(parts[p]) for p in parts):
        p = rng.choice([p for p in parts if pos[p] < len(parts[p])])
        run = parts[p][pos[p] : pos[p] + rng.randint(1, 60)]  # a fetched run
        for ts in run:
            merge.add(p, ts, (p, ts))
        pos[p] += len(run)
        waiting = {q for q in parts if pos[q] < len(parts[q])}
        out += merge.release(waiting)
    out += merge.release(set())
    assert len(out) == sum(map(len, parts.values())) and not len(merge)
    times = [ts for _, ts in out]
    assert times == sorted(times)


def test_nothing_is_held_beyond_the_bounds() -> None:
    merge: EventTimeMerge[int] = EventTimeMerge(max_held=3, max_hold_s=5.0)
    for n in range(5):
        merge.add(0, float(n), n, now=0.0)
    # Partition 1 has said nothing yet: it holds the rest back, but only up to the cap...
    assert merge.release(waiting={1}, now=1.0) == [0, 1]
    # ... and only until it has been silent for max_hold_s.
    assert merge.release(waiting={1}, now=6.0) == [2, 3, 4]
    merge.add(2, 1.0, 9)
    merge.clear()
    assert len(merge) == 0 and merge.release(waiting={2}) == []


def test_a_backlog_is_released_in_full_batches_unless_it_waited() -> None:
    merge: EventTimeMerge[str] = EventTimeMerge()
    merge.add(0, 1.0, "a", now=0.0)
    merge.add(1, 2.0, "b", now=0.0)
    merge.add(0, 3.0, "c", now=0.0)
    assert merge.release({0, 1}, now=0.01, min_batch=3, max_wait_s=0.05) == []  # 2 due
    assert merge.release({0, 1}, now=0.06, min_batch=3, max_wait_s=0.05) == ["a", "b"]
    assert merge.release(set(), now=0.07, min_batch=3, max_wait_s=0.05) == ["c"]  # caught up
