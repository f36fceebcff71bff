"""What the workers' sink must do on any Redis deployment (one server, a cluster, behind
Sentinel), written once and run against each."""

from __future__ import annotations

import orjson

from recsys_online.recommender import Recommendation
from schemas import ItemEvent
from streamer.client import AsyncRecommendationClient, RecommendationClient
from streamer.settings import Settings
from streamer.sink import RedisSink


async def check_metrics_replaced_whole(sink: RedisSink, settings: Settings) -> None:
    """Workers publish in turn: the shared hash holds every live worker's figures
    together (counts summed, RMSE weighted by the ratings each measured, freshness the
    worst worker's), as the writer read the others' own hashes; a field only a worker
    gone since published (e.g. snapshot figures) does not stay behind, nor does one that
    handed its ratings partitions on (killed, restarted under a new id); each worker's
    own hash keeps its own and expires, and all are in the registry of live workers.
    The popular list is the one of its writer (the holder of ratings partition 0);
    another worker's only while there is none."""
    popular = [Recommendation("p1", 1.0, "popular now", "popular")]
    other = [Recommendation("p2", 1.0, "popular now", "popular")]
    # (Each publish returns the popular list Redis holds after it: the one served.)
    nothing = await sink.publish_state([], {"events": 0}, 1, "w3", popular_owner=False)
    assert not await sink.redis.exists(settings.key("popular"))  # (an empty list: no list)
    assert nothing is None
    shown = await sink.publish_state(other, {"events": 5}, 1, "w2", popular_owner=False)
    listed = orjson.loads(await sink.redis.get(settings.key("popular")))
    assert [r["item_id"] for r in listed["items"]] == ["p2"] == shown  # none yet: its own
    w1 = {"events": 10, "evaluated": 300, "rmse": 1.0, "freshness_ms_p99": 80.0}
    assert await sink.publish_state(popular, w1 | {"snapshot_age_s": 3.0}, 1, "w1") == ["p1"]
    w2 = {"events": 20, "evaluated": 100, "rmse": 0.5, "freshness_ms_p99": 120.0}
    assert await sink.publish_state(other, w2, 2, "w2", popular_owner=False) == ["p1"]
    listed = orjson.loads(await sink.redis.get(settings.key("popular")))
    assert [r["item_id"] for r in listed["items"]] == ["p1"] and listed["model_version"] == 1
    shared = await sink.redis.hgetall(settings.key("metrics"))
    assert shared[b"worker"] == b"w2" and shared[b"workers"] == b"3"
    assert shared[b"events"] == b"30" and shared[b"evaluated"] == b"400"  # 0 + 10 + 20
    assert abs(float(shared[b"rmse"]) - ((300 * 1.0 + 100 * 0.25) / 400) ** 0.5) < 1e-9
    assert float(shared[b"freshness_ms_p99"]) == 120.0
    assert float(shared[b"snapshot_age_s"]) == 3.0  # (w1's, while it is live)
    assert 0 < await sink.redis.ttl(settings.key("metrics")) <= 30  # (gone with the fleet)
    own = settings.key("metrics", "worker", "w1")
    assert (await sink.redis.hgetall(own))[b"snapshot_age_s"] == b"3.0"
    assert 0 < await sink.redis.ttl(own) <= 30
    workers = await sink.redis.zrange(settings.key("metrics", "workers"), 0, -1)
    assert sorted(workers) == [b"w1", b"w2", b"w3"]
    await sink.withdraw("w1")  # (a worker stopping)
    await sink.publish_state(other, w2, 3, "w2", popular_owner=False)
    shared = await sink.redis.hgetall(settings.key("metrics"))
    assert shared[b"events"] == b"20" and shared[b"workers"] == b"2"
    assert b"snapshot_age_s" not in shared and float(shared[b"rmse"]) == 0.5
    # A worker killed (its hash lives on until it expires) and restarted under a new id
    # with its partitions: the fleet counts the new one only, not both.
    await sink.publish_state(
        other, {"events": 7}, 3, "killed", popular_owner=False, partitions={4, 5}
    )
    await sink.publish_state(
        other, {"events": 9}, 3, "restarted", popular_owner=False, partitions={5}
    )
    shared = await sink.redis.hgetall(settings.key("metrics"))
    assert shared[b"events"] == b"29" and shared[b"workers"] == b"3"  # w2, w3 and restarted
    own = await sink.redis.hgetall(settings.key("metrics", "worker", "restarted"))
    assert own[b"partitions"] == b"5"
    # A key of another type where a worker's hash belongs (damaged, or foreign) stops no
    # worker's publish, and no reader's listing.
    await sink.redis.set(settings.key("metrics", "worker", "odd"), "oops")
    await sink.redis.zadd(settings.key("metrics", "workers"), {"odd": 1.0})
    await sink.publish_state(
        other, {"events": 9}, 3, "restarted", popular_owner=False, partitions={5}
    )
    shared = await sink.redis.hgetall(settings.key("metrics"))
    assert shared[b"events"] == b"29"
    await sink.redis.delete(settings.key("metrics", "worker", "odd"))
    # Readers count the live workers as the shared hash does (the killed one is gone).
    async with AsyncRecommendationClient(
        settings.redis_url, settings.key_prefix, cluster=settings.redis_cluster
    ) as client:
        assert sorted(await client.worker_metrics()) == ["restarted", "w2", "w3"]
        await sink.redis.set(settings.key("metrics", "worker", "odd"), "oops")
        assert sorted(await client.worker_metrics()) == ["restarted", "w2", "w3"]
        await sink.redis.delete(settings.key("metrics", "worker", "odd"))
        await sink.redis.zrem(settings.key("metrics", "workers"), "odd")
    for worker in ("w2", "w3", "killed", "restarted"):  # (the next checks start with none)
        assert await sink.redis.exists(settings.key("metrics"))  # (while one is live)
        await sink.withdraw(worker)
    # The last one out takes the fleet's figures with it (they lasted out their TTL,
    # shown beside "0 live workers").
    assert not await sink.redis.exists(settings.key("metrics"))


