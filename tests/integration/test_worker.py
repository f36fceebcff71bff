"""End to end: a real worker process between the real Kafka and Redis."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.util import calc_crc32c
from polling import wait_until
from worker_process import cli

from schemas import ItemEvent, RatingEvent, UserEvent
from streamer.client import RecommendationClient
from streamer.process import clear_run, isolated_env, start_worker, stop_process

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

NOW = time.time()


@dataclass
class RunningWorker:
    """Names one test worker uses, so runs never collide on topics or keys."""

    env: dict[str, str]
    prefix: str
    ratings: str
    items: str
    deadletter: str
    redis: redis.Redis
    process: subprocess.Popen
    log_path: Path

    def recs(self, user: str) -> dict | None:
        raw = self.redis.get(f"{self.prefix}recs:{user}")
        return None if raw is None else json.loads(raw)

    def items_for(self, user: str) -> list[str]:
        doc = self.recs(user)
        return [] if doc is None else [r["item_id"] for r in doc["items"]]

    def metrics(self) -> dict[str, str]:
        raw = self.redis.hgetall(f"{self.prefix}metrics")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def wait_for(check: Callable[[], object], what: str, worker: RunningWorker, timeout=30.0):
    """Poll ``check`` until it returns something truthy; fail with the worker's log."""
    return wait_until(check, what, worker.log, timeout, worker.process)


