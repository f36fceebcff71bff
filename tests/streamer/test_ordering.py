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


def test_what_is_held_of_a_partition_is_always_its_tail() -> None:
    """Timestamps within a partition need not be in order (many producers share one);
    the merge still releases each partition in its own order, so a snapshot's "every
    offset below the first one held is learned" holds."""
    rng = random.Random(5)
    merge: EventTimeMerge[tuple[int, int]] = EventTimeMerge(max_held=50, max_hold_s=1e9)
    sent = dict.fromkeys(range(3), 0)
    released: dict[int, list[int]] = {p: [] for p in sent}
    for _ in range(400):
        p = rng.randrange(3)
        merge.add(p, rng.uniform(0, 100) + sent[p] * 0.1, (p, sent[p]))  # drifting, unsorted
        sent[p] += 1
        for q, offset in merge.release(waiting=set(sent) - {rng.randrange(3)}):
            released[q].append(offset)
        for q in sent:
            held = sorted(o for r, o in merge.held() if r == q)
            assert released[q] == list(range(len(released[q])))  # in the partition's order
            assert held == list(range(len(released[q]), sent[q]))  # the rest: its tail
