"""What a replay's read of the dead-letter topic costs (``refused_offsets``).

Every replay reads the whole dead-letter topic first, to skip the ratings refused live.
This writes ``--letters`` dead letters (a rating's bytes, the worker's headers) to a
topic of its own on the real broker, times ``refused_offsets`` over it three times, each
after a fetch of the same records that reads nothing of them (the floor, alternated in the
same run), and deletes the topic. Needs the services: ``eval "$(scripts/services.sh up)"``.

Usage::

    python -m benchmarks.bench_deadletters [--letters 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamer import deadletters
from streamer.deadletters import refused_offsets
from streamer.settings import Settings


async def run(bootstrap: str, letters: int) -> None:
    topic = f"bench-deadletters-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1_000_000
        )
        await producer.start()
        value = b'{"user_id":"u123","item_id":"i456","rating":4.0,"timestamp":1700000000.0}'
        try:
            for j in range(letters):
                headers = [
                    ("recsys.reason", b"item_id: unknown item 'i456'"),
                    ("recsys.source.topic", b"recsys.ratings"),
                    ("recsys.source.partition", str(j % 8).encode()),
                    ("recsys.source.offset", str(j).encode()),
                ]
                await producer.send(topic, value, key=b"u123", headers=headers)
            await producer.flush()
        finally:
            await producer.stop()
        settings = Settings(brokers=bootstrap, deadletter_topic=topic)
        for _ in range(3):  # alternated with the floor: the same records fetched, unread
            floor = await _fetch_only(settings)
            started = time.perf_counter()
            found = await refused_offsets(settings, {settings.ratings_topic: range(8)})
            elapsed = time.perf_counter() - started
            offsets = sum(map(len, (found or {}).get(settings.ratings_topic, {}).values()))
            print(
                f"{letters:,} letters read in {elapsed:.2f} s ({letters / elapsed:,.0f}/s), "
                f"{offsets:,} offsets; the fetch alone {floor:.2f} s "
                f"({elapsed / floor:.2f}x of it)"
            )
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def _fetch_only(settings: Settings) -> float:
    """Seconds to fetch the whole topic the way ``refused_offsets`` does, reading nothing
    of the records: the floor any reading of the letters adds to."""
    started = time.perf_counter()
    consumer = await deadletters._consumer(settings)
    try:
        ranges = await deadletters._ranges(consumer, settings.deadletter_topic)
        async for _ in deadletters._chunks(consumer, ranges, settings.deadletter_topic):
            pass
    finally:
        await consumer.stop()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--letters", type=int, default=100_000)
    args = parser.parse_args(argv)
    asyncio.run(run(os.environ["KAFKA_BOOTSTRAP_SERVERS"], args.letters))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