async def _produce(bootstrap: str, messages: list[tuple[str, bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()


def produce(worker: RunningWorker, messages: list[tuple[str, bytes, bytes | None]]) -> None:
    asyncio.run(_produce(worker.env["KAFKA_BOOTSTRAP_SERVERS"], messages))


def item(worker: RunningWorker, item_id: str, *tags: str, op: str = "upsert"):
    if op == "delete":
        event = ItemEvent(op="delete", item_id=item_id, timestamp=NOW)
    else:
        event = ItemEvent(
            op="upsert", item_id=item_id, title=item_id, tags=list(tags), timestamp=NOW
        )
    return (worker.items, item_id.encode(), event.to_bytes())


def rating(worker: RunningWorker, user: str, item_id: str, value: float):
    event = RatingEvent(user_id=user, item_id=item_id, rating=value, timestamp=NOW)
    return (worker.ratings, user.encode(), event.to_bytes())


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, redis_url: str, tmp_path_factory) -> Iterator[RunningWorker]:
    env = isolated_env(
        "test",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=redis_url,
        RECSYS_PARTITIONS="2",
        RECSYS_K="5",
        RECSYS_REFRESH_EVERY_S="0.3",
        RECSYS_SIMILAR_EVERY_S="0.5",
    )
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(env, log_path)
    client = redis.Redis.from_url(redis_url)
    running = RunningWorker(
        env,
        env["RECSYS_KEY_PREFIX"],
        env["RECSYS_RATINGS_TOPIC"],
        env["RECSYS_ITEMS_TOPIC"],
        env["RECSYS_DEADLETTER_TOPIC"],
        client,
        process,
        log_path,
    )
    try:
        # Ready once the first metrics tick lands (catalog read, partitions assigned).
        wait_for(running.metrics, "the worker's first metrics", running, timeout=60)
        yield running
    finally:
        stop_process(process)
        client.close()
        clear_run(env)


def test_ratings_become_lists_in_redis(worker: RunningWorker) -> None:
    produce(
        worker,
        [item(worker, f"a{j}", "jazz" if j % 2 else "rock") for j in range(6)]
        + [rating(worker, "alice", "a1", 5.0), rating(worker, "alice", "a2", 2.0)],
    )
    doc = wait_for(lambda: worker.recs("alice"), "alice's list", worker)
    items = [r["item_id"] for r in doc["items"]]
    assert 0 < len(items) <= 5
    assert "a1" not in items and "a2" not in items  # already rated
    assert all(r["reason"] and r["source"] for r in doc["items"])
    assert doc["model_version"] >= 1 and doc["updated_at"] > NOW - 60
    ttl = worker.redis.ttl(f"{worker.prefix}recs:alice")
    assert 7 * 86400 - 300 <= ttl <= 7 * 86400  # the default, RECSYS_RECS_TTL_S
    metrics = wait_for(
        lambda: (m := worker.metrics()) and int(m["events"]) >= 2 and m, "metrics", worker
    )
    for key in (
        "events",
        "rmse",
        "mae",
        "ndcg_at_k",
        "recall_at_k",
        "events_per_s",
        "deadletters",
        "lag",
        "freshness_ms_p50",
        "freshness_ms_p99",
    ):
        assert key in metrics
    assert float(metrics["freshness_ms_p99"]) >= float(metrics["freshness_ms_p50"]) > 0


def test_new_tagged_item_reaches_a_matching_user_without_ratings(worker: RunningWorker) -> None:
    produce(
        worker,
        [item(worker, "b-noir1", "noir"), item(worker, "b-noir2", "noir")]
        + [item(worker, f"b-pop{j}", "pop") for j in range(8)]
        + [rating(worker, f"fan{j}", f"b-pop{j}", 5.0) for j in range(8)]
        + [rating(worker, "bob", "b-noir1", 5.0), rating(worker, "bob", "b-pop0", 1.0)],
    )
    wait_for(lambda: worker.recs("bob"), "bob's list", worker)
    produce(worker, [item(worker, "b-noir-new", "noir")])  # no one has rated it
    wait_for(
        lambda: "b-noir-new" in worker.items_for("bob"), "the new noir item in bob's list", worker
    )
    doc = worker.recs("bob")
    reason = next(r for r in doc["items"] if r["item_id"] == "b-noir-new")["reason"]
    assert "noir" in reason or "b-noir1" in reason


def test_declared_tags_serve_a_new_user_until_a_tombstone_withdraws_them(
    worker: RunningWorker,
) -> None:
    """A user event (the users topic is compacted, keyed by user) seeds a user with no
    ratings; its tombstone withdraws the declaration and the user gets popularity."""
    users = worker.env["RECSYS_USERS_TOPIC"]
    declared = UserEvent(user_id="una", tags=["harp"], timestamp=NOW).to_bytes()
    produce(worker, [item(worker, f"harp{j}", "harp") for j in range(3)])
    produce(worker, [(users, b"una", declared)])

    def sources() -> set[str]:
        doc = worker.recs("una")
        return set() if doc is None else {r["source"] for r in doc["items"]}

    wait_for(lambda: "content" in sources(), "una's list from her declared tags", worker)
    assert {"harp0", "harp1", "harp2"} & set(worker.items_for("una"))
    produce(worker, [(users, b"una", None)])
    wait_for(lambda: sources() == {"popular"}, "una's list without her tags", worker)


@pytest.mark.parametrize("how", ["event", "tombstone"])
def test_deleted_item_leaves_every_list(worker: RunningWorker, how: str) -> None:
    """By a delete event, or by a tombstone (a record with the item's key and no value:
    how a compacted topic forgets a key, and what change-data-capture connectors send)."""
    c = [f"{how}-c{j}" for j in range(4)]
    carol, dave = f"carol-{how}", f"dave-{how}"
    produce(
        worker,
        [item(worker, name, "folk") for name in c]
        + [rating(worker, carol, c[0], 5.0), rating(worker, dave, c[1], 5.0)],
    )
    wait_for(lambda: c[2] in worker.items_for(carol), "c2 in carol's list", worker)
    wait_for(lambda: c[2] in worker.items_for(dave), "c2 in dave's list", worker)
    if how == "event":
        produce(worker, [item(worker, c[2], op="delete")])
    else:
        produce(worker, [(worker.items, c[2].encode(), None)])
    wait_for(
        lambda: c[2] not in worker.items_for(carol) and c[2] not in worker.items_for(dave),
        "c2 gone from every list",
        worker,
        timeout=10,
    )
    # The metadata hash is removed by the items agent, which runs beside the catalog
    # follower that fixes the lists: within the same bounded time, not in the same instant.
    wait_for(
        lambda: worker.redis.exists(f"{worker.prefix}item:{c[2]}") == 0,
        "c2's metadata gone",
        worker,
        timeout=10,
    )
    raw = wait_for(lambda: worker.redis.get(f"{worker.prefix}popular"), "the popular list", worker)
    popular = json.loads(raw)
    assert popular["items"] and c[2] not in [r["item_id"] for r in popular["items"]]


def test_an_items_more_like_this_list_follows_its_tags_ratings_and_deletes(
    worker: RunningWorker,
) -> None:
    """``similar:{item}``: items sharing its tags as soon as it is listed, an item
    rated together with it once users do, and never an item deleted since."""
    harp = [f"m-harp{j}" for j in range(3)]
    produce(
        worker, [item(worker, x, "harpsichord") for x in harp] + [item(worker, "m-tuba", "tuba")]
    )
    client = RecommendationClient(worker.env["REDIS_URL"], worker.prefix)

    def similar(item_id: str) -> list[str]:
        got = client.similar(item_id)
        return [] if got.fallback else [r.item_id for r in got.items]

    try:
        # (Equal scores, in the order the catalog's partitions brought the items in.)
        wait_for(
            lambda: sorted(similar("m-harp0")) == harp[1:], "m-harp0's list by its tags", worker
        )
        assert client.similar("m-harp0").items[0].reason == "similar to m-harp0"
        produce(
            worker,
            [rating(worker, f"mia{j}", "m-harp0", 5.0) for j in range(3)]
            + [rating(worker, f"mia{j}", "m-tuba", 5.0) for j in range(3)],
        )
        wait_for(lambda: "m-tuba" in similar("m-harp0"), "m-tuba rated with m-harp0", worker)
        tuba = next(r for r in client.similar("m-harp0").items if r.item_id == "m-tuba")
        assert (tuba.source, tuba.because) == ("co-occurrence", "m-harp0")
        produce(worker, [item(worker, harp[1], op="delete")])
        wait_for(
            lambda: harp[1] not in similar("m-harp0") and harp[1] not in similar("m-harp2"),
            "the deleted item gone from every similar list",
            worker,
            timeout=10,
        )
        wait_for(
            lambda: worker.redis.exists(f"{worker.prefix}similar:{harp[1]}") == 0,
            "the deleted item's own list gone",
            worker,
            timeout=10,
        )
    finally:
        client.close()


async def _dead_letters(bootstrap: str, topic: str, n: int) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list = []
    try:
        deadline = time.monotonic() + 30
        while len(found) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found.extend(records)
    finally:
        await consumer.stop()
    return found


def test_bad_events_go_to_the_dead_letter_topic_and_the_worker_keeps_going(
    worker: RunningWorker,
) -> None:
    bad = [
        (worker.ratings, b"eve", b"{not json"),
        (
            worker.ratings,
            b"eve",
            b'{"user_id": "eve", "item_id": "a1", "rating": 9, "timestamp": 1700000000}',
        ),
        (
            worker.ratings,
            b"eve",
            b'{"user_id": "eve", "item_id": "a1", "rating": NaN, "timestamp": 1700000000}',
        ),
        (
            worker.ratings,
            b"eve",
            RatingEvent(
                user_id="eve", item_id="never-listed", rating=4.0, timestamp=NOW
            ).to_bytes(),
        ),
        (worker.ratings, b"eve", b"x" * 70_000),
        (worker.items, b"zz", b'{"op": "upsert", "item_id": "", "timestamp": 1}'),
        # A tombstone (no value) on the ratings topic, where it holds no event; one on the
        # items topic whose key names no item; an item event keyed by another item.
        (worker.ratings, b"eve", None),
        (worker.items, b"\xffzz", None),
        (worker.items, b"zz", b'{"op": "upsert", "item_id": "zz-other", "timestamp": 1}'),
        # A JSON escape of a lone surrogate: no UTF-8 store could hold the id.
        (
            worker.ratings,
            b"eve",
            b'{"user_id": "\\ud800", "item_id": "a1", "rating": 4, "timestamp": 1700000000}',
        ),
        # A tag weight that would overflow the model's float32 vectors.
        (
            worker.items,
            b"zz",
            b'{"op": "upsert", "item_id": "zz", "tags": {"a": 1e39}, "timestamp": 1}',
        ),
    ]
    produce(worker, [*bad, item(worker, "e1", "opera"), rating(worker, "eve", "e1", 4.0)])
    records = asyncio.run(
        _dead_letters(worker.env["KAFKA_BOOTSTRAP_SERVERS"], worker.deadletter, len(bad))
    )
    original = sorted((v or b"" for _, _, v in bad))  # original bytes (b"": no value)
    assert sorted(r.value or b"" for r in records) == original
    for record in records:
        headers = dict(record.headers)
        assert headers["recsys.reason"]
        assert headers["recsys.source.topic"].decode() in (worker.ratings, worker.items)
        assert int(headers["recsys.source.offset"]) >= 0
        assert int(headers["recsys.source.partition"]) >= 0
    reasons = b" | ".join(dict(r.headers)["recsys.reason"] for r in records).decode()
    for expected in (
        "malformed JSON",
        "rating",
        "unknown item",
        "too large",
        "item_id",
        "tombstone",
        "its key is not UTF-8",
        "keyed by their item_id",
        "not valid Unicode",
        "more than 1e+09",
    ):
        assert expected in reasons, reasons
    # The worker is still learning after the bad input, and counted it.
    wait_for(lambda: worker.recs("eve"), "eve's list after the bad events", worker)
    wait_for(
        lambda: int(worker.metrics().get("deadletters", 0)) >= len(bad), "deadletter count", worker
    )
    # Counted by kind too (streamer.metrics.deadletter_kind), for alerts on one cause.
    figures = worker.metrics()
    for kind, at_least in (
        ("malformed", 2),
        ("oversized", 1),
        ("unknown_item", 1),
        ("bad_tombstone", 1),
        ("wrong_key", 1),
        ("invalid", 5),
    ):
        assert int(figures.get(f"deadletters_{kind}", 0)) >= at_least, (kind, figures)
    assert worker.process.poll() is None


async def _produce_with_a_header_name_not_utf8(
    bootstrap: str, topic: str, key: bytes, value: bytes
):
    """One record whose header name is bytes that are not UTF-8 (Kafka takes them; the
    Java clients read them with replacement; aiokafka's reader raised on them), in the
    partition the key hashes to, as a producer sends it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        partition = DefaultPartitioner()(key, partitions, partitions)
        batch = producer.create_batch()
        batch.append(key=key, value=value, timestamp=None, headers=[("ZZ", b"v")])
        data = bytearray(batch._build())
        at = data.find(b"ZZ")
        data[at : at + 2] = b"\xff\xfe"
        struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
        batch._buffer = bytes(data)
        await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def test_a_header_name_not_utf8_is_read_and_the_worker_keeps_going(worker: RunningWorker):
    """A rating whose record carries a header named by bytes that are not UTF-8 stopped
    the worker at every start (its partition blocked for good): it is learned like any
    other, and the ratings after it too."""
    produce(worker, [item(worker, f"h{j}", "folk") for j in range(4)])
    event = RatingEvent(user_id="hana", item_id="h1", rating=5.0, timestamp=NOW)
    asyncio.run(
        _produce_with_a_header_name_not_utf8(
            worker.env["KAFKA_BOOTSTRAP_SERVERS"], worker.ratings, b"hana", event.to_bytes()
        )
    )
    produce(worker, [rating(worker, "hana", "h2", 4.0), rating(worker, "ivo", "h1", 5.0)])
    wait_for(lambda: worker.recs("ivo"), "the list of the rating after it", worker)
    doc = wait_for(
        lambda: {"h1", "h2"}.isdisjoint(worker.items_for("hana")) and worker.recs("hana"),
        "a list without both items hana rated",
        worker,
    )
    assert doc["items"] and worker.process.poll() is None


def _cli(worker: RunningWorker, *args: str) -> str:
    done = cli(worker.env, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_dead_letter_sent_back_once_its_item_is_listed_is_learned(worker: RunningWorker):
    """A rating of an item the catalog does not list yet is dead-lettered; once the item
    is listed, ``recsys-online deadletters --redrive`` sends it back and the worker learns
    it. A second run sends nothing."""
    produce(worker, [rating(worker, "lena", "late-item", 5.0)])
    reason = "item_id: unknown item 'late-item'"

    def listed() -> list[dict]:
        return json.loads(_cli(worker, "deadletters", "--reason", reason, "--json"))

    (row,) = wait_for(listed, "the dead letter listed", worker)
    assert row["key"] == "lena" and row["source"].startswith(f"{worker.ratings}[")
    assert worker.recs("lena") is None
    produce(worker, [item(worker, "late-item", "folk"), item(worker, "late-2", "folk")])
    sent = json.loads(_cli(worker, "deadletters", "--redrive", "--reason", reason, "--json"))
    assert sent["sent"] == [row["id"]], sent
    doc = wait_for(lambda: worker.recs("lena"), "lena's list from the redriven rating", worker)
    assert "late-item" not in [r["item_id"] for r in doc["items"]]  # rated: learned
    again = json.loads(_cli(worker, "deadletters", "--redrive", "--reason", reason, "--json"))
    assert again["sent"] == [] and again["already"] == [row["id"]]


async def _produce_in_transactions(bootstrap: str, messages, transactional_id: str) -> None:
    """Each message in a transaction of its own (an exactly-once producer's pattern): every
    record is followed by a commit marker, which takes an offset of its own."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    await producer.start()
    try:
        for topic, key, value in messages:
            async with producer.transaction():
                await producer.send(topic, key=key, value=value)
    finally:
        await producer.stop()


def test_a_transactional_producer_leaves_no_lag(worker: RunningWorker) -> None:
    """Commit markers are not ratings: once the ratings before them are learned, the
    worker is caught up (lag 0), not one marker short of each partition's end forever."""
    produce(worker, [item(worker, f"t{j}", "ska") for j in range(4)])
    before = int(worker.metrics().get("events", 0))
    users = [f"tx{j}" for j in range(6)]  # (keys on both partitions)
    ratings = [rating(worker, user, f"t{j % 4}", 4.0) for j, user in enumerate(users)]
    bootstrap = worker.env["KAFKA_BOOTSTRAP_SERVERS"]
    asyncio.run(_produce_in_transactions(bootstrap, ratings, f"{worker.prefix}tx"))
    wait_for(lambda: all(worker.recs(u) for u in users), "the producer's users' lists", worker)
    # (the figures of a tick after the six ratings were learned)
    counted = before + len(users)
    wait_for(lambda: int(worker.metrics()["events"]) >= counted, "the ratings counted", worker)
    wait_for(lambda: worker.metrics().get("lag") == "0", "lag 0 after the markers", worker)


def test_deleted_items_rows_are_freed_and_lists_still_served(worker: RunningWorker) -> None:
    """Once deleted items hold more than RECSYS_COMPACT_SHARE (0.25) of the item rows,
    the worker frees them: the deleted rows left fall below that share, the live items
    stay, lists are still served and updated, and a rating of a freed item is still
    refused as deleted."""
    figures = wait_for(lambda: "items" in (m := worker.metrics()) and m, "the figures", worker)
    live = int(figures["items"])
    churn = [f"x{j}" for j in range(live + 8)]
    produce(
        worker,
        [item(worker, x, "swing") for x in churn]
        + [item(worker, f"keep{j}", "polka") for j in (1, 2, 3)]
        + [rating(worker, "xavier", "keep1", 5.0)],
    )
    wait_for(lambda: worker.recs("xavier"), "xavier's list", worker)
    log_before = len(worker.log_path.read_text(errors="replace"))
    produce(worker, [item(worker, x, op="delete") for x in churn])
    # Rows freed are counted from the worker's log (the ``items`` figure read above may
    # lag the catalog of the tests before, so it cannot give the exact count). Deletes
    # arrive over time: a compaction may free the first ones and leave the rest, below
    # the share, deleted but not freed (by design, until the share is reached again).

    def settled() -> bool:
        m = worker.metrics()
        log = worker.log_path.read_text(errors="replace")[log_before:]
        freed = sum(map(int, re.findall(r"compacted: (\d+) deleted", log)))
        left, live_now = int(m["items_deleted"]), int(m["items"])
        return (
            freed >= len(churn) // 2
            and freed + left >= len(churn)
            and left < max(1.0, 0.25 * (live_now + left))
        )

    wait_for(settled, "the deleted items' rows freed", worker)
    refused = int(worker.metrics()["deadletters"])
    before = worker.recs("xavier")["updated_at"]
    produce(
        worker,
        [
            rating(worker, "xavier", "keep2", 4.0),
            rating(worker, "yves", "x0", 5.0),
            rating(worker, "zoe", "keep3", 5.0),
        ],
    )
    doc = wait_for(
        lambda: (d := worker.recs("xavier"))["updated_at"] > before and d,
        "xavier's list after a rating",
        worker,
    )
    listed = [r["item_id"] for r in doc["items"]]
    assert listed and not set(listed) & {*churn, "keep1", "keep2"}, doc
    # A live item kept its row: a rating of it is learned (the rater gets a list).
    wait_for(lambda: worker.recs("zoe"), "zoe's list after rating keep3", worker)
    wait_for(lambda: int(worker.metrics()["deadletters"]) > refused, "x0's rating refused", worker)
    records = asyncio.run(
        _dead_letters(worker.env["KAFKA_BOOTSTRAP_SERVERS"], worker.deadletter, refused + 1)
    )
    reasons = [dict(r.headers)["recsys.reason"].decode() for r in records]
    assert "item_id: item 'x0' was deleted" in reasons, reasons
    assert not any("keep3" in reason for reason in reasons), reasons


def test_with_log_format_json_every_line_of_the_log_is_a_json_object(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    """Faust's lines, the Kafka client's and the worker's own all come out as JSON, for
    log pipelines that index fields."""
    from worker_process import running_worker

    env = isolated_env(
        "jsonlog",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=redis_url,
        RECSYS_PARTITIONS="2",
        RECSYS_LOG_FORMAT="json",
    )
    try:
        with running_worker(env, tmp_path / "worker.log") as run:
            wait_until(run.metrics, "the worker's first metrics", run.log, 60, run.process)
    finally:
        clear_run(env)
    lines = [line for line in run.log_path.read_text().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # (a line that is not JSON fails here)
    assert all({"time", "level", "logger", "message"} <= set(doc) for doc in docs)
    loggers = {doc["logger"] for doc in docs}
    assert "streamer.web" in loggers and any(name.startswith("faust") for name in loggers)
    assert any(doc["message"].startswith("Prometheus metrics at") for doc in docs)
