"""The worker and the readers against Redis Sentinel (a master, a replica and three
sentinels of this module's own): ``REDIS_URL=redis+sentinel://...`` finds the master
through the sentinels, and after a failover writes to the replica they promote."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from own_services import RedisSentinel, own_redis_sentinel
from polling import wait_until
from sink_checks import check_metrics_replaced_whole, check_similar_lists
from worker_process import cli, running_worker

from recsys_online.recommender import Recommendation
from schemas import ItemEvent, RatingEvent
from streamer.client import AsyncRecommendationClient, RecommendationClient
from streamer.process import clear_run, isolated_env
from streamer.producer import SyncEventProducer
from streamer.settings import Settings
from streamer.sink import RedisSink

pytestmark = [pytest.mark.redis, pytest.mark.timeout(240)]

RECS = [Recommendation("i1", 0.5, "popular now", "popular")]


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory) -> Iterator[RedisSentinel]:
    """Shared by the tests that leave the master where it is."""
    with own_redis_sentinel(tmp_path_factory.mktemp("sentinel")) as running:
        yield running


@pytest.fixture
def failing_sentinel(tmp_path) -> Iterator[RedisSentinel]:
    """Of its own, for a test whose failover leaves the master elsewhere."""
    with own_redis_sentinel(tmp_path / "sentinel") as running:
        yield running


def on_port(port: int, key: str) -> bytes | None:
    client = redis.Redis(port=port)
    try:
        return client.get(key)
    finally:
        client.close()


async def test_the_sink_and_the_readers_find_the_master_through_the_sentinels(
    sentinel: RedisSentinel,
) -> None:
    settings = Settings(redis_url=sentinel.url, key_prefix="sen:")
    sink = RedisSink(settings)
    try:
        await check_metrics_replaced_whole(sink, settings)
        await check_similar_lists(sink, settings)
        await sink.publish_lists({f"u{j}": RECS for j in range(50)}, version=3)
        await sink.publish_state(RECS, {"events": 50}, 3, "w1")
        master = sentinel.master_port()
        assert master == sentinel.redis_ports[0]
        assert on_port(master, "sen:recs:u7") is not None  # on the master itself
        with RecommendationClient(sentinel.url, "sen:") as reader:
            assert reader.recommend("u7").served_from == "user"
            assert reader.recommend("nobody").served_from == "popular"
            assert reader.metrics()["events"] == "50"
        async with AsyncRecommendationClient(sentinel.url, "sen:") as reader:
            assert (await reader.recommend("u8")).model_version == 3
    finally:
        await sink.close()


@pytest.mark.kafka
def test_a_worker_writes_to_the_new_master_after_a_failover(
    failing_sentinel: RedisSentinel, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The master is killed while the worker runs: the sentinels promote the replica,
    the worker's next writes wait for it and land there, and nothing stops."""
    env = isolated_env(
        "redissentinel",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=failing_sentinel.url,
        RECSYS_PARTITIONS="2",
        RECSYS_K="5",
    )
    try:
        with running_worker(env, tmp_path / "worker.log") as run:
            settings, log = run.settings, run.log
            prefix = settings.key_prefix
            wait_until(run.metrics, "the worker's first metrics", log, 60, run.process)
            now = time.time()
            with SyncEventProducer(settings) as producer:
                for item in ("a", "b", "c"):
                    event = ItemEvent(op="upsert", item_id=item, tags=["jazz"], timestamp=now)
                    producer.send_item(event)
                producer.send_rating(
                    RatingEvent(user_id="before", item_id="a", rating=5, timestamp=now)
                )
            wait_until(lambda: run.redis.get(f"{prefix}recs:before"), "a list", log, 60)
            old = failing_sentinel.kill_master()
            new = failing_sentinel.wait_failover(old)
            with SyncEventProducer(settings) as producer:
                producer.send_rating(
                    RatingEvent(user_id="after", item_id="b", rating=5, timestamp=time.time())
                )
            wait_until(
                lambda: on_port(new, f"{prefix}recs:after"),
                "the list of a rating made after the failover, on the new master",
                log,
                60,
                run.process,
            )
            assert on_port(new, f"{prefix}recs:before") is not None  # replicated before
            shown = cli(env, "recs", "after", "--json")
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["served_from"] == "user"
            assert run.process.poll() is None, log()
    finally:
        clear_run(env)


