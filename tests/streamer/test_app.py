"""The Faust app's consumer settings (no broker needed: the consumer is built, not started)."""

from __future__ import annotations

import asyncio
import json
import time
import types
from dataclasses import replace

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    RequestTimedOutError,
)
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP

from recsys_online.events import Rating
from streamer import app as app_module
from streamer.app import BatchAbandoned, RecsysWorker, standalone_consumer
from streamer.deadletters import DeadLetter
from streamer.engine import StreamEngine
from streamer.item_changes import decode_item_changes
from streamer.settings import Settings
from streamer.sink import KEEP_TTL
from streamer.snapshot import SnapshotStore


class _IdleConsumer:
    """A stand-in for a standalone consumer the test's other stand-ins read for."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def _no_users(self, consumer, partitions, refused, produced=None) -> dict[str, float]:
    """``RecsysWorker._replay_users`` where the users topic holds nothing."""
    return {}


def _idle_consumer(settings, **options) -> _IdleConsumer:
    return _IdleConsumer()


def _replaying(monkeypatch, merged, replay_users) -> dict[str, int]:
    """A replay reading the ratings ``merged`` gives and the users ``replay_users`` does;
    the lists it publishes, by user, with their TTL (a dict filled as they come)."""
    published: dict[str, int] = {}

    async def publish(engine, sink, lists, ttl=None, rank_s=None) -> float:
        published.update({user: ttl[user] for user in lists})
        return time.time()

    monkeypatch.setattr(app_module, "standalone_consumer", _idle_consumer)
    monkeypatch.setattr(app_module, "read_merged", merged)
    monkeypatch.setattr(app_module, "publish", publish)
    monkeypatch.setattr(RecsysWorker, "_replay_users", replay_users)
    return published


@pytest.fixture(autouse=True)
def _no_dead_letters(monkeypatch) -> None:
    """Replays and catalog reads here read stand-in logs: no dead-letter topic to read,
    none refused."""

    async def none_refused(self, partitions, revocations, started) -> dict:
        return {}

    async def no_items_refused(self) -> dict:
        return {}

    monkeypatch.setattr(RecsysWorker, "_refused", none_refused)
    monkeypatch.setattr(app_module.CatalogFollower, "_refused", no_items_refused)


async def test_the_worker_consumer_asks_the_broker_to_hold_fetches_briefly() -> None:
    """Faust builds its consumer with a 1.5 s fetch wait; the worker's is the setting's
    (a fetch of idle topics held that long delays every live rating behind it)."""
    for wait in (50, 77):
        worker = RecsysWorker(Settings(fetch_max_wait_ms=wait))
        consumer = worker.app.consumer
        thread = consumer._new_consumer_thread()
        built = thread._create_worker_consumer(worker.app.transport)
        assert built._fetch_max_wait_ms == wait


# ---------------------------------------------------------------- ratings taken in batches
def _record(topic: str, partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])


def _batch_consumer(monkeypatch, fetched: dict, size: int = 3):
    """The worker app's consumer (not started) with one fetch's records, the ratings
    topic handled in batches of ``size`` by a handler that records what it got."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    app, consumer = worker.app, worker.app.consumer
    got: list[list[tuple[int, int]]] = []

    async def handler(records: list[ConsumerRecord]) -> None:
        got.append([(r.partition, r.offset) for r in records])

    app.batch_handlers = {"r": (handler, size)}
    assigned = {TP(t, p) for t in "riu" for p in range(2)}
    monkeypatch.setattr(consumer, "assignment", lambda: assigned)

    async def fetch(self, timeout):
        return fetched, None

    monkeypatch.setattr(faust_kafka.Consumer, "_wait_next_records", fetch)
    consumer.flow_active = True
    return app, consumer, got


async def test_ratings_reach_the_handler_in_batches_and_count_as_acknowledged(
    monkeypatch,
) -> None:
    fetched = {
        TP("r", 0): [_record("r", 0, o) for o in range(10, 15)],
        TP("r", 1): [_record("r", 1, o) for o in range(3)],
        TP("i", 0): [_record("i", 0, 7)],
    }
    _, consumer, got = _batch_consumer(monkeypatch, fetched, size=3)
    consumer._read_offset[TP("r", 0)] = 12  # a seek back: 10 and 11 were taken before
    rest, _ = await consumer._wait_next_records(1.0)
    # Other topics go on to Faust's per-event path; ratings do not.
    assert list(rest) == [TP("i", 0)]
    # The partitions in turn (a batch of one partition would run ahead in event time).
    assert got == [[(0, 12), (1, 0), (0, 13)], [(1, 1), (0, 14), (1, 2)]]
    # Faust's commit finds both partitions and commits past what the handler returned.
    assert consumer._filter_committable_offsets(consumer._acked) == {
        TP("r", 0): 15,
        TP("r", 1): 3,
    }
    assert consumer._read_offset[TP("r", 0)] == 15  # a fetch of them again is skipped

    # At a revocation, what was taken is committed before Faust forgets the partitions
    # (its own commit there comes after, and would find nothing of them).
    events: list = []

    async def commit(offsets) -> bool:
        events.append(("commit", dict(offsets)))
        return True

    async def revoke(self, revoked) -> None:  # (Faust's own needs a running app)
        events.append(("faust revokes", set(revoked)))

    monkeypatch.setattr(consumer, "_commit", commit)
    monkeypatch.setattr(faust_kafka.Consumer, "on_partitions_revoked", revoke)
    await consumer.on_partitions_revoked({TP("r", 0), TP("r", 1)})
    assert events == [
        ("commit", {TP("r", 0): 15, TP("r", 1): 3}),
        ("faust revokes", {TP("r", 0), TP("r", 1)}),
    ]
    assert consumer._new_offset(TP("r", 1)) is None
    assert not consumer.flow_active  # no batch starts while the rebalance goes on


async def test_a_rebalance_stops_the_batches_of_a_fetch_and_commits_only_what_was_handled(
    monkeypatch,
) -> None:
    fetched = {TP("r", 0): [_record("r", 0, o) for o in range(9)]}
    app, consumer, got = _batch_consumer(monkeypatch, fetched, size=3)
    handler, _ = app.batch_handlers["r"]

    async def rebalance_during_the_first(records: list[ConsumerRecord]) -> None:
        await handler(records)
        # A rebalance begins while this batch is in progress: Faust's revocation waits
        # for the batch before committing.
        waiting = asyncio.ensure_future(consumer.wait_batch())
        await asyncio.sleep(0)
        assert not waiting.done()
        consumer.flow_active = False
        app.batch_handlers["r"] = (handler, 3)
        rebalanced.append(waiting)

    rebalanced: list[asyncio.Future] = []
    app.batch_handlers["r"] = (rebalance_during_the_first, 3)
    await consumer._wait_next_records(1.0)
    await asyncio.wait_for(rebalanced[0], 1.0)  # released once the batch was in
    assert got == [[(0, 0), (0, 1), (0, 2)]]  # the other two batches are left for the seek
    assert consumer._new_offset(TP("r", 0)) == 3


async def test_replays_read_what_the_group_consumer_reads() -> None:
    """With exactly_once the group's consumer skips aborted transactions' events; the
    consumers that replay the log must skip the same ones."""
    for guarantee, level in (("exactly_once", "read_committed"), ("at_least_once", None)):
        worker = RecsysWorker(Settings(processing_guarantee=guarantee))
        worker.app.in_worker = True  # (as under `recsys-online worker`: Faust's test for it)
        thread = worker.app.consumer._new_consumer_thread()
        group = thread._create_worker_consumer(worker.app.transport)
        replay = standalone_consumer(worker.settings)
        try:
            assert replay._isolation_level == group._isolation_level
            if level:
                assert replay._isolation_level == level
        finally:
            await replay.stop()
            await group.stop()


async def test_an_abandoned_batch_is_not_acknowledged_and_ends_the_fetch(monkeypatch) -> None:
    """A handler that gives up (a rebalance began during its replay) leaves its records
    to the partition's next owner: nothing of it is committed, no later batch starts,
    and the worker goes on."""
    fetched = {
        TP("r", 0): [_record("r", 0, o) for o in range(9)],
        TP("i", 0): [_record("i", 0, 4)],
    }
    app, consumer, got = _batch_consumer(monkeypatch, fetched, size=3)
    handler, _ = app.batch_handlers["r"]
    calls: list[int] = []

    async def gives_up_on_the_second(records: list[ConsumerRecord]) -> None:
        calls.append(records[0].offset)
        if len(calls) == 2:
            raise BatchAbandoned("a rebalance began")
        await handler(records)

    app.batch_handlers["r"] = (gives_up_on_the_second, 3)
    rest, _ = await consumer._wait_next_records(1.0)
    assert list(rest) == [TP("i", 0)]
    assert calls == [0, 3]  # the third batch never started
    assert got == [[(0, 0), (0, 1), (0, 2)]]
    assert consumer._new_offset(TP("r", 0)) == 3
    assert consumer._read_offset[TP("r", 0)] == 3  # offsets 3.. are read again
    assert consumer._handler_idle.is_set()  # a revocation does not wait for it


async def test_a_replay_stops_when_a_rebalance_begins_and_the_model_is_rebuilt(
    monkeypatch,
) -> None:
    """A replay runs inside a ratings batch (or the timer); a revocation waits for that
    batch, so a long replay would hold the whole group's rebalance. It stops at its next
    chunk once a revocation begins, learns nothing more, and asks for a rebuild."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    consumer = worker.app.consumer
    worker.catalog.ready.set()
    for item in ("a", "b"):
        worker.engine.upsert_item(item, {"t": 1.0})

    chunks = [[(0, Rating(f"u{n}", "a", 4.0, float(n)))] for n in range(4)]

    async def merged(*args, **kwargs):
        for n, chunk in enumerate(chunks):
            if n == 2:  # Faust's revocation starts while the replay reads the log
                consumer.revocations += 1
            yield chunk

    monkeypatch.setattr(app_module, "standalone_consumer", _idle_consumer)
    monkeypatch.setattr(app_module, "read_merged", merged)
    monkeypatch.setattr(RecsysWorker, "_replay_users", _no_users)
    with pytest.raises(BatchAbandoned):
        await worker._replay({0: 4})
    assert worker.engine.events == 2  # the chunks read before the revocation began
    assert worker._replayed == set()  # partition 0 is not counted as in the model
    assert worker._reset_pending  # the partial replay is thrown away at the next batch


async def test_a_replay_cut_short_by_an_error_rebuilds_rather_than_replays_on_top(
    monkeypatch,
) -> None:
    """The log unreachable halfway through a replay (the timer's replay of idle
    partitions logs it and tries again at the next tick): the part learned is thrown
    away with the model, not learned a second time by the next attempt. The replay reads
    from the log's start where its first offset is gone (never from the end)."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    worker.catalog.ready.set()
    worker.engine.upsert_item("a", {"t": 1.0})
    options: list[dict] = []

    async def merged(*args, **kwargs):
        yield [(0, Rating("u0", "a", 4.0, 0.0))]
        raise KafkaConnectionError()

    def consumer(settings, **more):
        options.append(more)
        return _IdleConsumer()

    monkeypatch.setattr(app_module, "standalone_consumer", consumer)
    monkeypatch.setattr(app_module, "read_merged", merged)
    monkeypatch.setattr(RecsysWorker, "_replay_users", _no_users)
    with pytest.raises(KafkaConnectionError):
        await worker._replay({0: 4})
    assert worker.engine.events == 1 and worker._replayed == set()
    assert worker._reset_pending
    assert options == [{"auto_offset_reset": "earliest"}]


async def test_a_replay_cut_short_before_it_learned_loses_no_rating_on_its_retry(
    monkeypatch,
) -> None:
    """Reading a rating notes its event id, before the event-time merge lets it go to
    be learned. A replay cut short after reading but before learning anything (partition
    0 read, partition 1 still behind it) keeps its model, and the retry reads the same
    records: none may pass for a duplicate of itself, or its rating is lost unseen."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    worker.catalog.ready.set()
    worker.engine.upsert_item("a", {"t": 1.0})
    worker.engine.remember(["before"])  # learned live earlier: still a duplicate after

    def record(partition: int, offset: int, n: int) -> ConsumerRecord:
        value = json.dumps(
            {"user_id": f"u{n}", "item_id": "a", "rating": 4, "timestamp": n, "event_id": f"e{n}"}
        ).encode()
        return ConsumerRecord("r", partition, offset, 0, 0, f"u{n}".encode(), value, None, 0, 0, [])

    log = {p: [record(p, o, 100 * p + o) for o in range(10)] for p in (0, 1)}
    attempts: list[int] = []

    async def ranges(consumer, wanted, batch=5000):
        attempts.append(len(attempts))
        if len(attempts) == 1:  # partition 0 read, 1 still behind: the merge holds 0's
            yield log[0], {TopicPartition("r", 0), TopicPartition("r", 1)}
            worker.engine.remember(["live"])  # learned live meanwhile (another partition)
            raise KafkaConnectionError()
        yield log[0] + log[1], set()

    async def nothing_refused(self, partitions, revocations, started) -> dict:
        return {}

    async def published(engine, sink, lists, ttl=None, rank_s=None) -> float:
        return time.time()

    monkeypatch.setattr(app_module, "standalone_consumer", _idle_consumer)
    monkeypatch.setattr(app_module, "read_ranges", ranges)
    monkeypatch.setattr(app_module, "publish", published)
    monkeypatch.setattr(RecsysWorker, "_refused", nothing_refused)
    monkeypatch.setattr(RecsysWorker, "_replay_users", _no_users)
    with pytest.raises(KafkaConnectionError):
        await worker._replay({0: 10, 1: 10})
    assert worker.engine.events == 0 and not worker._reset_pending  # the model kept
    assert list(worker.engine.event_ids) == ["before", "live"]  # (the live one kept)
    await worker._replay({0: 10, 1: 10})
    assert worker.engine.events == 20 and worker._replayed == {0, 1}
    assert all(map(worker.engine.repeats, ("e3", "before", "live")))


def test_a_replay_that_learned_nothing_gives_the_dedupe_window_back_whole() -> None:
    """The ids a cut-short replay noted pushed older ones out of a full window; taking
    the noted ones out again must bring those back (the window shrank instead), and
    keep the ids live ratings added meanwhile, the oldest going past the window."""
    worker = RecsysWorker(Settings(ratings_topic="r", dedupe_window=4))
    engine = worker.engine
    engine.remember(["a", "b", "c", "d"])
    before = list(engine.event_ids)
    engine.remember(["r1", "r2"])  # noted by the replay: "a" and "b" pushed out
    engine.remember(["live"])  # learned live meanwhile: "c" pushed out
    worker._unnote(before, ["r1", "r2"])
    assert list(engine.event_ids) == ["b", "c", "d", "live"]


async def test_lists_a_catalog_change_puts_due_are_refreshed_a_slice_at_a_time(
    monkeypatch,
) -> None:
    """A burst of new items can put thousands of lists due at once; they are re-ranked
    and published a slice at a time, with the event loop (and so the ratings' batches)
    running in between, and a model rebuilt meanwhile stops the rest."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u", k=3))
    engine = worker.engine
    for n in range(6):
        engine.upsert_item(f"old{n}", {"rock": 1.0})
    users = [f"u{n}" for n in range(10)]
    engine.learn_ratings([Rating(u, "old0", 5.0, 1.0) for u in users])
    engine.upsert_item("new", {"rock": 1.0})  # belongs in every list
    engine.upsert_item("new2", {"rock": 1.0})
    monkeypatch.setattr(RecsysWorker, "REFRESH_SLICE", 4)
    monkeypatch.setattr(StreamEngine, "REFRESH_CHUNK", 1)  # the check in two steps too
    published: list[list[str]] = []
    ran_between: list[int] = []
    checked: list[int] = []
    steps = engine.refresh_steps

    def counted_steps():
        for due in steps():
            checked.append(len(due))
            yield due

    monkeypatch.setattr(engine, "refresh_steps", counted_steps)

    class Sink:
        async def publish_lists(self, lists, version, ttl=None) -> float:
            published.append(sorted(lists))
            assert all("new" in [r.item for r in recs] for recs in lists.values())
            assert ttl == KEEP_TTL  # (a new item is no visit: the lists' expiry stays)
            return time.time()

    async def other_task() -> None:  # stands for a ratings batch
        while len(published) < 3:
            ran_between.append(len(published))
            checked_between.append(len(checked))
            await asyncio.sleep(0)

    checked_between: list[int] = []

    worker.sink = Sink()
    other = asyncio.ensure_future(other_task())
    await worker._refresh_due_lists()
    await other
    assert [len(p) for p in published] == [4, 4, 2]
    assert sorted(u for p in published for u in p) == users
    assert {1, 2} <= set(ran_between)  # it ran between the slices
    # and between the check's steps (one per changed item: the 6 first ones and the 2 new)
    assert len(checked) == 8 and {1, 2} <= set(checked_between)

    # A rebuild between two slices: the old model's remaining lists are not published.
    engine.upsert_item("newer", {"rock": 1.0})
    published.clear()

    class RebuildingSink(Sink):
        async def publish_lists(self, lists, version, ttl=None) -> float:
            worker.engine = engine.successor()
            return await super().publish_lists(lists, version, ttl)

    worker.sink = RebuildingSink()
    await worker._refresh_due_lists()
    assert len(published) == 1


