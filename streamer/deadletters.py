"""The dead-letter topic, read and sent back: what ``recsys-online deadletters`` does.

A worker sends every event it refuses to ``RECSYS_DEADLETTER_TOPIC`` with its original key
and bytes, the reason and where it came from (docs/streamer.md, "Dead letters"). Some
reasons go away once their cause is fixed: a rating of an item the catalog did not list
yet (``item_id: unknown item``) is good once the item is listed, and an event refused by
a bug fixed since may pass now. :func:`redrive` sends such dead letters back to the topic
and partition they came from, unchanged (key, value and their own headers, kept in the
letter) but for a header naming the dead letter (``recsys.redriven.from``), where the
worker takes them like any new event. A catalog or user event is not sent back when a
later event of its key follows it in the log: it would overwrite the newer state
(:func:`superseded`).

Each refused event is sent back at most once, whatever the runs and their filters:
before sending one, :func:`redrive` claims its source record in a Redis hash
(``{prefix}redrive:{topic}``, one ``topic:partition:offset`` field per event sent back,
so two dead letters of one record, as a worker reprocessing after a crash may write,
count once), as *pending*, with the letter, the time and its partition's end offset
before the send; once Kafka acknowledges the
copy the field says *sent*. A send Kafka refused before the copy left releases the
claim, for a later run. A claim left pending (the run stopped, or the acknowledgement
was lost: the copy may or may not be in the topic) is settled by the next run that
selects the letter, a minute on (before, it may be another run's send in flight): it
looks for the copy in the source partition from the claim's offset, by its
``recsys.redriven.from`` header, and marks the claim sent if it is there, or sends it
if not. The producer is idempotent, so its own retries add no second copy. Claims whose
dead letters left the topic (retention, below the partition's start) are dropped. An
event that comes back refused again carries ``recsys.redriven.from`` into its new dead
letter (the worker copies it) and is not sent back a second time. (Runs before this
ledger kept a Redis set, ``{prefix}redriven:{topic}``: its members count as sent.)
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from streamer.client import aclose_client, redis_client
from streamer.metrics import deadletter_kind
from streamer.partitions import read_ranges, standalone_consumer
from streamer.settings import Settings

SHOWN_BYTES = 200  # of a dead letter's value shown when listing


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, with its headers read."""

    partition: int
    offset: int
    timestamp: float  # when it was dead-lettered, epoch seconds
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    truncated_from: int | None = None  # the original size, when the value was cut
    truncated_key_from: int | None = None  # the original size, when the key was cut
    redriven_from: str | None = None  # the event was sent back once already: from where
    # The refused record's own headers (not the project's ``recsys.*``), as it had them
    original_headers: tuple[tuple[str, bytes | None], ...] = ()
    truncated_headers_from: int | None = None  # their size, when too large to keep

    @classmethod
    def from_record(cls, record: ConsumerRecord) -> DeadLetter:
        """Read a dead-letter record (headers a worker did not write read as unknown).

        >>> r = ConsumerRecord("dlq", 0, 5, 1_700_000_000_000, 0, b"u1", b"{", None, 0, 1,
        ...                    [("recsys.reason", b"malformed JSON"),
        ...                     ("recsys.source.topic", b"recsys.ratings"),
        ...                     ("recsys.source.partition", b"3"),
        ...                     ("recsys.source.offset", b"41")])
        >>> d = DeadLetter.from_record(r)
        >>> d.reason, d.source_topic, d.source_partition, d.source_offset, d.offset
        ('malformed JSON', 'recsys.ratings', 3, 41, 5)
        """
        headers = {name: value for name, value in record.headers or ()}

        def text(name: str, default: str = "") -> str:
            raw = headers.get(name)
            return default if raw is None else raw.decode("utf-8", "replace")

        def number(name: str) -> int | None:  # (a header another producer wrote: any)
            return _number(headers.get(name))

        return cls(
            partition=record.partition,
            offset=record.offset,
            timestamp=(record.timestamp or 0) / 1000.0,
            reason=text("recsys.reason", "(no reason header)"),
            source_topic=text("recsys.source.topic"),
            source_partition=_or(number("recsys.source.partition"), -1),
            source_offset=_or(number("recsys.source.offset"), -1),
            # (A record with neither key nor value was dead-lettered with an empty key.)
            key=None if text("recsys.source.key") == "none" else record.key,
            value=record.value,
            truncated_from=number("recsys.truncated.from"),
            truncated_key_from=number("recsys.truncated.key_from"),
            redriven_from=text("recsys.redriven.from") or None,
            original_headers=tuple(
                (n, v) for n, v in record.headers or () if not n.startswith("recsys.")
            ),
            truncated_headers_from=number("recsys.truncated.headers_from"),
        )

    @property
    def id(self) -> str:
        """``partition:offset`` in the dead-letter topic."""
        return f"{self.partition}:{self.offset}"

    @property
    def source(self) -> str:
        """``topic:partition:offset`` of the refused record: what the ledger keeps."""
        return f"{self.source_topic}:{self.source_partition}:{self.source_offset}"

    def row(self) -> dict:
        """A JSON-friendly summary (key and value as text, the value cut to
        ``SHOWN_BYTES``; both whole, base64-encoded, in ``key_b64`` and ``value_b64``)."""
        value = None if self.value is None else _shown(self.value[:SHOWN_BYTES])
        return {
            "id": self.id,
            "dead_lettered_at": self.timestamp,
            "reason": self.reason,
            "source": f"{self.source_topic}[{self.source_partition}]@{self.source_offset}",
            "key": None if self.key is None else _shown(self.key),
            "value": value,
            "bytes": None if self.value is None else len(self.value),
            "truncated_from": self.truncated_from,
            "truncated_key_from": self.truncated_key_from,
            "redriven_from": self.redriven_from,
            "headers": [[n, None if v is None else _shown(v)] for n, v in self.original_headers],
            "truncated_headers_from": self.truncated_headers_from,
            # (the bytes themselves, whole: ``key`` and ``value`` above are for reading)
            "key_b64": None if self.key is None else base64.b64encode(self.key).decode(),
            "value_b64": None if self.value is None else base64.b64encode(self.value).decode(),
        }


