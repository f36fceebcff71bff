"""Reading what a test produced back from a Kafka topic, for the tests that need it."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, ConsumerRecord


async def read_records(bootstrap: str, topic: str, n: int, timeout: float) -> list[ConsumerRecord]:
    """At least ``n`` records of ``topic`` from its start (all that came in the fetches
    that reached ``n``); ``TimeoutError`` after ``timeout`` seconds."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[ConsumerRecord] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < n:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    got += messages
    finally:
        await consumer.stop()
    return got