def _rating_record(value: bytes | None, offset: int = 7, key: bytes = b"u") -> ConsumerRecord:
    return ConsumerRecord("r", 0, offset, 0, 0, key, value, None, 0, len(value or b""), [])


def _item_record(value: bytes | None, key: bytes | None, offset: int = 0) -> ConsumerRecord:
    """An items-topic record produced at 1,700,000,000 s (Kafka's times are in ms)."""
    return ConsumerRecord("i", 0, offset, 1_700_000_000_000, 0, key, value, None, 0, 0, [])


def _apply(worker: RecsysWorker, record: ConsumerRecord) -> dict:
    """What the worker's catalog follower does with an items record once caught up."""
    event = worker.catalog._event(record)
    return {} if event is None else worker.catalog._apply_event(event)


def _worker_knowing_item_a() -> tuple[RecsysWorker, list[str]]:
    """A worker whose catalog holds item ``a``, and the reasons it dead-letters."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    worker.catalog.ready.set()
    worker.engine.upsert_item("a", {"jazz": 1.0})
    dead: list[str] = []

    async def dead_letter(record, reason: str, acks=None) -> None:
        dead.append(reason)

    worker._dead_letter = dead_letter
    return worker, dead


async def test_a_rating_made_before_its_items_delete_is_learned_when_read_after_it() -> None:
    """A worker catching up on a backlog reads the whole catalog first, deletes dated
    after the ratings it has yet to learn included: a rating made while the item was
    listed is learned (as a rebuild learns it, and as a worker keeping up did), one
    made after the delete is dead-lettered."""
    worker, dead = _worker_knowing_item_a()
    worker.engine.live = False  # catching up: the backlog is at t ~ 20
    _apply(
        worker, _item_record(b'{"op":"upsert","item_id":"b","tags":["jazz"],"timestamp":10}', b"b")
    )
    worker.engine.learn_ratings([Rating("u0", "b", 4.0, 20.0)])
    _apply(worker, _item_record(b'{"op":"delete","item_id":"b","timestamp":1000}', b"b"))
    before = b'{"user_id":"u","item_id":"b","rating":5,"timestamp":30}'
    after = b'{"user_id":"u","item_id":"b","rating":5,"timestamp":2000}'
    valid = await worker._valid_ratings([_rating_record(before, 7), _rating_record(after, 8)])
    assert [offset for _, offset, *_ in valid] == [7]
    assert dead == ["item_id: item 'b' was deleted"]
    _apply(worker, _item_record(b'{"op":"upsert","item_id":"b","timestamp":3000}', b"b"))
    assert "b" not in worker.engine.deleted_at  # (listed again: no longer deleted)


async def test_a_worker_keeping_up_with_a_steady_stream_is_live_and_compacts(
    monkeypatch,
) -> None:
    """Under a stream that never pauses, ratings are always in flight at a tick: less
    than a batch behind, the worker is live (items apply as they come) and frees deleted
    rows; a batch or more behind, it is not. A rating held for event-time order keeps
    compaction off (it names its item by id: a freed one would come back)."""
    worker = RecsysWorker(
        Settings(ratings_topic="r", items_topic="i", users_topic="u", compact_share=0.25)
    )
    consumer = worker.app.consumer
    monkeypatch.setattr(consumer, "assignment", lambda: {TP("r", 0)})
    monkeypatch.setattr(consumer, "highwater", lambda tp: 1000)
    monkeypatch.setattr(consumer, "received", lambda tp, handled: handled)
    monkeypatch.setattr(consumer, "batch_idle", lambda: True)
    worker._next_offset, worker._replayed = {0: 1000}, {0}
    engine = worker.engine
    for j in range(8):
        engine.upsert_item(f"x{j}", {"t": 1.0})
    for j in range(4):
        engine.delete_item(f"x{j}")
    worker._ends = {0: 1000 + worker.settings.batch_max}  # a batch behind
    assert not worker._caught_up()
    worker._ends = {0: 1003}  # three ratings produced since the last fetch
    engine.live = worker._caught_up()
    worker.ordering.add(0, 5.0, (Rating("u", "x0", 4.0, 5.0), 0.0, 0, 999, None))
    await worker._compact_if_due()
    assert engine.live and engine.model.n_items == 8  # held: not compacted
    worker.ordering.clear()
    await worker._compact_if_due()
    assert engine.model.n_items == 4 and engine.model.n_deleted == 0


async def test_a_rating_made_before_its_items_delete_is_learned_after_the_row_is_freed() -> None:
    """Compaction frees deleted items' rows while ratings may still be on their way: one
    made before its item's delete is learned all the same (the item gets a row again,
    as deleted, never listed), one made after is dead-lettered."""
    worker, dead = _worker_knowing_item_a()
    engine = worker.engine
    engine.settings = replace(engine.settings, compact_share=0.25)
    engine.live = True
    for j in range(4):
        engine.upsert_item(f"x{j}", {"t": 1.0})
    for j in range(2):
        engine.delete_item(f"x{j}", 100.0)
    assert engine.compact_if_due() == 2 and engine.was_freed("x0")
    before = b'{"user_id":"u","item_id":"x0","rating":5,"timestamp":50}'
    after = b'{"user_id":"u","item_id":"x1","rating":5,"timestamp":150}'
    valid = await worker._valid_ratings([_rating_record(before, 7), _rating_record(after, 8)])
    assert [offset for _, offset, *_ in valid] == [7]
    assert dead == ["item_id: item 'x1' was deleted"]
    assert engine.model.is_deleted("x0") and engine.rated_while_listed("x0", 99.0)
    engine.learn_ratings([valid[0][2]])
    assert "x0" not in [r.item for r in engine.model.recommend("u")]


async def test_a_redelivered_rating_is_dead_lettered_once_its_event_id_repeats() -> None:
    """A producer's retry can send a rating twice; its ``event_id`` (when the app sets
    one) keeps the second copy out of the model, as a dead letter naming the id, and a
    replay of the log makes the same choice."""
    worker, dead = _worker_knowing_item_a()
    raw = b'{"user_id":"u","item_id":"a","rating":5,"timestamp":100,"event_id":"e-1"}'
    plain = b'{"user_id":"u","item_id":"a","rating":4,"timestamp":101}'
    records = [_rating_record(raw, 1), _rating_record(raw, 2), _rating_record(plain, 3)]
    valid = await worker._valid_ratings(records)
    assert [offset for _, offset, *_ in valid] == [1, 3]  # no id: never a duplicate
    assert dead == ["event_id: duplicate 'e-1', already learned"]
    rebuilt = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    rebuilt.engine.upsert_item("a", {"jazz": 1.0})
    assert [rebuilt._replayable(r) is not None for r in records] == [True, False, True]


def test_a_replay_learns_ratings_of_items_deleted_since() -> None:
    """Replay reads the log after the whole catalog: a rating learned live before its
    item was deleted is learned again by a rebuild; an item never announced is not."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    worker.engine.upsert_item("a", {"jazz": 1.0})
    worker.engine.delete_item("a")
    rating = b'{"user_id":"u","item_id":"a","rating":5,"timestamp":100}'
    assert worker._replayable(_rating_record(rating)) == Rating("u", "a", 5.0, 100.0)
    assert worker._replayable(_rating_record(rating.replace(b'"a"', b'"never"'))) is None


async def test_a_rating_keyed_by_anything_but_its_user_is_dead_lettered() -> None:
    """Ratings are keyed by user_id so that a user's ratings and declared tags share a
    partition, and so one worker's model; a record keyed otherwise (or not at all) would
    split the user across workers. It is dead-lettered, and a replay skips it too."""
    worker, dead = _worker_knowing_item_a()
    raw = b'{"user_id":"u","item_id":"a","rating":5,"timestamp":100}'
    keyed = [
        ConsumerRecord("r", 0, n, 0, 0, key, raw, None, 0, 0, [])
        for n, key in enumerate((b"u", b"other", None))
    ]
    valid = await worker._valid_ratings(keyed)
    assert [offset for _, offset, *_ in valid] == [0]
    assert dead == [
        "key: b'other', but ratings are keyed by their user_id 'u'",
        "key: none, but ratings are keyed by their user_id 'u'",
    ]
    assert [worker._replayable(r) is not None for r in keyed] == [True, False, False]


async def test_a_rating_on_another_partition_than_its_key_goes_to_is_dead_lettered(
    monkeypatch,
) -> None:
    """A producer partitioning otherwise than Kafka's default (librdkafka's clients, by
    CRC32) sends a user's ratings to partitions two workers hold, keyed right: their
    state split without a word. Such a rating is dead-lettered, its reason saying where
    its key belongs; a redrive, which sends a record back to its partition, leaves it to
    its producer."""
    from aiokafka.partitioner import murmur2

    from streamer.metrics import deadletter_kind

    worker, dead = _worker_knowing_item_a()
    monkeypatch.setattr(worker.app.consumer, "partition_count", lambda topic: 8)
    raw = b'{"user_id":"u","item_id":"a","rating":5,"timestamp":100}'
    home = (murmur2(b"u") & 0x7FFFFFFF) % 8
    placed = [
        ConsumerRecord("r", p, n, 0, 0, b"u", raw, None, 0, 0, [])
        for n, p in enumerate((home, (home + 3) % 8))
    ]
    valid = await worker._valid_ratings(placed)
    assert [partition for partition, *_ in valid] == [home]
    assert len(dead) == 1 and f"belongs in partition {home} of 8" in dead[0]
    assert deadletter_kind(dead[0]) == "wrong_partition"
    from streamer.deadletters import DeadLetter, _unsendable

    headers = [
        ("recsys.reason", dead[0].encode()),
        ("recsys.source.topic", b"r"),
        ("recsys.source.partition", str((home + 3) % 8).encode()),
        ("recsys.source.offset", b"1"),
    ]
    letter = DeadLetter.from_record(
        ConsumerRecord("dlq", 0, 0, 0, 0, b"u", raw, None, 0, 0, headers)
    )
    assert "partition it was refused on" in _unsendable(worker.settings, letter)
    # A replay judges it alike (not yet processed live, or its letter unread: skipped).
    assert [worker._replayable(r) is not None for r in placed] == [True, False]


async def test_a_user_event_on_another_partition_than_its_key_goes_to_is_dead_lettered(
    monkeypatch,
) -> None:
    """The users topic is co-partitioned with the ratings: a declaration on another
    partition than its key's would be applied by a worker that holds none of the user's
    ratings."""
    from aiokafka.partitioner import murmur2

    worker, dead = _worker_knowing_item_a()
    worker.engine.live = True
    worker._replayed.update(range(8))
    monkeypatch.setattr(worker.app.consumer, "partition_count", lambda topic: 8)
    home = (murmur2(b"fan") & 0x7FFFFFFF) % 8
    declared = b'{"user_id":"fan","tags":["jazz"],"timestamp":1}'
    served: list = []

    async def publish(engine, sink, lists, ttl=None, rank_s=None) -> None:
        served.append(sorted(lists))

    monkeypatch.setattr(app_module, "publish", publish)
    events = [
        types.SimpleNamespace(
            message=_message(ConsumerRecord("u", p, n, 0, 0, b"fan", declared, None, 0, 0, []))
        )
        for n, p in enumerate(((home + 1) % 8, home))
    ]
    await worker.learn_users(_stream(events))
    assert len(dead) == 1 and f"belongs in partition {home} of 8" in dead[0]
    assert served == [["fan"]]  # (the one on its key's partition)