def matching(
    reason: str | None = None, topic: str | None = None, kind: str | None = None
) -> Callable[[DeadLetter], bool]:
    """A filter: the reason contains ``reason``, the source topic is ``topic`` and the
    reason is of ``kind`` (:func:`~streamer.metrics.deadletter_kind`, as the metrics
    count them), each when given.

    >>> d = DeadLetter(0, 0, 0.0, "item_id: unknown item 'i9'", "recsys.ratings", 0, 0,
    ...                b"u1", b"{}")
    >>> matching("unknown item")(d), matching(topic="recsys.items")(d)
    (True, False)
    >>> matching(kind="unknown_item")(d), matching(kind="malformed")(d)
    (True, False)
    """
    return lambda d: (
        (reason is None or reason in d.reason)
        and (topic is None or d.source_topic == topic)
        and (kind is None or deadletter_kind(d.reason) == kind)
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _shown(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


async def _consumer(settings: Settings) -> AIOKafkaConsumer:
    """A started consumer outside any group (stopped again if it cannot start)."""
    # With exactly_once a worker's dead letters go out in its transactions: an aborted
    # one's letters are not dead letters, whatever these settings' guarantee.
    consumer = standalone_consumer(settings, isolation_level="read_committed")
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    return consumer


READ_TIMEOUT_S = 60.0  # a read of the topic that gets no record for this long is left


class TopicNotReadToEnd(RuntimeError):
    """The dead-letter topic could not be read to its end in time (a transaction left
    open holds ``read_committed`` readers back)."""


async def _read(consumer: AIOKafkaConsumer, topic: str, last: int | None) -> list[DeadLetter]:
    """The topic's records, up to its end when called (the ``last`` of each partition
    when given), by partition and offset; :class:`TopicNotReadToEnd` past
    ``READ_TIMEOUT_S`` (a redrive must see the whole topic to know what it sent)."""
    ranges = await _ranges(consumer, topic, last)
    if not ranges:
        return []
    return [DeadLetter.from_record(r) for r in await _read_ranges(consumer, ranges, topic)]


async def _ranges(
    consumer: AIOKafkaConsumer, topic: str, last: int | None = None
) -> dict[TopicPartition, tuple[int, int]]:
    """The offsets ``[start, end)`` of each partition of ``topic`` up to its end now (its
    ``last`` records when given); none when the brokers know no partition of it."""
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:  # (not in the metadata yet)
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return {}
    first = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    return {
        tp: (first[tp] if last is None else max(first[tp], end[tp] - last), end[tp]) for tp in tps
    }


async def _read_ranges(
    consumer: AIOKafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]], topic: str
) -> list[ConsumerRecord]:
    """The records at offsets ``[start, end)`` of each partition of ``ranges``;
    :class:`TopicNotReadToEnd` past ``READ_TIMEOUT_S``."""
    return [r async for chunk in _chunks(consumer, ranges, topic) for r in chunk]


