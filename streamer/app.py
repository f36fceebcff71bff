"""The Faust worker: topics, agents and timers wiring Kafka to the engine and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from faust.exceptions import ConsumerNotStarted
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP, Message

from recsys_online.events import Rating
from recsys_online.sharing import ItemChanges
from schemas import EventError, ItemEvent, RatingEvent
from streamer.deadletters import TopicNotReadToEnd, refused_offsets
from streamer.engine import Lists, StreamEngine
from streamer.item_changes import decode_item_changes, encode_item_changes
from streamer.logs import logging_config, quiet_kafka_client, quiet_long_ticks
from streamer.metrics import exposition
from streamer.ordering import EventTimeMerge
from streamer.partitions import read_ranges, standalone_consumer
from streamer.records import item_event, partition_problem, rating_event, user_event
from streamer.settings import Settings, SettingsError
from streamer.similar import Shard
from streamer.sink import KEEP_TTL, RedisSink, redis_refusal
from streamer.snapshot import SnapshotStore
from streamer.web import MetricsServer

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the project's topics with their partition counts and configs (idempotent).

    Ratings, items and users share ``partitions`` so they stay co-partitioned by key;
    ratings are kept forever (workers rebuild their model from them); items and users are
    compacted (the latest event per key is kept: every worker reads all items, and the
    users of its partitions when it rebuilds).
    """
    wanted = _topics(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, **settings.kafka_security()
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        made = sorted(existing & _shared(settings))
        if made:  # (describing none would describe every topic)
            _check_partitions(settings, await admin.describe_topics(made))
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                _check_created(settings, await admin.create_topics(missing))
        waiting = await _wait_for_leaders(
            admin, {t.name: t.num_partitions for t in wanted}, timeout_s
        )
        if waiting:
            raise SettingsError(
                f"Kafka at {settings.bootstrap_servers} accepted topics {waiting} but has no "
                f"leader for them after {timeout_s:.0f} s"
            )
    finally:
        await admin.close()


def _check_created(settings: Settings, response: object) -> None:
    """A :class:`SettingsError` naming the topics Kafka refused to create and why
    (aiokafka returns its per-topic errors without raising: the worker would then wait
    for their leaders in vain). A topic another worker created first is no error.

    >>> class Response:
    ...     topic_errors = [("recsys.ratings", 0, None), ("recsys.users", 29, "denied")]
    >>> _check_created(Settings(), Response())
    Traceback (most recent call last):
    ...
    streamer.settings.SettingsError: Kafka at 127.0.0.1:9092 refused to create recsys.users: \
TopicAuthorizationFailedError (denied)
    """
    refused = []
    for topic, code, *message in getattr(response, "topic_errors", ()):
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        name = for_code(code).__name__
        refused.append(f"{topic}: {name}" + (f" ({message[0]})" if message and message[0] else ""))
    if refused:
        raise SettingsError(
            f"Kafka at {settings.bootstrap_servers} refused to create {'; '.join(refused)}"
        )


def _fresh_engine(loaded: StreamEngine) -> StreamEngine:
    """An empty engine like ``loaded``, for :meth:`SnapshotStore.load`'s layout check."""
    return StreamEngine(loaded.settings, loaded.max_tracked_users)


def _shared(settings: Settings) -> set[str]:
    """The topics partitioned alike by key (``RECSYS_PARTITIONS`` each)."""
    return {settings.ratings_topic, settings.items_topic, settings.users_topic}


def _check_partitions(settings: Settings, described: list[dict]) -> None:
    """Topics that exist with fewer partitions than ``RECSYS_PARTITIONS``, or with counts
    that differ: a :class:`SettingsError` naming them (a worker would wait for partitions
    that never come, or ratings and users would no longer be co-partitioned by key).
    Topics made with more partitions up front, all alike, are fine.

    >>> _check_partitions(Settings(partitions=8), [{"topic": "recsys.ratings",
    ...     "error_code": 0, "partitions": [{}] * 4}])
    Traceback (most recent call last):
    ...
    streamer.settings.SettingsError: RECSYS_PARTITIONS is 8, but recsys.ratings has 4 ...
    >>> _check_partitions(Settings(partitions=4), [{"topic": "recsys.ratings",
    ...     "error_code": 0, "partitions": [{}] * 8}])
    """
    shared = _shared(settings)
    counts = {
        t["topic"]: len(t["partitions"])
        for t in described
        if t["error_code"] == 0 and t["topic"] in shared
    }
    fewer = any(n < settings.partitions for n in counts.values())
    if fewer or len(set(counts.values())) > 1:  # (more than set, all alike: grown ahead)
        found = ", ".join(f"{name} has {n}" for name, n in sorted(counts.items()))
        raise SettingsError(
            f"RECSYS_PARTITIONS is {settings.partitions}, but {found} partitions: the "
            "topics must all have the same count (to stay co-partitioned by key), at least "
            "RECSYS_PARTITIONS"
        )


TOMBSTONE_RETENTION_MS = 100 * 365 * 86_400_000


def _topics(settings: Settings) -> list[NewTopic]:
    """The topics of these settings, with their partition counts and configs."""
    compacted = {"cleanup.policy": "compact"}
    # The ratings log is the model's durable state: neither its age nor its size may drop
    # any of it, whatever the broker's defaults (the project's own caps partitions at
    # 128 MiB).
    forever = {"retention.ms": "-1", "retention.bytes": "-1"}
    # An item's tombstone is kept as long as a delete event is: a worker rebuilding from
    # the ratings log learns the ratings of items it knows, deleted since or not, so an
    # item whose tombstone compaction dropped would lose its ratings' part of the model.
    # (100 years: Kafka adds this to the cleaning time, so its largest value would wrap.)
    items = compacted | {"delete.retention.ms": str(TOMBSTONE_RETENTION_MS)}
    return [
        NewTopic(settings.ratings_topic, settings.partitions, 1, topic_configs=forever),
        NewTopic(settings.items_topic, settings.partitions, 1, topic_configs=items),
        NewTopic(settings.users_topic, settings.partitions, 1, topic_configs=compacted),
        # Kept as long as the ratings: a replay skips the ratings refused live by their
        # dead letters, and a letter gone would let a rebuild learn a refused rating.
        NewTopic(settings.deadletter_topic, 1, 1, topic_configs=forever),
        # Item-side changes workers exchange (RECSYS_SHARE_ITEMS_EVERY_S): only for the
        # workers running now, so kept an hour.
        NewTopic(settings.item_changes_topic, 1, 1, topic_configs={"retention.ms": "3600000"}),
    ]


def run_topics(settings: Settings) -> list[str]:
    """The names of the topics :func:`ensure_topics` creates for these settings."""
    return [topic.name for topic in _topics(settings)]


_DELETED_OR_ABSENT = {0, 3}  # Kafka error codes: none, UNKNOWN_TOPIC_OR_PARTITION


async def delete_topics(
    bootstrap_servers: str,
    names: Sequence[str],
    timeout_ms: int = 10_000,
    security: Mapping[str, object] | None = None,
) -> list[str]:
    """Delete topics ``names`` (the end of a run with topics of its own: a benchmark, a
    test, the demo); returns those the broker did not delete (absent ones count as
    deleted).

    A broker keeps files open for every partition it holds: runs that never delete their
    topics pile up partitions until it runs out of file descriptors (about 20,000 here)
    and refuses new topics.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms, **(security or {})
    )
    await admin.start()
    try:
        response = await admin.delete_topics(list(names))
    finally:
        await admin.close()
    return [name for name, code, *_ in response.topic_error_codes if code not in _DELETED_OR_ABSENT]


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, partitions: dict[str, int], timeout_s: float
) -> list[str]:
    """Wait until the broker's metadata shows every topic with a leader for each of its
    partitions; returns the topics still without one at the timeout (empty when ready).

    A consumer that joins its group before then is assigned nothing, and does not look
    again until its next metadata refresh, minutes later."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(list(partitions))
        ready = {
            t["topic"]
            for t in described
            if t["error_code"] == 0
            and len(t["partitions"]) >= partitions[t["topic"]]
            and all(p["leader"] >= 0 for p in t["partitions"])
        }
        waiting = sorted(set(partitions) - ready)
        if not waiting or time.monotonic() > deadline:
            return waiting
        await asyncio.sleep(0.1)


async def publish(
    engine: StreamEngine,
    sink: RedisSink,
    lists: Lists,
    ttl: int | Mapping[str, int] | None = None,
    rank_s: float | None = None,
) -> float:
    """Write freshly ranked lists to Redis and time the whole refresh; returns when it landed.

    Called right after the ranking call that made ``lists``: its time is read before the
    write awaits, while another task's ranking (the refresh timer's, a batch's) cannot
    have replaced it yet; ``rank_s``: the ranking time of lists that several calls made.
    ``ttl``: as :meth:`RedisSink.publish_lists` takes it (None: the users just rated or
    declared tags; :data:`KEEP_TTL`: they did not).
    """
    rank_s = engine.last_rank_s if rank_s is None else rank_s
    started = time.time()
    done = await sink.publish_lists(lists, engine.version, ttl=ttl)
    if lists:
        engine.record_refresh(rank_s + done - started)
    return done


def _seconds(record: ConsumerRecord) -> float | None:
    """A record's timestamp in epoch seconds (Kafka's are in milliseconds)."""
    return None if record.timestamp is None else record.timestamp / 1000.0


def _note_latest(produced: dict[str, float], user: str, record: ConsumerRecord) -> None:
    """``produced[user]``: the latest record time (epoch seconds) of the user's events
    (a record without one, Kafka's -1 or none, says nothing)."""
    made = _seconds(record)
    if made is not None and made > 0:
        produced[user] = max(produced.get(user, made), made)


async def read_merged(
    consumer: AIOKafkaConsumer,
    topic: str,
    start: dict[int, int],
    until: dict[int, int],
    parse: Callable[[ConsumerRecord], Rating | None],
    batch: int = 5_000,
) -> AsyncIterator[list[tuple[int, Rating]]]:
    """The ratings at offsets ``[start[p], until[p])`` of several partitions of ``topic``,
    as ``(partition, rating)`` in event-time order across the partitions (each
    partition's own order kept), in chunks of at most ``batch`` (a caller checks for a
    rebalance between two); records ``parse`` maps to None are skipped."""
    ranges = {TopicPartition(topic, p): (start.get(p, 0), end) for p, end in until.items()}
    # A partition still short of its end has more to deliver, however long the caller
    # takes to learn a chunk: no wall-clock bound (``max_hold_s``) here, which would let
    # a slow replay learn one partition's later ratings before another's earlier ones.
    merge: EventTimeMerge[tuple[int, Rating]] = EventTimeMerge(
        max_held=40 * batch, max_hold_s=math.inf
    )
    async for records, reading in read_ranges(consumer, ranges, batch):
        for record in records:
            rating = parse(record)
            if rating is not None:
                merge.add(record.partition, rating.timestamp, (record.partition, rating))
        released = merge.release({tp.partition for tp in reading}, min_batch=batch, max_wait_s=0.5)
        for lo in range(0, len(released), batch):  # (a partition held back, then let go:
            yield released[lo : lo + batch]  # up to 40 chunks at once, still one at a time)
    released = merge.release(set())
    for lo in range(0, len(released), batch):
        yield released[lo : lo + batch]


DEADLETTER_BYTES = 900_000  # most of a dead letter's original value kept (1 MB requests)
DEADLETTER_KEY_BYTES = 16_384  # most of its key kept (the broker takes keys up to ~1 MB)
DEADLETTER_HEADER_BYTES = 16_384  # most of its own headers kept (names and values)
DEADLETTER_REASON_CHARS = 2_000  # most of its reason kept (a reason may quote the input)
DEADLETTER_MARK_BYTES = 256  # most of a "recsys.redriven.from" mark kept
HEADER_OVERHEAD_BYTES = 10  # what a header costs a record beside its name and value (at most)


class CatalogFollower:
    """Reads every partition of the items topic on every worker, outside the consumer group.

    Ratings are split between workers by user, but every worker needs the whole catalog,
    so each follows the items topic from the beginning (it is compacted: the latest event
    per item). Validation failures are skipped here; the ``validate_items`` agent, which
    sees each partition on exactly one worker, sends them to the dead-letter topic once.
    Events refused live are skipped by their dead letters too, when read again.
    """

    def __init__(self, settings: Settings, engine: StreamEngine, sink: RedisSink) -> None:
        self.settings, self.engine, self.sink = settings, engine, sink
        self.consumer: AIOKafkaConsumer | None = None  # made in run(), inside the loop
        self.partitions: list[TopicPartition] = []
        self.ready = asyncio.Event()
        self._generation = 0  # bumped by restart(): work begun before it is void
        self._offsets: AIOKafkaConsumer | None = None  # asks for ends (end_offsets)
        self._offsets_lock = asyncio.Lock()  # (one client made, and none after the close)
        self._offsets_closed = False

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The ends of partitions ``tps`` (of any topic), asked on a client of their own
        that fetches nothing, made at the first call. Asked on :attr:`consumer`, a
        request waited behind its fetch of a quiet items topic (aiokafka's long poll,
        500 ms): each timer tick's read of the ratings partitions' ends, and each batch
        of ratings naming an item not read yet (:meth:`catch_up`), took half a second.
        One client for the worker's life: two first calls at once make one, and after
        :meth:`close_offsets` a call is a ``KafkaError`` (a tick still running at the
        stop), never a new client left open."""
        async with self._offsets_lock:
            if self._offsets_closed:
                raise KafkaError("the worker is stopping: no partition ends asked")
            if self._offsets is None:
                offsets = standalone_consumer(self.settings)
                try:
                    await offsets.start()
                except BaseException:
                    await offsets.stop()
                    raise
                if self._offsets_closed:  # (the stop came during the start)
                    await offsets.stop()
                    raise KafkaError("the worker is stopping: no partition ends asked")
                self._offsets = offsets
            client = self._offsets
        return await client.end_offsets(tps)

    OFFSETS_CLOSE_S = 5.0  # the stop's wait for a start of the ends client under way
    RETRY_S = 1.0  # the wait before asking Kafka again for the items topic's end

    async def close_offsets(self) -> None:
        """Stop the client :meth:`end_offsets` made (at the worker's stop); none is made
        after. A start under way (Kafka slow to answer: up to its 40 s request timeout)
        is waited for ``OFFSETS_CLOSE_S`` at most, and stops its client itself when it
        ends, so the stop's snapshot is not held up."""
        self._offsets_closed = True
        try:
            async with asyncio.timeout(self.OFFSETS_CLOSE_S):
                await self._offsets_lock.acquire()
        except TimeoutError:
            log.warning("the partition-ends client was still starting: left to stop itself")
            return
        try:
            offsets, self._offsets = self._offsets, None
        finally:
            self._offsets_lock.release()
        if offsets is not None:
            await offsets.stop()

    def restart(self, engine: StreamEngine) -> None:
        """Apply the whole catalog again, to a new engine (after a model reset)."""
        self.engine = engine
        self.ready.clear()
        self._generation += 1

    async def run(self) -> None:
        s = self.settings
        self.consumer = consumer = standalone_consumer(s, auto_offset_reset="earliest")
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(s.items_topic)
            while not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(s.items_topic)
            self.partitions = [TopicPartition(s.items_topic, p) for p in sorted(parts)]
            consumer.assign(self.partitions)
            await consumer.seek_to_beginning(*self.partitions)
            generation = self._generation
            refused = await self._refused()
            # Until caught up after a (re)start, the latest event of each item, applied
            # once caught up (the topic is compacted: that is the catalog). Applying the
            # log's uncompacted tail event by event would re-apply an item's old delete
            # to a model restored from a snapshot, wiping what the item's ratings taught
            # it (co-occurrence, users' recent items) although the item is listed again.
            latest: dict[str, ItemEvent] = {}
            while True:
                if generation != self._generation:  # a restart: read from the beginning
                    generation = self._generation
                    latest.clear()
                    refused = await self._refused()
                    for tp in self.partitions:
                        consumer.seek(tp, 0)
                batches = await consumer.getmany(timeout_ms=50, max_records=2000)
                if generation != self._generation:
                    continue  # (read for the engine before the restart)
                lists: dict = {}
                engine = self.engine
                ranked = engine.rank_s_total  # (one write for several events' lists)
                for records in batches.values():
                    for record in records:
                        if record.offset in refused.get(record.partition, ()):
                            continue  # refused live (a copy sent back is applied instead)
                        event = self._event(record)
                        if event is None:
                            continue
                        if self.ready.is_set():
                            lists.update(self._apply_event(event))
                        else:  # (moved to the end: applied in the order last seen)
                            latest.pop(event.item_id, None)
                            latest[event.item_id] = event
                rank_s = engine.rank_s_total - ranked
                caught_up = not self.ready.is_set() and await self._read_to_end()
                if caught_up and generation == self._generation:
                    ranked = engine.rank_s_total
                    for event in latest.values():
                        lists.update(self._apply_event(event))
                    latest.clear()
                    rank_s += engine.rank_s_total - ranked
                if lists:  # (lists showing a deleted item, or reached by a new one)
                    await publish(self.engine, self.sink, lists, KEEP_TTL, rank_s)
                if caught_up and generation == self._generation:
                    self.ready.set()
        finally:
            await consumer.stop()

    async def _refused(self) -> dict[int, set[int]]:
        """The items topic's offsets refused live, by the dead-letter topic, skipped when
        the catalog is read again: an event refused as more than a day ahead would pass
        once the clock caught up, and one worker's catalog would hold an item the
        others' do not (none, with a warning, when the dead letters cannot be read to
        their end in time)."""
        s = self.settings
        partitions = [tp.partition for tp in self.partitions]
        for attempt in range(3):  # (a broker away a moment must not stop the worker)
            try:
                refused = await refused_offsets(s, {s.items_topic: partitions})
                return {} if refused is None else refused[s.items_topic]
            except TopicNotReadToEnd as exc:
                problem = str(exc)
                break
            except (KafkaError, OSError) as exc:
                problem = repr(exc)
                if attempt < 2:
                    await asyncio.sleep(1.0 + attempt)
        log.warning("catalog read without the dead letters' offsets: %s", problem)
        return {}

    def _event(self, record: ConsumerRecord) -> ItemEvent | None:
        try:
            return item_event(self.settings, record.key, record.value, _seconds(record))
        except EventError:
            return None  # dead-lettered by validate_items

    def _apply_event(self, event: ItemEvent) -> dict:
        if event.op == "delete":
            return self.engine.delete_item(event.item_id, event.timestamp)
        self.engine.upsert_item(event.item_id, dict(event.tags), event.timestamp)
        return {}

    async def _read_to_end(self) -> bool:
        """While the catalog is first read: every event in it so far was read. Not yet
        where Kafka cannot say (a broker away, a timeout): a broker restart stalls the
        read, a second later it asks again; the worker does not stop."""
        try:
            return await self._caught_up(None)
        except KafkaError as exc:
            log.warning("the items topic's end unknown (%r): asking again", exc)
            await asyncio.sleep(self.RETRY_S)
            return False

    async def _caught_up(self, end: dict | None) -> bool:
        assert self.consumer is not None
        if end is None:
            end = await self.consumer.end_offsets(self.partitions)
        for tp in self.partitions:
            if await self.consumer.position(tp) < end[tp]:
                return False
        return True

    async def _caught_up_to(self, end: dict) -> bool:
        """:meth:`_caught_up` to ``end``; True where Kafka cannot say (the wait ends: a
        validation must never fail after its dead letters are sent)."""
        try:
            return await self._caught_up(end)
        except KafkaError as exc:
            log.warning("the items topic's position unknown (%r): not waiting for it", exc)
            return True

    async def catch_up(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until every item event produced so far has been applied, so a
        rating produced after its item's event never finds the item unknown."""
        if self.consumer is None or not self.partitions:
            return
        deadline = time.monotonic() + timeout
        try:  # (the ends too within the bound: asked of a broker away, they wait 40 s)
            end = await asyncio.wait_for(self.end_offsets(self.partitions), timeout)
        except (TimeoutError, KafkaError) as exc:  # what is known is what was read
            log.warning("the items topic's end unknown (%r): not waiting for it", exc)
            return
        while time.monotonic() < deadline and not await self._caught_up_to(end):
            await asyncio.sleep(0.005)


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the broker asked to hold a fetch ``fetch_max_wait_ms``
    at most instead of Faust's fixed 1.5 s.

    aiokafka sends the next fetch to a broker only when the previous one has returned. A
    worker's one consumer also reads the items and users topics, which are mostly idle,
    so a fetch sent while the ratings partitions still had records buffered asks for
    idle partitions only and the broker holds it the full wait: measured on a live-paced
    stream at 2,000 ratings/s, lists reached Redis 1.4-1.5 s after the rating (p50)
    with 1.5 s, 81-92 ms with 50 ms.
    """

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # Read by the consumer's fetcher when it starts (aiokafka has no setter).
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


BatchHandler = Callable[[list[ConsumerRecord]], Awaitable[None]]


class BatchAbandoned(Exception):
    """A batch handler gave up on its records because a rebalance began: they are not
    acknowledged, so whoever owns their partitions next reads them again."""


class _Consumer(faust_kafka.Consumer):
    """Faust's consumer with two changes: its thread's fetch wait (:class:`_ConsumerThread`),
    and topics whose records are taken in batches.

    Records of a topic registered with :meth:`_App.batch_topic` skip Faust's per-event
    path (a ``Message``, an ``Event``, a queue hand-off and several awaits for each: a
    Faust agent doing nothing takes at most ~15,000 events/s here, ``bench_intake``) and
    reach the topic's handler in lists of what one fetch returned, each partition's
    records in offset order, the partitions in turn. The group membership, rebalances,
    seeks and commits stay Faust's: a list counts as acknowledged once its handler has
    returned and Faust's commit timer commits it; a revocation waits for a list in
    progress, then commits what was taken from the revoked partitions (see
    :meth:`on_partitions_revoked`). Records fetched across a rebalance are not handed
    over, as Faust drops its own: the rebalance seeks every partition back to its
    committed offset. A handler that raises :class:`BatchAbandoned` (a long replay that
    sees :attr:`revocations` move) leaves its records unacknowledged and ends the fetch's
    batches, so a rebalance never waits for work that the rebalance undoes.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.revocations = 0  # rebalances begun: long work in a handler watches it
        self._taken: dict[TP, int] = {}  # batch-topic partition -> next offset to commit
        self._handler_idle = asyncio.Event()  # no batch handler is running
        self._handler_idle.set()
        # Batch-topic partition -> (offset after the last record the latest fetch handed
        # over, or None; the consumer's position then): see :meth:`received`.
        self._drained: dict[TP, tuple[int | None, int]] = {}
        # Partition -> the offset this consumer's last successful commit of it stored.
        self.committed: dict[TP, int] = {}

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        """Faust's commit, noting what it stored (Faust's own record of it is updated
        even when the commit did not go through)."""
        assignment = self.assignment()
        did = await super()._commit_offsets(offsets, start_new_transaction)
        # (A transaction fenced by the partition's new owner reads as done, and crashes
        # the worker: not committed.)
        if did and self.app.crash_reason is None:
            self.committed.update((tp, o) for tp, o in offsets.items() if tp in assignment)
        return did

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float):
        records, active = await super()._wait_next_records(timeout)
        records = records or {}
        passed = self._note_positions(records)
        generation = self.app.consumer_generation_id  # (as Faust's getmany reads it)
        handlers = self.app.batch_handlers
        if not handlers or not (passed or any(tp.topic in handlers for tp in records)):
            return records, active
        # A topic whose partitions only stepped over transaction markers gets an empty
        # batch: the handler may now release what it held back for them.
        by_topic: dict[str, list[list[ConsumerRecord]]] = {topic: [] for topic in passed}
        for tp, got in records.items():
            if tp.topic in handlers and (
                active is None or tp in active or tp in self._buffered_partitions
            ):
                start = self._read_offset[tp]  # (after a seek: the offset sought)
                if start is not None and got and got[0].offset < start:
                    got = [record for record in got if record.offset >= start]
                by_topic.setdefault(tp.topic, []).append(got)
        for topic, parts in by_topic.items():
            handler, size = handlers[topic]
            # Round-robin over the partitions, as Faust's own getmany delivers: a fetch
            # holds up to 1 MB of each, and a batch of one partition's records only would
            # run ahead of the others in event time (the worker's merge then holds it,
            # and past its bound learns it out of order: NDCG@10 -5% on a backlog).
            taken = [r for turn in itertools.zip_longest(*parts) for r in turn if r is not None]
            for lo in range(0, max(1, len(taken)), size):
                if not self._may_take(generation):
                    break  # the rebalance seeks back to the committed offsets
                try:
                    await self._take(handler, taken[lo : lo + size])
                except BatchAbandoned as exc:
                    log.info("batch left to the partitions' next owner: %s", exc)
                    break
        return {tp: got for tp, got in records.items() if tp.topic not in handlers}, active

    def _note_positions(self, records: Mapping[TP, list[ConsumerRecord]]) -> set[str]:
        """Remember, for each batch-topic partition, where the consumer's position stood
        once a fetch's records were drained (read where the fetch left it: the consumer
        thread moves a position only when records are drained or on a seek). Returns the
        batch topics with a partition whose position moved with no record to hand over
        (past transaction markers, or records of aborted transactions)."""
        try:
            tps = [tp for tp in self.assignment() if tp.topic in self.app.batch_handlers]
            assignment = self._thread._ensure_consumer()._subscription.subscription.assignment
        except (AttributeError, ConsumerNotStarted):  # not joined yet
            return set()
        passed = set()
        for tp in tps:
            state = assignment.state_value(tp) if assignment is not None else None
            # (read once: the consumer thread may reset it to None meanwhile)
            position = getattr(state, "_position", None)
            if position is None:
                continue
            got = records.get(tp)
            before = self._drained.get(tp)
            self._drained[tp] = (got[-1].offset + 1 if got else None, position)
            if not got and before is not None and position > before[1]:
                passed.add(tp.topic)
        return passed

    def received(self, tp: TP, handled: int | None) -> int | None:
        """The next offset of ``tp`` still to be received, given that its records below
        ``handled`` are handled: past the transaction markers that follow them.

        A transactional producer ends every transaction with a commit marker, which takes
        an offset and is never handed over as a record: counted from the records alone,
        a partition would stay one marker short of its end, forever behind. The consumer's
        position steps over markers as it drains a fetch, so once the records of the
        latest fetch are handled, the partition is received up to that position. A
        partition with nothing handled yet (``handled`` None: its history is not in the
        model) stays unknown, whatever the consumer fetched.
        """
        drained = self._drained.get(tp)
        if drained is None or handled is None:  # (None: not in the model yet)
            return handled
        end, position = drained
        return max(handled, position) if end is None or handled >= end else handled

    def _may_take(self, generation: int) -> bool:
        """Records fetched in this generation may still be handled: no rebalance has
        begun (stopping the flow) or ended (a new generation) since."""
        return (
            self.flow_active
            and not self.should_stop
            and self.app.consumer_generation_id == generation
        )

    async def _take(self, handler: BatchHandler, records: list[ConsumerRecord]) -> None:
        """Hand ``records`` to ``handler``, then count them as acknowledged."""
        self._handler_idle.clear()  # a rebalance commits only once this batch is in
        try:
            await handler(records)
            ends: dict[TP, int] = {}
            for record in records:
                ends[TP(record.topic, record.partition)] = record.offset + 1
            assigned = self.assignment()
            now = time.monotonic()
            for tp, end in ends.items():
                if tp in assigned:
                    self._read_offset[tp] = self._taken[tp] = end
                    self._acked[tp]  # (listed: Faust commits the partitions found here)
                    # What Faust's stall detector reads for a partition's stream.
                    self.app.monitor.stream_inbound_time[tp] = now
            self._n_acked += len(records)
        finally:
            self._handler_idle.set()

    def partition_count(self, topic: str) -> int | None:
        """How many partitions ``topic`` has, by this consumer's metadata (the group's
        subscription: every member knows its topics'); None while not known."""
        try:
            parts = self._thread._ensure_consumer().partitions_for_topic(topic)
        except (AttributeError, ConsumerNotStarted):  # not started yet
            return None
        return len(parts) if parts else None

    def batch_idle(self) -> bool:
        """No batch is in its handler."""
        return self._handler_idle.is_set()

    async def wait_batch(self) -> None:
        """Return once no batch is in its handler."""
        await self._handler_idle.wait()

    async def wait_empty(self) -> None:
        """Faust's wait for the events in progress before a rebalance or stop commits,
        extended to a batch in progress."""
        await self.wait_batch()
        await super().wait_empty()

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic in self.app.batch_handlers:
            return self._taken.get(tp)
        return super()._new_offset(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Commit what was taken from the revoked partitions, then let Faust revoke them.

        Faust forgets a revoked partition's acknowledgements before its own commit at a
        revocation, so with Kafka's eager rebalancing (every partition is revoked) that
        commit covers none; it relies on its periodic commit, and up to one interval of
        events comes again to the next owner. A batch in its handler finishes first, and
        none starts after (a rebalance also stops the flow, a moment later)."""
        self.revocations += 1
        self.stop_flow()
        await self.wait_batch()
        mine = {tp for tp in revoked if tp in self._taken}
        for _ in range(3):  # (a commit already under way makes ``commit`` return at once)
            if not any(self._should_commit(tp, self._taken[tp]) for tp in mine):
                break
            try:
                await self.commit(mine)
            except Exception as exc:  # the next owner starts from the last commit
                log.warning("could not commit the revoked partitions' offsets: %s", exc)
                break
        for tp in revoked:
            self._taken.pop(tp, None)
            self._drained.pop(tp, None)
        await super().on_partitions_revoked(revoked)


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


def kafka_unreachable(settings: Settings, exc: Exception) -> str:
    """One line for a Kafka connection that failed: where, how (never the password), why.

    >>> kafka_unreachable(Settings(brokers="h:9093", kafka_security_protocol="SASL_SSL",
    ...     kafka_sasl_username="app", kafka_sasl_password="pw"), OSError("refused"))
    'cannot reach Kafka at h:9093 over SASL_SSL as app (PLAIN): refused'
    """
    how = settings.kafka_security_protocol
    if how.startswith("SASL_"):
        how += f" as {settings.kafka_sasl_username} ({settings.kafka_sasl_mechanism})"
    return f"cannot reach Kafka at {settings.bootstrap_servers} over {how}: {exc}"


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The Kafka connection of :meth:`Settings.kafka_security` as Faust takes it (for the
    worker's group consumer and producer; None: a plain connection).

    >>> faust_credentials(Settings()) is None
    True
    >>> faust_credentials(Settings(kafka_security_protocol="SASL_PLAINTEXT",
    ...     kafka_sasl_username="app", kafka_sasl_password="pw",
    ...     kafka_sasl_mechanism="SCRAM-SHA-512")).mechanism.value
    'SCRAM-SHA-512'
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = settings.kafka_ssl_context() if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )


class _App(faust.App):
    """A Faust app whose consumer is :class:`_Consumer`."""

    def __init__(self, *args: object, fetch_max_wait_ms: int, **kwargs: object) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms  # (the transport is made later, lazily)
        self.batch_handlers: dict[str, tuple[BatchHandler, int]] = {}
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)

    def batch_topic(self, topic: faust.TopicT, handler: BatchHandler, size: int) -> None:
        """Consume ``topic`` in the group, handing its records to ``handler`` in batches
        of at most ``size`` (see :class:`_Consumer`) instead of to an agent."""
        (name,) = topic.topics
        self.batch_handlers[name] = (handler, size)
        self.topics.add(topic)


class RecsysWorker:
    """Builds the Faust app: one instance per worker process, no module-level state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        self.app = _App(
            s.app_id,
            broker=s.kafka_url,
            store="memory://",
            datadir=str(Path(s.data_dir).expanduser() / s.app_id),
            topic_partitions=s.partitions,
            processing_guarantee=s.processing_guarantee,
            web_enabled=False,
            key_serializer="raw",
            value_serializer="raw",
            topic_allow_declare=False,
            # The leader topic serves Faust's tables, which this app does not use; with it
            # off, a worker does not log its absence as an error at every start.
            topic_disable_leader=True,
            producer_linger_ms=1,
            consumer_max_fetch_size=s.fetch_partition_bytes,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=min(3.0, s.session_timeout_s / 4),
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            broker_credentials=faust_credentials(s),
        )
        self.engine = StreamEngine(s)
        self.engine.live = False  # until the timer finds this worker caught up
        self.sink = RedisSink(s)
        # Host and pid, and a token of this start: containers sharing the host's name
        # (host networking) each run as pid 1, and workers with one id would take each
        # other's item changes for their own and share one metrics hash.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}-{secrets.token_hex(3)}"
        self.catalog = CatalogFollower(s, self.engine, self.sink)
        self.metrics_server = MetricsServer(self.prometheus, self.readiness)
        self._joined = False  # the group has assigned this worker its partitions once
        self._served = False  # ready once (Prometheus gets its counters from then on)
        self._stopping = False  # a stop has begun (readiness says so)
        self._unlearned = 0  # ratings released by the merge, not learned yet
        self._next_offset: dict[int, int] = {}  # ratings partition -> next offset to process
        self._ends: dict[int, int] = {}  # ratings partition -> its end, at the last tick
        # Ratings partitions whose whole history before the live position is in the model.
        self._replayed: set[int] = set()
        # user -> partition, to serve once ready; and those whose latest was a tombstone
        self._declared_waiting: dict[str, int] = {}
        self._withdrawn_waiting: set[str] = set()
        self._misplaced = 0  # events a replay skipped as on another partition than their key's
        # Item changes taken and not sent yet, each with the offsets past the ratings it
        # holds (by partition): sent once the group's commit covers them.
        self._to_share: list[tuple[dict[int, int], set[int], ItemChanges]] = []
        self._learned_upto: dict[int, int] = {}  # live ratings learned since the last take
        self._reset_pending = False
        # Set but between a revocation and the end of its assignment's checks: which
        # partitions are ours, and what the model holds of them, is known.
        self._assignment_settled = asyncio.Event()
        self._assignment_settled.set()
        self._validating = False  # a ratings batch is being validated: no rebuild now
        self._rebalances = 0  # revocations seen: a check of an earlier one settles nothing
        self._check_tasks: set[asyncio.Task] = set()
        # Ratings partition -> where live processing stood when the model was last
        # rebuilt: its replay goes at least that far (the group's commit may lag).
        self._live_from: dict[int, int] = {}
        self.rebuilds = 0  # models rebuilt after a rebalance took partitions away
        self._replay_lock = asyncio.Lock()
        # Ratings received, held until every partition has delivered up to their time:
        # (rating, produce time in ms, partition, offset, event id).
        self.ordering: EventTimeMerge[tuple[Rating, float, int, int, str | None]]
        self.ordering = EventTimeMerge(max_held=20 * s.batch_max)
        # Event ids of ratings validated and not learned yet (held, or in this batch).
        self._held_ids: dict[str, None] = {}
        self.snapshots = SnapshotStore(s.snapshot_path)
        self._last_snapshot = time.monotonic()
        self._snapshot_of: tuple = ()  # (model version, offsets) of the last snapshot
        self._snapshot_info: tuple[float, int, int] | None = None  # (time, ratings, bytes)
        self._restore_tried = False
        self._restore_ended = asyncio.Event()  # no restore under way
        self._restore_ended.set()
        self._resume_from: dict[int, int] = {}  # partition -> offset a snapshot covers
        self._learning = asyncio.Lock()
        self._refreshing = False  # the timer is re-ranking lists, a slice at a time
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.on_before_shutdown.connect(self._on_shutdown)
        raw = {"key_type": bytes, "value_type": bytes}
        self.ratings = self.app.topic(s.ratings_topic, partitions=s.partitions, **raw)
        self.items = self.app.topic(s.items_topic, partitions=s.partitions, **raw)
        self.users = self.app.topic(s.users_topic, partitions=s.partitions, **raw)
        self.deadletter = self.app.topic(s.deadletter_topic, partitions=1, **raw)
        self.app.batch_topic(self.ratings, self.learn_ratings, s.batch_max)
        self.app.agent(self.items, name="validate_items")(self.validate_items)
        self.app.agent(self.users, name="learn_users")(self.learn_users)
        self.app.task(self.follow_catalog)
        self.app.task(self.serve_metrics)
        self.item_changes = self.app.topic(s.item_changes_topic, partitions=1, **raw)
        self.items_shared = self.items_received = self.items_skipped = 0
        if s.share_items_every_s > 0:
            self.app.timer(s.share_items_every_s)(self.share_items)
            self.app.task(self.follow_item_changes)
        self.app.timer(s.refresh_every_s)(self.refresh_lists)

    # ------------------------------------------------------------------ agents
    async def learn_ratings(self, records: list[ConsumerRecord]) -> None:
        """Up to ``batch_max`` ratings as one fetch returned them (taken in batches, not as
        Faust events: see :class:`_Consumer`): validate them, put them in event-time order
        across partitions, then evaluate-then-learn them and publish the touched users'
        lists.

        An empty list means a partition stepped over transaction markers only (see
        :class:`_Consumer`): the ratings held for it may go, if the model is ready for
        them; nothing else is done (no rebuild or catalog wait holds up the consumer; only
        the check of what a rebalance let the model keep, which any batch waits for)."""
        # (Read before the first wait: a rebalance begun from here stops a replay below.)
        revocations = self.app.consumer.revocations
        while True:  # (what the model keeps through the last rebalance is being checked)
            if self.app.consumer.revocations != revocations:  # (its revocation waits)
                raise BatchAbandoned("a rebalance began while the last one was checked")
            if self._assignment_settled.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._assignment_settled.wait(), 0.05)
        if not records:
            if len(self.ordering) and not self._reset_pending and self.catalog.ready.is_set():
                await self._learn_released()
            return
        await self._reset_if_pending()
        await self._catalog_read(revocations)
        await self._compact_if_due(in_agent=True)
        batch, records = records, self._not_learned(records)
        if not records:
            return
        first: dict[int, int] = {}
        for record in records:
            first.setdefault(record.partition, record.offset)
        wait_s = self.KAFKA_RETRY_S
        while True:  # Kafka unreachable (a broker restarting, a coordinator moving): again
            try:
                records, valid = await self._replayed_and_valid(first, batch, revocations)
                break
            except KafkaError as exc:
                log.warning("a ratings batch waits for Kafka (%r): again in %.1f s", exc, wait_s)
                until = time.monotonic() + wait_s
                while time.monotonic() < until:  # (a rebalance gives the batch up at once)
                    if self.app.consumer.revocations != revocations:  # (the partitions may go)
                        raise BatchAbandoned(f"a rebalance began; Kafka: {exc!r}") from exc
                    await asyncio.sleep(0.05)
                wait_s = min(2 * wait_s, 5.0)
        for partition, offset, rating, produced_ms, event_id in valid:
            held = (rating, produced_ms, partition, offset, event_id)
            self.ordering.add(partition, rating.timestamp, held)
        # Only now (a snapshot reads these as "learned or held below here"): validating
        # may wait on dead letters or the catalog, and the timer may run meanwhile.
        for record in records:
            self._next_offset[record.partition] = record.offset + 1
        await self._learn_released()

    async def _catalog_read(self, revocations: int) -> None:
        """Wait for the catalog to be read (again, after a rebuild or a restore: the
        whole items topic); a rebalance begun since the consumer's count of them was
        ``revocations`` gives the caller up instead, for its revocation waits for the
        batch in progress."""
        while not self.catalog.ready.is_set():
            if self.app.consumer.revocations != revocations:
                raise BatchAbandoned("a rebalance began while the catalog was read")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.catalog.ready.wait(), 0.05)

    KAFKA_RETRY_S = 0.5  # a batch's first wait for Kafka; doubled each time, up to 5 s

    async def _replayed_and_valid(
        self,
        first: dict[int, int],
        batch: list[ConsumerRecord],
        revocations: int,
    ) -> tuple[list[ConsumerRecord], list[tuple[int, int, Rating, float, str | None]]]:
        """:meth:`learn_ratings`' steps before learning, which read Kafka: the replay of
        partitions not in the model yet (``first``: each one's first offset in the
        batch), then the validation of the records of ``batch`` still to learn (taken
        again at each attempt: a replay meanwhile may have learned some). Returns both."""
        records = self._not_learned(batch)
        if first.keys() - self._replayed:
            await self._ensure_replayed(first, revocations)
            # Filtered again: the replay that ran may have been another's (the timer's,
            # up to the offsets a rebuild had taken past the commit, which this batch,
            # sought back to the commit, holds again), or a rebuild's, up to others.
            records = self._not_learned(batch)
        # Validating may wait (dead letters, the catalog): no rebuild meanwhile (the timer
        # leaves it to the next tick), which would check these ratings against a model
        # without its catalog yet, and learn them on top of its replay.
        self._validating = True
        try:
            return records, await self._valid_ratings(records)
        finally:
            self._validating = False

    def _not_learned(self, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """The records the model has not learned: a partition already in it never learns
        an offset again (a seek back to the committed offset may hand over records taken
        before)."""
        done = self._next_offset
        return [
            r
            for r in records
            if r.partition not in self._replayed or r.offset >= done.get(r.partition, 0)
        ]

    async def _learn_released(self) -> None:
        """Learn what the event-time merge releases, in micro-batches of at most
        ``batch_max`` (one at a time: the agent and the timer both call this). While
        partitions are behind, ratings are released a full batch at a time (or after
        ``batch_within_s``): a backlog is learned in batches as large as the live ones."""
        s = self.settings
        async with self._learning:
            released = self.ordering.release(
                self._waiting_partitions(), min_batch=s.batch_max, max_wait_s=s.batch_within_s
            )
            # Out of the merge and not learned yet: a stop that cancels this call between
            # two chunks leaves the rest unlearned, and the model unfit for a snapshot.
            # (Added, not set: a call cut short leaves its count, which a later call must
            # not clear, so a stop never snapshots a model missing ratings.)
            self._unlearned += len(released)
            for lo in range(0, len(released), s.batch_max):
                chunk = released[lo : lo + s.batch_max]
                lists = self.engine.learn_ratings([held[0] for held in chunk])
                self._unlearned -= len(chunk)
                self.engine.remember(held[4] for held in chunk)  # (in the model only now)
                upto = self._learned_upto
                for held in chunk:
                    upto[held[2]] = max(upto.get(held[2], 0), held[3] + 1)
                    self._held_ids.pop(held[4], None)
                published_at = await publish(self.engine, self.sink, lists)
                self.engine.record_freshness([held[1] for held in chunk], published_at)

    def _waiting_partitions(self) -> set[int]:
        """Ratings partitions of ours whose consumer has not received all they hold: the
        merge waits for them (a partition whose end is not known yet does not count)."""
        return {
            partition
            for partition, high, received in self._positions()
            if high is not None and received is not None and received < high
        }

    def _positions(self) -> list[tuple[int, int | None, int | None]]:
        """(partition, high-water mark, next offset to receive) of each ratings partition
        assigned to this worker; None where not known yet.

        The high-water mark is the later of the group consumer's (as of its last fetch of
        the partition) and the broker's answer at the last timer tick (``_ends``): a
        worker that lags but has emptied its last large fetch would otherwise look
        caught up, and let catalog items from its future in."""
        consumer = self.app.consumer
        out = []
        for tp in consumer.assignment():
            if tp.topic == self.settings.ratings_topic:
                marks = [m for m in (consumer.highwater(tp), self._ends.get(tp.partition)) if m]
                high = max(marks) if marks else consumer.highwater(tp)
                received = consumer.received(tp, self._next_offset.get(tp.partition))
                out.append((tp.partition, high, received))
        return out

    async def _refresh_ends(self) -> None:
        """Ask the broker for the end of each ratings partition of ours (see
        :meth:`_positions`); one request per timer tick (:meth:`CatalogFollower.end_offsets`:
        on a client that fetches nothing)."""
        topic = self.settings.ratings_topic
        tps = [TopicPartition(topic, p) for p in sorted(self._assigned())]
        if not tps:
            return
        try:
            ends = await self.catalog.end_offsets(tps)
        except KafkaError as exc:  # the next tick asks again
            log.warning("could not read the ratings partitions' ends: %s", exc)
            return
        self._ends = {tp.partition: offset for tp, offset in ends.items()}

    async def _valid_ratings(
        self, records: Sequence[ConsumerRecord]
    ) -> list[tuple[int, int, Rating, float, str | None]]:
        """(partition, offset, rating, produce time in ms, event id) of each valid record;
        the others are dead-lettered."""
        valid: list[tuple[int, int, Rating, float, str | None]] = []
        pending: list[tuple[ConsumerRecord, RatingEvent]] = []
        acks: list[Awaitable[None]] = []  # the batch's dead letters, sent, not yet confirmed
        count = self.app.consumer.partition_count(self.settings.ratings_topic)
        try:
            for record in records:
                try:
                    r = rating_event(self.settings, record.key, record.value, _seconds(record))
                except EventError as exc:
                    await self._dead_letter(record, str(exc), acks)
                    continue
                problem = partition_problem(record.key, record.partition, count)
                if problem is not None:
                    await self._dead_letter(record, problem, acks)
                    continue
                pending.append((record, r))
            if not all(self.engine.knows_item(r.item_id) for _, r in pending):
                await self.catalog.catch_up()
            for record, r in pending:
                problem = self._item_problem(r.item_id, r.timestamp) or self._repeat_problem(r)
                if problem is not None:
                    await self._dead_letter(record, problem, acks)
                else:
                    rating = Rating(r.user_id, r.item_id, r.rating, r.timestamp)
                    # (a record without a time, or with none set: no freshness measured)
                    produced = float(record.timestamp or 0.0)
                    valid.append((record.partition, record.offset, rating, produced, r.event_id))
        finally:
            for ack in acks:
                await ack
        return valid

    def _repeat_problem(self, r: RatingEvent) -> str | None:
        """Why a rating is a duplicate (its ``event_id`` came with a rating learned
        lately, or with one validated and not learned yet), or None.

        An id enters the engine (and so its snapshots) only once its rating is learned:
        a snapshot taken while the rating is held for event-time order leaves it to the
        replay, which must not then take it for a duplicate.
        """
        event_id = r.event_id
        if event_id is None or self.settings.dedupe_window == 0:
            return None
        if self.engine.learned_id(event_id) or event_id in self._held_ids:
            return f"event_id: duplicate {event_id!r}, already learned"
        self._held_ids[event_id] = None
        return None

    def _item_problem(self, item_id: str, timestamp: float | None = None) -> str | None:
        """Why a rating of this item (at event time ``timestamp``) cannot be learned, or
        None when it can."""
        engine = self.engine
        known = engine.knows_item(item_id)
        if not known and not engine.was_freed(item_id):
            return f"item_id: unknown item {item_id!r}"
        # (an item listed again after a delete may wait for its time: it is no longer
        # deleted for a rating, which brings it in)
        if known and (not engine.model.is_deleted(item_id) or item_id in engine.pending):
            return None
        # A rating made while the item was listed, read after its delete (the worker
        # catching up on a backlog), is learned, as a rebuild learns it; a freed item
        # gets a row again, as deleted, for it.
        if timestamp is not None and engine.rated_while_listed(item_id, timestamp):
            engine.bring_back_deleted(item_id)
            return None
        return f"item_id: item {item_id!r} was deleted"

    async def validate_items(self, stream: faust.StreamT) -> None:
        """Dead-letter bad catalog events (once: this agent sees each partition on one worker)
        and keep item metadata in Redis; the model learns the catalog in CatalogFollower."""
        s = self.settings
        async for events in stream.take_events(s.batch_max, within=s.batch_within_s):
            valid = []
            acks: list[Awaitable[None]] = []
            try:
                for event in events:
                    try:
                        message = event.message
                        valid.append(item_event(s, message.key, message.value, message.timestamp))
                    except EventError as exc:
                        await self._dead_letter(event.message, str(exc), acks)
            finally:
                for ack in acks:  # (the events are acknowledged once this body returns)
                    await ack
            await self.sink.publish_items(valid)

    async def learn_users(self, stream: faust.StreamT) -> None:
        """Declared user tags seed the user's profile; their list is refreshed at once,
        once the model is ready for it. Before (the catalog not read yet, or the user's
        ratings partition not replayed yet: at a start, after a rebuild) the tags go in
        the model only, and the list waits for the next refresh that finds the partition
        replayed: ranked without the catalog or the user's history, it would have stayed
        in Redis until the user's next rating."""
        async for event in stream.events():
            try:
                message = event.message
                user = user_event(self.settings, message.key, message.value, message.timestamp)
            except EventError as exc:
                await self._dead_letter(event.message, str(exc))
                continue
            count = self.app.consumer.partition_count(self.settings.users_topic)
            problem = partition_problem(message.key, message.partition, count)
            if problem is not None:  # (its user's ratings are on another worker's partition)
                await self._dead_letter(message, problem)
                continue
            tags = dict(user.tags)
            if self.catalog.ready.is_set() and message.partition in self._replayed:
                # (an earlier event of the user still waiting is superseded by this one)
                self._declared_waiting.pop(user.user_id, None)
                self._withdrawn_waiting.discard(user.user_id)
                lists = self.engine.upsert_user(user.user_id, tags)
                # (A tombstone withdraws the tags, often of a user deleted upstream: no
                # visit, so the list keeps its expiry, as the replay counts it.)
                await publish(
                    self.engine, self.sink, lists, KEEP_TTL if message.value is None else None
                )
            elif self.engine.declare_user(user.user_id, tags):
                self._declared_waiting[user.user_id] = message.partition
                if message.value is None:  # (served then, its list keeps its expiry)
                    self._withdrawn_waiting.add(user.user_id)
                else:
                    self._withdrawn_waiting.discard(user.user_id)

    async def _serve_declared(self) -> None:
        """Lists for the users whose declarations came before the model was ready for
        them (:meth:`learn_users`), once their partitions are replayed (forgotten where
        the partition went to another worker: its replay serves them)."""
        waiting, assigned = self._declared_waiting, self._assigned()
        if not waiting or not self.catalog.ready.is_set():
            return
        ready = [u for u, p in waiting.items() if p in self._replayed]
        withdrawn = self._withdrawn_waiting
        for user in [u for u, p in waiting.items() if p not in assigned] + ready:
            waiting.pop(user, None)
        declared = [u for u in ready if u not in withdrawn]
        gone = [u for u in ready if u in withdrawn]  # (a tombstone: no visit)
        withdrawn.difference_update(ready)
        withdrawn.intersection_update(waiting)
        if declared:
            await publish(self.engine, self.sink, self.engine.serve(declared))
        if gone:
            await publish(self.engine, self.sink, self.engine.serve(gone), KEEP_TTL)

    async def share_items(self) -> None:
        """Send what this worker's own learning changed on the item side
        (:meth:`Recommender.take_item_changes`), for the other workers to add in
        (``follow_item_changes``), once the group's commit covers the ratings it came
        from. Sent before, the changes of ratings learned past the last commit reached
        the others twice when the worker was killed: from it, and from the partition's
        next owner (or this worker restarted), who learns those ratings again from the
        commit. Changes whose commit never comes (their partition went elsewhere first)
        are dropped: the next owner sends them. So each rating reaches another worker's
        model at most once. A commit is asked for first (Faust's own come every few
        seconds), so the exchange keeps its interval; and again once the batch in its
        handler (whose ratings count as acknowledged when it returns) is done, rather
        than leave its changes to the next exchange."""
        self._take_pending()
        if not self._to_share:
            return
        consumer = self.app.consumer
        await consumer.commit()
        await self._send_committed()
        if self._to_share:  # (what the batch in its handler learned: once it is done)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(consumer.wait_batch(), self.SHARE_WAIT_S)
                await consumer.commit()
            await self._send_committed()

    def _take_pending(self) -> None:
        """Take the model's item changes since the last take (none are kept when sharing
        is off), to send once committed, with the partitions of the ratings they come
        from (live learning only: a replay's are not taken). A worker that learns one of
        them itself (it got the partition since) skips these changes; one that does
        not adds them, and counts those partitions as reaching it through others."""
        changes = self.engine.model.take_item_changes()
        upto, self._learned_upto = self._learned_upto, {}
        if len(changes):
            self._to_share.append((upto, set(upto), changes))

    SHARE_WAIT_S = 0.5  # most an exchange waits for the batch in its handler

    def _behind(self, upto: Mapping[int, int]) -> set[int]:
        """The partitions of a take's ratings (``upto``: the offset past them) that this
        worker's last successful commits do not cover."""
        topic = self.settings.ratings_topic
        committed = {
            tp.partition: o for tp, o in self.app.consumer.committed.items() if tp.topic == topic
        }
        return {p for p, end in upto.items() if committed.get(p, -1) < end}

    def _drop_uncommitted(self, lost: Callable[[set[int]], bool]) -> None:
        """Drop the changes taken whose uncommitted partitions ``lost`` says no commit of
        this worker will cover."""
        kept, dropped = [], 0
        for entry in self._to_share:
            behind = self._behind(entry[0])
            if behind and lost(behind):
                dropped += len(entry[2])
            else:
                kept.append(entry)
        self._to_share = kept
        if dropped:
            log.info("item changes of ratings not committed dropped: %d entries", dropped)

    async def _send_committed(self, last: bool = False) -> None:
        """Send the changes taken whose ratings this worker's commits cover, in order;
        drop those whose partition is no longer ours uncommitted (and, ``last``: at a
        stop, every one not covered)."""
        assigned = self._assigned()
        self._drop_uncommitted(lambda behind: last or bool(behind - assigned))
        n = 0
        while n < len(self._to_share) and not self._behind(self._to_share[n][0]):
            n += 1
        send, self._to_share = self._to_share[:n], self._to_share[n:]
        for _, partitions, changes in send:
            await self._send_changes(partitions, changes)

    async def _send_changes(self, partitions: set[int], changes: ItemChanges) -> None:
        for value in encode_item_changes(self.worker_id, partitions, changes):
            try:
                await self.item_changes.send(key=self.worker_id.encode(), value=value)
            except Exception as exc:  # (never stops the worker: the others miss these)
                log.warning("item changes not sent: %r", exc)
        self.items_shared += len(changes)

    async def follow_item_changes(self) -> None:
        """Add the other workers' item changes as they come (from the topic's end at
        start: what came before is in their learning, not in ours to replay)."""
        s = self.settings
        tp = TopicPartition(s.item_changes_topic, 0)
        position: int | None = None  # (after Kafka was away: on from where it was)
        while True:
            consumer = standalone_consumer(s)
            try:
                await consumer.start()
                consumer.assign([tp])
                if position is None:
                    await consumer.seek_to_end(tp)
                    position = await consumer.position(tp)
                else:
                    consumer.seek(tp, position)
                while True:
                    batches = await consumer.getmany(tp, timeout_ms=200, max_records=100)
                    for record in batches.get(tp, []):
                        self._add_in_item_changes(record.value, record.offset)
                        position = record.offset + 1
            except KafkaError as exc:  # never stops the worker: again in a moment
                log.warning("item changes not read (%r): again in 1 s", exc)
                await asyncio.sleep(1.0)
            finally:
                await consumer.stop()

    def _add_in_item_changes(self, raw: bytes | None, offset: int) -> None:
        """Add in one message of another worker's item changes, unless it comes from
        ratings partitions this worker learns itself."""
        try:
            worker, partitions, changes = decode_item_changes(raw, self.settings.n_factors)
        except ValueError as exc:  # never stops the worker: logged, skipped
            log.warning("unreadable item changes at offset %d: %s", offset, exc)
            return
        if worker == self.worker_id:
            return
        if partitions & (self._replayed | self._assigned()):
            # Learned from ratings this worker learns itself (sent before a rebalance
            # gave them to us): adding them in would count those ratings twice.
            self.items_skipped += len(changes)
            return
        # A popularity mass is a log-sum of 2^(t/h) over ratings up to ``now``: past
        # ``now``'s own term and e^60 ratings, it is not a count of ratings.
        most = changes.now * self.engine.model.popularity.log_rate + 60.0
        if len(changes.mass) and float(changes.mass.max()) > most:
            log.warning("item changes at offset %d skipped: popularity beyond its clock", offset)
            return
        # (first: a message applied in part still brought those partitions' ratings)
        self.engine.shared_from |= partitions
        try:
            self.items_received += self.engine.model.apply_item_changes(changes)
        except Exception as exc:  # never stops the worker: logged, skipped
            log.warning("item changes at offset %d not applied: %r", offset, exc)
            return
        self.engine.similar_moved(changes.pair_items)

    async def follow_catalog(self) -> None:
        await self.catalog.run()

    async def serve_metrics(self) -> None:
        """Prometheus' ``/metrics`` for this worker, until the worker stops."""
        await self.metrics_server.start(self.settings.web_host, self.settings.web_port)
        try:
            await asyncio.Event().wait()
        finally:
            await self.metrics_server.stop()

    def readiness(self) -> tuple[bool, dict]:
        """In service: in the group, the catalog read, and every assigned ratings
        partition's history in the model (a worker with no partition, one more than
        partitions, is ready: it stands by). Behind the live end is no reason to be out
        of service: that is lag, and ``live`` says it."""
        assigned = self._assigned()
        waiting = []
        if not self._joined or self.app.rebalancing:
            waiting.append("the consumer group's assignment")
        if not self.catalog.ready.is_set():
            waiting.append("the catalog")
        behind = sorted(assigned - self._replayed)
        if behind:
            waiting.append(f"the history of ratings partitions {behind}")
        if self._reset_pending:
            waiting.append("a rebuild of the model after a rebalance")
        if self._stopping:
            waiting.append("a stop in progress")
        account = {
            "ready": not waiting,
            "waiting_for": waiting,
            "partitions": sorted(assigned),
            "live": self.engine.live,
            "events": self.engine.events,
        }
        return not waiting, account

    def prometheus(self) -> str:
        """The worker's figures for Prometheus: its counters only once it first served
        (any snapshot restored by then, whose lifetime totals it goes on from)."""
        figures = self._figures()
        ready = self.readiness()[0]
        self._served |= ready
        figures["ready"] = int(ready)
        figures["redis_waiting_s"] = self.sink.waiting_s()
        return exposition(
            figures,
            self.engine.histograms() if self._served else {},
            {"worker": self.worker_id},
            counters=self._served,
        )

    def _figures(self) -> dict[str, float | int]:
        """The engine's live figures, the lag, and the last snapshot's age and size."""
        figures = self.engine.metrics(lag=self._lag())
        figures["rebuilds"] = self.rebuilds
        if self.settings.share_items_every_s > 0:
            figures["items_shared"] = self.items_shared
            figures["items_received"] = self.items_received
            figures["items_skipped"] = self.items_skipped
        if self._snapshot_info is not None:
            made, ratings, size = self._snapshot_info
            figures["snapshot_age_s"] = max(0.0, time.time() - made)
            figures["snapshot_ratings"] = ratings
            figures["snapshot_bytes"] = size
        return figures

    async def refresh_lists(self) -> None:
        """Periodic batched refresh: new items reach active users; metrics are published."""
        await self._restore_once()
        if not self.catalog.ready.is_set():
            return
        await self._reset_if_pending()  # (no new batch may come to do it)
        if not self.catalog.ready.is_set():
            return  # a rebuild reads the catalog again before any replay
        await self._replay_idle_partitions()
        if len(self.ordering):  # held ratings whose partitions went quiet
            await self._learn_released()
        await self._serve_declared()
        await self._refresh_ends()
        self.engine.live = self._caught_up()
        await self._compact_if_due()
        self._refreshing = True  # (a refresh in progress holds item rows: no compaction)
        try:
            await self._refresh_due_lists()
            await self._refresh_similar_lists()
        finally:
            self._refreshing = False
        await self._snapshot_if_due()
        await self._publish_state()

    async def _publish_state(self) -> None:
        """The popular list and this worker's metrics. The holder of ratings partition 0
        writes the popular list; the others only where there is none yet (the holder in
        a long replay: unknown users would get nothing). The list Redis holds then is the
        popular list as served, which the worker's figures rank in (its own differs
        where another worker writes it)."""
        engine = self.engine
        # (ranked aside: the list as served stays the one in Redis while the write waits)
        popular = engine.model.popular(engine.settings.k)
        shown = await self.sink.publish_state(
            popular,
            self._figures(),
            self.engine.version,
            self.worker_id,
            self.metrics_server.url,
            popular_owner=self._writes_popular(),
            partitions=self._assigned(),
        )
        engine.popular_served = shown if shown is not None else [r.item for r in popular]

    async def _compact_if_due(self, in_agent: bool = False) -> None:
        """Free deleted items' rows (:meth:`StreamEngine.compact_if_due`) where nothing
        holds item rows or ratings of items still to be checked: from the ratings agent
        before it validates a batch (``in_agent``), or from the timer while no batch is
        in the agent (no rating validated and not learned); under the learning lock (no
        release in progress), with nothing held for event-time order, caught up (a
        replay learns ratings of items deleted since), and outside a refresh (which
        holds item rows across its slices)."""
        if self._refreshing or not self.engine.compact_due():
            return
        async with self._learning:
            busy = not in_agent and not self.app.consumer.batch_idle()
            if busy or self._refreshing or self._reset_pending or len(self.ordering):
                return  # (ratings held name items by id: a freed one would come back)
            if not self._caught_up():
                return
            started = time.monotonic()
            freed = self.engine.compact_if_due()
        if freed:
            log.info(
                "compacted: %d deleted items' rows freed, %d rows left, in %.3f s",
                freed,
                self.engine.model.n_items,
                time.monotonic() - started,
            )

    REFRESH_SLICE = 256  # users re-ranked between two chances for the ratings to run

    async def _refresh_due_lists(self) -> None:
        """Re-rank the lists new or changed items belong in, a slice of users at a time.

        A burst of new items can put thousands of lists due at once (3,300 in one tick of
        the live-paced benchmark at 5,000 ratings/s: 350 ms of ranking in one go, every
        live rating waiting behind it); between slices, ratings batches run, and so they
        do between the chunks of items checked to find the due lists.
        """
        engine = self.engine
        due: list[str] = []
        for step in engine.refresh_steps():  # the check itself, a chunk of items at a time
            due = step
            await asyncio.sleep(0)
            if self.engine is not engine:
                return
        for lo in range(0, len(due), self.REFRESH_SLICE):
            if self.engine is not engine:  # rebuilt meanwhile: its own lists follow
                return
            lists = engine.serve(due[lo : lo + self.REFRESH_SLICE])
            await publish(engine, self.sink, lists, KEEP_TTL)
            await asyncio.sleep(0)

    SIMILAR_SLICE = 64  # "more like this" lists computed and written at once
    SIMILAR_TICK_S = 0.01  # time a refresh tick gives them while ratings wait
    SIMILAR_IDLE_TICK_S = 0.3  # and while none does

    async def _refresh_similar_lists(self) -> None:
        """Write the "more like this" lists due (:meth:`StreamEngine.similar_lists`), a
        slice at a time with the ratings' batches running in between: for up to
        ``SIMILAR_TICK_S`` of a tick while ratings wait (1% of the worker's time), up
        to ``SIMILAR_IDLE_TICK_S`` while none does. A catalog loaded at start makes
        every item due at once (about 60 us a list: 10,000 items, 0.6 s), and is
        written over the first ticks, items never written first, rather than in one
        stall in front of the ratings."""
        engine = self.engine
        await self._write_similar_lists(engine)
        if self.engine is engine:  # (a rebuilt engine's deletes are its own)
            gone = engine.similar_deleted()
            if gone:  # after this worker's last write of them
                await self.sink.delete_similar(gone)
                engine.similar_removed(gone)

    def _writes_popular(self) -> bool:
        """Whether this worker writes the popular list: the holder of ratings partition 0,
        once its model holds the partition's history (before, at a start or after a
        rebuild, it would overwrite the list with one ranked from nothing, until its next
        tick after the replay). Each worker ranks popularity from its own users' ratings
        (unless item changes are shared), so with every worker writing it, unknown users
        would see the list change at each worker's tick."""
        return 0 in self._assigned() and 0 in self._replayed and self.catalog.ready.is_set()

    def _similar_shard(self) -> Shard:
        """The ratings partitions this worker holds, of how many: it writes the "more
        like this" lists of the items hashed to them
        (:meth:`~streamer.similar.SimilarDue.owned`), so with several workers each list
        is written by one. None held while the group's partition count is not known."""
        count = self.app.consumer.partition_count(self.settings.ratings_topic)
        return (self._assigned(), count) if count else (set(), 1)

    async def _write_similar_lists(self, engine: StreamEngine) -> None:
        started = time.monotonic()
        while True:
            spent = time.monotonic() - started
            if spent >= self.SIMILAR_IDLE_TICK_S or (
                spent >= self.SIMILAR_TICK_S
                and not (self.app.consumer.batch_idle() and self._lag() == 0)
            ):
                return
            if self.engine is not engine:  # rebuilt meanwhile: its own lists follow
                return
            # (the partitions held read at each slice: a rebalance may land between two)
            lists = engine.similar_lists(self.SIMILAR_SLICE, shard=self._similar_shard())
            if not lists:
                return
            await self.sink.publish_lists(lists, engine.version, similar=True)
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ state
    async def _on_revoked(self, app: faust.App, revoked: set, **kwargs: object) -> None:
        """A rebalance begins: the model is rebuilt (at the next batch) if it loses a
        partition whose users it holds, so a partition that comes back is never learned
        twice.

        Kafka's eager rebalancing revokes every partition at every rebalance, and most
        come back to the same worker: whether one was lost is only known at the
        assignment (:meth:`_on_assigned`), and the model is kept if none was. A revocation
        while a restore or a replay is under way rebuilds at once: it may be loading or
        learning a partition only in part."""
        lost = {tp.partition for tp in revoked if tp.topic == self.settings.ratings_topic}
        # Changes of ratings the revocation's commit did not cover never will be: if the
        # partition comes back, another worker may have learned them meanwhile.
        self._take_pending()
        self._drop_uncommitted(lambda behind: bool(behind & lost))
        self._assignment_settled.clear()
        self._rebalances += 1
        busy = self._replay_lock.locked() or not self._restore_ended.is_set()
        if lost and busy:
            self._reset_pending = True

    REBALANCE_CHECK_S = 10.0  # for the committed offsets at an assignment; then rebuild

    async def _on_assigned(self, app: faust.App, assigned: set, **kwargs: object) -> None:
        """The group's new assignment: the model is rebuilt (at the next batch) if it
        holds a partition not assigned now (replayed, or covered by a snapshot restored,
        before the rebalance or during it: the old assignment holds until this one).
        Partitions that came back are kept as the model has them, once the group's
        committed offsets say no other worker went past the model meanwhile
        (:meth:`_check_kept`, outside Faust's rebalance callback, which holds the group's
        heartbeats); until then batches wait, and snapshots and the timer's replays too."""
        self._joined = True
        now = {tp.partition for tp in assigned if tp.topic == self.settings.ratings_topic}
        in_model = self._replayed | self._resume_from.keys()
        kept = sorted(self._replayed)
        if not self._reset_pending and in_model - now:
            log.info("rebalance: partitions %s went to other workers", sorted(in_model - now))
            self._reset_pending = True
        if self._reset_pending or not kept:
            self._settled()
            return
        task = asyncio.ensure_future(self._check_kept(kept, self._rebalances))
        self._check_tasks.add(task)  # (a reference: a task nothing holds may be collected)
        task.add_done_callback(self._check_tasks.discard)

    async def _check_kept(self, kept: list[int], rebalance: int) -> None:
        """A partition kept through rebalance number ``rebalance`` that another worker
        committed past (it owned the partition meanwhile: this worker left the group and
        came back) is replayed from where the model stops; without the committed
        offsets, the model is rebuilt. Then the assignment is settled (:meth:`_settled`),
        unless a later rebalance began meanwhile: its own check does both."""
        try:
            committed = await asyncio.wait_for(self._committed(), self.REBALANCE_CHECK_S)
        except Exception as exc:  # (TimeoutError, KafkaError, ...: the log decides then)
            if rebalance == self._rebalances:
                log.warning("rebalance: no committed offsets (%r): rebuilding the model", exc)
                self._reset_pending = True
                self._settled()
            return
        if rebalance != self._rebalances:
            return
        for p in kept:
            if p not in self._replayed:
                continue
            learned = self._next_offset.get(p, 0)
            if committed.get(p, 0) > learned:  # replayed from where the model stops
                self._replayed.discard(p)
                self._resume_from[p] = learned
                self._next_offset.pop(p, None)
        log.info("rebalance: partitions %s kept, the model with them", kept)
        self._settled()

    def _settled(self) -> None:
        """Which partitions are ours, and what the model holds of them, is known."""
        self._assignment_settled.set()

    @property
    def _awaiting_assignment(self) -> bool:
        """A rebalance revoked the partitions and its assignment is not settled yet."""
        return not self._assignment_settled.is_set()

    async def _reset_if_pending(self) -> None:
        """Rebuild the model after losing a partition, or before learning one whose
        ratings already reached the model through another worker's shared changes (which
        the replay would count twice), between two learning calls."""
        shared = self.engine.shared_from  # (empty unless other workers' changes came in)
        if shared and (self._assigned() - self._replayed) & shared:
            self._reset_pending = True
        if self._reset_pending and not self._replay_lock.locked():
            # (a replay under way learns into this engine: it ends, or stops at a
            # rebalance, before the rebuild; a rebuild under it would take half of it)
            await self._reset_now()

    async def _reset_now(self, replaying: bool = False) -> None:
        """:meth:`_reset_model` under ``_learning``, if still pending and no replay is
        under way (``replaying``: the caller's own, not begun); the changes the old model
        learned and had not sent are taken first (the rebuild learns its partitions
        again without sharing them), and those committed sent once the lock is
        released."""
        reset = False
        async with self._learning:
            if self._validating:  # (a batch being validated: see learn_ratings)
                return
            if self._reset_pending and (replaying or not self._replay_lock.locked()):
                self._take_pending()
                self._reset_model()
                reset = True
        if reset:  # (those of partitions kept wait for their commit: the rebuild does
            await self._send_committed()  # not share its relearning of them)

    def _reset_model(self) -> None:
        log.info("rebalance: rebuilding the model from the assigned partitions")
        self.rebuilds += 1
        self._reset_pending = False
        self._replayed.clear()
        # Records taken since the last commit are not fetched again unless a rebalance
        # seeks back: the rebuild's replay covers them (:meth:`_ensure_replayed`).
        self._live_from = dict(self._next_offset)
        self._next_offset.clear()  # set again by each partition's replay
        self._resume_from.clear()  # the snapshot covered the partitions we had
        # A snapshot of the partitions kept (this worker's, from before it took others
        # over) saves replaying their whole history: looked for again.
        self._restore_tried = False
        self.engine = self.engine.successor()
        self.engine.live = False
        self.ordering.clear()  # held ratings are in the log: the rebuild replays them
        self._held_ids.clear()
        self._unlearned = 0  # (a call cut short: its ratings are replayed too)
        self.catalog.restart(self.engine)

    async def _ensure_replayed(
        self, first_live: dict[int, int], revocations: int | None = None
    ) -> None:
        """Replay, once and together, the history of every assigned partition not yet in
        the model (from the agent or the timer, whichever is first), each up to where
        live processing resumes: the first live offset where the agent has one
        (``first_live``), else the group's committed offset. A rebalance begun since
        the consumer's count of them was ``revocations`` (when the caller began; now if
        not given) stops it."""
        if revocations is None:
            revocations = self.app.consumer.revocations
        async with self._replay_lock:
            if self._reset_pending:  # (asked for while another replay held the lock)
                await self._reset_now(replaying=True)
                if self._reset_pending:  # put off (a batch is being validated): not into
                    return  # the model the rebuild will drop
            # The model starts from the snapshot of its partitions, if any: tried here,
            # under this lock (after a rebuild too), never under another replay.
            await self._restore_once(replaying=True)
            todo = (self._assigned() | first_live.keys()) - self._replayed
            if not todo:
                return
            committed = await self._committed()
            # (Live processing resumes at the group's commit, or past it where the model
            # before a rebuild had taken records the commit does not cover yet.)
            until = {
                p: first_live.get(p, max(committed.get(p, 0), self._live_from.get(p, 0)))
                for p in todo
            }
            await self._replay(until, revocations)

    async def _replay_idle_partitions(self) -> None:
        """Partitions assigned to us that see no new ratings are replayed too, up to the
        group's committed offset (where live processing would resume). Not while a
        rebalance is under way: the assignment it replaces still reads as ours."""
        if self._awaiting_assignment or self.app.rebalancing:
            return
        if self._assigned() - self._replayed:
            try:
                await self._ensure_replayed({})
            except BatchAbandoned as exc:
                log.info("replay stopped: %s", exc)
            except KafkaError as exc:  # (offsets or the log unreachable): the next tick
                log.warning("replay of idle partitions put off: %s", exc)

    def _assigned(self) -> set[int]:
        """The ratings partitions assigned to this worker."""
        topic = self.settings.ratings_topic
        try:
            assignment = self.app.consumer.assignment()
        except ConsumerNotStarted:  # (none yet)
            return set()
        return {tp.partition for tp in assignment if tp.topic == topic}

    async def _committed(self) -> dict[int, int]:
        """The group's committed offset of each ratings partition (where live processing
        resumes; partitions never committed are absent)."""
        s = self.settings
        admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers, **s.kafka_security())
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(s.app_id)
        finally:
            await admin.close()
        return {
            tp.partition: meta.offset
            for tp, meta in committed.items()
            if tp.topic == s.ratings_topic and meta is not None and meta.offset > 0
        }

    # ------------------------------------------------------------------ snapshots
    async def _restore_once(self, replaying: bool = False) -> None:
        """Once this worker has partitions, before their first replay, load the best
        usable snapshot (see :mod:`streamer.snapshot`): the partitions it covers are then
        replayed from its offsets instead of from the start. Called by the timer from
        the first tick (so the catalog is read once, into the loaded model), and by
        every replay once it holds the replay lock (``replaying``). Never while another
        replay runs: it learns into the model a restore would replace."""
        if self.settings.snapshot_every_s <= 0:
            return
        if self._restore_tried:  # a restore under way holds ``_learning``: wait for it,
            await self._restore_ended.wait()  # or a replay would start from nothing
            return
        if not self._assigned():
            return  # not in the group yet: the next tick asks again
        if self._replay_lock.locked() and not replaying:
            return
        async with self._learning:
            if self._restore_tried or (self._replay_lock.locked() and not replaying):
                return
            self._restore_tried = True
            self._restore_ended.clear()
            try:
                await self._restore()
            finally:
                self._restore_ended.set()

    async def _restore(self) -> None:
        """:meth:`_restore_once`'s attempt, under ``_learning``."""
        assigned = self._assigned()
        if not assigned or self._replayed or self.engine.events:
            return
        current = self.engine
        try:
            committed = await self._committed()
        except KafkaError as exc:  # asked again at the next tick (or replay in full)
            log.warning("no committed offsets to choose a snapshot by: %s", exc)
            self._restore_tried = False
            return
        fingerprint = self.settings.model_fingerprint()
        candidates = self.snapshots.candidates(fingerprint, assigned, committed)
        unlike, differ = self.snapshots.unlike(fingerprint) if not candidates else (0, [])
        if unlike:  # (said, or a start replaying the whole log after an upgrade is a riddle)
            log.info(
                "%d snapshot(s) made under other model settings (%s): not restored, the "
                "log is replayed",
                unlike,
                ", ".join(differ),
            )
        for snapshot in candidates:
            try:
                size = snapshot.path.stat().st_size  # (gone already: the next one)
                engine = await asyncio.to_thread(self.snapshots.load, snapshot, _fresh_engine)
                break
            except Exception as exc:  # a damaged file: the next one, else the log
                log.warning("snapshot %s unreadable (%s)", snapshot.path, exc)
        else:
            return
        if engine.shared_from & assigned:
            # Ratings of partitions now ours reached it through other workers' changes:
            # replayed on top, they would count twice. The log rebuilds the model.
            log.info(
                "snapshot %s not restored: it holds partitions %s through shared changes",
                snapshot.path.name,
                sorted(engine.shared_from & assigned),
            )
            return
        if self.engine is not current or self._replayed or current.events:
            log.info("snapshot %s not restored: the model moved on meanwhile", snapshot.path.name)
            return  # (not reached while ``_learning`` is held: a guard for what may change)
        if self._served or current.version or current.evaluated:  # it served: its figures go on
            current.hand_over_live_figures(engine)
        else:  # a start (or a rebuild before any list): the snapshot's go on, with what
            engine.add_counts_of(current)  # was counted before it loaded
        engine.adopt(self.settings)  # (its non-model settings may have changed since)
        engine.live = False
        # Changes pending when it was taken were most likely sent since (the exchange
        # runs every few seconds, snapshots every few minutes): not sent again.
        engine.model.track_item_changes(False)
        engine.model.track_item_changes(self.settings.share_items_every_s > 0)
        self.engine = engine
        self.ordering.clear()
        self._held_ids.clear()
        self.catalog.restart(engine)  # the catalog is read again into the loaded model
        self._resume_from = dict(snapshot.offsets)
        self._snapshot_of = (engine.version, dict(snapshot.offsets))  # (no copy of it)
        self._snapshot_info = (snapshot.created, engine.events, size)
        log.info(
            "restored snapshot %s: %d ratings, partitions %s from offsets %s",
            snapshot.path.name,
            engine.events,
            sorted(snapshot.offsets),
            snapshot.offsets,
        )

    async def _on_shutdown(self, app: faust.App, **kwargs: object) -> None:
        """A graceful stop (SIGTERM: a deploy, a scale-in), once Faust has stopped the
        flow and committed what was acknowledged: snapshot the model at the offsets it
        holds, so whoever takes these partitions next (this worker restarted, or
        another, with a shared ``RECSYS_SNAPSHOT_DIR``) replays none of them.

        Not after a crash, nor when the stop cut a learning call short (Faust cancels
        the batch in progress: ratings taken out of the event-time merge and not learned
        yet would be missing from a model whose offsets cover them); the snapshot before
        is used then. Commits once more first (a commit that fails leaves this snapshot
        ahead of the group's offsets, where it is never used), and gives up after
        ``SHUTDOWN_SNAPSHOT_S`` rather than hold the stop."""
        self._stopping = True
        with contextlib.suppress(Exception):  # (never in the way of the rest of the stop)
            await self.catalog.close_offsets()
        try:  # what this worker learned since the last exchange, for the others
            await asyncio.wait_for(self._share_last(app), self.SHUTDOWN_SNAPSHOT_S)
        except Exception as exc:  # (never in the way of the rest of the stop)
            log.warning("item changes not sent at shutdown: %r", exc)
        try:  # no longer live: off the registry readers list workers from
            await asyncio.wait_for(self.sink.withdraw(self.worker_id), 5.0)
        except Exception as exc:  # (it then expires with its TTL)
            log.warning("not withdrawn from the live workers: %r", exc)
        if self.settings.snapshot_every_s <= 0 or not self._assigned():
            return
        if app.crash_reason is not None or self._unlearned:
            log.warning("no snapshot at shutdown: the stop cut learning short")
            return
        try:
            await asyncio.wait_for(self._final_snapshot(app), self.SHUTDOWN_SNAPSHOT_S)
        except Exception as exc:  # (never in the way of the rest of the stop)
            log.warning("no snapshot at shutdown: %r", exc)

    SHUTDOWN_SNAPSHOT_S = 30.0

    async def _share_last(self, app: faust.App) -> None:
        """At a stop: the changes not sent yet, once committed (a commit first, for
        what was acknowledged since Faust's own)."""
        if self.settings.share_items_every_s <= 0:
            return
        self._take_pending()
        if self._to_share:
            await app.consumer.commit()
        await self._send_committed(last=True)

    async def _final_snapshot(self, app: faust.App) -> None:
        try:
            await app.consumer.commit()
        except Exception as exc:  # (the snapshot below is then not used: still harmless)
            log.warning("no commit at shutdown: %s", exc)
        await self._snapshot_if_due(final=True)

    async def _snapshot_if_due(self, final: bool = False) -> None:
        """Every ``snapshot_every_s`` (and at a graceful stop, ``final``), once every
        assigned partition's history is in the model, save it with the offset below which
        each partition is learned (a rating still held for event-time order is not: its
        partition's offset stops before it)."""
        s = self.settings
        due = final or time.monotonic() - self._last_snapshot >= s.snapshot_every_s
        if s.snapshot_every_s <= 0 or not due or self._reset_pending:
            return
        if self._awaiting_assignment or self.app.rebalancing:  # (which partitions are ours?)
            if final:
                log.warning("no snapshot at the stop: a rebalance was under way")
            return
        assigned = self._assigned()
        if not assigned:  # (no partitions, nothing to snapshot: no age to report)
            self._snapshot_info = None
            return
        if assigned != self._replayed:  # (the model holds others: a rebuild is due)
            return
        async with self._learning:
            offsets = {p: self._next_offset[p] for p in assigned if p in self._next_offset}
            if len(offsets) < len(assigned):
                return
            for _, _, partition, offset, _ in self.ordering.held():
                if partition in offsets:
                    offsets[partition] = min(offsets[partition], offset)
            unchanged = (self.engine.version, offsets) == self._snapshot_of
            if unchanged:
                self._last_snapshot = time.monotonic()
                if self._snapshot_info is not None:  # (the model as it is is saved: fresh)
                    _, ratings, size = self._snapshot_info
                    self._snapshot_info = (time.time(), ratings, size)
            else:
                self._snapshot_of = (self.engine.version, offsets)
                started = time.monotonic()
                data = self.snapshots.dumps(self.engine, offsets, s.model_fingerprint())
                ratings = self.engine.events
        if unchanged:  # nothing new since the last one: it stays current on disk too
            try:
                await asyncio.to_thread(self.snapshots.keep, offsets)
            except OSError as exc:  # (a folder gone: the next write says so)
                log.warning("snapshot not marked current: %s", exc)
            return
        try:
            committed = await self._committed()
        except KafkaError as exc:  # retention then keeps the newest few only
            log.warning("no committed offsets for snapshot retention: %s", exc)
            committed = None
        try:
            path = await asyncio.to_thread(self.snapshots.write, data, offsets, committed)
        except OSError as exc:  # e.g. a full disk: the worker goes on, and tries again
            self._last_snapshot = time.monotonic()
            self._snapshot_of = ()
            log.warning("snapshot not written to %s: %s", self.snapshots.directory, exc)
            return
        self._last_snapshot = time.monotonic()
        self._snapshot_info = (time.time(), ratings, len(data))
        log.info(
            "snapshot %s: %d ratings, %.1f MB in %.2f s",
            path.name,
            ratings,
            len(data) / 1e6,
            self._last_snapshot - started,
        )

    async def _replay(self, until: dict[int, int], revocations: int | None = None) -> None:
        """Learn the history of ratings partitions, offsets ``[0, until[p])`` of each,
        into the model, after the users' declared tags of the same partitions (from the
        offset a restored snapshot covers, when there is one).

        The partitions are read together and learned in event-time order
        (:class:`EventTimeMerge`), as they were live: one partition's whole history
        before the next would show each user's neighbours their future, then their past.
        The model lives in memory, so the log is its durable state: after a restart or a
        rebalance, the first live offset of each partition marks where replay stops, and
        every rating is learned exactly once. Replayed ratings are not evaluated (they
        were, when they were live) and bad ones were dead-lettered then. ``revocations``
        is the consumer's count of rebalances when the caller began (now if not given):
        a rebalance begun since stops the replay.
        """
        s = self.settings
        if revocations is None:
            revocations = self.app.consumer.revocations
        self._misplaced = 0  # (this replay's: one cut short and tried again counts anew)
        await self._catalog_read(revocations)  # (a rating of an item not read yet: lost)
        started = time.monotonic()
        # (An offset below the log's start, gone with a retention set by hand: from the
        # start, not the end, which would skip the rest of the history silently.)
        consumer = standalone_consumer(s, auto_offset_reset="earliest")
        await consumer.start()
        learned = dict.fromkeys(until, 0)
        last_seen: dict[str, float] = {}  # user -> event time of their latest event
        produced: dict[str, float] = {}  # user -> record time of their latest event
        # Reading a rating notes its event id (the log's own duplicates are skipped), ahead
        # of learning it: a replay cut short before it learned anything forgets the ids it
        # noted, or its retry would take every rating read so far for a duplicate and
        # skip it (:meth:`_unnote`).
        noted: deque[str] = deque(maxlen=s.dedupe_window)  # (older ones left the window)
        ids_before = list(self.engine.event_ids)
        learning = False
        try:
            refused = await self._refused(sorted(until), revocations, started)
            declared = refused.get(s.users_topic, {})
            last_seen.update(await self._replay_users(consumer, sorted(until), declared, produced))
            refused_ratings = refused.get(s.ratings_topic, {})

            def replayable(record: ConsumerRecord) -> Rating | None:
                if record.offset in refused_ratings.get(record.partition, ()):
                    return None  # refused live (a copy sent back is learned instead)
                rating = self._replayable(record, noted)
                if rating is not None:
                    _note_latest(produced, rating.user, record)
                return rating

            start = {p: self._resume_from.get(p, 0) for p in until}
            async for ratings in read_merged(consumer, s.ratings_topic, start, until, replayable):
                if self.app.consumer.revocations != revocations:
                    # A rebalance began: its revocation waits for the batch this replay
                    # runs in, and the partitions may go elsewhere. The model holds part
                    # of the replay, so it is rebuilt at the next batch.
                    self._reset_pending = True
                    raise BatchAbandoned(
                        f"a rebalance began {time.monotonic() - started:.1f} s into a replay"
                    )
                learning = True
                self.engine.relearn([r for _, r in ratings])
                for partition, r in ratings:
                    last_seen[r.user] = max(last_seen.get(r.user, r.timestamp), r.timestamp)
                    learned[partition] += 1
        except BaseException:
            # Cut short (the log unreachable, a stop): the model holds part of the
            # replay, and replaying the range again on top would learn that part twice.
            if learning:
                self._reset_pending = True
            else:  # nothing learned: only the ids read, which the retry reads again
                self._unnote(ids_before, noted)
            raise
        finally:
            await consumer.stop()
        self._replayed.update(until)
        for partition, offset in until.items():
            # Live processing resumes at ``until``: from now on the lag of an idle
            # partition counts from there too.
            self._next_offset.setdefault(partition, offset)
        # Lists are republished for the users whose list is still alive, each for what is
        # left of its TTL: live, it ran from the write just after the user's latest
        # event, so from that record's time (where a record has none: from the event's
        # time, against the log's latest event). Older ones have expired, and renewing
        # them at every restart would keep a list in Redis for every user the log ever
        # saw (and, unfollowed after a later restart, showing deleted items).
        now = time.time()
        horizon = max(last_seen.values(), default=0.0) - s.recs_ttl_s
        left: dict[str, int] = {}
        for u, t in last_seen.items():
            made = produced.get(u)
            ttl = s.recs_ttl_s - (now - made) if made is not None else t - horizon
            if ttl >= 0:
                left[u] = min(s.recs_ttl_s, max(1, math.ceil(ttl)))
        users_list = sorted(left)
        for lo in range(0, len(users_list), 1000):
            lists = self.engine.serve(users_list[lo : lo + 1000])
            await publish(self.engine, self.sink, lists, {u: left[u] for u in lists})
        for partition in sorted(until):
            log.info(
                "replayed %d ratings of partition %d up to offset %d",
                learned[partition],
                partition,
                until[partition],
            )
        if self._misplaced:
            log.warning(
                "the replay skipped %d ratings and user events found on another partition "
                "than their key's and not dead-lettered: learned live under another "
                "partition count (a count changed since splits users: create the topics "
                "with their partitions up front), or not processed live yet",
                self._misplaced,
            )
        log.info(
            "replayed %d ratings of %d partitions in event-time order in %.1f s",
            sum(learned.values()),
            len(until),
            time.monotonic() - started,
        )

    async def _replay_users(
        self,
        consumer: AIOKafkaConsumer,
        partitions,
        refused: Mapping[int, set[int]],
        produced: dict[str, float] | None = None,
    ) -> dict[str, float]:
        """Declared user tags of these partitions (the users topic is co-partitioned with
        the ratings), applied before their ratings are replayed, but for the offsets
        ``refused`` live (by partition). Declaring tags is idempotent (the latest
        declaration wins), so each partition is read up to its current end; events the
        users agent has yet to process only get applied again. The partitions are read
        together: one assignment, not one per partition. Returns each declaring user's
        latest declaration time (and notes its record's time in ``produced``). An event
        on another partition than its key's is skipped, as live (:func:`partition_problem`)."""
        topic = self.settings.users_topic
        count = self.app.consumer.partition_count(topic)
        if not set(partitions) <= (consumer.partitions_for_topic(topic) or set()):
            await consumer._client.force_metadata_update()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        users: dict[str, float] = {}
        async for records, _ in read_ranges(consumer, {tp: (0, end) for tp, end in ends.items()}):
            for record in records:
                if record.offset in refused.get(record.partition, ()):
                    continue  # refused live (a copy sent back is applied instead)
                try:
                    event = user_event(self.settings, record.key, record.value, _seconds(record))
                except EventError:
                    continue  # dead-lettered when it was live
                if partition_problem(record.key, record.partition, count) is not None:
                    self._misplaced += 1  # (the same, or not yet processed live: it will be)
                    continue
                self.engine.model.upsert_user(event.user_id, dict(event.tags))
                if record.value is not None:  # (a tombstone's time is the record's, not
                    # event time: it would move the horizon of the lists republished)
                    users[event.user_id] = max(users.get(event.user_id, 0.0), event.timestamp)
                    if produced is not None:
                        _note_latest(produced, event.user_id, record)
        return users

    async def _refused(
        self, partitions: list[int], revocations: int, started: float
    ) -> dict[str, dict[int, set[int]]]:
        """The offsets of ``partitions`` of the ratings and users topics refused live, by
        the dead-letter topic (none, with a warning, when it cannot be read to its end in
        time: the replay then learns the refused events whose cause went away). A
        rebalance begun since the consumer's count was ``revocations`` stops the replay,
        as between its chunks."""

        def rebalancing() -> bool:
            return self.app.consumer.revocations != revocations

        s = self.settings
        wanted = {s.ratings_topic: partitions, s.users_topic: partitions}
        try:
            refused = await refused_offsets(s, wanted, rebalancing)
        except TopicNotReadToEnd as exc:
            log.warning("replay without the dead letters' offsets: %s", exc)
            return {}
        if refused is None:
            raise BatchAbandoned(
                f"a rebalance began {time.monotonic() - started:.1f} s into a replay"
            )
        return refused

    def _unnote(self, before: list[str], noted: Iterable[str]) -> None:
        """The dedupe window as if a replay had not noted the ids ``noted``: the ids it
        held before (those the noted ones pushed out of a full window come back), then
        those live ratings of other partitions added meanwhile, the oldest going past
        the window."""
        ids, gone = self.engine.event_ids, set(noted)
        since = [e for e in ids if e not in gone]
        kept = set(since)
        ids.clear()
        ids.update((e, None) for e in before if e not in kept)
        ids.update((e, None) for e in since)
        self.engine.remember(())  # (trimmed to the window)

    def _replayable(self, record: ConsumerRecord, noted: deque | None = None) -> Rating | None:
        """The rating a logged event held, or None where it cannot have been learned live.

        Replay runs after the whole catalog was read, so it cannot see the catalog as it
        was at each rating: a rating of an item deleted since is learned (it was, live,
        before the delete), and only items the catalog never knew are refused. Ratings
        refused live are skipped before this, by their dead letters (:meth:`_refused`):
        one sent back by ``recsys-online deadletters --redrive`` is learned once, as its
        copy, whether the replay comes before or after the redrive. An
        item deleted and freed since (:meth:`StreamEngine.compact_if_due`) gets a row
        again, as deleted, for its ratings.
        """
        try:
            r = rating_event(self.settings, record.key, record.value, _seconds(record))
        except EventError:
            return None
        count = self.app.consumer.partition_count(self.settings.ratings_topic)
        if partition_problem(record.key, record.partition, count) is not None:
            self._misplaced += 1  # (refused live too; a count changed since: said, below)
            return None
        if not self.engine.knows_item(r.item_id):
            self.engine.bring_back_deleted(r.item_id)
            if not self.engine.knows_item(r.item_id):
                return None
        if self.engine.repeats(r.event_id):
            return None
        if noted is not None and r.event_id is not None:  # (noted as learned: see _replay)
            noted.append(r.event_id)
        return Rating(r.user_id, r.item_id, r.rating, r.timestamp)

    # ------------------------------------------------------------------ helpers
    async def _dead_letter(
        self, m: ConsumerRecord | Message, reason: str, acks: list[Awaitable[None]] | None = None
    ) -> None:
        """The original bytes of a record (aiokafka's, or a Faust event's ``message``),
        unchanged, with the reason and source in headers.

        A value too large for the producer's 1 MB requests is cut to ``DEADLETTER_BYTES``
        (header ``recsys.truncated.from``: its size), a key to ``DEADLETTER_KEY_BYTES``
        (``recsys.truncated.key_from``), its own headers, kept beside the project's, to
        ``DEADLETTER_HEADER_BYTES`` in all (or none, ``recsys.truncated.headers_from``: their
        size) and the reason to ``DEADLETTER_REASON_CHARS``, so
        that the letter cannot be refused (the broker takes a source record of up to
        about 1 MB in all, key included, which the producer would refuse to send on). The
        broker's acknowledgement is awaited before the batch or event goes on, so no offset
        is committed past a dead letter not delivered: given ``acks``, the letter is sent
        at once and its acknowledgement added there, for the batch to await all of its
        letters together. A failed send is tried
        again, waiting longer each time up to 5 s (a broker outage stalls the worker, it
        does not stop it).
        """
        self.engine.count_deadletter(reason)
        if len(reason) > DEADLETTER_REASON_CHARS:
            reason = reason[:DEADLETTER_REASON_CHARS] + " ..."
        log.info("dead letter from %s[%d]@%d: %s", m.topic, m.partition, m.offset, reason)
        headers = [
            ("recsys.reason", reason.encode()),
            ("recsys.source.topic", m.topic.encode()),
            ("recsys.source.partition", str(m.partition).encode()),
            ("recsys.source.offset", str(m.offset).encode()),
        ]
        # An event `recsys-online deadletters --redrive` sent back, refused again: said
        # so, so that it is not sent back a second time.
        # (One, cut short: a producer may forge it, and a letter past the producer's
        # request size would be tried again forever.)
        headers += [
            (n, bytes(v or b"")[:DEADLETTER_MARK_BYTES])
            for n, v in m.headers or ()
            if n == "recsys.redriven.from"
        ][:1]
        # The record's own headers (tracing, content type, ...), for a redrive to send
        # back as they were; past DEADLETTER_HEADER_BYTES, their size instead. Each
        # header costs its lengths' bytes in the record too: 50,000 empty ones are 0
        # bytes of names and values, and about 150 KB of record.
        own = [(n, v) for n, v in m.headers or () if not n.startswith("recsys.")]
        size = sum(len(n.encode()) + len(v or b"") + HEADER_OVERHEAD_BYTES for n, v in own)
        if size > DEADLETTER_HEADER_BYTES:
            headers.append(("recsys.truncated.headers_from", str(size).encode()))
        else:
            headers += own
        key, value = m.key, m.value
        if key is None and value is None:  # (Kafka takes no record without either)
            key = b""
            headers.append(("recsys.source.key", b"none"))
        if value is not None and len(value) > DEADLETTER_BYTES:
            headers.append(("recsys.truncated.from", str(len(value)).encode()))
            value = bytes(value[:DEADLETTER_BYTES])
        if key is not None and len(key) > DEADLETTER_KEY_BYTES:  # (else refused forever)
            headers.append(("recsys.truncated.key_from", str(len(key)).encode()))
            key = bytes(key[:DEADLETTER_KEY_BYTES])
        if acks is None:
            await self._deliver(key, value, headers)
            return
        try:
            sent = await self._send_letter(key, value, headers)
        except Exception:  # (tried again, waiting, when the batch awaits it)
            sent = None
        acks.append(self._confirmed(sent, key, value, headers))

    async def _send_letter(self, key, value, headers) -> Awaitable:
        """Send a dead letter now; the result is awaited for the acknowledgement.

        ``force``: inside a Faust event, a plain ``send`` is attached to the event and
        published only when its offset is committed, where a failed delivery is ignored
        and the offset committed all the same: the letter would be lost.
        """
        return await self.deadletter.send(key=key, value=value, headers=headers, force=True)

    async def _confirmed(self, sent, key, value, headers) -> None:
        """Await a dead letter's acknowledgement; when it failed, deliver it again."""
        if sent is not None:
            try:
                await sent
                return
            except Exception as exc:
                log.warning("dead letter not delivered (%s): sending it again", exc)
        await self._deliver(key, value, headers)

    async def _deliver(self, key, value, headers) -> None:
        """Send a dead letter and await the acknowledgement, again and again until it
        goes through."""
        wait = 0.1
        while True:
            try:
                await (await self._send_letter(key, value, headers))
                return
            except Exception as exc:  # any delivery failure: the record is not lost
                source = dict(headers)
                log.warning(
                    "dead letter of %s partition %s offset %s not delivered to %s (%r): "
                    "again in %.1f s; the partition waits for it",
                    source.get("recsys.source.topic", b"?").decode(errors="replace"),
                    source.get("recsys.source.partition", b"?").decode(errors="replace"),
                    source.get("recsys.source.offset", b"?").decode(errors="replace"),
                    self.settings.deadletter_topic,
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)
                wait = min(2 * wait, 5.0)

    def _caught_up(self) -> bool:
        """The ratings partitions assigned to this worker are processed up to their end,
        but for less than a batch (``batch_max``) in flight or held for event-time order:
        what a worker keeping up with a steady stream always has. (Exactly at the end, it
        was caught up at 5 of 60 checks during a stream at 2,000 ratings/s.)

        Then catalog events apply as they come; before, an item dated after the ratings
        being processed waits for them (see ``StreamEngine.upsert_item``). A worker that
        has not joined the group yet, or has not heard a partition's end, is not.
        """
        positions = self._positions()
        return (
            bool(positions)
            and all(high is not None and received is not None for _, high, received in positions)
            and self._lag(positions) < self.settings.batch_max
        )

    def _lag(self, positions: list | None = None) -> int:
        """Ratings not yet processed: high-water mark minus next offset, over our partitions
        (``positions``: :meth:`_positions`, when already read), plus those received and
        held for event-time order."""
        return len(self.ordering) + sum(
            max(0, high - received)
            for _, high, received in (self._positions() if positions is None else positions)
            if high is not None and received is not None
        )


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Create the topics, then run one worker until it is stopped. A broker that cannot
    be reached (or refuses the credentials) stops it at once, with one line saying how
    it connected."""
    try:
        asyncio.run(ensure_topics(settings))
    except KafkaError as exc:
        raise SystemExit(f"recsys-online: {kafka_unreachable(settings, exc)}") from None
    except SettingsError as exc:
        raise SystemExit(f"recsys-online: {exc}") from None
    refused = redis_refusal(settings.redis_url, cluster=settings.redis_cluster)
    if refused is not None:
        raise SystemExit(f"recsys-online: {refused}")
    Path(settings.data_dir).expanduser().mkdir(parents=True, exist_ok=True)
    worker = RecsysWorker(settings)
    quiet_kafka_client()  # a broker outage: a line per kind of complaint per 10 s
    quiet_long_ticks()  # (a refresh tick past its interval: information, not a fault)
    config = logging_config(settings.log_format, loglevel)
    runner = faust.Worker(worker.app, loglevel=loglevel, quiet=True, logging_config=config)
    if config is not None:  # (Faust's terminal spinner writes control codes to stdout)
        runner.spinner = None
    runner.execute_from_commandline()
