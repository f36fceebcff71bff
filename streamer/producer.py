"""Producing events: validated with the schemas, keyed and routed to the right topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaProducer

from recsys_online.events import Event, ItemDelete, ItemUpsert, Rating
from schemas import ItemEvent, RatingEvent, UserEvent
from streamer.settings import Settings


class EventProducer:
    """Async producer for apps: every event is validated before it leaves the process.

    Ratings and user events are keyed by user id and items by item id, so one user's
    events stay in order on one partition. Sends are batched by the client (``linger_ms``);
    :meth:`flush` waits until everything sent so far is acknowledged and raises the first
    delivery error.
    """

    def __init__(self, settings: Settings, linger_ms: int = 5) -> None:
        self.settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, linger_ms=linger_ms, acks="all"
        )
        self._pending: list[asyncio.Future] = []

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self._producer.stop()

    async def send_rating(self, event: RatingEvent) -> None:
        await self._send(self.settings.ratings_topic, event.user_id, event.to_bytes())

    async def send_item(self, event: ItemEvent) -> None:
        await self._send(self.settings.items_topic, event.item_id, event.to_bytes())

    async def send_user(self, event: UserEvent) -> None:
        await self._send(self.settings.users_topic, event.user_id, event.to_bytes())

    async def send_core_event(self, event: Event) -> None:
        """Send one of the core's records (as read from a data file)."""
        if isinstance(event, Rating):
            await self.send_rating(
                RatingEvent(
                    user_id=event.user,
                    item_id=event.item,
                    rating=event.rating,
                    timestamp=event.timestamp,
                )
            )
        elif isinstance(event, ItemUpsert):
            await self.send_item(
                ItemEvent(
                    op="upsert",
                    item_id=event.item,
                    title=event.title or None,
                    tags=event.tags,
                    timestamp=event.timestamp,
                )
            )
        elif isinstance(event, ItemDelete):
            await self.send_item(
                ItemEvent(op="delete", item_id=event.item, timestamp=event.timestamp)
            )

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        self._pending.append(await self._producer.send(topic, key=key.encode(), value=value))
        if len(self._pending) >= 10_000:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        await self._producer.flush()
        for fut in pending:
            fut.result()  # raises the delivery error, if any


@asynccontextmanager
async def event_producer(settings: Settings) -> AsyncIterator[EventProducer]:
    producer = EventProducer(settings)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def stream_events(
    producer: EventProducer, events: Iterable[Event], rate: float, on_progress=None
) -> int:
    """Send events at a steady ``rate`` per second (catalog events do not count against it)."""
    started = time.monotonic()
    sent = 0
    for event in events:
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