async def _chunks(
    consumer: AIOKafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]], topic: str
) -> AsyncIterator[list[ConsumerRecord]]:
    """:func:`_read_ranges`' records, chunk by chunk as fetched."""
    left = {tp for tp, (start, stop) in ranges.items() if start < stop}
    deadline = time.monotonic() + READ_TIMEOUT_S
    chunks = read_ranges(consumer, ranges)
    try:
        while left:
            if time.monotonic() > deadline:
                raise TopicNotReadToEnd(
                    f"{topic} could not be read to its end: no record for "
                    f"{READ_TIMEOUT_S:.0f} s (a transaction left open?): try again"
                )
            records, left = await anext(chunks)
            if records:  # (a large topic read steadily takes what it takes)
                deadline = time.monotonic() + READ_TIMEOUT_S
            yield records
    finally:
        await chunks.aclose()


async def superseded(
    settings: Settings, chosen: Sequence[DeadLetter], letters: Sequence[DeadLetter] = ()
) -> dict[str, str]:
    """Why each catalog or user dead letter of ``chosen`` must not be sent back: a later
    record of its key in its source partition (by dead letter id). A later record that
    was refused too (among ``letters``, every dead letter read) and is sent back with it,
    or can never be, does not count.

    An item or user event sets that key's state, the latest record in the log winning
    (the topics are compacted by key). Sent back, an event refused before a newer one
    of the same key would be the latest, and overwrite the newer state, in the workers
    and, after compaction, for good. (A letter without a key sets no key's state.)
    """
    catalog = {settings.items_topic, settings.users_topic}
    mine = [d for d in chosen if d.source_topic in catalog and d.key]
    if not mine:
        return {}
    start: dict[TopicPartition, int] = {}
    wanted: set[tuple[TopicPartition, bytes | None]] = set()
    for d in mine:
        tp = TopicPartition(d.source_topic, d.source_partition)
        start[tp] = min(start.get(tp, d.source_offset), d.source_offset)
        wanted.add((tp, d.key))
    # Later refused events that will not come back (never sendable, or not chosen: they
    # may be sent back another time, and then they are the newer state) hold nothing;
    # chosen ones are sent after the older ones, in offset order.
    chosen_ids = {d.id for d in chosen}
    refused = {
        (d.source_topic, d.source_partition, d.source_offset)
        for d in letters
        if d.id in chosen_ids or _unsendable(settings, d) is not None
    }
    latest: dict[tuple[TopicPartition, bytes | None], int] = {}
    consumer = await _consumer(settings)
    try:
        end = await consumer.end_offsets(list(start))
        for topic in sorted({tp.topic for tp in start}):
            ranges = {tp: (o + 1, end[tp]) for tp, o in start.items() if tp.topic == topic}
            async for chunk in _chunks(consumer, ranges, topic):  # (keys kept, not values)
                for r in chunk:
                    at = (TopicPartition(r.topic, r.partition), r.key)
                    if at in wanted and (r.topic, r.partition, r.offset) not in refused:
                        latest[at] = max(latest.get(at, -1), r.offset)
    finally:
        await consumer.stop()
    out = {}
    for d in mine:
        later = latest.get((TopicPartition(d.source_topic, d.source_partition), d.key), -1)
        if later > d.source_offset:
            out[d.id] = (
                f"a later event of its key (offset {later}) holds the newer state, which "
                "this one would overwrite"
            )
    return out