async def test_a_slow_replay_still_learns_in_event_time_order(monkeypatch) -> None:
    """Partitions come in runs during a replay, and learning each chunk takes time; a
    partition still short of its end holds the others back however long that takes."""
    import types

    from streamer import ordering

    clock = [0.0]
    monkeypatch.setattr(ordering, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    def records(partition: int, times: range) -> list:
        return [
            types.SimpleNamespace(partition=partition, offset=t, timestamp=float(t)) for t in times
        ]

    async def runs(consumer, ranges, batch):  # partition 0's run, then partition 1's
        t0, t1 = sorted(ranges)
        yield records(0, range(0, 50)) + records(1, range(0, 10)), {t0, t1}
        yield records(0, range(50, 100)), {t1}
        yield records(1, range(10, 100)), set()

    monkeypatch.setattr(app_module, "read_ranges", runs)
    times: list[float] = []
    sizes: list[int] = []
    async for chunk in app_module.read_merged(None, "r", {}, {0: 100, 1: 100}, lambda r: r, 20):
        times += [r.timestamp for _, r in chunk]
        sizes.append(len(chunk))
        clock[0] += 3.0  # learning the chunk takes 3 s of wall time
    assert len(times) == 200 and times == sorted(times)
    # Chunks of at most the batch, even where a partition held back is let go: a
    # rebalance is noticed between two (one of 100 took 40 chunks' time at once).
    assert max(sizes) == 20


async def test_an_event_id_enters_the_model_only_with_its_rating(monkeypatch) -> None:
    """A snapshot pickles the engine, ids included, with offsets below the ratings still
    held for event-time order; those are replayed after a restore, so their ids must not
    be in the engine yet (else the replay would drop them as duplicates)."""
    worker, dead = _worker_knowing_item_a()
    raw = b'{"user_id":"u","item_id":"a","rating":5,"timestamp":100,"event_id":"e-9"}'
    [(partition, offset, rating, produced, event_id)] = await worker._valid_ratings(
        [_rating_record(raw, 4)]
    )
    assert event_id == "e-9" and not worker.engine.learned_id("e-9")  # held, not learned
    worker.ordering.add(partition, rating.timestamp, (rating, produced, partition, offset, "e-9"))

    async def published(engine, sink, lists, ttl=None, rank_s=None) -> float:
        return time.time()

    monkeypatch.setattr(app_module, "publish", published)
    monkeypatch.setattr(RecsysWorker, "_waiting_partitions", lambda self: set())
    await worker._learn_released()
    assert worker.engine.events == 1 and worker.engine.learned_id("e-9") and dead == []


async def test_a_rating_record_without_a_time_is_learned_and_not_measured_for_freshness() -> None:
    """Kafka gives records of its oldest message format no time (None): such a rating is
    valid, and only its freshness goes unmeasured (float(None) failed the whole batch)."""
    worker, dead = _worker_knowing_item_a()
    raw = b'{"user_id":"u","item_id":"a","rating":5,"timestamp":100}'
    record = _rating_record(raw, 4)
    record.timestamp = None
    [(_, _, rating, produced, _)] = await worker._valid_ratings([record])
    assert rating.item == "a" and produced == 0.0 and dead == []
    worker.engine.record_freshness([produced], published_at=time.time())
    assert not worker.engine.freshness_ms


async def test_the_partitions_ends_are_asked_on_a_client_that_fetches_nothing(
    monkeypatch,
) -> None:
    """Asked on the catalog follower's consumer, the request waited behind its long poll
    of a quiet items topic (500 ms), and every timer tick with it (and a batch naming an
    item not read yet): it goes on a client of its own, made once, stopped with the
    worker."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    made: list = []

    class Offsets:
        async def start(self) -> None:
            made.append(self)

        async def end_offsets(self, tps):
            return {tp: 40 + tp.partition for tp in tps}

        async def stop(self) -> None:
            made.remove(self)

    monkeypatch.setattr(app_module, "standalone_consumer", lambda settings, **kw: Offsets())
    monkeypatch.setattr(worker, "_assigned", lambda: {0, 3})
    worker.catalog.consumer = None  # (the follower's consumer is not asked)
    await worker._refresh_ends()
    await worker._refresh_ends()
    assert worker._ends == {0: 40, 3: 43} and len(made) == 1
    monkeypatch.setattr(worker, "_share_last", lambda app: asyncio.sleep(0))
    monkeypatch.setattr(worker.sink, "withdraw", lambda worker_id: asyncio.sleep(0))
    monkeypatch.setattr(worker, "_assigned", lambda: set())
    await worker._on_shutdown(worker.app)
    assert made == [] and worker.catalog._offsets is None


async def test_the_ends_client_is_made_once_and_never_after_the_stop(monkeypatch) -> None:
    """A timer tick and a batch asking at once made two clients (one never closed); a
    close while the first was starting left it open; a tick running at the stop made a
    new one after the close."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    started: list = []
    stopped: list = []

    class Offsets:
        async def start(self) -> None:
            await asyncio.sleep(0.05)  # (a start takes a while: others call meanwhile)
            started.append(self)

        async def end_offsets(self, tps):
            return {tp: 7 for tp in tps}

        async def stop(self) -> None:
            stopped.append(self)

    monkeypatch.setattr(app_module, "standalone_consumer", lambda settings, **kw: Offsets())
    follower, tps = worker.catalog, [TP("r", 0)]
    both = await asyncio.gather(follower.end_offsets(tps), follower.end_offsets(tps))
    assert both == [{tps[0]: 7}] * 2 and len(started) == 1
    await follower.close_offsets()
    assert stopped == started
    with pytest.raises(KafkaError, match="stopping"):
        await follower.end_offsets(tps)
    assert len(started) == 1
    # A close while the first client starts: the client is stopped once started, and the
    # call that started it says the worker is stopping.
    other = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u")).catalog
    asking = asyncio.ensure_future(other.end_offsets(tps))
    await asyncio.sleep(0.01)
    await other.close_offsets()
    with pytest.raises(KafkaError, match="stopping"):
        await asking
    assert len(started) == 2 and stopped == started


async def test_the_stop_does_not_wait_out_a_hung_start_of_the_ends_client(monkeypatch) -> None:
    """Kafka slow to answer held the first start of the ends client (up to its 40 s
    request timeout), and the stop waited behind it, its snapshot too: the stop waits a
    bounded time, and the start, when it ends, stops its client itself."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    release = asyncio.Event()
    stopped: list = []

    class Slow:
        async def start(self) -> None:
            await release.wait()

        async def end_offsets(self, tps):
            return {}

        async def stop(self) -> None:
            stopped.append(self)

    monkeypatch.setattr(app_module, "standalone_consumer", lambda settings, **kw: Slow())
    follower = worker.catalog
    monkeypatch.setattr(follower, "OFFSETS_CLOSE_S", 0.05)
    asking = asyncio.ensure_future(follower.end_offsets([TP("r", 0)]))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await follower.close_offsets()
    assert time.monotonic() - started < 1.0 and not stopped
    release.set()
    with pytest.raises(KafkaError, match="stopping"):
        await asking
    assert len(stopped) == 1 and follower._offsets is None


async def test_a_dead_letter_is_cut_to_fit_and_sent_until_the_broker_takes_it(
    monkeypatch,
) -> None:
    """A value near the broker's limit plus headers would be refused (and the batch
    with it): it is cut, its size noted. A send that fails is tried again, and the
    batch goes on only once the broker acknowledged it."""
    from streamer import app as module

    monkeypatch.setattr(module.asyncio, "sleep", _no_sleep)
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    sent: list[tuple[bytes, dict]] = []
    failures = [RuntimeError("broker away"), RuntimeError("still away")]

    class DeadLetters:
        async def send(self, key, value, headers, force=False):
            async def acknowledged() -> None:
                if failures:
                    raise failures.pop(0)
                sent.append((value, dict(headers)))

            return acknowledged()

    worker.deadletter = DeadLetters()
    await worker._dead_letter(_rating_record(b"x" * 1_000_000), "payload too large")
    [(value, headers)] = sent
    assert len(value) == module.DEADLETTER_BYTES and not failures
    assert headers["recsys.truncated.from"] == b"1000000"
    assert headers["recsys.reason"] == b"payload too large"


async def test_a_record_with_a_key_near_the_brokers_limit_is_dead_lettered_cut(
    monkeypatch,
) -> None:
    """The broker takes a record of about 1 MB in all, key included, but the producer
    sends at most 1,000,000 bytes: a huge key (and a reason quoting it) is cut, its size
    noted, so the letter goes through instead of being refused forever (which stalled
    the partition)."""
    from streamer import app as module

    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    sent: list[tuple[bytes, bytes, dict]] = []

    class DeadLetters:
        async def send(self, key, value, headers, force=False):
            async def acknowledged() -> None:
                sent.append((key, value, dict(headers)))

            return acknowledged()

    worker.deadletter = DeadLetters()
    key = b"u" * 1_040_000
    await worker._dead_letter(_rating_record(b"{}", key=key), f"key: {key!r} is too long")
    [(key_sent, value, headers)] = sent
    assert len(key_sent) == module.DEADLETTER_KEY_BYTES and value == b"{}"
    assert headers["recsys.truncated.key_from"] == b"1040000"
    assert headers["recsys.reason"].startswith(b"key: b'uuu") and headers["recsys.reason"].endswith(
        b" ..."
    )
    size = len(key_sent) + len(value) + sum(len(n) + len(v) for n, v in headers.items())
    assert size < 1_000_000 // 20


async def test_a_record_with_neither_key_nor_value_and_a_redriven_one_are_dead_lettered() -> None:
    """Kafka takes no record without a key or a value, so a ratings tombstone with no key
    is dead-lettered with an empty key, said so in a header (it would otherwise be tried
    again forever, the worker stalled). An event sent back by ``deadletters --redrive``
    and refused again carries that header into its new dead letter."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    sent: list[tuple[bytes | None, bytes | None, dict]] = []

    class DeadLetters:
        async def send(self, key, value, headers, force=False):
            assert key is not None or value is not None, "aiokafka refuses this record"

            async def acknowledged() -> None:
                sent.append((key, value, dict(headers)))

            return acknowledged()

    worker.deadletter = DeadLetters()
    bare = ConsumerRecord("r", 0, 3, 0, 0, None, None, None, 0, 0, [])
    await worker._dead_letter(bare, "no value: a tombstone (null record) is not an event")
    redriven = ConsumerRecord(
        "r", 0, 4, 0, 0, b"u", b"{", None, 0, 1, [("recsys.redriven.from", b"dlq[0:7]")]
    )
    await worker._dead_letter(redriven, "malformed JSON")
    # The record's own headers are kept beside the project's (a redrive sends them back),
    # a producer's "recsys." ones aside; past 16 KB, only their size.
    traced = ConsumerRecord(
        "r",
        0,
        5,
        0,
        0,
        b"u",
        b"{",
        None,
        0,
        1,
        [("traceparent", b"00-ab-cd-01"), ("empty", None), ("recsys.reason", b"forged")],
    )
    await worker._dead_letter(traced, "malformed JSON")
    huge = ConsumerRecord("r", 0, 6, 0, 0, b"u", b"{", None, 0, 1, [("big", b"x" * 20_000)])
    await worker._dead_letter(huge, "malformed JSON")
    (k1, v1, h1), (k2, v2, h2), (_, _, h3), (_, _, h4) = sent
    assert (k1, v1, h1["recsys.source.key"]) == (b"", None, b"none")
    assert (k2, v2, h2["recsys.redriven.from"]) == (b"u", b"{", b"dlq[0:7]")
    assert "recsys.redriven.from" not in h1 and "recsys.source.key" not in h2
    assert h3["traceparent"] == b"00-ab-cd-01" and h3["empty"] is None
    assert h3["recsys.reason"] == b"malformed JSON"
    assert "big" not in h4 and h4["recsys.truncated.headers_from"] == b"20013"  # (+ its cost)
    letter = DeadLetter.from_record(
        ConsumerRecord("dlq", 0, 9, 0, 0, b"u", b"{", None, 0, 1, list(h3.items()))
    )
    assert letter.original_headers == (("traceparent", b"00-ab-cd-01"), ("empty", None))


