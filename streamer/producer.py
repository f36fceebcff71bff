"""Producing events: validated with the schemas, keyed and routed to the right topic."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from recsys_online.events import Event, ItemDelete, ItemUpsert, Rating
from schemas import EventError, ItemEvent, RatingEvent, UserEvent, validate_event
from streamer.settings import Settings

WireEvent = RatingEvent | ItemEvent | UserEvent


def route(settings: Settings, event: WireEvent) -> tuple[str, str]:
    """The topic and key of an event: ratings and user events by user, items by item.

    >>> route(Settings(), UserEvent(user_id="u1", tags=["jazz"], timestamp=1.0))
    ('recsys.users', 'u1')
    """
    if isinstance(event, RatingEvent):
        return settings.ratings_topic, event.user_id
    if isinstance(event, ItemEvent):
        return settings.items_topic, event.item_id
    if isinstance(event, UserEvent):
        return settings.users_topic, event.user_id
    raise TypeError(f"not a wire event: {event!r}")


def checked(settings: Settings, event: WireEvent) -> tuple[str, str, bytes]:
    """The topic, key and bytes of an event that passes what this deployment's workers
    check (its rating scale, payload limit, a timestamp at most a day ahead); else
    ``EventError``.

    >>> checked(Settings(), UserEvent(user_id="u1", tags=["jazz"], timestamp=1.0))[:2]
    ('recsys.users', 'u1')
    """
    expected(event, (RatingEvent, ItemEvent, UserEvent))
    raw = event.to_bytes()
    # Keyed by the event as the worker reads it: an id an app set around validation
    # (``model_copy(update=...)``) with surrounding spaces is read stripped.
    parsed = settings.parse(raw, type(event))  # (what the worker would dead-letter)
    return (*route(settings, parsed), raw)


def core_record(settings: Settings, event: Event) -> tuple[str, str, bytes]:
    """The topic, key and bytes of one of the core's records (as read from a data
    file), validated as the worker will, on the settings' rating scale: else
    ``EventError``, naming the record and the field (a tag of more than 64 characters,
    say)."""
    s = settings
    if isinstance(event, Rating):
        kind, fields = (
            RatingEvent,
            {
                "user_id": event.user,
                "item_id": event.item,
                "rating": event.rating,
                "timestamp": event.timestamp,
            },
        )
    elif isinstance(event, ItemUpsert):
        kind, fields = (
            ItemEvent,
            {
                "op": "upsert",
                "item_id": event.item,
                "title": event.title or None,
                "tags": event.tags,
                "timestamp": event.timestamp,
            },
        )
    elif isinstance(event, ItemDelete):
        kind, fields = (
            ItemEvent,
            {
                "op": "delete",
                "item_id": event.item,
                "timestamp": event.timestamp,
            },
        )
    else:
        raise TypeError(f"not an event: {event!r}")
    try:  # on the deployment's scale (half stars, 0-10...), as the worker validates
        wire = validate_event(fields, kind, rating_scale=(s.rating_low, s.rating_high))
        raw = wire.to_bytes()
        if len(raw) > s.max_payload_bytes:
            raise EventError(
                f"payload too large: {len(raw)} bytes, more than {s.max_payload_bytes}",
                code="oversized",
            )
    except EventError as reason:
        raise EventError(f"{event!r:.120}: {reason}", reason.field, code=reason.code) from None
    return (*route(s, wire), raw)


def expected(event: object, kind: type | tuple[type, ...]) -> Any:
    """``event`` if it is a ``kind``, else a ``TypeError`` naming what came instead.

    >>> expected({"user_id": "u1"}, RatingEvent)
    Traceback (most recent call last):
    ...
    TypeError: expected a RatingEvent, got a dict: {'user_id': 'u1'}
    """
    if not isinstance(event, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        names = " or ".join(k.__name__ for k in kinds)
        raise TypeError(f"expected a {names}, got a {type(event).__name__}: {event!r:.120}")
    return event


class DeliveryError(RuntimeError):
    """Kafka did not acknowledge an event (names the topic, the key and Kafka's error)."""


class EventProducer:
    """Async producer for apps: every event is validated before it leaves the process.

    Ratings and user events are keyed by user id and items by item id, so one user's
    events stay in order on one partition. Sends are batched by the client (``linger_ms``);
    :meth:`flush` waits until everything sent so far is acknowledged and raises
    :class:`DeliveryError` for the first event that was not.

    Examples
    --------
    ::

        async with event_producer(Settings.from_env()) as producer:
            await producer.send_rating(RatingEvent(user_id="u1", item_id="i9", rating=4.5,
                                                   timestamp=time.time()))
    """

    def __init__(self, settings: Settings | None = None, linger_ms: int = 5) -> None:
        self.settings = settings = settings or Settings.from_env()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            **settings.kafka_security(),
            linger_ms=linger_ms,
            acks="all",
            # A send the client retries (a lost acknowledgement) is written once.
            enable_idempotence=True,
            request_timeout_ms=15_000,
        )
        self._pending: list[tuple[str, str, asyncio.Future]] = []
        self._failed: list[tuple[str, str, BaseException]] = []  # for the next flush
        self.sent = 0

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise DeliveryError(
                f"cannot reach Kafka at {self.settings.bootstrap_servers}: {exc}"
            ) from None

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self._producer.stop()

    async def send(self, event: WireEvent) -> None:
        """Any event, to its topic with its key (:func:`route`), once it passes what this
        deployment's workers check (its rating scale, payload limit, a timestamp at most
        a day ahead, :func:`checked`): else ``EventError``, and nothing is sent.
        """
        await self._send(*checked(self.settings, event))

    async def send_rating(self, event: RatingEvent) -> None:
        await self.send(expected(event, RatingEvent))

    async def send_item(self, event: ItemEvent) -> None:
        await self.send(expected(event, ItemEvent))

    async def send_user(self, event: UserEvent) -> None:
        await self.send(expected(event, UserEvent))

    async def send_core_event(self, event: Event) -> None:
        """Send one of the core's records (as read from a data file), validated as the
        worker will, on the settings' rating scale (:func:`core_record`): ``EventError``
        names the record and the field when it breaks a rule."""
        await self._send(*core_record(self.settings, event))

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        try:
            fut = await self._producer.send(topic, key=key.encode(), value=value)
        except KafkaError as exc:
            raise DeliveryError(f"cannot send to {topic} (key {key!r}): {exc}") from None
        self._pending.append((topic, key, fut))
        self.sent += 1
        if len(self._pending) >= 10_000:
            # Bounded memory: wait for these acknowledgements; failures are kept for the
            # next flush (raised here, they would pass for this event's, which is sent).
            await self._settle()

    async def flush(self) -> None:
        """Wait until every event sent so far is acknowledged; raise ``DeliveryError``
        naming the first failure and how many failed since the last flush. A flush that
        is interrupted (a timeout, a cancellation) forgets nothing: the next one checks
        the same sends."""
        await self._settle()
        failed, self._failed = self._failed, []
        if failed:
            topic, key, exc = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise DeliveryError(f"event to {topic} (key {key!r}) not delivered: {exc}{more}")

    async def _settle(self) -> None:
        """Wait for the acknowledgements of the events sent so far, keeping the failures."""
        pending, self._pending = self._pending, []
        try:
            await self._producer.flush()
        except BaseException:
            self._pending = pending + self._pending
            raise
        undone = [entry for entry in pending if not entry[2].done()]
        self._pending = undone + self._pending
        self._failed += [
            (topic, key, fut.exception())
            for topic, key, fut in pending
            if fut.done() and not fut.cancelled() and fut.exception() is not None
        ]