async def refused_offsets(
    settings: Settings,
    wanted: Mapping[str, Iterable[int]],
    interrupted: Callable[[], bool] = bool,
) -> dict[str, dict[int, set[int]]] | None:
    """The offsets workers refused of the ``wanted`` partitions of each source topic
    (``{topic: partitions}``): the sources of the dead-letter topic's letters, read to
    the topic's end with a consumer of their own, keeping only the offsets (not the
    letters). A worker reading a partition again (a replay, the catalog at a start)
    skips them, as live did, so a record judged by the clock (a timestamp more than a
    day ahead) is not taken later once the clock caught up. None when ``interrupted()``
    turns true between two fetches (a rebalance began); :class:`TopicNotReadToEnd` past
    ``READ_TIMEOUT_S``."""
    topic = settings.deadletter_topic
    out = {source: {p: set() for p in partitions} for source, partitions in wanted.items()}
    # (by the header's bytes: a topic name read as text for every letter was most of
    # the read's time)
    wanted_raw = {source.encode(): by_partition for source, by_partition in out.items()}
    consumer = await _consumer(settings)
    try:
        ranges = await _ranges(consumer, topic)
        if not ranges:
            raise TopicNotReadToEnd(f"{topic} has no partitions in the brokers' metadata")
        async for chunk in _chunks(consumer, ranges, topic):
            if interrupted():
                return None
            for record in chunk:
                topic_raw, partition, offset = source_of(record)
                offsets = wanted_raw.get(topic_raw, {}).get(partition)
                if offsets is not None and offset is not None:
                    offsets.add(offset)
    finally:
        await consumer.stop()
    return out


def source_of(record: ConsumerRecord) -> tuple[bytes | None, int | None, int | None]:
    """The source topic (as the header's bytes), partition and offset a dead letter names,
    each None when its header is missing or not a number: what :func:`refused_offsets`
    needs of every letter, read without building a :class:`DeadLetter` (a tenth of the
    time). Read as :meth:`DeadLetter.from_record` reads them (the last of repeated
    headers).

    >>> r = ConsumerRecord("dlq", 0, 5, 0, 0, None, b"{", None, 0, 1,
    ...                    [("recsys.source.topic", b"recsys.ratings"),
    ...                     ("recsys.source.partition", b"3"),
    ...                     ("recsys.source.offset", b"x41")])
    >>> source_of(r)
    (b'recsys.ratings', 3, None)
    """
    topic = partition = offset = None
    for name, value in record.headers or ():
        if name == "recsys.source.topic":
            topic = value
        elif name == "recsys.source.partition":
            partition = value
        elif name == "recsys.source.offset":
            offset = value
    return topic, _number(partition), _number(offset)


def _number(raw: bytes | None) -> int | None:
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


async def read_dead_letters(settings: Settings, last: int | None = None) -> list[DeadLetter]:
    """Every dead letter of ``settings.deadletter_topic`` (or the ``last`` of each
    partition), oldest first within a partition."""
    consumer = await _consumer(settings)
    try:
        return await _read(consumer, settings.deadletter_topic, last)
    finally:
        await consumer.stop()


@dataclass
class RedriveReport:
    """What one :func:`redrive` run did, by dead letter (``partition:offset`` ids)."""

    sent: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # sent back by an earlier run
    unsendable: dict[str, str] = field(default_factory=dict)  # id -> why not
    failed: dict[str, str] = field(default_factory=dict)  # id -> Kafka's error (released)
    # id -> Kafka's error, where the copy may have reached the topic: claimed, pending
    # (a later run looks for it, and sends it only if it is not there)
    unconfirmed: dict[str, str] = field(default_factory=dict)
    in_progress: list[str] = field(default_factory=list)  # pending, claimed a moment ago
    # sent back without their own headers: more than a dead letter keeps (their size)
    without_headers: dict[str, int] = field(default_factory=dict)
    matched: int = 0
    read: int = 0


def ledger_key(settings: Settings) -> str:
    """The Redis hash of the events claimed for sending back: ``topic:partition:offset``
    of each -> ``sent {letter id}`` or ``pending {letter id} {claimed at, ms} {end offset}``."""
    return settings.key("redrive", settings.deadletter_topic)


def legacy_ledger_key(settings: Settings) -> str:
    """The Redis set earlier versions kept of the events sent back (read as sent)."""
    return settings.key("redriven", settings.deadletter_topic)


PENDING_GRACE_S = 60.0  # a pending claim younger than this may be another run's send