async def test_a_rebuild_reads_users_tombstones_as_withdrawals_outside_event_time(
    monkeypatch,
) -> None:
    """A rebuild applies the users topic before the ratings: a tombstone withdraws the
    declaration, and its time (the record's, a wall clock) is not taken for a
    declaration time, which sets which users' lists are republished."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    worker.engine.model.upsert_item("a", {"jazz": 1.0})
    declared = b'{"user_id": "fan", "tags": ["jazz"], "timestamp": 1000}'
    records = [
        ConsumerRecord("u", 0, 0, 5_000, 0, b"fan", declared, None, 0, 0, []),
        ConsumerRecord("u", 0, 1, 1_700_000_000_000, 0, b"fan", None, None, 0, 0, []),
        ConsumerRecord(
            "u", 0, 2, 2_000, 0, b"kept", declared.replace(b"fan", b"kept"), None, 0, 0, []
        ),
    ]

    async def read_ranges(consumer, ranges):
        yield records, set()

    class Consumer:
        def partitions_for_topic(self, topic):
            return {0}

        async def end_offsets(self, tps):
            return {tp: 3 for tp in tps}

    monkeypatch.setattr(app_module, "read_ranges", read_ranges)
    produced: dict[str, float] = {}
    seen = await worker._replay_users(Consumer(), [0], {}, produced)
    assert seen == {"fan": 1000.0, "kept": 1000.0}
    # (each declaring user's latest record time, in seconds: their list's TTL ran from
    # then; the tombstone's is no visit)
    assert produced == {"fan": 5.0, "kept": 2.0}
    model = worker.engine.model
    assert "content" not in {r.source for r in model.recommend("fan")}  # withdrawn
    assert model.recommend("kept")[0].source == "content"
    # Events refused live (their offsets among the dead letters' sources) are skipped:
    # fan's tombstone (the declaration before it stands) and kept's declaration.
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    worker.engine.model.upsert_item("a", {"jazz": 1.0})
    assert await worker._replay_users(Consumer(), [0], {0: {1, 2}}) == {"fan": 1000.0}
    # An event on another partition than its key's is skipped, as live (not yet
    # processed live, or its dead letter unread), and the replay says how many.
    from aiokafka.partitioner import murmur2

    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    worker.engine.model.upsert_item("a", {"jazz": 1.0})
    monkeypatch.setattr(worker.app.consumer, "partition_count", lambda topic: 8)
    home = {key: (murmur2(key) & 0x7FFFFFFF) % 8 for key in (b"fan", b"kept")}
    records[:] = [
        ConsumerRecord("u", home[b"fan"], 0, 5_000, 0, b"fan", declared, None, 0, 0, []),
        ConsumerRecord(
            "u",
            (home[b"kept"] + 1) % 8,
            1,
            2_000,
            0,
            b"kept",
            declared.replace(b"fan", b"kept"),
            None,
            0,
            0,
            [],
        ),
    ]
    assert await worker._replay_users(Consumer(), [0], {}) == {"fan": 1000.0}
    assert worker._misplaced == 1
    model = worker.engine.model
    assert model.recommend("fan")[0].source == "content"  # not withdrawn
    assert model.users.get("kept") is None


async def _no_sleep(seconds: float) -> None:
    return None


class _DeadLetters:
    """The dead-letter topic: logs each send and acknowledgement; the letter whose value
    is ``failing`` fails once per exception left in ``failures``."""

    def __init__(self, log: list, failing: bytes, failures: list, show_force: bool = False):
        self.log, self.failing, self.failures, self.show_force = log, failing, failures, show_force

    async def send(self, key, value, headers, force=False):
        shown = f" force={force}" if self.show_force else ""
        self.log.append(f"send {value.decode()}{shown}")

        async def acknowledged() -> None:
            if value == self.failing and self.failures:
                raise self.failures.pop(0)
            self.log.append(f"ack {value.decode()}")

        return acknowledged()


async def test_a_batch_sends_its_dead_letters_before_it_awaits_them(monkeypatch) -> None:
    """Bad records of a ratings batch are sent one after another without waiting for
    each acknowledgement (a flood of bad data must not cost a round trip per record);
    the batch returns only once every letter is acknowledged, a failed one resent."""
    from streamer import app as module

    monkeypatch.setattr(module.asyncio, "sleep", _no_sleep)
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    worker.catalog.ready.set()
    log: list[str] = []
    failures = [RuntimeError("lost")]
    worker.deadletter = _DeadLetters(log, b"bad1", failures)
    records = [_rating_record(f"bad{j}".encode(), offset=j) for j in range(3)]
    assert await worker._valid_ratings(records) == []
    assert log[:3] == ["send bad0", "send bad1", "send bad2"]
    assert sorted(x for x in log if x.startswith("ack")) == ["ack bad0", "ack bad1", "ack bad2"]
    assert log.count("send bad1") == 2 and not failures and worker.engine.deadletters == 3


async def test_an_item_listed_again_after_a_delete_takes_ratings_while_catching_up() -> None:
    """Deleted, then listed again with a time the backlog has not reached: a rating of
    it (dated after the new listing) brings it in, it is not refused as deleted."""
    worker, dead = _worker_knowing_item_a()
    engine = worker.engine
    engine.live = False  # catching up on a backlog
    engine.upsert_item("b", {"jazz": 1.0}, 10.0)
    engine.learn_ratings([Rating("u0", "b", 4.0, 20.0)])
    _apply(worker, _item_record(b'{"op":"delete","item_id":"b","timestamp":30}', b"b"))
    _apply(
        worker, _item_record(b'{"op":"upsert","item_id":"b","tags":["rock"],"timestamp":100}', b"b")
    )
    raw = b'{"user_id":"u1","item_id":"b","rating":5,"timestamp":150}'
    valid = await worker._valid_ratings([_rating_record(raw, key=b"u1")])
    assert len(valid) == 1 and dead == []


def _two_ratings_to_replay(monkeypatch, committed) -> RecsysWorker:
    """A worker owning partition 0 whose replay would read two ratings, every service
    a stand-in (``committed``: the group's committed offsets, an async method)."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    worker.engine.upsert_item("a", {"t": 1.0})

    async def merged(*args, **kwargs):
        yield [(0, Rating("u1", "a", 4.0, 1.0)), (0, Rating("u2", "a", 4.0, 2.0))]

    async def nothing(self, *args, **kwargs) -> None: ...

    monkeypatch.setattr(app_module, "standalone_consumer", _idle_consumer)
    monkeypatch.setattr(app_module, "read_merged", merged)
    monkeypatch.setattr(RecsysWorker, "_committed", committed)
    monkeypatch.setattr(RecsysWorker, "_restore_once", nothing)
    monkeypatch.setattr(RecsysWorker, "_replay_users", _no_users)
    monkeypatch.setattr(RecsysWorker, "_assigned", lambda self: {0})
    return worker


async def test_a_rebalance_begun_before_a_replay_started_stops_it(monkeypatch) -> None:
    """A revocation that begins while the batch waits for the committed offsets (or for
    another replay's lock) is seen too: the replay learns nothing and asks for a rebuild."""

    async def committed(self) -> dict[int, int]:
        self.app.consumer.revocations += 1  # the rebalance begins meanwhile
        return {0: 2}

    worker = _two_ratings_to_replay(monkeypatch, committed)
    worker.catalog.ready.set()
    with pytest.raises(BatchAbandoned):
        await worker._ensure_replayed({})
    assert worker.engine.events == 0 and worker._reset_pending


async def test_a_rebalance_begun_while_the_batch_waits_for_the_catalog_stops_its_replay(
    monkeypatch,
) -> None:
    """The ratings batch waits for the catalog (read again after a rebuild) before it
    replays a partition new to the model: a revocation that begins during that wait
    stops the replay too, or the revocation would wait out all of it."""

    async def committed(self) -> dict[int, int]:
        return {0: 2}

    worker = _two_ratings_to_replay(monkeypatch, committed)

    async def catalog_read_during_a_rebalance() -> None:
        await asyncio.sleep(0.01)
        worker.app.consumer.revocations += 1  # the rebalance begins while the batch waits
        worker.catalog.ready.set()

    reader = asyncio.ensure_future(catalog_read_during_a_rebalance())
    with pytest.raises(BatchAbandoned):
        await worker.learn_ratings([_rating_record(b"{}", offset=2)])
    await reader
    assert worker.engine.events == 0 and worker._reset_pending


async def test_a_rebalance_begun_while_the_catalog_is_read_gives_the_batch_up_at_once(
    monkeypatch,
) -> None:
    """A catalog read again in full (a rebuild) may take long: a revocation that begins
    meanwhile gives the batch up then, not once the catalog is read (past Faust's
    rebalance timeout, the group would evict the worker)."""

    async def committed(self) -> dict[int, int]:
        return {0: 2}

    worker = _two_ratings_to_replay(monkeypatch, committed)
    worker.catalog.ready.clear()  # (being read; never done in this test)

    async def rebalance() -> None:
        await asyncio.sleep(0.01)
        worker.app.consumer.revocations += 1

    begins = asyncio.ensure_future(rebalance())
    with pytest.raises(BatchAbandoned):
        await asyncio.wait_for(worker.learn_ratings([_rating_record(b"{}", offset=2)]), 2.0)
    await begins
    assert worker.engine.events == 0


async def test_a_replay_gives_each_list_what_is_left_of_its_ttl_by_its_records_time(
    monkeypatch,
) -> None:
    """Live, a list's TTL ran from the write just after its user's latest event: the
    replay counts it from that record's time (Kafka's), not from the log's latest event,
    so a fleet idle for a week does not bring back lists that expired meanwhile; a user
    tombstone is no visit."""
    worker = RecsysWorker(
        Settings(ratings_topic="r", items_topic="i", users_topic="u", recs_ttl_s=7 * 86_400)
    )
    worker.catalog.ready.set()
    worker.engine.upsert_item("a", {"t": 1.0})
    day, now = 86_400.0, time.time()

    def record(user: str, offset: int, produced_s: float) -> ConsumerRecord:
        value = json.dumps({"user_id": user, "item_id": "a", "rating": 4, "timestamp": 100})
        raw = value.encode()
        return ConsumerRecord(
            "r", 0, offset, int(produced_s * 1000), 0, user.encode(), raw, None, 0, len(raw), []
        )

    async def merged(consumer, topic, start, until, parse, batch=5000):
        records = [record("gone", 0, now - 8.5 * day), record("back", 1, now - 1.0 * day)]
        yield [(0, r) for r in map(parse, records) if r is not None]

    published = _replaying(monkeypatch, merged, _no_users)
    await worker._replay({0: 2})
    assert worker.engine.events == 2
    assert list(published) == ["back"]  # ("gone": its list expired a day and a half ago)
    assert 6 * day - 60 <= published["back"] <= 6 * day


async def test_a_replay_republishes_only_the_lists_still_alive(monkeypatch) -> None:
    """After a replay, lists are written again for users active within a list's TTL of
    the log's latest event: renewing every user's list at each restart would keep one in
    Redis for every user the log ever saw."""
    worker = RecsysWorker(
        Settings(ratings_topic="r", items_topic="i", users_topic="u", recs_ttl_s=86_400)
    )
    worker.catalog.ready.set()
    worker.engine.upsert_item("a", {"t": 1.0})
    worker.engine.upsert_item("b", {"t": 1.0})
    day = 86_400.0

    async def merged(*args, **kwargs):
        yield [(0, Rating("old", "a", 4.0, 0.0)), (0, Rating("recent", "a", 4.0, 9 * day))]
        yield [(0, Rating("latest", "b", 4.0, 10 * day))]

    async def declared(self, consumer, partitions, refused, produced=None) -> dict[str, float]:
        worker.engine.model.upsert_user("fan", {"t": 1.0})
        return {"fan": 9.5 * day, "long-ago": 1.0}

    published = _replaying(monkeypatch, merged, declared)
    await worker._replay({0: 3})
    assert worker.engine.events == 3
    assert sorted(published) == ["fan", "latest", "recent"]
    # Each for what is left of its TTL (renewed whole, a list outlived its user's last
    # visit by a TTL per restart, and unfollowed after a later one kept deleted items).
    assert published == {"fan": int(day / 2), "latest": int(day), "recent": 1}


@pytest.mark.parametrize(
    ("drained", "handled", "received"),
    [
        (None, 7, 7),  # no fetch drained yet: the records handled say it all
        ((7, 9), 7, 9),  # the fetch's records are handled: past the two markers after them
        ((7, 9), 5, 5),  # its records are still being handled: not past them yet
        ((None, 9), 7, 9),  # a fetch of markers only
        ((None, 9), None, None),  # not in the model yet: unknown, whatever was fetched
    ],
)
def test_a_partition_is_received_past_the_transaction_markers(drained, handled, received):
    tp = TP("ratings", 0)
    consumer = types.SimpleNamespace(_drained={} if drained is None else {tp: drained})
    assert app_module._Consumer.received(consumer, tp, handled) == received


def test_a_tombstone_on_the_items_topic_deletes_the_item_its_key_names() -> None:
    """A compacted topic forgets a key by a record with no value, and change-data-capture
    connectors send one after each deleted row: the catalog reads it as the delete of the
    item its key names, and the item leaves the lists it was in."""
    worker, _ = _worker_knowing_item_a()
    engine = worker.engine
    engine.live = True  # (caught up: lists are served)
    engine.upsert_item("b", {"jazz": 1.0})
    engine.upsert_item("d", {"jazz": 1.0})
    engine.learn_ratings([Rating("u", "a", 5.0, 10.0)])
    assert "b" in engine.served["u"]
    lists = _apply(worker, _item_record(None, b"b"))
    assert engine.model.is_deleted("b") and [r.item for r in lists["u"]] == ["d"]
    # An upsert under another item's key is refused: the catalog keeps its items as they were.
    mis_keyed = b'{"op":"upsert","item_id":"c","tags":["jazz"],"timestamp":1}'
    assert _apply(worker, _item_record(mis_keyed, b"a")) == {}
    assert not engine.knows_item("c")


async def test_mis_keyed_catalog_events_and_unreadable_tombstones_are_dead_lettered() -> None:
    """The items agent dead-letters what the catalog skips, with the reason; a tombstone
    it can read is a delete, published to the item metadata like any other."""
    worker, dead = _worker_knowing_item_a()
    published: list = []

    async def publish_items(events) -> None:
        published.extend(events)

    worker.sink = types.SimpleNamespace(publish_items=publish_items)
    records = [
        _item_record(b'{"op":"upsert","item_id":"c","timestamp":1}', b"a"),
        _item_record(None, b"\xff"),
        _item_record(None, b"a"),
    ]
    events = [types.SimpleNamespace(message=_message(r)) for r in records]
    await worker.validate_items(_stream(events))
    assert dead == [
        "key: b'a', but item events are keyed by their item_id 'c'",
        "tombstone: its key is not UTF-8 (byte 0)",
    ]
    assert [(e.op, e.item_id, e.timestamp) for e in published] == [("delete", "a", 1_700_000_000.0)]


async def test_catalog_and_user_agents_await_their_dead_letters_sent_outside_the_event(
    monkeypatch,
) -> None:
    """Inside a Faust event a plain send is attached to the event and published at its
    commit, which ignores a failed delivery and commits anyway: the letter would be
    lost. The agents send theirs at once (``force``) and go on only once the broker
    acknowledged each one, a failed one sent again."""
    monkeypatch.setattr(app_module.asyncio, "sleep", _no_sleep)
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    log: list[str] = []
    failures = [RuntimeError("delivery timed out")]
    worker.deadletter = _DeadLetters(log, b"{1", failures, show_force=True)

    async def publish_items(events) -> None:
        log.append(f"publish {len(events)}")

    worker.sink = types.SimpleNamespace(publish_items=publish_items)

    def event(topic: str, value: bytes, offset: int) -> types.SimpleNamespace:
        message = types.SimpleNamespace(
            topic=topic,
            partition=0,
            offset=offset,
            key=b"k",
            value=value,
            timestamp=1.0,
            headers=[],
        )
        return types.SimpleNamespace(message=message)

    await worker.validate_items(_stream([event("i", b"{0", 0), event("i", b"{1", 1)]))
    assert log == [
        "send {0 force=True",
        "send {1 force=True",
        "ack {0",
        "send {1 force=True",
        "ack {1",
        "publish 0",
    ]
    assert not failures
    log.clear()
    await worker.learn_users(_stream([event("u", b"{2", 0)]))
    assert log == ["send {2 force=True", "ack {2"] and worker.engine.deadletters == 3


async def test_only_the_holder_of_ratings_partition_0_writes_the_popular_list(
    monkeypatch,
) -> None:
    """Each worker ranks popularity from its own users' ratings: were every worker to
    write the popular list, unknown users would see it change at each worker's tick.
    The others write it only where there is none yet, and so does the holder until its
    model holds the partition's history (at a start, after a rebuild): it overwrote the
    list with one ranked from nothing."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    owners: list[bool] = []

    published: list[set[int]] = []

    async def publish_state(
        popular, metrics, version, worker_id, url, popular_owner=True, partitions=None
    ):
        owners.append(popular_owner)
        published.append(set(partitions))

    worker.sink = types.SimpleNamespace(publish_state=publish_state)
    monkeypatch.setattr(worker, "_figures", lambda: {"events": 0})
    for held, replayed, catalog in (
        ({0, 3}, {0, 3}, True),
        ({1, 2}, {1, 2}, True),
        (set(), set(), True),
        ({0, 3}, {3}, True),  # partition 0 not replayed yet
        ({0, 3}, {0, 3}, False),  # the catalog read again (a rebuild)
    ):
        monkeypatch.setattr(worker, "_assigned", lambda held=held: held)
        worker._replayed = set(replayed)
        (worker.catalog.ready.set if catalog else worker.catalog.ready.clear)()
        await worker._publish_state()
    assert owners == [True, False, False, False, False]
    # (each publish names the ratings partitions held: the fleet's figures need them)
    assert published == [{0, 3}, {1, 2}, set(), {0, 3}, {0, 3}]


async def test_the_popular_list_as_served_is_the_one_in_redis(monkeypatch) -> None:
    """A worker that does not write the popular list ranks its figures (the "more like
    this" baseline, users whose list is empty) in the one apps are shown, which another
    worker wrote: not in the one its own model ranks."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u", k=2))
    for item in ("a", "b"):
        worker.engine.upsert_item(item, {"jazz": 1.0})
    worker.engine.learn_ratings([Rating("u", "a", 5.0, 1.0)])
    in_redis: list[list[str] | None] = [["b", "a"]]
    during: list[list[str]] = []

    async def publish_state(*args, **kwargs):
        during.append(list(worker.engine.popular_served))  # (what a batch meanwhile reads)
        return in_redis[0]

    worker.sink = types.SimpleNamespace(publish_state=publish_state)
    monkeypatch.setattr(worker, "_figures", lambda: {"events": 0})
    monkeypatch.setattr(worker, "_assigned", lambda: {1})
    await worker._publish_state()
    assert worker.engine.popular_served == ["b", "a"]
    in_redis[0] = None  # none there, or unreadable: its own
    await worker._publish_state()
    assert worker.engine.popular_served == ["a", "b"]
    assert during[1] == ["b", "a"]  # (while the write waited: still the one served)


async def test_a_tombstone_on_the_users_topic_withdraws_the_declared_tags() -> None:
    """A user's declared tags give content lists before any rating; the tombstone of the
    user's key withdraws them, and the user is served popularity again, in a list that
    keeps its expiry (a tombstone, often of a user deleted upstream, is no visit)."""
    worker, dead = _worker_knowing_item_a()
    worker.engine.live = True  # (caught up: lists are served)
    worker._replayed.add(0)
    served: list = []
    ttls: list = []

    async def publish(engine, sink, lists, ttl=None, rank_s=None) -> None:
        served.append(lists)
        ttls.append(ttl)

    declared = b'{"user_id":"fan","tags":["jazz"],"timestamp":1}'
    events = [
        types.SimpleNamespace(message=_message(_item_record(value, b"fan", n)))
        for n, value in enumerate((declared, None))
    ]
    original = app_module.publish
    app_module.publish = publish
    try:
        await worker.learn_users(_stream(events))
    finally:
        app_module.publish = original
    assert dead == []
    assert [[r.source for r in lists["fan"]] for lists in served] == [["content"], ["popular"]]
    assert ttls == [None, KEEP_TTL]


