"""Integration checks against the real Kafka broker and Redis server the project runs on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import ApiVersionRequest
from topic_reading import read_records

from recsys_online.events import Rating
from schemas import RatingEvent, parse_event

pytestmark = pytest.mark.timeout(120)

FETCH_API_KEY = 1
# KIP-896 removed Fetch v0-v3 in Kafka 4.0: every 3.x broker advertises Fetch from v0, every
# 4.x broker from v4. (Produce is no marker: 4.x still advertises v0 for librdkafka, KAFKA-18659.)
KAFKA_4_FETCH_FLOOR = 4
RECEIVE_TIMEOUT_SECONDS = 30


@pytest.mark.kafka
async def test_rating_event_round_trips_through_a_kafka_topic(
    kafka_bootstrap: str, topic_name: str
) -> None:
    event = RatingEvent(
        user_id="196",
        item_id="242",
        rating=3.5,
        timestamp=881250949,
        event_id=f"evt-{uuid.uuid4().hex}",
    )
    key = event.user_id.encode()

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        created = await admin.create_topics([NewTopic(topic_name, 1, 1)])
    finally:
        await admin.close()
    assert [(topic, code) for topic, code, *_ in created.topic_errors] == [(topic_name, 0)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic_name, event.to_bytes(), key=key)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic_name,
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
            record = await consumer.getone()
    finally:
        await consumer.stop()

    assert (record.topic, record.partition, record.offset) == (topic_name, 0, sent.offset)
    assert record.key == key
    assert parse_event(record.value, RatingEvent) == event


@pytest.mark.kafka
async def test_kafka_brokers_speak_the_kafka_4_protocol(kafka_bootstrap: str) -> None:
    # Kafka reports no release number on the wire; the Fetch floor of ApiVersions tells 4.x.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert cluster["brokers"], cluster

    floors = {}
    for broker in cluster["brokers"]:
        conn = await create_conn(broker["host"], broker["port"], request_timeout_ms=10_000)
        try:
            response = await conn.send(ApiVersionRequest())
        finally:
            conn.close()
        assert response.error_code == 0
        versions = {api_key: low for api_key, low, _ in response.api_versions}
        floors[broker["node_id"]] = versions[FETCH_API_KEY]

    assert set(floors.values()) == {KAFKA_4_FETCH_FLOOR}, (
        f"Fetch min version per broker {floors}: 0 means Kafka 3.x or older, "
        f"{KAFKA_4_FETCH_FLOOR} means Kafka 4.x"
    )


@pytest.mark.redis
async def test_redis_key_round_trips_with_a_ttl(redis_url: str, redis_key_prefix: str) -> None:
    key = f"{redis_key_prefix}top-k:196"
    client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        assert await client.set(key, b"242,302,50", ex=60)
        value = await client.get(key)
        ttl = await client.ttl(key)
    finally:
        await client.aclose()

    assert value == b"242,302,50"
    assert 0 < ttl <= 60


@pytest.mark.redis
async def test_redis_server_is_version_7(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        server = await client.info("server")
    finally:
        await client.aclose()

    assert str(server["redis_version"]).split(".")[0] == "7", server["redis_version"]


@pytest.mark.kafka
async def test_ensure_topics_returns_once_every_partition_has_a_leader(
    kafka_bootstrap: str,
) -> None:
    """A worker joins its consumer group right after ``ensure_topics``; a topic the broker
    does not serve yet would leave it assigned nothing until a metadata refresh minutes
    later. So on return, a brand-new client must already see every partition led."""
    from streamer.app import delete_topics, ensure_topics, run_topics
    from streamer.process import isolated_env
    from streamer.settings import Settings

    settings = Settings.from_env(
        isolated_env("topics", {}, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, RECSYS_PARTITIONS="3")
    )
    await ensure_topics(settings)
    await ensure_topics(settings)  # idempotent: a second worker finds them made

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics()}
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        names = (
            settings.items_topic,
            settings.ratings_topic,
            settings.users_topic,
            settings.deadletter_topic,
        )
        items, ratings, users, letters = [
            {c[0]: c[1] for c in r.resources[0][4]}
            for name in names
            for r in await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        ]
    finally:
        await admin.close()
    # Compacted, and an item's tombstone kept as long as a delete event (a rebuild needs
    # to know the item to learn its old ratings); the ratings kept forever (the model's
    # durable state), whatever their size, whatever the broker's defaults (its own
    # caps partitions at 128 MiB), and the dead letters as long (a replay skips the
    # ratings they refused); the users compacted (the latest declaration of each user).
    assert items["cleanup.policy"] == "compact"
    assert int(items["delete.retention.ms"]) >= 50 * 365 * 86_400_000
    assert ratings["retention.ms"] == "-1" and ratings["cleanup.policy"] == "delete"
    for kept in (ratings, letters):
        assert kept["retention.ms"] == "-1" and kept["retention.bytes"] == "-1"
    assert users["cleanup.policy"] == "compact"
    # A worker told of another partition count than the topics have is refused, naming
    # them (it waited 30 s for partitions that never come, then failed with a traceback).
    from streamer.settings import SettingsError

    other = dataclasses.replace(settings, partitions=5)
    with pytest.raises(SettingsError, match=r"RECSYS_PARTITIONS is 5, but .* has 3"):
        await ensure_topics(other)
    await ensure_topics(dataclasses.replace(settings, partitions=2))  # (grown ahead: fine)
    expected = {
        settings.ratings_topic: 3,
        settings.items_topic: 3,
        settings.users_topic: 3,
        settings.deadletter_topic: 1,
    }
    for topic, count in expected.items():
        assert described[topic]["error_code"] == 0, topic
        leaders = [p["leader"] for p in described[topic]["partitions"]]
        assert len(leaders) == count and min(leaders) >= 0, (topic, leaders)
    # The end of a run with its own topics deletes them (twice: the second finds none).
    assert set(run_topics(settings)) >= set(expected)
    assert await delete_topics(kafka_bootstrap, run_topics(settings)) == []
    assert await delete_topics(kafka_bootstrap, run_topics(settings)) == []
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:  # (the broker deletes in the background: gone from its metadata soon after)
        for _ in range(100):
            left = set(await admin.list_topics()) & set(run_topics(settings))
            if not left:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    assert not left, left


@pytest.mark.kafka
async def test_read_merged_gives_several_partitions_in_event_time_order(
    kafka_bootstrap: str, topic_name: str
) -> None:
    """A rebuild reads its partitions' histories through ``read_merged``: across partitions
    the ratings come in event-time order, within each in log order, only from
    ``[start, until)``, and what the parser rejects is skipped."""
    from streamer.app import read_merged

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic_name, 3, 1)])
    finally:
        await admin.close()
    # Partition p holds ratings at times p, p + 3, p + 6, ...: interleaved across partitions.
    sent: dict[int, list[RatingEvent]] = {p: [] for p in range(3)}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        for t in range(300):
            p = t % 3
            event = RatingEvent(user_id=f"u{p}", item_id=f"i{t}", rating=3.0, timestamp=t)
            sent[p].append(event)
            await producer.send(topic_name, event.to_bytes(), partition=p)
        await producer.send(topic_name, b"not json", partition=1)  # offset 100 of partition 1
        await producer.flush()
    finally:
        await producer.stop()

    def parse(record) -> Rating | None:
        try:
            r = parse_event(record.value, RatingEvent)
        except Exception:
            return None
        return Rating(r.user_id, r.item_id, r.rating, r.timestamp)

    start = {0: 10, 1: 0, 2: 0}
    until = {0: 100, 1: 101, 2: 50}
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    got: list[tuple[int, Rating]] = []
    try:
        async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
            async for chunk in read_merged(consumer, topic_name, start, until, parse, batch=40):
                got.extend(chunk)
    finally:
        await consumer.stop()
    times = [r.timestamp for _, r in got]
    assert times == sorted(times)
    expected = {p: [e.item_id for e in sent[p][start[p] : until[p]]] for p in range(3)}
    by_partition = {p: [r.item for q, r in got if q == p] for p in range(3)}
    assert by_partition == expected


@pytest.mark.redis
async def test_the_sink_writes_every_list_with_its_ttl_even_after_redis_forgets_scripts(
    redis_url: str, redis_key_prefix: str
) -> None:
    """Lists go in one script call; a Redis that lost its scripts (a restart, SCRIPT
    FLUSH) gets it again instead of failing the worker's batch."""
    import json

    from recsys_online.recommender import Recommendation
    from streamer.settings import Settings
    from streamer.sink import RedisSink

    settings = Settings(redis_url=redis_url, key_prefix=redis_key_prefix, recs_ttl_s=90)
    sink = RedisSink(settings)
    recs = [Recommendation("i1", 0.5, "popular now", "popular")]
    try:
        for round_ in range(2):
            lists = {f"u{j}": recs for j in range(round_ * 5, round_ * 5 + 250)}
            await sink.publish_lists(lists, version=7)
            for user in lists:
                doc = json.loads(await sink.redis.get(settings.key("recs", user)))
                assert doc["user_id"] == user and doc["items"][0]["item_id"] == "i1"
                assert 80 <= await sink.redis.ttl(settings.key("recs", user)) <= 90
            await sink.redis.script_flush()
    finally:
        for key in await sink.redis.keys(f"{redis_key_prefix}*"):
            await sink.redis.delete(key)
        await sink.close()


