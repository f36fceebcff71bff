"""A producer that is not Python: Kafka's own console producer (what
``kafka-console-producer.sh`` runs) sends the README's example line, and the event is
what the worker accepts."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess

import pytest
from aiokafka import AIOKafkaConsumer

from schemas import RatingEvent, parse_event

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

# The README's example, verbatim apart from the topic: key|value, one event per line.
README_LINE = """u42|{"user_id":"u42","item_id":"i7","rating":4.5,"timestamp":1764180000}"""


def kafka_classpath() -> str:
    # (as scripts/services.sh keeps them: RECSYS_CACHE_DIR/kafka-<version>/libs; the newest)
    cache = os.environ.get("RECSYS_CACHE_DIR") or os.path.expanduser("~/.cache/recsys-online")
    found = glob.glob(os.path.join(cache, "kafka-*", "libs"))
    newest = max(found, key=lambda p: os.path.getmtime(p), default="")
    libs = os.environ.get("RECSYS_KAFKA_LIBS") or newest
    if not libs or not glob.glob(os.path.join(libs, "kafka-tools-*.jar")):
        pytest.fail(
            'Kafka\'s jars are needed: `eval "$(scripts/services.sh up)"` exports '
            "RECSYS_KAFKA_LIBS",
            pytrace=False,
        )
    if shutil.which("java") is None:
        pytest.fail("java is needed to run Kafka's console producer", pytrace=False)
    return os.path.join(libs, "*")


async def read_one(bootstrap: str, topic: str):
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while True:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    return messages[0]
    finally:
        await consumer.stop()


def test_kafka_console_producer_line_is_a_valid_keyed_rating(kafka_bootstrap, topic_name):
    done = subprocess.run(
        [
            "java",
            "-cp",
            kafka_classpath(),
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            kafka_bootstrap,
            "--topic",
            topic_name,
            "--reader-property",
            "parse.key=true",
            "--reader-property",
            "key.separator=|",
        ],
        input=README_LINE + "\n",
        text=True,
        check=True,
        timeout=90,
        capture_output=True,
    )
    assert "deprecated" not in done.stderr, done.stderr  # (the README's flags, as they are now)
    message = asyncio.run(read_one(kafka_bootstrap, topic_name))
    assert message.key == b"u42"
    event = parse_event(message.value, RatingEvent)
    assert (event.user_id, event.item_id, event.rating) == ("u42", "i7", 4.5)