async def on_a_sink(settings: Settings, check) -> None:
    """``check(sink, settings)`` on a sink of its own, closed after."""
    sink = RedisSink(settings)
    try:
        await check(sink, settings)
    finally:
        await sink.close()


async def check_similar_lists(sink: RedisSink, settings: Settings) -> None:
    """Items' "more like this" lists: written under ``similar:{item}``, read back by both
    clients (cut to k, with titles), the popular list for an item without one (never
    the item itself), and removed (on a cluster too: one key per command)."""
    recs = [
        Recommendation("s1", 0.9, "rated together with s0", "co-occurrence", "s0"),
        Recommendation("s2", 0.5, "similar to s0", "content", "s0"),
    ]
    popular = [Recommendation("p1", 1.0, "popular now", "popular")]
    await sink.publish_lists({f"s{j}": recs for j in range(40)}, version=4, similar=True)
    await sink.publish_state(popular, {"events": 1}, 4, "w1")
    upserts = [
        ItemEvent(op="upsert", item_id=f"s{j}", title=f"Song {j}", tags=["jazz"], timestamp=1.0)
        for j in range(3)
    ]
    await sink.publish_items(upserts)
    doc = await sink.redis.get(settings.key("similar", "s0"))
    assert orjson.loads(doc)["item_id"] == "s0"
    ttl = await sink.redis.ttl(settings.key("similar", "s0"))
    assert settings.recs_ttl_s - 60 <= ttl <= settings.recs_ttl_s
    prefix, url, cluster = settings.key_prefix, settings.redis_url, settings.redis_cluster
    with RecommendationClient(url, prefix, cluster=cluster) as client:
        got = client.similar("s0", k=1, titles=True)
        assert got.served_from == "item" and not got.fallback and got.model_version == 4
        assert [(r.item_id, r.source, r.because, r.title) for r in got.items] == [
            ("s1", "co-occurrence", "s0", "Song 1")
        ]
        assert client.similar("unknown").served_from == "popular"
    reader = AsyncRecommendationClient(url, prefix, cluster=cluster)
    try:
        got = await reader.similar("s39")
        assert [r.item_id for r in got.items] == ["s1", "s2"] and got.item_id == "s39"
    finally:
        await reader.aclose()
    await sink.publish_items([ItemEvent(op="delete", item_id="s0", timestamp=2.0)])
    assert await sink.redis.exists(settings.key("item", "s0")) == 0
    await sink.delete_similar([f"s{j}" for j in range(0, 40, 2)])
    assert await sink.redis.exists(settings.key("similar", "s0")) == 0
    assert await sink.redis.exists(settings.key("similar", "s1")) == 1
    with RecommendationClient(url, prefix, cluster=cluster) as client:
        got = client.similar("p1")  # no list of its own: popular, without itself
        assert got.served_from == "popular" and got.items == []


async def check_list_lifetimes(sink: RedisSink, settings: Settings) -> None:
    """A list's TTL runs from its user's last visit: a rewrite for anything else
    (``KEEP_TTL``: a deleted or new item, the refresh timer) changes a list still in
    Redis and keeps its expiry, and never writes one that expired back; a replay writes
    each list with what is left of its TTL."""
    from streamer.sink import KEEP_TTL

    old = [Recommendation("a", 1.0, "popular now", "popular")]
    new = [Recommendation("b", 1.0, "popular now", "popular")]
    key = settings.key
    await sink.publish_lists({"visited": old}, version=1, ttl=100)
    await sink.publish_lists({"visited": new, "gone": new}, version=2, ttl=KEEP_TTL)
    assert not await sink.redis.exists(key("recs", "gone"))  # expired (or never): stays so
    doc = orjson.loads(await sink.redis.get(key("recs", "visited")))
    assert [r["item_id"] for r in doc["items"]] == ["b"] and doc["model_version"] == 2
    assert 0 < await sink.redis.ttl(key("recs", "visited")) <= 100  # (not renewed)
    await sink.publish_lists({"x": old, "y": old, "z": old}, version=3, ttl={"x": 50, "y": 9})
    ttls = [await sink.redis.ttl(key("recs", name)) for name in ("x", "y", "z")]
    assert 40 <= ttls[0] <= 50 and 0 < ttls[1] <= 9
    assert settings.recs_ttl_s - 60 <= ttls[2] <= settings.recs_ttl_s  # (left out: the full)
    await sink.publish_lists({"visited": old}, version=4)  # its user rated again
    assert await sink.redis.ttl(key("recs", "visited")) > settings.recs_ttl_s - 60
    await sink.redis.delete(*(key("recs", n) for n in ("visited", "x", "y", "z")))