def _unsendable(settings: Settings, d: DeadLetter) -> str | None:
    if d.redriven_from is not None:
        return f"it was sent back once already ({d.redriven_from}) and refused again"
    if d.key is None and d.value is None:
        return "it holds neither a key nor a value"
    if d.truncated_from is not None:
        return f"its value was cut ({d.truncated_from} bytes, more than a dead letter holds)"
    if d.truncated_key_from is not None:
        return f"its key was cut ({d.truncated_key_from} bytes, more than a dead letter holds)"
    if d.source_partition < 0 or d.source_offset < 0:  # (not a worker's letter)
        return "its source partition or offset is unknown"
    if deadletter_kind(d.reason) == "duplicate":  # (learned once: again, it would count twice)
        return "it repeats a rating already learned"
    if deadletter_kind(d.reason) in ("wrong_key", "bad_tombstone"):  # (its key was refused)
        return "it would go back with the key it was refused for: its producer must send it anew"
    if deadletter_kind(d.reason) == "wrong_partition":  # (a copy goes to its partition)
        return (
            "it would go back to the partition it was refused on: its producer must send it "
            "anew, partitioned by murmur2"
        )
    if d.value is None and d.source_topic == settings.ratings_topic:
        return "it is a tombstone on the ratings topic, which takes none: refused again"
    topics = (settings.ratings_topic, settings.items_topic, settings.users_topic)
    if d.source_topic not in topics:
        return f"its source {d.source_topic!r} is not one of this deployment's topics"
    return None


async def redrive(
    settings: Settings,
    select: Callable[[DeadLetter], bool],
    dry_run: bool = False,
) -> RedriveReport:
    """Send the selected dead letters back to their source topics, each refused event at
    most once (module docstring); ``dry_run`` reports what would be sent and sends
    nothing (and changes nothing)."""
    letters = await read_dead_letters(settings)
    report = RedriveReport(read=len(letters))
    chosen = [d for d in letters if select(d)]
    report.matched = len(chosen)
    store = redis_client(
        settings.redis_url, cluster=settings.redis_cluster, asynchronous=True, socket_timeout=10
    )
    ledger = _Ledger(store, settings)
    producer = (
        None
        if dry_run
        else AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            **settings.kafka_security(),
            acks="all",
            enable_idempotence=True,  # (its retries of a send write one copy)
            request_timeout_ms=15_000,
        )
    )
    try:
        if not dry_run:
            await ledger.migrate()
            await ledger.prune(letters)
        later = await superseded(settings, chosen, letters)
        state = await ledger.states([d.source for d in chosen])
        now_ms = await ledger.now_ms()  # (Redis's clock: every run judges by the same one)
        stale = [d for d in chosen if _stale_pending(state.get(d.source), now_ms)]
        stale_ids = {d.id for d in stale}
        # Where each source partition ends before any send (a copy sent now lands there or
        # past it), and what of the stale claims' copies is there.
        # (only the partitions a copy may go to: asked of a topic gone, or a partition
        # past its count, the broker has no answer, and the whole redrive would wait)
        refusal = {d.id: _unsendable(settings, d) for d in chosen}
        sources = {
            TopicPartition(d.source_topic, d.source_partition)
            for d in chosen
            if refusal[d.id] is None
        }
        ends, found, unknown = await _copies_found(settings, sources, stale, state, letters)
        if producer is not None:
            await producer.start()
        pending, planned = [], set()
        for d in chosen:
            held = state.get(d.source)
            why = refusal[d.id]
            if why is None and d.id in later and held is None:
                why = later[d.id]  # (a later record that is its own copy, sent back: already)
            if why is not None:
                report.unsendable[d.id] = why
                continue
            if d.source in planned:  # (a second letter of one event, this run)
                report.already.append(d.id)
                continue
            planned.add(d.source)
            if held is not None and held.startswith("pending") and d.id not in stale_ids:
                report.in_progress.append(d.id)
                continue
            # A stale pending claim of a catalog or user event with a later record of its
            # key: its copy (compaction may have kept only a newer one), or a newer event,
            # which a copy sent now would overwrite. Settled either way, as sent.
            settled = d.source in found or d.id in later
            if held is not None and (held.startswith("sent") or settled):
                if not dry_run and not held.startswith("sent"):
                    await ledger.mark_sent(d.source, held)
                report.already.append(d.id)
                continue
            if d.source in unknown:  # (no later run could tell either: at most once)
                if not dry_run:
                    await ledger.mark_sent(d.source, held or "")
                report.unconfirmed[d.id] = unknown[d.source] + ": kept as sent, not sent again"
                continue
            if dry_run:
                report.sent.append(d.id)
                continue
            # Claimed now, or a stale pending claim whose copy is not there taken over
            # (as it was read: another run may have taken it meanwhile).
            end = ends[TopicPartition(d.source_topic, d.source_partition)]
            if not await ledger.claim(d.source, d.id, end, held):
                report.already.append(d.id)  # (claimed by another run meanwhile)
                continue
            headers = [  # (its own headers as they were, then the letter it came from)
                *d.original_headers,
                ("recsys.redriven.from", f"{settings.deadletter_topic}[{d.id}]".encode()),
                ("recsys.redriven.at", f"{time.time():.3f}".encode()),
            ]
            try:
                sent = await producer.send(
                    d.source_topic,
                    d.value,
                    key=d.key,
                    partition=d.source_partition,  # (after its key's other events)
                    headers=headers,
                )
            except Exception as exc:  # refused before it left: released for a later run
                await ledger.release(d.source)
                report.failed[d.id] = f"{type(exc).__name__}: {exc}"
                continue
            pending.append((d, sent))
        for d, sent in pending:  # (each marked sent as its acknowledgement comes)
            try:
                await sent
            except Exception as exc:  # it may have reached the topic: left pending
                report.unconfirmed[d.id] = f"{type(exc).__name__}: {exc}"
                continue
            await ledger.mark_sent(d.source, f"sent {d.id}")
            report.sent.append(d.id)
            if d.truncated_headers_from is not None:
                report.without_headers[d.id] = d.truncated_headers_from
    finally:
        if producer is not None:
            await producer.stop()
        await aclose_client(store)
    return report