@pytest.mark.redis
async def test_the_shared_metrics_hash_holds_the_live_workers_figures_together(
    redis_url: str, redis_key_prefix: str
) -> None:
    """The fleet's figures in one hash; a stopped worker's fields do not stay behind."""
    from sink_checks import check_metrics_replaced_whole

    from streamer.settings import Settings
    from streamer.sink import RedisSink

    settings = Settings(redis_url=redis_url, key_prefix=redis_key_prefix)
    sink = RedisSink(settings)
    try:
        await check_metrics_replaced_whole(sink, settings)
        # Readers find live workers in a registry, not by scanning the whole keyspace.
        from streamer.client import AsyncRecommendationClient

        await sink.publish_state([], {"events": 7}, 1, "w8")
        async with AsyncRecommendationClient(redis_url, redis_key_prefix) as client:
            workers = await client.worker_metrics()
        assert list(workers) == ["w8"] and workers["w8"]["events"] == "7"  # (the others left)
    finally:
        await sink.close()


@pytest.mark.redis
async def test_a_worker_whose_clock_runs_ahead_leaves_the_others_listed(
    redis_url: str, redis_key_prefix: str, monkeypatch
) -> None:
    """The registry of live workers is kept by the Redis server's clock, as the worker
    hashes' TTLs are: a worker whose clock runs 45 s ahead (past a worker hash's 30 s
    life) does not drop the others from it."""
    from streamer import sink as sink_module
    from streamer.client import AsyncRecommendationClient
    from streamer.settings import Settings
    from streamer.sink import RedisSink

    sink = RedisSink(Settings(redis_url=redis_url, key_prefix=redis_key_prefix))
    try:
        await sink.publish_state([], {"events": 1}, 1, "on-time")
        ahead = time.time() + 45.0
        monkeypatch.setattr(sink_module.time, "time", lambda: ahead)
        await sink.publish_state([], {"events": 2}, 2, "ahead")
        async with AsyncRecommendationClient(redis_url, redis_key_prefix) as client:
            assert sorted(await client.worker_metrics()) == ["ahead", "on-time"]
    finally:
        monkeypatch.undo()
        await sink.close()