async def test_declared_tags_read_before_the_model_is_ready_are_served_once_it_is(
    monkeypatch,
) -> None:
    """A declaration read before the catalog (at a start) or before the user's ratings
    partition is replayed goes in the model, but its list waits: ranked then, without
    the catalog or the user's history, it stayed in Redis until the user's next rating.
    The first refresh that finds the partition replayed serves it."""
    worker, dead = _worker_knowing_item_a()
    worker.engine.live = True  # (caught up: lists are served)
    worker.catalog.ready.clear()
    served: list = []

    async def publish(engine, sink, lists, ttl=None, rank_s=None) -> None:
        served.append(lists)

    monkeypatch.setattr(app_module, "publish", publish)
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    declared = b'{"user_id":"fan","tags":["jazz"],"timestamp":1}'
    event = types.SimpleNamespace(message=_message(_item_record(declared, b"fan")))
    await worker.learn_users(_stream([event]))
    assert served == [] and worker.engine.model.users.get("fan") is not None
    worker.catalog.ready.set()
    await worker._serve_declared()  # (the catalog read, the partition not replayed yet)
    assert served == []
    await worker.learn_users(_stream([event]))  # (read again, as after a seek back)
    assert served == []
    worker._replayed.add(0)
    await worker._serve_declared()
    assert [[r.item for r in lists["fan"]] for lists in served] == [["a"]]
    assert [r.source for r in served[0]["fan"]] == ["content"]
    await worker._serve_declared()  # served once
    assert len(served) == 1 and dead == []


def _waiting_for_the_model(monkeypatch) -> tuple[RecsysWorker, list, list]:
    """A worker holding partition 0, its catalog not read yet; what it publishes goes
    to the list returned, as (users, ttl)."""
    worker, dead = _worker_knowing_item_a()
    worker.engine.live = True
    worker.catalog.ready.clear()
    served: list = []

    async def publish(engine, sink, lists, ttl=None, rank_s=None) -> None:
        served.append((sorted(lists), ttl))

    monkeypatch.setattr(app_module, "publish", publish)
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    return worker, dead, served


async def test_a_tombstone_read_before_the_model_is_ready_keeps_the_lists_expiry(
    monkeypatch,
) -> None:
    """A tombstone withdraws a user's tags, often of a user deleted upstream: no visit.
    Read before the model is ready, its list waited and was then written for a whole
    TTL (renewed, or brought back expired); it keeps its expiry as on the ready path."""
    worker, dead, served = _waiting_for_the_model(monkeypatch)
    worker.engine.model.upsert_user("fan", {"jazz": 1.0})
    worker.engine.model.upsert_user("new", {"jazz": 1.0})
    declared = b'{"user_id":"new","tags":["jazz"],"timestamp":1}'
    events = [
        types.SimpleNamespace(message=_message(_item_record(value, key, n)))
        for n, (key, value) in enumerate(((b"fan", None), (b"new", declared)))
    ]
    await worker.learn_users(_stream(events))
    worker.catalog.ready.set()
    worker._replayed.add(0)
    await worker._serve_declared()
    assert sorted(served) == [(["fan"], KEEP_TTL), (["new"], None)]
    assert dead == [] and not worker._withdrawn_waiting


async def test_a_users_event_read_once_ready_supersedes_one_still_waiting(
    monkeypatch,
) -> None:
    """A declaration waiting for the model, then the user's tombstone read once it is
    ready: the tombstone's list (keeping its expiry) is the last word, not a full-TTL
    write of the declaration's at the next tick."""
    worker, dead, served = _waiting_for_the_model(monkeypatch)
    declared = b'{"user_id":"fan","tags":["jazz"],"timestamp":1}'
    first = types.SimpleNamespace(message=_message(_item_record(declared, b"fan", 0)))
    await worker.learn_users(_stream([first]))
    worker.catalog.ready.set()
    worker._replayed.add(0)
    tombstone = types.SimpleNamespace(message=_message(_item_record(None, b"fan", 1)))
    await worker.learn_users(_stream([tombstone]))
    await worker._serve_declared()
    assert served == [(["fan"], KEEP_TTL)] and dead == []


def _message(record: ConsumerRecord) -> types.SimpleNamespace:
    """The parts of a Faust message the agents read (Faust's times are in seconds)."""
    return types.SimpleNamespace(
        key=record.key,
        value=record.value,
        timestamp=record.timestamp / 1000.0,
        partition=record.partition,
    )


class _stream:
    """A Faust stream that hands its events over in one batch."""

    def __init__(self, events: list) -> None:
        self._events = events

    async def take_events(self, max_: int, within: float):
        yield self._events

    async def events(self):
        for event in self._events:
            yield event


async def test_the_snapshot_age_stays_fresh_while_nothing_is_new_and_goes_with_the_partitions(
    monkeypatch, tmp_path
) -> None:
    """A worker with nothing new since its last snapshot has its model saved: its
    snapshot age (what the snapshot alert watches) does not grow; a worker holding no
    partitions has nothing to snapshot, and reports no age."""
    settings = Settings(
        ratings_topic="r",
        items_topic="i",
        users_topic="u",
        data_dir=str(tmp_path),
        snapshot_every_s=1.0,
    )
    worker = RecsysWorker(settings)
    held = {0}
    monkeypatch.setattr(worker, "_assigned", lambda: set(held))
    worker._replayed, worker._next_offset = {0}, {0: 5}
    worker._snapshot_of = (worker.engine.version, {0: 5})
    worker._snapshot_info = (time.time() - 1000.0, 5, 100)
    worker._last_snapshot = 0.0  # (due)
    await worker._snapshot_if_due()
    made, ratings, size = worker._snapshot_info
    assert time.time() - made < 5 and (ratings, size) == (5, 100)
    held.clear()
    worker._last_snapshot = 0.0
    await worker._snapshot_if_due()
    assert worker._snapshot_info is None


async def test_a_stop_that_cuts_learning_short_takes_no_final_snapshot(monkeypatch) -> None:
    """Faust cancels the batch in progress at a stop. Cut between two chunks, the ratings
    taken out of the event-time merge and not learned yet are in no model a snapshot at
    those offsets would hold: the stop takes none (the one before is used), and says it
    is stopping. A stop between two learning calls takes it."""
    s = Settings(ratings_topic="r", items_topic="i", users_topic="u", batch_max=2)
    worker = RecsysWorker(s)
    for item in ("a", "b"):
        worker.engine.upsert_item(item, {"t": 1.0})
    for n in range(4):  # two chunks of two
        held = (Rating(f"u{n}", "a", 4.0, float(n)), 0.0, 0, n, None)
        worker.ordering.add(0, float(n), held)
    monkeypatch.setattr(worker, "_waiting_partitions", lambda: set())
    publishing = asyncio.Event()

    async def stalled_publish(engine, sink, lists, ttl=None, rank_s=None) -> float:
        publishing.set()
        await asyncio.sleep(3600)
        return time.time()

    monkeypatch.setattr(app_module, "publish", stalled_publish)
    learning = asyncio.ensure_future(worker._learn_released())
    await publishing.wait()
    learning.cancel()  # as Faust's stop cancels the fetcher's task
    with pytest.raises(asyncio.CancelledError):
        await learning
    assert worker.engine.events == 2 and worker._unlearned == 2
    snapshots: list[bool] = []

    async def snapshot(final: bool = False) -> None:
        snapshots.append(final)

    async def commit(*args, **kwargs) -> bool:
        return True

    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    monkeypatch.setattr(worker, "_snapshot_if_due", snapshot)
    monkeypatch.setattr(worker.app.consumer, "commit", commit)
    await worker._on_shutdown(worker.app)
    assert snapshots == []
    assert "a stop in progress" in worker.readiness()[1]["waiting_for"]
    worker._unlearned = 0  # a stop between two learning calls
    await worker._on_shutdown(worker.app)
    assert snapshots == [True]


# ---------------------------------------------------------------- restore, rebalance, stop
class _NoConsumer:
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def end_offsets(self, tps) -> dict:
        return {}  # (no partition's end known)


async def test_a_batch_sought_back_to_the_commit_during_the_timers_replay_is_not_learned_twice(
    monkeypatch, tmp_path
) -> None:
    """A rebuild replays up to the offsets the model before it had taken, past the group's
    commit (a commit lost at the rebalance). When the refresh timer's replay runs first,
    a batch sought back to the commit, waiting for it, held those offsets again: it was
    filtered before the replay and learned them a second time."""
    log = {0: [Rating(f"u{n}", "a", 4.0, float(n)) for n in range(10)]}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 5})
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    worker.engine.relearn(log[0])  # live: ten taken, the group committed five
    worker._replayed, worker._next_offset = {0}, {0: 10}
    worker._reset_pending = True  # (it lost a partition at this rebalance)
    await worker._reset_if_pending()

    async def valid(records):
        return [(r.partition, r.offset, log[0][r.offset], 0.0, None) for r in records]

    monkeypatch.setattr(worker, "_valid_ratings", valid)
    monkeypatch.setattr(worker, "_waiting_partitions", lambda: set())
    batch = [_record("r", 0, n) for n in range(5, 10)]
    try:
        while not worker.catalog.ready.is_set():
            await asyncio.sleep(0.005)
        timer = asyncio.ensure_future(worker._replay_idle_partitions())  # a refresh tick
        await asyncio.sleep(0.03)
        await worker.learn_ratings(batch)  # arrives during the tick's replay
        await timer
    finally:
        follower.cancel()
    assert starts == [{0: 0}]
    assert worker.engine.events == 10


def _restoring_worker(monkeypatch, tmp_path, log: dict[int, list[Rating]], committed: dict, **more):
    """A worker (not started) whose log of ratings, committed offsets and assignment are
    stand-ins, and whose publishing does nothing; returns it and the replays' starts."""
    settings = Settings(
        ratings_topic="r", items_topic="i", users_topic="u", data_dir=str(tmp_path), **more
    )
    worker = RecsysWorker(settings)
    worker.catalog.ready.set()
    worker.engine.upsert_item("a", {"t": 1.0})
    starts: list[dict] = []

    async def merged(consumer, topic, start, until, parse, batch=5000):
        starts.append(dict(start))
        for p in until:
            for offset in range(start.get(p, 0), until[p]):
                await asyncio.sleep(0.01)  # a fetch
                yield [(p, log[p][offset])]

    async def published(engine, sink, lists, ttl=None, rank_s=None):
        return time.time()

    async def the_committed(self):
        return dict(committed)

    async def catalog_read_again() -> None:  # what the catalog follower does
        while True:
            await asyncio.sleep(0.005)
            if not worker.catalog.ready.is_set():
                worker.engine.upsert_item("a", {"t": 1.0})
                worker.catalog.ready.set()

    monkeypatch.setattr(app_module, "standalone_consumer", lambda s, **options: _NoConsumer())
    monkeypatch.setattr(app_module, "read_merged", merged)
    monkeypatch.setattr(app_module, "publish", published)
    monkeypatch.setattr(RecsysWorker, "_committed", the_committed)
    monkeypatch.setattr(RecsysWorker, "_replay_users", _no_users)
    follower = asyncio.ensure_future(catalog_read_again())
    return worker, starts, follower


def _slow_loads(monkeypatch, worker: RecsysWorker, seconds: float) -> None:
    """Each snapshot load of ``worker`` takes ``seconds`` more (in its thread)."""
    load = worker.snapshots.load

    def slow_load(snapshot, *args):
        time.sleep(seconds)
        return load(snapshot, *args)

    monkeypatch.setattr(worker.snapshots, "load", slow_load)


def _committed_fails_first(monkeypatch, failures: list[Exception]) -> None:
    """The group's committed offsets raise each of ``failures`` (last first), then are
    read as before."""
    committed = RecsysWorker._committed

    async def flaky(self):
        if failures:
            raise failures.pop()
        return await committed(self)

    monkeypatch.setattr(RecsysWorker, "_committed", flaky)


def _snapshot(
    settings: Settings, ratings: list[Rating], offsets: dict[int, int], shared_from=()
) -> None:
    engine = StreamEngine(settings)
    engine.upsert_item("a", {"t": 1.0})
    engine.relearn(ratings)
    engine.shared_from |= set(shared_from)
    SnapshotStore(settings.snapshot_path).save(engine, offsets, settings.model_fingerprint())


class _Sent:
    """A topic that keeps what is sent to it, decoded as item changes, and whether
    ``lock`` (when given) was held meanwhile."""

    def __init__(self, lock: asyncio.Lock | None = None) -> None:
        self.changes: list = []
        self.lock, self.under_lock = lock, []

    async def send(self, key: bytes, value: bytes) -> None:
        self.changes.append(decode_item_changes(value, Settings().n_factors)[2])
        self.under_lock.append(self.lock is not None and self.lock.locked())

    def entries(self) -> int:
        return sum(len(c) for c in self.changes)


async def test_item_changes_are_sent_once_the_commit_covers_their_ratings(monkeypatch) -> None:
    """Changes shared ahead of the group's commit reached the other workers twice when
    their worker was killed: from it, and from the partition's next owner (or itself
    restarted), who learns the ratings past the commit again and shares them. They now
    wait for a commit that covers their ratings, and those of a partition that went
    elsewhere uncommitted are dropped: the next owner sends them."""
    worker, _ = _worker_knowing_item_a()
    worker.settings = replace(worker.settings, share_items_every_s=1.0)
    worker.engine.model.track_item_changes()
    worker.engine.live = True
    sent = worker.item_changes = _Sent()
    assigned = {0, 1}
    monkeypatch.setattr(worker, "_assigned", lambda: assigned)
    monkeypatch.setattr(worker, "_waiting_partitions", lambda: set())

    async def publish(engine, sink, lists, ttl=None, rank_s=None) -> float:
        return time.time()

    monkeypatch.setattr(app_module, "publish", publish)
    committed = worker.app.consumer.committed

    async def learn(partition: int, offset: int, user: str) -> None:
        rating = Rating(user, "a", 5.0, float(offset))
        worker.ordering.add(partition, rating.timestamp, (rating, 0.0, partition, offset, None))
        await worker._learn_released()

    await learn(0, 9, "u1")  # (offsets 0-9 of partition 0)
    await worker.share_items()
    assert sent.entries() == 0
    committed[TP("r", 0)] = 9  # (a commit short of offset 9)
    await worker.share_items()
    assert sent.entries() == 0
    committed[TP("r", 0)] = 10
    await worker.share_items()
    assert [c.rated for c in sent.changes if c.rated] == [["a"]]
    await learn(1, 3, "u2")  # then partition 1 goes elsewhere before its commit
    assigned.discard(1)
    await worker.share_items()
    assert len([c for c in sent.changes if c.rated]) == 1 and not worker._to_share
    # A rebalance whose revocation commit failed: partition 0 comes back to this worker,
    # but another may have learned (and shared) its offsets 10-14 meanwhile, and
    # committed past them: the changes are dropped at the revocation, never sent.
    await learn(0, 14, "u3")
    await worker._on_revoked(worker.app, {TP("r", 0)})
    assert not worker._to_share
    committed[TP("r", 0)] = 30  # (this worker's next commit, past the other's)
    await worker.share_items()
    assert len([c for c in sent.changes if c.rated]) == 1
    # A rebuild keeps the changes of partitions still ours until their commit (the
    # rebuild learns them again without sharing): they were dropped, and lost.
    await learn(0, 31, "u4")
    worker._reset_pending = True
    worker.catalog.ready.set()
    await worker._reset_if_pending()
    assert len(worker._to_share) == 1
    committed[TP("r", 0)] = 32
    await worker.share_items()
    assert len([c for c in sent.changes if c.rated]) == 2