class SyncEventProducer:
    """The same producer for code without an event loop (scripts, Django/Flask views).

    Runs a private event loop in a thread of its own, which keeps sending between calls.
    Every ``send_*`` validates the event in the caller's thread (``EventError``, nothing
    sent) and returns once it is queued for that loop, in order (any number of threads
    may call them; a caller waits while ``QUEUE_MAX`` events wait to go);
    :meth:`flush` (and :meth:`close`, and leaving the ``with`` block) waits until Kafka
    acknowledged them, raising ``DeliveryError`` for the first that failed. Close it
    before the process exits: events still queued are lost otherwise.

    Examples
    --------
    ::

        with SyncEventProducer() as producer:   # brokers from KAFKA_BOOTSTRAP_SERVERS
            producer.send_rating(RatingEvent(user_id="u1", item_id="i9", rating=4.5,
                                             timestamp=time.time()))
    """

    QUEUE_MAX = 10_000

    def __init__(self, settings: Settings | None = None, linger_ms: int = 5) -> None:
        self._calls = threading.Condition()  # guards what follows
        self._queue: deque[tuple[str, str, bytes]] = deque()  # (topic, key, value) to send
        self._draining = False  # a task of the loop is sending what is queued
        self._task: asyncio.Task | None = None  # the drain (the loop's thread only)
        self._failed: list[DeliveryError] = []  # sends refused, for the next flush
        self._queued = self._done = 0  # events queued, and handed to the client, so far
        self._running: Counter[int] = Counter()  # calls under way on the loop, by thread
        self._closed = False  # no new call (a close began)
        self._stopped = False  # the close is done
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="recsys-event-producer", daemon=True
        )
        self._thread.start()

        async def started() -> EventProducer:
            producer = EventProducer(settings, linger_ms)  # aiokafka wants a running loop
            await producer.start()
            return producer

        try:
            self._producer = self._run(started())
        except BaseException:
            self._end_loop()
            raise
        self.settings = self._producer.settings

    def _run(self, coroutine):
        """Run ``coroutine`` on the producer's loop and wait for its result (a
        ``RuntimeError`` once the producer is closed)."""
        me = threading.get_ident()
        with self._calls:
            if self._closed:
                coroutine.close()
                raise RuntimeError("the producer is closed")
            self._running[me] += 1
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
        finally:
            with self._calls:
                self._running[me] -= 1
                self._calls.notify_all()

    def _end_loop(self) -> None:
        """Cancel what still runs on the loop (a call cut short: its caller gets
        ``CancelledError`` instead of waiting forever), then stop the loop and its thread."""

        async def cancel_the_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def send(self, event: WireEvent) -> None:
        """Queue any event for its topic and key once it passes what this deployment's
        workers check (:meth:`EventProducer.send`)."""
        topic, key, raw = checked(self.settings, event)
        with self._calls:
            self._calls.wait_for(lambda: len(self._queue) < self.QUEUE_MAX or self._closed)
            if self._closed:
                raise RuntimeError("the producer is closed")
            self._queue.append((topic, key, raw))
            self._queued += 1
            if not self._draining:
                self._draining = True
                self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        """Start a drain unless one runs (on the loop: a second wake is harmless)."""
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        """Send what is queued, in order, until nothing is (on the producer's loop)."""
        try:
            while True:
                with self._calls:
                    if not self._queue:
                        self._draining = False  # (with the check: no send in between)
                        self._calls.notify_all()
                        return
                    batch = list(self._queue)
                    self._queue.clear()
                    self._calls.notify_all()
                for topic, key, raw in batch:
                    try:
                        await self._producer._send(topic, key, raw)
                    except Exception as exc:
                        if not isinstance(exc, DeliveryError):
                            exc = DeliveryError(f"cannot send to {topic} (key {key!r}): {exc!r}")
                        with self._calls:
                            self._failed.append(exc)
                with self._calls:
                    self._done += len(batch)
                    self._calls.notify_all()
        except BaseException:
            with self._calls:
                self._draining = False
                self._calls.notify_all()
            raise

    def _sent(self, me: int) -> None:
        """Wait (holding ``_calls``) until the queue is sent and no other thread's call
        runs on the loop."""
        self._calls.wait_for(
            lambda: (
                not self._queue
                and not self._draining
                and sum(self._running.values()) == self._running[me]
            )
        )

    def send_rating(self, event: RatingEvent) -> None:
        self.send(expected(event, RatingEvent))

    def send_item(self, event: ItemEvent) -> None:
        self.send(expected(event, ItemEvent))

    def send_user(self, event: UserEvent) -> None:
        self.send(expected(event, UserEvent))

    def flush(self) -> None:
        """Wait until every event queued so far is acknowledged; ``DeliveryError`` for
        the first that was not."""
        with self._calls:  # (those queued so far: other threads may go on sending)
            queued = self._queued
            self._calls.wait_for(lambda: self._done >= queued or not self._draining)
        self._run(self._producer.flush())
        with self._calls:
            failed, self._failed = self._failed, []
        if failed:
            raise failed[0]

    def close(self) -> None:
        """Wait for what is queued and the calls under way (other threads': not one this
        thread's close interrupted, as from a signal handler), then flush and stop; later
        sends raise ``RuntimeError``. A close that was interrupted is finished by the next
        one; closing again after that does nothing."""
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("close the producer from outside its own loop")
        with self._calls:
            if self._stopped:
                return
            self._closed = True
            self._calls.notify_all()
            if self._queue:  # (a send interrupted before it woke the drain)
                self._loop.call_soon_threadsafe(self._wake)
            self._sent(threading.get_ident())
        try:
            asyncio.run_coroutine_threadsafe(self._producer.stop(), self._loop).result()
        finally:
            if not self._stopped:
                self._stopped = True
                self._end_loop()
        if self._failed:  # (refused before they left: said, as a flush says them)
            raise self._failed[0]

    def __enter__(self) -> SyncEventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@asynccontextmanager
async def event_producer(settings: Settings) -> AsyncIterator[EventProducer]:
    producer = EventProducer(settings)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def stream_events(
    producer: EventProducer,
    events: Iterable[Event],
    rate: float,
    on_progress=None,
    stamp_now: bool = False,
) -> int:
    """Send events at a steady ``rate`` per second (catalog events do not count against it).

    With ``stamp_now``, each event carries the time it is sent instead of its own, as an
    app sending events as they happen would: a recorded stream replayed at a high rate
    then keeps event time and wall time together.
    """
    started = time.monotonic()
    sent = 0
    for event in events:
        if stamp_now:
            event = replace(event, timestamp=time.time())
        await producer.send_core_event(event)
        if not isinstance(event, Rating):
            continue
        sent += 1
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0.005:
            await asyncio.sleep(ahead)
        if on_progress is not None and sent % 500 == 0:
            await on_progress(sent)
    await producer.flush()
    return sent