@pytest.mark.kafka
async def test_the_sync_producer_sends_between_calls_and_from_many_threads(
    kafka_bootstrap: str, topic_name: str
) -> None:
    """A web app's producer lives across requests: what a request sent reaches Kafka
    without waiting for the next call (its loop runs in a thread of its own), and
    requests on several threads send at once, every event delivered once."""
    import threading

    from streamer.producer import SyncEventProducer
    from streamer.settings import Settings

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic_name, 1, 1)])
    finally:
        await admin.close()
    settings = Settings(brokers=kafka_bootstrap, ratings_topic=topic_name)

    def rating(user: str) -> RatingEvent:
        return RatingEvent(user_id=user, item_id="i", rating=4.0, timestamp=time.time())

    async def received(n: int) -> list[bytes]:
        records = await read_records(kafka_bootstrap, topic_name, n, RECEIVE_TIMEOUT_SECONDS)
        return [r.key for r in records]

    producer = await asyncio.to_thread(SyncEventProducer, settings)
    try:
        await asyncio.to_thread(producer.send_rating, rating("first"))
        assert await received(1) == [b"first"]  # no flush, no later call
        errors: list[BaseException] = []

        def request(n: int) -> None:
            try:
                for j in range(25):
                    producer.send_rating(rating(f"t{n}-{j}"))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=request, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            await asyncio.to_thread(t.join)
        assert errors == []
        await asyncio.to_thread(producer.flush)
    finally:
        await asyncio.to_thread(producer.close)
    keys = await received(101)
    assert len(keys) == len(set(keys)) == 101 and b"t3-24" in keys


