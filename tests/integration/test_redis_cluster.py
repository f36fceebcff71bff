"""The worker, the sink and the readers against a Redis Cluster (three ``redis-server``
masters of this module's own, ``redis-cli --cluster create``), as managed Redis in
cluster mode serves them: a user's list lives on the node serving its key's slot, so a
batch of lists spans every node and no transaction can hold it (``RECSYS_REDIS_CLUSTER``
in docs/streamer.md)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from own_services import RedisCluster, own_redis_cluster
from polling import wait_until
from sink_checks import check_list_lifetimes, check_metrics_replaced_whole, check_similar_lists
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
def cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    with own_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as running:
        yield running


def keys_per_node(cluster: RedisCluster, prefix: str) -> list[int]:
    """How many keys under ``prefix`` each node holds (each node's own keyspace)."""
    counts = []
    for port in cluster.ports:
        node = redis.Redis(port=port)
        counts.append(sum(1 for _ in node.scan_iter(match=f"{prefix}*", count=500)))
        node.close()
    return counts


def cluster_settings(cluster: RedisCluster, prefix: str, **extra) -> Settings:
    return Settings(redis_url=cluster.url, redis_cluster=True, key_prefix=prefix, **extra)


async def test_a_batch_of_lists_is_spread_over_every_node_and_read_back(
    cluster: RedisCluster,
) -> None:
    settings = cluster_settings(cluster, "spread:", recs_ttl_s=90)
    sink = RedisSink(settings)
    lists = {f"u{j}": RECS for j in range(300)}
    try:
        await sink.publish_lists(lists, version=7)
        await sink.publish_state(RECS, {"events": 300}, 7, "w1")
        counts = keys_per_node(cluster, "spread:recs:")
        assert sum(counts) == 300 and min(counts) > 50, counts  # every node holds lists
        assert 0 < await sink.redis.ttl(settings.key("recs", "u123")) <= 90
        with RecommendationClient(cluster.url, "spread:", cluster=True) as reader:
            for user in ("u0", "u77", "u299"):
                recs = reader.recommend(user)
                assert recs.served_from == "user" and recs.model_version == 7
                assert [r.item_id for r in recs.items] == ["i1"]
            assert reader.recommend("nobody").served_from == "popular"
            assert reader.metrics()["events"] == "300"
        async with AsyncRecommendationClient(cluster.url, "spread:", cluster=True) as reader:
            assert (await reader.recommend("u5")).served_from == "user"
            assert set(await reader.worker_metrics()) == {"w1"}
    finally:
        await sink.close()
        cluster_keys_deleted(cluster, "spread:")


def cluster_keys_deleted(cluster: RedisCluster, prefix: str) -> None:
    from streamer.process import delete_keys

    delete_keys(cluster.url, prefix, cluster=True)
    assert sum(keys_per_node(cluster, prefix)) == 0


async def test_the_metrics_hash_is_replaced_whole_and_item_metadata_written(
    cluster: RedisCluster,
) -> None:
    """Each hash is written by one script on its own node: a field another worker
    published does not stay behind, and the worker's own hash expires."""
    settings = cluster_settings(cluster, "whole:")
    sink = RedisSink(settings)
    try:
        await check_metrics_replaced_whole(sink, settings)
        await check_similar_lists(sink, settings)
        await check_list_lifetimes(sink, settings)
        events = [
            ItemEvent(op="upsert", item_id=f"i{j}", title=f"T{j}", tags=["jazz"], timestamp=1.0)
            for j in range(40)
        ]
        await sink.publish_items([*events, ItemEvent(op="delete", item_id="i3", timestamp=2.0)])
        assert (await sink.redis.hget(settings.key("item", "i7"), "title")) == b"T7"
        assert not await sink.redis.exists(settings.key("item", "i3"))
        assert min(keys_per_node(cluster, "whole:item:")) > 0
    finally:
        await sink.close()
        cluster_keys_deleted(cluster, "whole:")


async def test_the_dashboard_reads_a_cluster(cluster: RedisCluster) -> None:
    """Users with a list are found on every node's keyspace, past keys of other kinds
    (each node has its own SCAN cursor); lists, metrics and their history are read from
    the nodes that hold them."""
    from aiohttp.test_utils import TestClient, TestServer

    from streamer.dashboard import application

    settings = cluster_settings(cluster, "dash:")
    sink = RedisSink(settings)
    try:
        async with sink.redis.pipeline() as pipe:  # many keys that are not lists
            for j in range(6_000):
                pipe.set(settings.key("other", str(j)), "x")
            await pipe.execute()
        await sink.publish_lists({f"u{j}": RECS for j in range(20)}, version=4)
        await sink.publish_state(RECS, {"events": 20}, 4, "w1")
        async with TestClient(TestServer(application(settings))) as http:
            users = (await (await http.get("/api/users")).json())["users"]
            assert len(users) == 12 and set(users) <= {f"u{j}" for j in range(20)}
            recs = await (await http.get(f"/api/recs/{users[0]}")).json()
            assert recs["served_from"] == "user" and recs["items"][0]["item_id"] == "i1"
            history = await (await http.get("/api/history")).json()
            assert history["points"][-1]["events"] == 20
            assert (await (await http.get("/healthz")).json()) == {"ok": True}
    finally:
        await sink.close()
        cluster_keys_deleted(cluster, "dash:")


async def test_the_sink_waits_out_a_node_down_and_writes_once_it_is_back(
    cluster: RedisCluster,
) -> None:
    """Lists whose slots a stopped node served cannot be written (the cluster refuses
    writes once it marks the node failed): the sink keeps trying, the worker loses
    nothing, and the batch lands when the node is back with its slots."""
    settings = cluster_settings(cluster, "away:")
    sink = RedisSink(settings)
    sink.max_wait_s = 0.5
    lists = {f"u{j}": RECS for j in range(60)}
    down = cluster.ports[1]
    try:
        await sink.publish_lists({"before": RECS}, version=1)  # (the client knows the slots)
        cluster.stop_node(down)
        write = asyncio.ensure_future(sink.publish_lists(lists, version=2))
        await asyncio.sleep(4.0)
        assert not write.done()  # still trying
        cluster.start_node(down)
        await asyncio.wait_for(write, timeout=60)
        with RecommendationClient(cluster.url, "away:", cluster=True) as reader:
            assert all(reader.recommend(user).model_version == 2 for user in lists)
    finally:
        if down not in cluster.processes:
            cluster.start_node(down)
        cluster.wait_ok()
        await sink.close()
        cluster_keys_deleted(cluster, "away:")


@pytest.mark.kafka
def test_a_worker_serves_lists_from_a_cluster(
    cluster: RedisCluster, kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = isolated_env(
        "rediscluster",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=cluster.url,
        RECSYS_REDIS_CLUSTER="true",
        RECSYS_PARTITIONS="2",
        RECSYS_K="5",
    )
    users = [f"user{j}" for j in range(12)]
    try:
        with running_worker(env, tmp_path / "worker.log") as run:
            settings, log = run.settings, run.log
            wait_until(run.metrics, "the worker's first metrics", log, 60, run.process)
            now = time.time()
            with SyncEventProducer(settings) as producer:
                for item in ("a", "b", "c"):
                    producer.send_item(
                        ItemEvent(op="upsert", item_id=item, tags=["jazz"], timestamp=now)
                    )
                for user in users:
                    rating = RatingEvent(user_id=user, item_id="a", rating=5, timestamp=now)
                    producer.send_rating(rating)
            wait_until(lambda: run.learned() >= len(users), "every rating", log, 60, run.process)
            prefix = settings.key_prefix
            wait_until(
                lambda: sum(keys_per_node(cluster, f"{prefix}recs:")) == len(users),
                "every user's list",
                log,
                30,
                run.process,
            )
            assert sum(n > 0 for n in keys_per_node(cluster, f"{prefix}recs:")) >= 2
            for user in (users[0], users[-1]):
                shown = cli(env, "recs", user, "--json")
                assert shown.returncode == 0, shown.stderr
                listed = json.loads(shown.stdout)
                assert listed["served_from"] == "user"
                assert sorted(r["item_id"] for r in listed["items"]) == ["b", "c"]
            figures = cli(env, "metrics", "--json")
            assert figures.returncode == 0, figures.stderr
            # A dead letter redriven once its item is listed: the ledger of what was sent
            # back lives in the cluster too.
            with SyncEventProducer(settings) as producer:
                producer.send_rating(
                    RatingEvent(user_id="late", item_id="d", rating=5, timestamp=time.time())
                )
            reason = ("--reason", "unknown item 'd'")
            wait_until(
                lambda: json.loads(cli(env, "deadletters", *reason, "--json").stdout),
                "the dead letter",
                log,
                60,
                run.process,
            )
            with SyncEventProducer(settings) as producer:
                d = ItemEvent(op="upsert", item_id="d", tags=["jazz"], timestamp=time.time())
                producer.send_item(d)
            sent = cli(env, "deadletters", "--redrive", *reason, "--json")
            assert sent.returncode == 0, sent.stderr
            assert len(json.loads(sent.stdout)["sent"]) == 1
            wait_until(lambda: run.redis.get(f"{prefix}recs:late"), "late's list", log, 60)
            again = json.loads(cli(env, "deadletters", "--redrive", *reason, "--json").stdout)
            assert again["sent"] == [] and len(again["already"]) == 1
            assert run.process.poll() is None, log()
    finally:
        clear_run(env)
    assert sum(keys_per_node(cluster, env["RECSYS_KEY_PREFIX"])) == 0


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("on_cluster", "flag", "expected"),
    [
        (True, "false", "is a cluster node: set RECSYS_REDIS_CLUSTER=true"),
        (False, "true", "RECSYS_REDIS_CLUSTER is set, but Redis at"),
    ],
    ids=["cluster taken for one Redis", "one Redis taken for a cluster"],
)
def test_a_worker_told_wrong_about_the_cluster_stops_with_one_line(
    cluster: RedisCluster,
    kafka_bootstrap: str,
    redis_url: str,
    on_cluster: bool,
    flag: str,
    expected: str,
) -> None:
    """Taken for one Redis, a cluster would refuse the first batch of lists (CROSSSLOT);
    the worker says so at start instead."""
    env = isolated_env(
        "rediscluster",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=cluster.url if on_cluster else redis_url,
        RECSYS_REDIS_CLUSTER=flag,
        RECSYS_PARTITIONS="2",
    )
    try:
        done = cli(env, "worker")
    finally:
        clear_run({**env, "RECSYS_REDIS_CLUSTER": str(on_cluster)})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys-online: ") and expected in last, done.stderr


async def test_many_concurrent_reads_of_a_cluster_wait_their_turn(cluster: RedisCluster) -> None:
    """A cluster client's pools fail past their size instead of waiting: the readers let
    MAX_CONNECTIONS reads run at once and the rest wait, as with one Redis."""
    from concurrent.futures import ThreadPoolExecutor

    settings = cluster_settings(cluster, "busy:")
    sink = RedisSink(settings)
    try:
        await sink.publish_lists({f"u{j}": RECS for j in range(30)}, version=1)
        async with AsyncRecommendationClient(cluster.url, "busy:", cluster=True) as reader:
            n = 3 * reader.MAX_CONNECTIONS
            results = await asyncio.gather(
                *(reader.recommend(f"u{j % 30}", k=1) for j in range(n)),
                return_exceptions=True,
            )
        assert [r for r in results if isinstance(r, Exception)] == []
        with (
            RecommendationClient(cluster.url, "busy:", cluster=True) as reader,
            ThreadPoolExecutor(128) as pool,
        ):
            served = list(pool.map(lambda j: reader.recommend(f"u{j % 30}").served_from, range(n)))
        assert served == ["user"] * n
    finally:
        await sink.close()
        cluster_keys_deleted(cluster, "busy:")
