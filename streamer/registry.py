"""The registry of live workers in Redis, as every reader and writer of it agrees: which
workers' figures count (no numpy here: ``streamer.client`` imports it)."""

from __future__ import annotations

from collections.abc import Mapping

#: A metrics hash's fields that are text, not figures (``partitions`` ``"3"`` too).
TEXT_FIELDS = frozenset({"worker", "metrics_url", "partitions"})


def superseded(workers: Mapping[str, tuple[float, str]]) -> set[str]:
    """The workers whose figures a later one replaces: given each worker's last publish
    time and the ratings partitions it held then (``"0,3"``), those holding a partition
    that a worker who published later holds. A ratings partition is one worker's at a
    time, so such a worker has handed it on (a worker killed and restarted, a rebalance),
    and its figures until its hash expires would count that partition twice.

    >>> sorted(superseded({"old": (1.0, "0,1"), "new": (5.0, "1,2"), "other": (4.0, "3")}))
    ['old']
    >>> superseded({"idle": (1.0, ""), "busy": (2.0, "0")})
    set()
    """
    claimed: set[str] = set()
    out = set()
    for worker, (_, held) in sorted(workers.items(), key=lambda kv: -kv[1][0]):
        partitions = {p for p in held.split(",") if p}
        if partitions & claimed:
            out.add(worker)
        claimed |= partitions
    return out
