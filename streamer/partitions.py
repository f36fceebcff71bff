"""Reading Kafka partitions outside the consumer group, with the deployment's settings:
what the worker's catalog follower and replays use, and ``recsys-online deadletters``
(which must not import Faust to start).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamer import kafka_records
from streamer.settings import Settings

# Every consumer the project makes (the worker's, its replays', the catalog reader's,
# the dead-letter commands') reads header names that are not UTF-8 instead of stopping.
kafka_records.install()


def standalone_consumer(settings: Settings, **options: object) -> AIOKafkaConsumer:
    """A consumer outside the group that commits nothing: the catalog follower, replays
    and the item-changes follower assign their partitions themselves. ``options`` are
    aiokafka's, and take precedence.

    It reads what the group's consumer reads: with ``exactly_once``, Faust's consumer
    skips events of aborted transactions (``read_committed``), so a replay must too, or
    it would learn ratings that were never learned live."""
    committed = settings.processing_guarantee == "exactly_once"
    kwargs: dict[str, object] = {
        "bootstrap_servers": settings.bootstrap_servers,
        **settings.kafka_security(),
        "group_id": None,
        "enable_auto_commit": False,
        "isolation_level": "read_committed" if committed else "read_uncommitted",
    }
    return AIOKafkaConsumer(**(kwargs | options))


async def read_ranges(
    consumer: AIOKafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]], batch: int = 5_000
) -> AsyncIterator[tuple[list, set[TopicPartition]]]:
    """The records at offsets ``[start, end)`` of each partition of ``ranges``, read
    together (one assignment), in fetched chunks, each with the partitions still short of
    their end; between chunks the event loop runs the catalog follower and the timers."""
    todo = {tp: (start, end) for tp, (start, end) in ranges.items() if start < end}
    if not todo:
        return
    consumer.assign(list(todo))
    await consumer.seek_to_beginning(*todo)  # (waits until the assignment is in effect)
    for tp, (start, _) in todo.items():
        if start:
            consumer.seek(tp, start)
    while todo:
        fetched = await consumer.getmany(*todo, timeout_ms=200, max_records=batch)
        records = [
            record
            for tp, got in fetched.items()
            for record in got
            if ranges[tp][0] <= record.offset < ranges[tp][1]
        ]
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp][1]:
                del todo[tp]
        yield records, set(todo)
        await asyncio.sleep(0)