async def test_a_snapshot_holding_our_partitions_through_shared_changes_is_not_restored(
    monkeypatch, tmp_path
) -> None:
    """A snapshot whose model took partition 1's ratings from another worker's shared
    changes, restored by a worker now holding partition 1, would have them again from
    the replay: it is not restored; the log rebuilds the model, each rating once."""
    log = {p: [Rating(f"p{p}u{n}", "a", 4.0, float(10 * n + p)) for n in range(4)] for p in (0, 1)}
    worker, starts, follower = _restoring_worker(
        monkeypatch, tmp_path, log, {0: 4, 1: 4}, share_items_every_s=1.0
    )
    monkeypatch.setattr(worker, "_assigned", lambda: {0, 1})
    _snapshot(worker.settings, log[0][:2], {0: 2}, shared_from={1})
    try:
        await worker._ensure_replayed({})
    finally:
        follower.cancel()
    assert starts == [{0: 0, 1: 0}] and worker.engine.shared_from == set()
    assert worker.engine.events == 8


async def test_snapshots_made_under_other_settings_are_said_to_be_the_reason_for_a_replay(
    monkeypatch, tmp_path, caplog
) -> None:
    """A start that finds only snapshots of other model settings (changed, or a newer
    version counting more settings) replays the whole log; the log says why."""
    log = {0: [Rating(f"u{n}", "a", 4.0, float(n)) for n in range(4)]}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 4})
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    _snapshot(replace(worker.settings, items_topic="older-items"), log[0][:2], {0: 2})
    caplog.set_level("INFO", logger="streamer.app")
    try:
        await worker._ensure_replayed({})
    finally:
        follower.cancel()
    assert starts == [{0: 0}] and worker.engine.events == 4
    assert "1 snapshot(s) made under other model settings (items_topic): not restored" in (
        caplog.text
    )


async def test_a_rebuild_waits_for_the_replay_under_way(monkeypatch, tmp_path) -> None:
    """A rebuild asked for while a replay learns into the model (a timer tick during the
    agent's replay) would put the rest of the replay into the new model, the partitions
    then marked replayed: it waits until the replay ends."""
    log = {0: [Rating(f"u{n}", "a", 4.0, float(n)) for n in range(6)]}
    worker, _, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 6})
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    try:
        replay = asyncio.ensure_future(worker._ensure_replayed({}))
        await asyncio.sleep(0.025)  # two or so ratings in
        engine = worker.engine
        worker._reset_pending = True
        await worker._reset_if_pending()
        assert worker.engine is engine and worker._reset_pending
        await replay
        assert worker.engine.events == 6 and worker._replayed == {0}
        await worker._reset_if_pending()  # now it happens
        assert worker.engine is not engine and not worker._replayed
    finally:
        follower.cancel()


async def test_replayed_ratings_are_not_shared_and_pending_changes_go_before_a_rebuild(
    monkeypatch, tmp_path
) -> None:
    """The other workers had a partition's ratings when they were live: its replay sends
    none of them again, even with exchanges between the replay's fetches. What live
    learning changed and was not sent yet goes before a rebuild drops the model."""
    log = {0: [Rating(f"u{n}", "a", 4.0, float(n)) for n in range(6)]}
    worker, _, follower = _restoring_worker(
        monkeypatch, tmp_path, log, {0: 6}, share_items_every_s=1.0
    )
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    sent = worker.item_changes = _Sent(worker._learning)

    async def exchanges() -> None:
        while True:
            await asyncio.sleep(0.004)
            await worker.share_items()

    timer = asyncio.ensure_future(exchanges())
    try:
        await worker._ensure_replayed({})
        assert worker.engine.events == 6 and sent.entries() == 0
        timer.cancel()
        worker.engine.learn_ratings([Rating("live", "a", 5.0, 10.0)])  # not sent yet
        worker._reset_pending = True
        await worker._reset_if_pending()
    finally:
        timer.cancel()
        follower.cancel()
    assert [c.items for c in sent.changes if c.items] == [["a"]]
    assert [c.rated for c in sent.changes if c.rated] == [["a"]]
    assert not any(sent.under_lock)  # (a broker away must not hold learning up)


async def test_a_replay_that_waited_for_another_does_the_rebuild_asked_for_meanwhile(
    monkeypatch, tmp_path
) -> None:
    """A rebuild asked for while one replay runs waits for it (see above); a second
    replay that was waiting for the first does that rebuild before anything else, not
    learn into the model that is to go."""
    log = {0: [Rating(f"u{n}", "a", 4.0, float(n)) for n in range(6)]}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 6})
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    try:
        first = asyncio.ensure_future(worker._ensure_replayed({}))
        await asyncio.sleep(0.025)
        engine = worker.engine
        worker._reset_pending = True
        second = asyncio.ensure_future(worker._ensure_replayed({}))
        await asyncio.gather(first, second)
    finally:
        follower.cancel()
    assert worker.engine is not engine and not worker._reset_pending
    assert starts == [{0: 0}, {0: 0}] and worker.engine.events == 6


async def test_a_batch_waits_out_kafka_unreachable_and_learns_each_rating_once(
    monkeypatch, tmp_path
) -> None:
    """Kafka unreachable in a batch's steps before learning (the group's offsets for the
    replay of a partition just assigned, the replay's own reads, the items topic's end)
    does not stop the worker: the batch waits and tries again, and then learns the
    partition's history and the batch's ratings once each."""
    log = {0: [Rating(f"u{n}", "a", 4.0, float(n)) for n in range(6)]}
    worker, starts, follower = _restoring_worker(
        monkeypatch, tmp_path, log, {0: 4}, snapshot_every_s=0
    )
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    monkeypatch.setattr(RecsysWorker, "KAFKA_RETRY_S", 0.01)
    monkeypatch.setattr(worker, "_waiting_partitions", set)  # (caught up: learned at once)
    worker._settled()
    failures = [KafkaConnectionError(), RequestTimedOutError()]
    _committed_fails_first(monkeypatch, failures)

    class Unreachable:
        async def end_offsets(self, partitions):
            raise KafkaConnectionError()

    worker.catalog.consumer, worker.catalog.partitions = Unreachable(), [TP("i", 0)]
    worker.catalog._offsets = Unreachable()  # (the client the ends are asked on)
    raw = [
        json.dumps({"user_id": f"u{n}", "item_id": item, "rating": 4, "timestamp": n}).encode()
        for n, item in ((4, "a"), (5, "unlisted"))
    ]
    batch = [
        ConsumerRecord("r", 0, 4 + j, 0, 0, f"u{4 + j}".encode(), v, None, 0, len(v), [])
        for j, v in enumerate(raw)
    ]
    letters: list[str] = []

    async def dead_letter(record, reason, acks):
        letters.append(reason)

    monkeypatch.setattr(worker, "_dead_letter", dead_letter)
    try:
        await asyncio.wait_for(worker.learn_ratings(batch), 10)
    finally:
        follower.cancel()
    assert not failures and starts == [{0: 0}]
    assert worker.engine.events == 5  # offsets 0-3 replayed, 4 live: once each
    assert letters == ["item_id: unknown item 'unlisted'"]  # (the topic's end unknown)


async def test_a_batch_whose_replay_rebuilt_the_model_first_learns_what_the_rebuild_lacks(
    monkeypatch, tmp_path
) -> None:
    """A batch's records of a partition the model had learned past are dropped as
    learned; when its replay then rebuilds the model first (asked for while another
    replay held the lock), the rebuild learns that partition up to where the old model's
    live processing stood, past the group's commit: the batch's records of it are then
    learned already, and dropped, neither lost nor learned twice."""
    log = {0: [Rating(f"u{n}", "a", 4.0, float(n)) for n in range(10)], 1: []}
    worker, _, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 5, 1: 0})
    monkeypatch.setattr(worker, "_assigned", lambda: {0, 1})
    worker.engine.relearn(log[0])  # live: all ten learned, the group committed five
    worker._replayed, worker._next_offset = {0}, {0: 10}
    taken: list[tuple[int, int]] = []

    async def valid(records):
        taken.extend((r.partition, r.offset) for r in records)
        return []

    async def nothing() -> None: ...

    monkeypatch.setattr(worker, "_valid_ratings", valid)
    monkeypatch.setattr(worker, "_learn_released", nothing)
    raw = b'{"user_id":"u","item_id":"a","rating":4,"timestamp":1}'
    batch = [
        ConsumerRecord("r", 0, n, 0, 0, b"u", raw, None, 0, len(raw), []) for n in range(5, 10)
    ]
    batch.append(ConsumerRecord("r", 1, 0, 0, 0, b"u", raw, None, 0, len(raw), []))
    try:
        await worker._replay_lock.acquire()  # another replay under way
        worker._reset_pending = True
        learning = asyncio.ensure_future(worker.learn_ratings(batch))
        await asyncio.sleep(0.05)
        worker._replay_lock.release()
        await learning
    finally:
        follower.cancel()
    assert not worker._reset_pending and worker.engine.events == 10
    assert worker._next_offset[0] == 10 and taken == [(1, 0)]


async def test_changes_pending_in_a_snapshot_are_not_sent_again_after_a_restore(
    monkeypatch, tmp_path
) -> None:
    """A snapshot keeps the changes its model had not sent yet; they were sent right
    after (the exchange runs every few seconds), so a restored model does not send them
    again."""
    log = {0: [Rating(f"u{n}", "a", 4.0, float(n)) for n in range(4)]}
    worker, _, follower = _restoring_worker(
        monkeypatch, tmp_path, log, {0: 4}, share_items_every_s=1.0
    )
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    engine = StreamEngine(worker.settings)
    engine.upsert_item("a", {"t": 1.0})
    engine.learn_ratings(log[0])  # live: kept for the exchange
    assert engine.model._own.rated  # (what the snapshot keeps)
    SnapshotStore(worker.settings.snapshot_path).save(
        engine, {0: 4}, worker.settings.model_fingerprint()
    )
    sent = worker.item_changes = _Sent()
    try:
        await worker._restore_once()
        assert worker.engine.events == 4
        await worker.share_items()
    finally:
        follower.cancel()
    assert sent.entries() == 0


async def test_a_replay_waits_for_the_snapshot_being_restored(monkeypatch, tmp_path) -> None:
    """The timer's first tick restores a snapshot (a large one takes a while to load);
    a batch that arrives meanwhile must not replay the log from the start beside it: its
    replay waits, then starts where the snapshot ends, and every rating is in the model
    once."""
    log = {0: [Rating(f"u{n}", "a", float(1 + n % 5), float(n)) for n in range(6)]}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 6})
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    _snapshot(worker.settings, log[0][:3], {0: 3})
    _slow_loads(monkeypatch, worker, 0.3)  # (in a thread, as a large file's)
    try:
        tick = asyncio.ensure_future(worker._restore_once())
        await asyncio.sleep(0.05)
        await worker._ensure_replayed({0: 6})  # the first batch starts at offset 6
        await tick
    finally:
        follower.cancel()
    assert starts == [{0: 3}]
    assert worker.engine.events == 6 and worker.engine.model.n_users == 6


async def test_a_restore_never_swaps_the_model_under_a_replay_that_rebuilt_it(
    monkeypatch, tmp_path
) -> None:
    """A rebuild asked for while another replay ran is done by the next replay, under
    the replay lock. A restore asked for meanwhile (the agent's batch, the timer) must
    not load a snapshot in place of the model that replay learns into: the ratings
    learned before the swap would be lost, those after it learned on top of the
    snapshot's (twice). The replay restores the snapshot itself, first; the worker's
    live figures go on through it."""
    log = {0: [Rating(f"u{n}", "a", float(1 + n % 5), float(n)) for n in range(6)]}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 6})
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    _snapshot(worker.settings, log[0][:3], {0: 3})
    _slow_loads(monkeypatch, worker, 0.03)
    worker._restore_tried = True  # (tried at the start, before that snapshot existed)
    worker._reset_pending = True  # (asked for while a replay ran)
    worker.engine.version, worker.engine.deadletters = 250, 8
    try:
        replay = asyncio.ensure_future(worker._ensure_replayed({}))
        while not (worker._replay_lock.locked() and not worker._reset_pending):
            await asyncio.sleep(0)  # (the replay holds the lock and has rebuilt)
        for _ in range(3):  # batches and ticks asking meanwhile
            await worker._restore_once()
            await asyncio.sleep(0.02)
        await replay
    finally:
        follower.cancel()
    assert starts == [{0: 3}]  # restored by the replay, then the rest of the log
    model = worker.engine.model
    assert worker.engine.events == 6
    assert [int(model.user_n[model.users.get(f"u{n}")]) for n in range(6)] == [1] * 6
    assert worker.engine.version >= 250 and worker.engine.deadletters == 8


async def test_a_worker_restored_at_its_start_goes_on_from_the_snapshots_figures(
    monkeypatch, tmp_path
) -> None:
    """At a start, the snapshot's live figures go on (its evaluations, windows, totals),
    with the dead letters counted before it loaded added: a bad catalog event read
    meanwhile made the fresh engine's figures replace the snapshot's."""
    log = {0: [Rating(f"u{n}", "a", 4.0, float(n)) for n in range(4)]}
    worker, _, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 4})
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    engine = StreamEngine(worker.settings)
    engine.upsert_item("a", {"t": 1.0})
    engine.learn_ratings(log[0])  # (live: evaluated)
    engine.count_deadletter("malformed JSON: x")
    SnapshotStore(worker.settings.snapshot_path).save(
        engine, {0: 4}, worker.settings.model_fingerprint()
    )
    worker.engine.count_deadletter("tags: too many")  # read before the snapshot loaded
    try:
        await worker._restore_once()
    finally:
        follower.cancel()
    assert worker.engine.events == 4 and worker.engine.evaluated == engine.evaluated > 0
    assert worker.engine.deadletters == 2


async def test_a_replay_that_waited_for_another_still_starts_from_the_snapshot(
    monkeypatch, tmp_path
) -> None:
    """The timer's restore finds Kafka away (tried again later) and its replay fails
    before learning anything; the batch that waited for it on the replay lock must still
    start from the snapshot, not replay the whole log."""
    log = {0: [Rating(f"u{n}", "a", float(1 + n % 5), float(n)) for n in range(6)]}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 6})
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    _snapshot(worker.settings, log[0][:3], {0: 3})
    _committed_fails_first(monkeypatch, [KafkaConnectionError("coordinator away")])
    merged, failures = app_module.read_merged, [KafkaConnectionError("broker away")]

    async def failing_once(*args, **kwargs):
        if failures:
            await asyncio.sleep(0.05)
            raise failures.pop()
        async for chunk in merged(*args, **kwargs):
            yield chunk

    monkeypatch.setattr(app_module, "read_merged", failing_once)
    try:
        timer = asyncio.ensure_future(worker._replay_idle_partitions())
        while not worker._replay_lock.locked():
            await asyncio.sleep(0)
        await worker._ensure_replayed({0: 6})  # the batch, waiting on the lock
        await timer
    finally:
        follower.cancel()
    assert starts[-1] == {0: 3} and worker.engine.events == 6


async def _partition_1_goes_elsewhere(worker: RecsysWorker, owned: set[int]) -> None:
    """A rebalance that gives partition 0 back and partition 1 to another worker: the
    model is rebuilt from partition 0's history (offsets [0, 4))."""
    await worker._on_revoked(worker.app, {TP("r", 0), TP("r", 1)})
    owned.discard(1)
    await worker._on_assigned(worker.app, {TP("r", 0), TP("i", 0)})
    await worker._assignment_settled.wait()  # (settled at once: a partition lost)
    assert worker._reset_pending
    await worker._reset_if_pending()
    await worker._ensure_replayed({0: 4})


