"""The Faust side of bench_intake: an app that counts the events it receives, then exits.

Configured from the environment by ``benchmarks.bench_intake`` (``INTAKE_*``). With
``INTAKE_MODE=agent``, a Faust agent on ``stream.take_events`` (the per-event path);
with ``INTAKE_MODE=batch``, the worker's consumer handing the topic's records over in
batches (``streamer.app._App.batch_topic``, what the worker does with ratings). Prints
``INTAKE <events/s>`` from the first batch to the last event.
"""

from __future__ import annotations

import os
import time

import faust

from streamer.app import _App
from streamer.settings import Settings

settings = Settings.from_env()
target = int(os.environ["INTAKE_EVENTS"])
app = _App(
    os.environ["INTAKE_APP"],
    broker=settings.kafka_url,
    store="memory://",
    web_enabled=False,
    key_serializer="raw",
    value_serializer="raw",
    topic_disable_leader=True,
    topic_allow_declare=False,
    consumer_auto_offset_reset="earliest",
    consumer_max_fetch_size=settings.fetch_partition_bytes,
    fetch_max_wait_ms=settings.fetch_max_wait_ms,
)
topic = app.topic(
    os.environ["INTAKE_TOPIC"],
    key_type=bytes,
    value_type=bytes,
    partitions=int(os.environ["INTAKE_PARTITIONS"]),
)
got, started = 0, 0.0


def count(n: int) -> None:
    global got, started
    if not started:
        started = time.perf_counter()
    got += n
    if got >= target:
        print(f"INTAKE {got / (time.perf_counter() - started):.1f}", flush=True)
        os._exit(0)  # no graceful shutdown to time


if os.environ.get("INTAKE_MODE", "agent") == "batch":

    async def take(records: list) -> None:
        count(len(records))

    app.batch_topic(topic, take, settings.batch_max)

else:

    @app.agent(topic)
    async def agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            count(len(events))


if __name__ == "__main__":
    app.main()