@pytest.mark.kafka
def test_a_master_name_no_sentinel_watches_stops_the_worker_with_one_line(
    sentinel: RedisSentinel, kafka_bootstrap: str
) -> None:
    url = sentinel.url.replace(f"/{sentinel.SERVICE}/", "/recsis/")
    env = isolated_env(
        "redissentinel",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=url,
        RECSYS_PARTITIONS="2",
    )
    try:
        done = cli(env, "worker")
    finally:
        clear_run({**env, "REDIS_URL": sentinel.url})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "watches a master named 'recsis' (they watch: recsys)" in last, done.stderr


def connected_clients(port: int) -> int:
    """Clients connected to the sentinel at ``port``: not the other sentinels' links
    (named ``sentinel-...``, which come and go), nor this question's own connection."""
    client = redis.Redis(port=port)
    try:
        return sum(
            1
            for c in client.client_list()
            if not c.get("name", "").startswith("sentinel-") and c.get("cmd") != "client|list"
        )
    finally:
        client.close()


async def test_many_concurrent_reads_wait_their_turn_and_closing_leaves_no_connection(
    sentinel: RedisSentinel,
) -> None:
    """Sentinel's pools fail past their size instead of waiting: the clients let
    MAX_CONNECTIONS reads run at once and the rest wait, as with one Redis. Closed, a
    client leaves no connection open to the sentinels."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    settings = Settings(redis_url=sentinel.url, key_prefix="busy:")
    sink = RedisSink(settings)
    watched = sentinel.sentinel_ports[0]
    before = connected_clients(watched)
    await sink.publish_lists({"u1": RECS}, version=1)
    await sink.close()
    async with AsyncRecommendationClient(sentinel.url, "busy:") as reader:
        n = 3 * reader.MAX_CONNECTIONS
        results = await asyncio.gather(
            *(reader.recommend("u1", k=1) for _ in range(n)), return_exceptions=True
        )
    assert [r for r in results if isinstance(r, Exception)] == []
    with RecommendationClient(sentinel.url, "busy:") as reader, ThreadPoolExecutor(128) as pool:
        results = list(pool.map(lambda _: reader.recommend("u1", k=1).served_from, range(n)))
    assert results == ["user"] * n
    wait_until(
        lambda: connected_clients(watched) <= before,
        "the clients' connections to the sentinel to close",
        lambda: f"{connected_clients(watched)} clients connected, {before} before",
        10,
    )


def test_a_silent_sentinel_is_skipped_and_a_redis_named_as_one_is_refused(
    sentinel: RedisSentinel, redis_url: str
) -> None:
    """The start-up check asks every sentinel: one that never answers (a dead host) is
    skipped, as redis-py itself skips it, while a Redis that is no sentinel at all is a
    misconfiguration, said in one line."""
    import socket
    from urllib.parse import urlsplit

    from streamer.sink import redis_refusal

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        quiet = f"127.0.0.1:{silent.getsockname()[1]}"
        hosts = ",".join(f"127.0.0.1:{port}" for port in sentinel.sentinel_ports)
        url = f"redis+sentinel://{quiet},{hosts}/{sentinel.SERVICE}/0"
        assert redis_refusal(url, timeout_s=0.5) is None
        alone = f"redis+sentinel://{quiet}/{sentinel.SERVICE}/0"
        assert redis_refusal(alone, timeout_s=0.5) is None  # (not up yet: waited for)
    plain = urlsplit(redis_url).netloc
    refused = redis_refusal(f"redis+sentinel://{plain}/{sentinel.SERVICE}/0", timeout_s=2)
    assert refused is not None and refused.startswith(f"not a Redis Sentinel at {plain}")
