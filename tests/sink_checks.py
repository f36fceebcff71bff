"""What the workers' sink must do on any Redis deployment (one server, a cluster, behind
Sentinel), written once and run against each."""

from __future__ import annotations

from streamer.settings import Settings
from streamer.sink import RedisSink


async def check_metrics_replaced_whole(sink: RedisSink, settings: Settings) -> None:
    """Two workers publish in turn: the shared hash holds only the last one's figures (a
    field the first published and the second does not, e.g. snapshot figures, does not
    stay behind), each worker's own hash keeps its own and expires, and both are in the
    registry of live workers."""
    await sink.publish_state([], {"events": 10, "snapshot_age_s": 3.0}, 1, "w1")
    await sink.publish_state([], {"events": 20}, 2, "w2")
    shared = await sink.redis.hgetall(settings.key("metrics"))
    assert shared[b"worker"] == b"w2" and shared[b"events"] == b"20"
    assert b"snapshot_age_s" not in shared
    own = settings.key("metrics", "worker", "w1")
    assert (await sink.redis.hgetall(own))[b"snapshot_age_s"] == b"3.0"
    assert 0 < await sink.redis.ttl(own) <= 30
    workers = await sink.redis.zrange(settings.key("metrics", "workers"), 0, -1)
    assert sorted(workers) == [b"w1", b"w2"]