async def test_losing_a_restored_partition_before_its_replay_rebuilds_the_model(
    monkeypatch, tmp_path
) -> None:
    """A rebalance right after a restore (a rolling restart), before any replay: the
    partitions the snapshot brought are in the model, so losing one rebuilds it, and
    the next snapshot holds only the partitions it names."""
    log = {p: [Rating(f"p{p}u{n}", "a", 4.0, float(10 * n + p)) for n in range(4)] for p in (0, 1)}
    worker, _, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 4, 1: 4})
    owned = {0, 1}
    monkeypatch.setattr(worker, "_assigned", lambda: set(owned))
    _snapshot(worker.settings, log[0][:2] + log[1][:2], {0: 2, 1: 2})
    try:
        await worker._restore_once()
        assert worker.engine.events == 4 and worker._resume_from == {0: 2, 1: 2}
        await _partition_1_goes_elsewhere(worker, owned)
    finally:
        follower.cancel()
    assert worker.engine.events == 4  # partition 0's four ratings, none of partition 1's
    assert not any(u.startswith("p1") for u in worker.engine.model.users.ids)


def _owning_two_partitions(monkeypatch, tmp_path):
    """:func:`_restoring_worker` over two partitions of four ratings each, all committed,
    whose assignment is the set it returns last (change it to move partitions)."""
    log = {p: [Rating(f"p{p}u{n}", "a", 4.0, float(10 * n + p)) for n in range(4)] for p in (0, 1)}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 4, 1: 4})
    owned = {0, 1}
    monkeypatch.setattr(worker, "_assigned", lambda: set(owned))
    return worker, starts, follower, owned


async def test_a_rebalance_that_gives_every_partition_back_keeps_the_model(
    monkeypatch, tmp_path
) -> None:
    """Kafka's eager rebalancing revokes every partition at every rebalance (a worker
    joins or leaves): the partitions that come back keep the model as it is, with no
    replay and no snapshot until the assignment is known; one that went to another
    worker rebuilds the model from those kept."""
    worker, starts, follower, owned = _owning_two_partitions(monkeypatch, tmp_path)
    both = {TP("r", 0), TP("r", 1)}
    try:
        await worker._ensure_replayed({0: 4, 1: 4})
        engine = worker.engine
        assert engine.events == 8 and starts == [{0: 0, 1: 0}]
        await worker._on_revoked(worker.app, both)
        assert not worker._reset_pending and worker._awaiting_assignment
        worker._last_snapshot = -1e9  # due: but not while the assignment is unknown
        await worker._snapshot_if_due()
        assert not list(worker.snapshots.directory.glob("*"))
        await worker._on_assigned(worker.app, both | {TP("i", 0)})
        await worker._assignment_settled.wait()  # (its check, a task)
        await worker._reset_if_pending()
        await worker._ensure_replayed({0: 4, 1: 4})
        assert worker.engine is engine and engine.events == 8 and len(starts) == 1
        assert not worker._awaiting_assignment and worker._replayed == {0, 1}
        # A second worker joins and takes partition 1: rebuilt from partition 0.
        await _partition_1_goes_elsewhere(worker, owned)
    finally:
        follower.cancel()
    assert worker.engine is not engine and worker.engine.events == 4
    assert not any(u.startswith("p1") for u in worker.engine.model.users.ids)
    assert worker.rebuilds == 1


async def test_a_partition_replayed_while_a_rebalance_is_under_way_and_then_lost_rebuilds(
    monkeypatch, tmp_path
) -> None:
    """Until the new assignment comes, the old one still reads as ours: a partition not
    in the model at the revocation must not be replayed meanwhile (by the timer), and
    one that reached the model anyway (a replay or restore begun in that window) and is
    not assigned back rebuilds the model."""
    worker, starts, follower, owned = _owning_two_partitions(monkeypatch, tmp_path)
    both = {TP("r", 0), TP("r", 1)}
    try:
        await worker._on_revoked(worker.app, both)  # (nothing in the model yet)
        await worker._replay_idle_partitions()  # a timer tick during the rebalance
        assert starts == [] and worker.engine.events == 0
        await worker._ensure_replayed({0: 4, 1: 4})  # (a replay begun in the window)
        owned.discard(1)  # partition 1 goes to the worker that joined
        await worker._on_assigned(worker.app, {TP("r", 0)})
        await worker._assignment_settled.wait()  # (its check, a task)
        assert worker._reset_pending
        await worker._reset_if_pending()
        await worker._replay_idle_partitions()
    finally:
        follower.cancel()
    assert worker.engine.events == 4
    assert not any(u.startswith("p1") for u in worker.engine.model.users.ids)


async def test_a_rebuild_outside_a_rebalance_replays_what_was_taken_past_the_commit(
    monkeypatch, tmp_path
) -> None:
    """A rebuild asked for outside a rebalance (a replay cut short by an error) is not
    followed by a seek back to the group's commit: the records taken since the last
    commit come no more, so the rebuild's replay goes as far as live processing had."""
    log = {p: [Rating(f"p{p}u{n}", "a", 4.0, float(10 * n + p)) for n in range(6)] for p in (0, 1)}
    committed = {0: 4, 1: 4}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, committed)
    monkeypatch.setattr(worker, "_assigned", lambda: {0, 1})
    try:
        await worker._ensure_replayed({0: 4, 1: 4})
        worker.engine.relearn(log[0][4:6])  # live: offsets 4 and 5 taken, not committed
        worker._next_offset[0] = 6
        worker._reset_pending = True  # (as a replay cut short asks)
        await worker._reset_if_pending()
        await worker._replay_idle_partitions()
    finally:
        follower.cancel()
    assert starts[-1] == {0: 0, 1: 0} and worker._next_offset == {0: 6, 1: 4}
    assert worker.engine.events == 10  # partition 0's six, partition 1's four


async def test_a_batch_waits_for_the_check_of_the_partitions_kept_by_a_rebalance(
    monkeypatch, tmp_path
) -> None:
    """The check of the partitions kept (the group's committed offsets) runs after
    Faust's rebalance callback, which resumes the flow: a batch of a partition another
    worker committed past waits for the check, then the offsets the model lacks are
    replayed before it, not skipped."""
    log = {p: [Rating(f"p{p}u{n}", "a", 4.0, float(10 * n + p)) for n in range(7)] for p in (0, 1)}
    committed = {0: 4, 1: 4}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, committed)
    monkeypatch.setattr(worker, "_assigned", lambda: {0, 1})
    monkeypatch.setattr(worker, "_waiting_partitions", lambda: set())
    both = {TP("r", 0), TP("r", 1)}
    answer = asyncio.Event()
    the_committed = RecsysWorker._committed

    async def slow_committed(self) -> dict[int, int]:
        await answer.wait()
        return await the_committed(self)

    try:
        await worker._ensure_replayed({0: 4, 1: 4})
        monkeypatch.setattr(RecsysWorker, "_committed", slow_committed)
        committed.update({1: 6})  # another worker learned partition 1's offsets 4 and 5
        await worker._on_revoked(worker.app, both)
        await worker._on_assigned(worker.app, both)  # (its check waits for the offsets)
        value = b'{"user_id":"p1u6","item_id":"a","rating":4,"timestamp":61}'
        record = ConsumerRecord("r", 1, 6, 0, 0, b"p1u6", value, None, 0, len(value), [])
        batch = asyncio.ensure_future(worker.learn_ratings([record]))
        await asyncio.sleep(0.05)
        assert not batch.done() and worker.engine.events == 8  # waiting for the check
        answer.set()
        await asyncio.wait_for(batch, 5)
    finally:
        follower.cancel()
    assert starts[-1] == {1: 4}  # the offsets another worker learned, then the batch
    assert worker.engine.events == 11 and worker._next_offset == {0: 4, 1: 7}


async def test_a_rebuild_waits_for_the_batch_being_validated(monkeypatch, tmp_path) -> None:
    """Validating a batch may wait (dead letters, the catalog): a rebuild the timer asks
    for meanwhile is put off, or the batch would be checked against a model without its
    catalog yet (valid ratings dead-lettered, then skipped by every replay) and learned
    on top of its replay. The batch goes into the model it began with, and the rebuild
    that follows replays it too, as far as live processing had taken it."""
    log = {0: [Rating(f"u{n}", "a", 4.0, float(n)) for n in range(6)]}
    log[1] = [Rating(f"v{n}", "a", 4.0, float(n)) for n in range(2)]
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 4, 1: 2})
    owned = {0}
    monkeypatch.setattr(worker, "_assigned", lambda: set(owned))
    monkeypatch.setattr(worker, "_waiting_partitions", lambda: set())
    validate = RecsysWorker._valid_ratings
    engines = []

    async def rebuild_asked_meanwhile(self, records):
        self._reset_pending = True
        await self._reset_now()  # (what the timer's tick does)
        owned.add(1)  # (a partition new to the model: not replayed into the old one)
        await self._ensure_replayed({})  # (the timer's replay of idle partitions)
        engines.append(self.engine)
        return await validate(self, records)

    value = b'{"user_id":"u4","item_id":"a","rating":4,"timestamp":4}'
    batch = [ConsumerRecord("r", 0, n, 0, 0, b"u4", value, None, 0, len(value), []) for n in (4, 5)]
    try:
        await worker._ensure_replayed({0: 4})
        engine = worker.engine
        monkeypatch.setattr(RecsysWorker, "_valid_ratings", rebuild_asked_meanwhile)
        await worker.learn_ratings(batch)
        assert engines == [engine] and engine.events == 6 and worker._reset_pending
        assert len(starts) == 1  # (no replay into the model the rebuild drops)
        monkeypatch.setattr(RecsysWorker, "_valid_ratings", validate)
        await worker._reset_if_pending()
        await worker._replay_idle_partitions()
    finally:
        follower.cancel()
    assert worker.engine is not engine and starts[-1] == {0: 0, 1: 0}
    assert worker.engine.events == 8  # up to where live processing was, not the commit (4)


async def _rebalanced_with_a_slow_check(monkeypatch, tmp_path):
    """A worker owning two replayed partitions, through a rebalance that gave both back,
    whose check of them waits for the committed offsets until ``hang`` is set (the
    second value); the catalog follower third, ``_committed`` as it was last."""
    worker, _, follower, _ = _owning_two_partitions(monkeypatch, tmp_path)
    the_committed = RecsysWorker._committed
    hang = asyncio.Event()

    async def slow(self) -> dict[int, int]:
        await hang.wait()
        return {}

    await worker._ensure_replayed({0: 4, 1: 4})
    monkeypatch.setattr(RecsysWorker, "_committed", slow)
    both = {TP("r", 0), TP("r", 1)}
    await worker._on_revoked(worker.app, both)
    await worker._on_assigned(worker.app, both)  # its check waits
    return worker, hang, follower, the_committed


async def test_a_batch_waiting_for_the_check_gives_way_to_the_next_rebalance(
    monkeypatch, tmp_path
) -> None:
    """A revocation waits for the batch in its handler: a batch waiting for the check of
    the last rebalance's kept partitions is abandoned when the next one begins, rather
    than holding that rebalance for as long as the check takes."""
    worker, hang, follower, _ = await _rebalanced_with_a_slow_check(monkeypatch, tmp_path)
    try:
        batch = asyncio.ensure_future(worker.learn_ratings([_rating_record(b"{}", 4)]))
        await asyncio.sleep(0.05)
        assert not batch.done()
        worker.app.consumer.revocations += 1  # the next rebalance begins
        with pytest.raises(BatchAbandoned):
            await asyncio.wait_for(batch, 1.0)
    finally:
        hang.set()
        follower.cancel()


async def test_a_rebuild_waiting_for_the_learning_lock_sees_a_validation_begun_meanwhile(
    tmp_path,
) -> None:
    """A rebuild that queued for the learning lock while a batch was learning checks for
    a validation under way once it holds the lock, not before: the next batch may have
    begun validating meanwhile."""
    worker = RecsysWorker(
        Settings(ratings_topic="r", items_topic="i", users_topic="u", data_dir=str(tmp_path))
    )
    worker._reset_pending = True
    engine = worker.engine
    await worker._learning.acquire()  # a batch learning
    reset = asyncio.ensure_future(worker._reset_now())
    await asyncio.sleep(0)  # (queued for the lock)
    worker._learning.release()
    worker._validating = True  # the next batch validating (waiting on a dead letter)
    await reset
    assert worker.engine is engine and worker._reset_pending
    worker._validating = False
    await worker._reset_now()
    assert worker.engine is not engine and not worker._reset_pending


async def test_a_check_of_an_earlier_rebalance_settles_nothing(monkeypatch, tmp_path) -> None:
    """A check of the partitions kept that outlives its rebalance (a slow answer for the
    committed offsets) neither settles a later rebalance still waiting for its
    assignment nor, failing late, rebuilds the model the later one left."""
    monkeypatch.setattr(RecsysWorker, "REBALANCE_CHECK_S", 0.2)
    worker, _, follower, the_committed = await _rebalanced_with_a_slow_check(monkeypatch, tmp_path)
    both = {TP("r", 0), TP("r", 1)}
    try:
        await worker._on_revoked(worker.app, both)  # the next rebalance, no assignment yet
        monkeypatch.setattr(RecsysWorker, "_committed", the_committed)
        await asyncio.sleep(0.3)  # (the first check times out meanwhile)
        assert not worker._assignment_settled.is_set() and worker._awaiting_assignment
        assert not worker._reset_pending
        await worker._on_assigned(worker.app, both)
        await worker._assignment_settled.wait()
    finally:
        follower.cancel()
    assert not worker._reset_pending and worker._replayed == {0, 1}


async def test_a_rebuild_restores_a_snapshot_of_the_partitions_kept(monkeypatch, tmp_path) -> None:
    """A worker that took a partition over and loses it again (its owner came back)
    rebuilds from its own snapshot of the partitions it kept, taken before the
    takeover, and replays only what follows it."""
    log = {p: [Rating(f"p{p}u{n}", "a", 4.0, float(10 * n + p)) for n in range(4)] for p in (0, 1)}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, {0: 4, 1: 4})
    owned = {0, 1}
    monkeypatch.setattr(worker, "_assigned", lambda: set(owned))
    _snapshot(worker.settings, log[0][:3], {0: 3})  # before it took partition 1 over
    try:
        await worker._ensure_replayed({0: 4, 1: 4})
        assert starts == [{0: 3, 1: 0}] and worker.engine.events == 8
        await worker._on_revoked(worker.app, {TP("r", 0), TP("r", 1)})
        owned.discard(1)
        await worker._on_assigned(worker.app, {TP("r", 0)})
        await worker._assignment_settled.wait()  # (its check, a task)
        await worker._reset_if_pending()
        await worker._ensure_replayed({0: 4})
    finally:
        follower.cancel()
    assert starts[-1] == {0: 3}  # from the snapshot, not from offset 0
    assert worker.engine.events == 4 and worker.rebuilds == 1