def _stale_pending(held: str | None, now_ms: int) -> bool:
    """A pending claim old enough (by Redis's clock, ms) that no run's send of it is
    still in flight.

    >>> _stale_pending("pending 0:3 1000 7", 61_000), _stale_pending("pending 0:3 1000", 2_000)
    (True, False)
    >>> _stale_pending("sent 0:3", 10**12), _stale_pending(None, 0), _stale_pending("pending x", 0)
    (False, False, True)
    """
    if held is None or not held.startswith("pending"):
        return False
    parts = held.split()
    if len(parts) < 3 or not parts[2].isdigit():  # (unreadable: as old as can be)
        return True
    return now_ms - int(parts[2]) >= PENDING_GRACE_S * 1000


async def _copies_found(
    settings: Settings,
    sources: set[TopicPartition],
    stale: Sequence[DeadLetter],
    state: Mapping[str, str],
    letters: Sequence[DeadLetter],
) -> tuple[dict[TopicPartition, int], set[str], dict[str, str]]:
    """Each of ``sources``' end offset now, and of the ``stale`` letters' events (each
    with a stale pending claim in ``state``): those whose copy is in their source
    partition, and those whose copy may have been and is gone (why, by event).

    A copy is a record, at or past the partition's end when the claim was taken (in the
    claim; the partition's start for a claim that does not say, which this code never
    writes), whose ``recsys.redriven.from`` header names the claim's letter or any
    letter of the same event. Where the partition's start has passed that point
    (retention), whether it was sent cannot be told."""
    dlq = settings.deadletter_topic
    by_source: dict[str, list[str]] = {}
    for d in letters:
        by_source.setdefault(d.source, []).append(d.id)
    wanted: dict[TopicPartition, dict[bytes, str]] = {}
    from_offset: dict[TopicPartition, int] = {}
    own_offset: dict[str, int] = {}  # each claim's own
    for d in stale:
        tp = TopicPartition(d.source_topic, d.source_partition)
        parts = state[d.source].split()
        named = [parts[1]] if len(parts) > 1 else []
        for letter in named + by_source.get(d.source, []):
            wanted.setdefault(tp, {})[f"{dlq}[{letter}]".encode()] = d.source
        offset = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
        own_offset[d.source] = offset
        from_offset[tp] = min(from_offset.get(tp, offset), offset)
    tps = list(sources | set(wanted))
    if not tps:
        return {}, set(), {}
    found: set[str] = set()
    unknown: dict[str, str] = {}
    consumer = await _consumer(settings)
    try:
        end = await consumer.end_offsets(tps)
        if not wanted:
            return end, found, unknown
        first = await consumer.beginning_offsets(list(wanted))
        for tp, names in wanted.items():
            for source in set(names.values()):
                offset = own_offset[source]
                if first[tp] > offset:  # (its records are gone)
                    unknown[source] = (
                        f"whether it was sent cannot be told: {tp.topic}[{tp.partition}] "
                        f"now starts at {first[tp]}, past {offset} where its copy would be"
                    )
        ranges = {tp: (max(o, first[tp]), end[tp]) for tp, o in from_offset.items()}
        for topic in sorted({tp.topic for tp in ranges}):
            mine = {tp: r for tp, r in ranges.items() if tp.topic == topic}
            async for chunk in _chunks(consumer, mine, topic):
                for record in chunk:
                    names = wanted[TopicPartition(record.topic, record.partition)]
                    for name, value in record.headers or ():
                        if name == "recsys.redriven.from" and value in names:
                            found.add(names[value])
    finally:
        await consumer.stop()
    return end, found, {s: why for s, why in unknown.items() if s not in found}