@pytest.mark.redis
async def test_the_sink_waits_for_redis_and_writes_once_it_is_back(tmp_path) -> None:
    """A worker's write while Redis is unreachable is not lost, nor does it stop the
    worker: the sink tries again until a Redis (here, a second server started late on a
    port nobody listens on at first) takes it."""
    import json
    import shutil
    import socket
    import subprocess

    from recsys_online.recommender import Recommendation
    from streamer.settings import Settings
    from streamer.sink import RedisSink

    server = shutil.which("redis-server")
    assert server, "redis-server is installed by scripts/services.sh"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="late:")
    sink = RedisSink(settings)
    sink.max_wait_s = 0.2
    recs = [Recommendation("i1", 0.5, "popular now", "popular")]
    write = asyncio.ensure_future(sink.publish_lists({"u1": recs, "u2": recs}, version=3))
    await asyncio.sleep(1.0)
    assert not write.done()  # still trying: nothing listens yet
    redis_server = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(write, 20)
        for user in ("u1", "u2"):
            doc = json.loads(await sink.redis.get(settings.key("recs", user)))
            assert doc["model_version"] == 3 and doc["items"][0]["item_id"] == "i1"
    finally:
        await sink.close()
        redis_server.terminate()
        redis_server.wait(10)


@contextlib.asynccontextmanager
async def own_redis(tmp_path, *options: str) -> AsyncIterator[tuple[int, object]]:
    """A redis-server of the test's own, started with ``options`` on a free port, and a
    client to it once it answers; stopped at the end."""
    import shutil
    import socket
    import subprocess

    import redis as sync_redis

    server = shutil.which("redis-server")
    assert server, "redis-server is installed by scripts/services.sh"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [
            *(server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--dir", str(tmp_path), *options),
        ],
        stdout=subprocess.DEVNULL,
    )
    admin = sync_redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                admin.ping()
                break
            except sync_redis.ConnectionError:
                await asyncio.sleep(0.05)
        yield port, admin
    finally:
        admin.close()
        process.terminate()
        process.wait(10)


@pytest.mark.redis
async def test_the_sink_waits_out_a_redis_out_of_memory_and_writes_lists_in_ranked_order(
    tmp_path,
) -> None:
    """A Redis out of memory (``noeviction``) refuses writes until memory is freed: the
    sink waits it out instead of stopping the worker. Two list writes waiting meanwhile
    land in the order they were ranked, so the newer list is the one left, although the
    older one's next try (its wait doubling since it began) comes after the newer one's."""
    import json

    import redis as sync_redis

    from recsys_online.recommender import Recommendation
    from streamer.settings import Settings
    from streamer.sink import RedisSink

    options = ("--maxmemory", "1", "--maxmemory-policy", "noeviction")
    async with own_redis(tmp_path, *options) as (port, admin):
        settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="oom:")
        sink = RedisSink(settings)
        try:
            with pytest.raises(sync_redis.exceptions.OutOfMemoryError):
                admin.set("probe", "x")
            older = [Recommendation("old", 0.5, "popular now", "popular")]
            newer = [Recommendation("new", 0.9, "popular now", "popular")]
            first = asyncio.ensure_future(sink.publish_lists({"u1": older}, version=1))
            await asyncio.sleep(0.5)
            second = asyncio.ensure_future(sink.publish_lists({"u1": newer}, version=2))
            state = asyncio.ensure_future(sink.publish_state(older, {"events": 1}, 2, "w:1"))
            await asyncio.sleep(0.5)
            assert not (first.done() or second.done() or state.done())  # waiting, not raised
            admin.config_set("maxmemory", 0)
            await asyncio.wait_for(asyncio.gather(first, second, state), 20)
            doc = json.loads(admin.get(settings.key("recs", "u1")))
            assert doc["model_version"] == 2 and doc["items"][0]["item_id"] == "new"
            assert admin.hget(settings.key("metrics"), "events") == b"1"
        finally:
            await sink.close()