async def test_a_partition_another_worker_committed_past_is_replayed_from_where_we_stopped(
    monkeypatch, tmp_path
) -> None:
    """A partition that comes back after another worker owned it (this one left the
    group, and rejoined) has offsets the model never learned: they are replayed from
    where the model stops, the rest of the model kept. Without the group's committed
    offsets the model is rebuilt."""
    log = {p: [Rating(f"p{p}u{n}", "a", 4.0, float(10 * n + p)) for n in range(6)] for p in (0, 1)}
    committed = {0: 4, 1: 4}
    worker, starts, follower = _restoring_worker(monkeypatch, tmp_path, log, committed)
    monkeypatch.setattr(worker, "_assigned", lambda: {0, 1})
    both = {TP("r", 0), TP("r", 1)}
    try:
        await worker._ensure_replayed({0: 4, 1: 4})
        engine = worker.engine
        committed.update({1: 6})  # another worker learned partition 1's offsets 4 and 5
        await worker._on_revoked(worker.app, both)
        await worker._on_assigned(worker.app, both)
        await worker._assignment_settled.wait()  # (its check, a task)
        assert not worker._reset_pending and worker._replayed == {0}
        await worker._ensure_replayed({1: 6})
        assert starts[-1] == {1: 4}  # (not from 0)
        assert worker.engine is engine and engine.events == 10

        async def unreachable(self):
            raise KafkaConnectionError()

        monkeypatch.setattr(RecsysWorker, "_committed", unreachable)
        await worker._on_revoked(worker.app, both)
        await worker._on_assigned(worker.app, both)
        await worker._assignment_settled.wait()  # (its check, a task)
        assert worker._reset_pending
    finally:
        follower.cancel()


async def test_a_learning_call_cut_short_keeps_the_stop_from_snapshotting(
    monkeypatch, tmp_path
) -> None:
    """A stop cancels the batch being learned: the model misses ratings its offsets
    cover, so no snapshot may be taken at the stop, even after a timer tick that was
    waiting for the lock learns what the merge releases next."""
    settings = Settings(
        ratings_topic="r", items_topic="i", users_topic="u", batch_max=2, data_dir=str(tmp_path)
    )
    worker = RecsysWorker(settings)
    worker.engine.upsert_item("a", {"t": 1.0})
    worker._replayed, worker._next_offset = {0}, {0: 4}
    for n in range(4):
        worker.ordering.add(0, float(n), (Rating(f"u{n}", "a", 4.0, float(n)), 0.0, 0, n, None))
    monkeypatch.setattr(worker, "_waiting_partitions", lambda: set())
    monkeypatch.setattr(worker, "_assigned", lambda: {0})
    publishing, stall = asyncio.Event(), [True]

    async def published(engine, sink, lists, ttl=None, rank_s=None):
        if stall[0]:
            publishing.set()
            await asyncio.sleep(3600)
        return time.time()

    monkeypatch.setattr(app_module, "publish", published)
    batch = asyncio.ensure_future(worker._learn_released())
    await publishing.wait()  # the first two of four learned, being published
    worker.ordering.add(0, 9.0, (Rating("u9", "a", 4.0, 9.0), 0.0, 0, 4, None))
    worker._next_offset[0] = 5
    tick = asyncio.ensure_future(worker._learn_released())  # waits for the lock
    await asyncio.sleep(0)
    stall[0] = False
    batch.cancel()  # the stop
    with pytest.raises(asyncio.CancelledError):
        await batch
    await tick
    assert worker._unlearned > 0
    saved: list = []
    monkeypatch.setattr(worker.snapshots, "save", lambda *a, **k: saved.append(a))
    await worker._on_shutdown(worker.app)
    assert saved == []


class _ItemsLog:
    """A stand-in consumer of a one-partition items topic holding ``records``."""

    def __init__(self, records: list[ConsumerRecord]) -> None:
        self.records, self.at = records, 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, partitions) -> None: ...

    async def seek_to_beginning(self, *partitions) -> None:
        self.at = 0

    def seek(self, tp, offset: int) -> None:
        self.at = offset

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        got = self.records[self.at : self.at + 2]  # (two a fetch: the catch-up spans fetches)
        self.at += len(got)
        if not got:
            await asyncio.sleep(0.005)
        return {"tp": got} if got else {}

    async def end_offsets(self, partitions) -> dict:
        return {tp: len(self.records) for tp in partitions}

    async def position(self, tp) -> int:
        return self.at


async def test_the_catalog_read_again_into_a_restored_model_applies_each_items_latest_event(
    monkeypatch,
) -> None:
    """A model restored from a snapshot reads the items topic again from the start. An
    item deleted and listed again, still in the log's uncompacted tail, must not have its
    old delete applied to the restored model: the delete would wipe what the item's
    ratings taught it (its co-occurrence, users' recent items). Until caught up, only
    each item's latest event applies."""
    from schemas import ItemEvent

    def record(offset: int, item: str, op: str = "upsert") -> ConsumerRecord:
        tags = ["jazz"] if op == "upsert" else []
        value = ItemEvent(op=op, item_id=item, tags=tags, timestamp=1.7e9 + offset).to_bytes()
        return _item_record(value, item.encode(), offset)

    log = [record(0, "a"), record(1, "x"), record(2, "x", "delete"), record(3, "x")]
    log += [record(4, "b"), record(5, "gone"), record(6, "gone", "delete")]
    settings = Settings(ratings_topic="r", items_topic="i", users_topic="u", n_factors=4)
    engine = StreamEngine(settings)
    engine.live = True
    for item in ("a", "x", "b"):
        engine.upsert_item(item, {"jazz": 1.0})
    engine.learn_ratings(
        [
            Rating(f"u{n}", item, 5.0, 10.0 + 3 * n + j)
            for n in range(5)
            for j, item in enumerate("axb")
        ]
    )
    model = engine.model
    x = model.items.get("x")
    weight, rings = float(model.cooc.weight[x].sum()), int((model.cooc.recent == x).sum())
    assert weight > 0 and rings > 0

    async def published(engine, sink, lists, ttl=None, rank_s=None) -> float:
        return time.time()

    monkeypatch.setattr(app_module, "standalone_consumer", lambda s, **o: _ItemsLog(log))
    monkeypatch.setattr(app_module, "publish", published)
    follower = app_module.CatalogFollower(settings, engine, sink=None)
    follower.restart(engine)  # as a restore does
    reading = asyncio.ensure_future(follower.run())
    try:
        await asyncio.wait_for(follower.ready.wait(), 5)
    finally:
        reading.cancel()
    assert float(model.cooc.weight[x].sum()) == weight
    assert int((model.cooc.recent == x).sum()) == rings
    assert not model.is_deleted("x") and model.is_deleted("gone")


async def test_the_catalog_read_outlasts_a_broker_that_cannot_give_its_end(
    monkeypatch, caplog
) -> None:
    """While the catalog is first read (after every start, rebuild and restore), the
    items topic's end is asked at every fetch; a broker that cannot answer raised out of
    the follower's task, which stops the worker. It waits and asks again, saying so, and
    the catalog is read whole once the broker answers."""
    from schemas import ItemEvent

    engine = StreamEngine(Settings(items_topic="i"))
    log = [
        _item_record(
            ItemEvent(op="upsert", item_id=f"i{n}", tags=["rock"], timestamp=1.7e9).to_bytes(),
            f"i{n}".encode(),
            n,
        )
        for n in range(3)
    ]
    failures = [3]

    class Away(_ItemsLog):
        async def end_offsets(self, partitions) -> dict:
            if failures[0]:
                failures[0] -= 1
                raise KafkaTimeoutError()
            return await super().end_offsets(partitions)

    async def published(engine, sink, lists, ttl=None, rank_s=None) -> float:
        return time.time()

    monkeypatch.setattr(app_module, "standalone_consumer", lambda s, **o: Away(log))
    monkeypatch.setattr(app_module, "publish", published)
    monkeypatch.setattr(app_module.CatalogFollower, "RETRY_S", 0.01)
    follower = app_module.CatalogFollower(Settings(items_topic="i"), engine, sink=None)
    reading = asyncio.ensure_future(follower.run())
    try:
        await asyncio.wait_for(follower.ready.wait(), 5)
    finally:
        reading.cancel()
    assert failures == [0] and all(engine.knows_item(f"i{n}") for n in range(3))
    assert "the items topic's end unknown (KafkaTimeoutError" in caplog.text


async def test_only_commits_that_went_through_count_for_sharing(monkeypatch) -> None:
    """Item changes wait for the commit of their ratings (``committed``): a commit that
    failed, or a transaction fenced by the partition's new owner (Faust reads it as
    done and crashes the worker), must not count, or the changes would go to the other
    workers while the new owner learns those ratings again."""
    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    consumer = worker.app.consumer
    monkeypatch.setattr(consumer, "assignment", lambda: {TP("r", 0)})
    results = iter([True, False, True])

    async def commit(self, offsets, start_new_transaction=True) -> bool:
        return next(results)

    monkeypatch.setattr(faust_kafka.Consumer, "_commit_offsets", commit)
    await consumer._commit_offsets({TP("r", 0): 5})
    assert consumer.committed == {TP("r", 0): 5}
    await consumer._commit_offsets({TP("r", 0): 9})  # failed
    worker.app.crash_reason = RuntimeError("fenced")
    await consumer._commit_offsets({TP("r", 0): 12})  # "done", and the worker crashing
    assert consumer.committed == {TP("r", 0): 5}


async def test_the_catalog_follower_tries_the_dead_letters_again_then_goes_on(
    monkeypatch, caplog
) -> None:
    """A broker away a moment when the catalog is read stopped the worker (the error
    left the follower's task); it tries again, and after three failures reads the
    catalog without the dead letters' offsets, saying so."""
    monkeypatch.undo()  # (the real CatalogFollower._refused)
    follower = app_module.CatalogFollower(Settings(items_topic="i"), engine=None, sink=None)
    follower.partitions = [TopicPartition("i", 0)]
    failures = [2]

    async def refused(settings, wanted, interrupted=bool):
        if failures[0]:
            failures[0] -= 1
            raise KafkaConnectionError()
        return {"i": {0: {7}}}

    monkeypatch.setattr(app_module, "refused_offsets", refused)
    monkeypatch.setattr(app_module.asyncio, "sleep", _no_sleep)
    assert await follower._refused() == {0: {7}}
    failures[0] = 3
    assert await follower._refused() == {}
    assert "catalog read without the dead letters' offsets" in caplog.text


async def test_a_dead_letter_not_delivered_is_sent_again_naming_its_source(
    monkeypatch, caplog
) -> None:
    """A letter the broker keeps refusing stalls its partition: each warning names the
    record it is for and the topic it goes to, and the letter is sent until it lands."""
    worker = RecsysWorker(Settings(ratings_topic="r", deadletter_topic="dlq"))
    tries: list[bytes] = []

    async def refused_twice(key, value, headers):
        tries.append(value)
        if len(tries) < 3:
            raise KafkaTimeoutError()
        return asyncio.sleep(0)

    monkeypatch.setattr(worker, "_send_letter", refused_twice)
    record = ConsumerRecord("r", 1, 42, 0, 0, b"u1", b"{bad", None, 0, 4, [])
    await worker._dead_letter(record, "malformed JSON: x")
    assert tries == [b"{bad"] * 3
    warnings = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(warnings) == 2
    assert (
        "dead letter of r partition 1 offset 42 not delivered to dlq (KafkaTimeoutError"
        in (warnings[0])
    )


def test_a_refresh_is_timed_with_its_own_ranking_call() -> None:
    """``publish`` times a refresh from the ranking call that made its lists: another
    task ranking while this one's write awaits Redis (the refresh timer beside a batch)
    does not lend it its ranking time."""
    engine = StreamEngine(Settings(k=2, n_factors=4))
    engine.upsert_item("a", {"jazz": 1.0})
    engine.upsert_item("b", {"jazz": 1.0})
    lists = engine.learn_ratings([Rating("u", "a", 5.0, 1.0)])
    engine.last_rank_s = 0.001  # (this refresh's ranking)

    class SlowSink:
        async def publish_lists(self, lists, version, ttl=None) -> float:
            await asyncio.sleep(0.01)
            return time.time()

    async def other_task_ranks() -> None:
        await asyncio.sleep(0)
        engine.last_rank_s = 100.0  # a large batch ranked meanwhile

    async def both() -> None:
        await asyncio.gather(app_module.publish(engine, SlowSink(), lists), other_task_ranks())

    asyncio.run(both())
    assert engine.refresh_hist.count == 1
    assert 0.001 < engine.refresh_hist.sum < 1.0


async def test_lists_a_catalog_change_rewrites_keep_their_expiry(monkeypatch) -> None:
    """A delete rewrites the lists that showed the item: its users did nothing, so the
    lists keep their expiry (renewed, a delete brought back and kept for a TTL the list
    of every user ever shown the item, long gone ones too)."""
    from schemas import ItemEvent

    settings = Settings(ratings_topic="r", items_topic="i", users_topic="u", n_factors=4, k=3)
    engine = StreamEngine(settings)
    for item in ("a", "x", "b", "c"):
        engine.upsert_item(item, {"jazz": 1.0})
    lists = engine.learn_ratings([Rating("u1", "a", 5.0, 1.0)])
    assert "x" in [r.item for r in lists["u1"]]
    value = ItemEvent(op="delete", item_id="x", tags=[], timestamp=1.7e9).to_bytes()
    published: list[tuple[list[str], object]] = []

    async def publish(engine, sink, lists, ttl=None, rank_s=None) -> float:
        published.append((sorted(lists), ttl))
        ranked.append(rank_s)
        return time.time()

    ranked: list[float | None] = []

    monkeypatch.setattr(
        app_module, "standalone_consumer", lambda s, **o: _ItemsLog([_item_record(value, b"x", 0)])
    )
    monkeypatch.setattr(app_module, "publish", publish)
    follower = app_module.CatalogFollower(settings, engine, sink=None)
    reading = asyncio.ensure_future(follower.run())
    try:
        await asyncio.wait_for(follower.ready.wait(), 5)
    finally:
        reading.cancel()
    assert published == [(["u1"], KEEP_TTL)]
    assert ranked[0] is not None and ranked[0] > 0  # (the delete's ranking, passed on)


async def test_a_dead_letter_fits_the_producers_request_whatever_its_headers() -> None:
    """Headers the broker took can make a letter the producer refuses, tried again
    forever (the batch stalled, at every restart): thousands of empty ones (0 bytes of
    names and values, not of record) or a forged ``recsys.redriven.from`` of 120 KB on
    a record of about 900 KB."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    worker = RecsysWorker(Settings(ratings_topic="r", items_topic="i", users_topic="u"))
    sent: list[tuple] = []

    class DeadLetters:
        async def send(self, key, value, headers, force=False):
            async def acknowledged() -> None:
                sent.append((key, value, headers))

            return acknowledged()

    worker.deadletter = DeadLetters()
    value = b"{" + b"x" * 899_000
    empty = [("", b"")] * 50_000
    forged = [("recsys.redriven.from", b"y" * 120_000), ("recsys.redriven.from", b"z")]
    for n, headers in enumerate((empty, forged)):
        record = ConsumerRecord("r", 0, n, 0, 0, b"u", value, None, 0, len(value), headers)
        await worker._dead_letter(record, "malformed JSON")
    for key, letter, headers in sent:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, letter, headers)
        assert size < 1_000_000 - 1024  # (Faust's producer: requests of 1,000,000 bytes)
    (_, _, first), (_, _, second) = sent
    assert dict(first)["recsys.truncated.headers_from"] == b"500000"  # (10 bytes each)
    marks = [v for n, v in second if n == "recsys.redriven.from"]
    assert marks == [b"y" * 256]  # (one: still marked as sent back once)