# Set a hash field to ARGV[3] only while it holds ARGV[2] (one key: any Redis, a cluster's).
_TAKE_OVER = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""


class _Ledger:
    """The redrive's claims in Redis (:func:`ledger_key`): one hash, so each claim is
    one command, whatever the Redis (a cluster included)."""

    def __init__(self, store: aioredis.Redis, settings: Settings) -> None:
        self.store, self.key = store, ledger_key(settings)
        self.legacy = legacy_ledger_key(settings)

    async def migrate(self) -> None:
        """The members of an earlier version's set become sent claims. The set stays,
        read as sent too: a run of that version during an upgrade still sees them."""
        for member in await self.store.smembers(self.legacy):
            await self.store.hsetnx(self.key, member, "sent")

    async def now_ms(self) -> int:
        """Redis's clock, in ms (every run's claims stamped and judged by one clock)."""
        answer = await self.store.time()
        if isinstance(answer, dict):  # (a cluster: a node's, any)
            answer = next(iter(answer.values()))
        seconds, micros = answer
        return int(seconds) * 1000 + int(micros) // 1000

    async def states(self, sources: Sequence[str]) -> dict[str, str]:
        """The claim of each of ``sources`` that has one (an earlier version's set read
        too: a dry run migrates nothing)."""
        if not sources:
            return {}
        unique = list(dict.fromkeys(sources))
        values = await self.store.hmget(self.key, unique)
        out = {s: v.decode() for s, v in zip(unique, values, strict=True) if v is not None}
        old = {m.decode() for m in await self.store.smembers(self.legacy)}
        for source in unique:
            if source in old:  # (sent, by a run of the earlier version: whatever the hash says)
                out[source] = "sent"
        return out

    async def claim(self, source: str, letter: str, end: int, held: str | None = None) -> bool:
        """Claim ``source`` as pending, with the letter, Redis's time and the end offset
        of its partition before the send: unclaimed (``held`` None), or taking over the
        stale claim ``held`` if it is still that; False if another run holds it."""
        value = f"pending {letter} {await self.now_ms()} {end}"
        if held is None:
            return bool(await self.store.hsetnx(self.key, source, value))
        return bool(await self.store.eval(_TAKE_OVER, 1, self.key, source, held, value))

    async def mark_sent(self, source: str, held: str) -> None:
        parts = held.split()
        letter = parts[1] if len(parts) > 1 else ""
        await self.store.hset(self.key, source, f"sent {letter}".rstrip())

    async def release(self, source: str) -> None:
        await self.store.hdel(self.key, source)

    async def prune(self, letters: Sequence[DeadLetter]) -> None:
        """Drop the claims whose dead letters left the topic: the claim's letter below
        its partition's start now (retention only moves it forward: no other run's
        letter can be taken for gone), and no letter read naming its event (a worker
        reprocessing after a crash may have written a second one, still there). Claims
        naming no letter (an earlier version's) go when no letter names their event."""
        claims = {k.decode(): v.decode() for k, v in (await self.store.hgetall(self.key)).items()}
        if not claims or not letters:
            return
        starts: dict[int, int] = {}
        for d in letters:
            starts[d.partition] = min(starts.get(d.partition, d.offset), d.offset)
        named = {d.source for d in letters}
        gone = []
        for source, held in claims.items():
            if source in named:
                continue
            parts = held.split()
            if len(parts) < 2:
                gone.append(source)
                continue
            partition, _, offset = parts[1].partition(":")
            if not (partition.isdigit() and offset.isdigit()):
                continue
            first = starts.get(int(partition))
            if first is not None and int(offset) < first:
                gone.append(source)
        if gone:
            await self.store.hdel(self.key, *gone)