@pytest.mark.redis
async def test_the_sink_waits_out_a_primary_without_the_replicas_it_asks_for(tmp_path) -> None:
    """A primary with ``min-replicas-to-write`` refuses every write (NOREPLICAS) while its
    replicas are away, in MULTI/EXEC too, where redis-py puts the command before Redis's
    words: the sink waits it out (lists, by script; the metrics and item metadata, in
    transactions), instead of stopping the worker."""
    import json

    import redis as sync_redis

    from recsys_online.recommender import Recommendation
    from schemas import ItemEvent
    from streamer.settings import Settings
    from streamer.sink import RedisSink

    async with own_redis(tmp_path, "--min-replicas-to-write", "1") as (port, admin):
        settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="norep:")
        sink = RedisSink(settings)
        sink.max_wait_s = 0.2
        try:
            with pytest.raises(sync_redis.exceptions.ResponseError, match="NOREPLICAS"):
                admin.set("probe", "x")
            recs = [Recommendation("i1", 0.5, "popular now", "popular")]
            item = ItemEvent(op="upsert", item_id="i1", title="One", tags=["jazz"], timestamp=1)
            writes = [
                asyncio.ensure_future(sink.publish_lists({"u1": recs}, version=1)),
                asyncio.ensure_future(sink.publish_state(recs, {"events": 1}, 1, "w:1")),
                asyncio.ensure_future(sink.publish_items([item])),
            ]
            await asyncio.sleep(1.0)
            done = [w.exception() for w in writes if w.done()]
            assert not done, done
            assert sink.waiting_s() >= 0.8  # (recsys_redis_write_waiting_seconds: alerted on)
            admin.config_set("min-replicas-to-write", 0)
            await asyncio.wait_for(asyncio.gather(*writes), 20)
            assert sink.waiting_s() == 0.0
            listed = json.loads(admin.get(settings.key("recs", "u1")))
            assert listed["items"][0]["item_id"] == "i1"
            assert admin.hget(settings.key("metrics"), "events") == b"1"
        finally:
            await sink.close()


@pytest.mark.redis
def test_services_down_never_stops_a_redis_it_did_not_start(tmp_path) -> None:
    """A stale pid file (left by a crash or a reboot) naming another Redis is not taken
    for the script's own: ``status`` says down and ``down`` leaves that Redis running."""
    import os
    import shutil
    import socket
    import subprocess
    from pathlib import Path

    server = shutil.which("redis-server")
    assert server, "redis-server is installed by scripts/services.sh"
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    other = subprocess.Popen(
        [
            server,
            "--port",
            str(ports[0]),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        state = tmp_path / "state"
        state.mkdir()
        (state / "redis.pid").write_text(f"{other.pid}\n")
        env = {
            **os.environ,
            "RECSYS_STATE_DIR": str(state),
            "REDIS_PORT": str(ports[1]),
            "KAFKA_PORT": "1",
            "KAFKA_CONTROLLER_PORT": "2",
        }
        script = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
        status = subprocess.run(
            ["bash", str(script), "status"], env=env, capture_output=True, text=True, timeout=60
        )
        assert f"redis: DOWN  127.0.0.1:{ports[1]}" in status.stdout + status.stderr
        subprocess.run(["bash", str(script), "down"], env=env, capture_output=True, timeout=120)
        assert other.poll() is None, "down stopped a Redis it did not start"
    finally:
        other.terminate()
        other.wait(timeout=10)


def test_each_set_of_ports_has_its_own_state_folder(tmp_path) -> None:
    """With one state folder, a pair started on other ports took the default pair's
    broker for its own (the same pid file and config path), and its ``down`` stopped
    it. Unless ``RECSYS_STATE_DIR`` says otherwise, other ports get a folder of their
    own."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_STATE_DIR"}
    env["RECSYS_CACHE_DIR"] = str(tmp_path)

    def logs(**ports: str) -> str:
        done = subprocess.run(
            ["bash", str(script), "logs"],
            env={k: v for k, v in env.items() if k not in ports} | ports,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout + done.stderr

    assert f"==> {tmp_path}/run/kafka.log <==" in logs(
        KAFKA_PORT="9092", KAFKA_CONTROLLER_PORT="9093", REDIS_PORT="6379"
    )
    assert f"==> {tmp_path}/run-19092-19093-16379/redis.log <==" in logs(
        KAFKA_PORT="19092", KAFKA_CONTROLLER_PORT="19093", REDIS_PORT="16379"
    )
    # What `up` exports for the benchmarks is not read back: a later run on other ports
    # from a shell that eval'd the default pair's exports keeps a folder of its own.
    assert f"==> {tmp_path}/run-19092-19093-16379/redis.log <==" in logs(
        KAFKA_PORT="19092",
        KAFKA_CONTROLLER_PORT="19093",
        REDIS_PORT="16379",
        RECSYS_SERVICES_STATE=f"{tmp_path}/run",
    )


def test_a_misspelt_sasl_user_stops_the_script_before_anything_starts(tmp_path) -> None:
    """The check ran in subshells, where its error stopped only them: ``up`` printed
    the error and started the broker without that user."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
    env = os.environ | {"RECSYS_STATE_DIR": str(tmp_path), "KAFKA_SASL_USERS": "a:pw,typo"}
    done = subprocess.run(
        ["bash", str(script), "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and done.stdout == ""
    assert "KAFKA_SASL_USERS: 'typo' is not name:password" in done.stderr
    assert not (tmp_path / "kafka.pid").exists()


def test_two_installs_at_once_fetch_the_jars_once_into_the_shared_cache(tmp_path) -> None:
    """Two runs with their own state folders on a cold cache each fetched the jars and
    swapped them in: one's folder ended inside the other's, or jars were deleted under
    a starting broker. The fetch is locked: one fetches, the other finds its jars.
    (``mvn`` is a stand-in that takes a second and writes the one jar checked for.)"""
    import os
    import re
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
    version = re.search(r"<kafka.version>([^<]+)<", (script.parent / "kafka/pom.xml").read_text())
    assert version, "scripts/kafka/pom.xml names the Kafka version"
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "mvn").write_text(
        "#!/bin/bash\n"
        'for a in "$@"; do case $a in -DoutputDirectory=*) out=${a#*=};; esac; done\n'
        f'echo run >> {tmp_path}/mvn-runs; sleep 1; mkdir -p "$out"\n'
        f'touch "$out/kafka_2.13-{version[1]}.jar"\n'
    )
    (stub / "mvn").chmod(0o755)
    runs = [
        subprocess.Popen(
            ["bash", str(script), "install"],
            env=os.environ
            | {
                "PATH": f"{stub}:{os.environ['PATH']}",
                "RECSYS_CACHE_DIR": str(tmp_path / "cache"),
                "RECSYS_STATE_DIR": str(tmp_path / f"state{n}"),
                "RECSYS_MAVEN_REPO": "",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
    home = tmp_path / "cache" / f"kafka-{version[1]}"
    assert (tmp_path / "mvn-runs").read_text() == "run\n"
    assert sorted(p.name for p in home.iterdir()) == [".complete", "libs", "mvn.log"]
    assert [p.name for p in (home / "libs").iterdir()] == [f"kafka_2.13-{version[1]}.jar"]


def test_services_install_fetches_what_up_needs_and_starts_nothing(tmp_path) -> None:
    """``scripts/test.sh`` runs it where the shared services are preset: the tests that
    start a broker or a Redis of their own then find the jars and ``redis-server``
    already here, instead of fetching them mid-test."""
    import os
    import subprocess
    from pathlib import Path

    from own_services import free_port

    port = free_port()
    state = tmp_path / "state"
    env = {
        **os.environ,
        "RECSYS_STATE_DIR": str(state),
        "REDIS_PORT": str(port),
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    script = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
    done = subprocess.run(
        ["bash", str(script), "install"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "jars, Java and redis-server are here" in done.stderr
    assert done.stdout == ""  # (no env to export: nothing runs)
    assert not state.exists() or not list(state.glob("*.pid"))
    status = subprocess.run(
        ["bash", str(script), "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode != 0, status.stdout
    assert "kafka: DOWN" in status.stdout and "redis: DOWN" in status.stdout, status.stdout


@pytest.mark.redis
async def test_a_stopping_worker_leaves_the_live_workers_at_once(
    redis_url: str, redis_key_prefix: str
) -> None:
    """A worker's own metrics hash and registry entry go when it stops, instead of
    lasting out their TTL (`recsys-online metrics` counted a stopped worker as live)."""
    from recsys_online.recommender import Recommendation
    from streamer.settings import Settings
    from streamer.sink import RedisSink

    settings = Settings(redis_url=redis_url, key_prefix=redis_key_prefix)
    sink = RedisSink(settings)
    recs = [Recommendation("i1", 0.5, "popular now", "popular")]
    try:
        for worker in ("w:1", "w:2"):
            await sink.publish_state(recs, {"events": 1}, 1, worker)
        await sink.withdraw("w:1")
        live = await sink.redis.zrange(settings.key("metrics", "workers"), 0, -1)
        assert live == [b"w:2"]
        assert not await sink.redis.exists(settings.key("metrics", "worker", "w:1"))
        assert await sink.redis.exists(settings.key("metrics", "worker", "w:2"))
    finally:
        await sink.close()
