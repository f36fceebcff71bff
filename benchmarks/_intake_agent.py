"""The Faust side of bench_intake: one agent that counts what it receives, then exits.

Configured from the environment by ``benchmarks.bench_intake`` (``INTAKE_*``); prints
``INTAKE <events/s>`` from its first batch to the last event.
"""

from __future__ import annotations

import os
import time

import faust

from streamer.settings import Settings

settings = Settings.from_env()
target = int(os.environ["INTAKE_EVENTS"])
app = faust.App(
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
)
topic = app.topic(
    os.environ["INTAKE_TOPIC"],
    key_type=bytes,
    value_type=bytes,
    partitions=int(os.environ["INTAKE_PARTITIONS"]),
)


@app.agent(topic)
async def count(stream: faust.StreamT) -> None:
    got, started = 0, None
    async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
        if started is None:
            started = time.perf_counter()
        got += len(events)
        if got >= target:
            print(f"INTAKE {got / (time.perf_counter() - started):.1f}", flush=True)
            os._exit(0)  # no graceful shutdown to time


if __name__ == "__main__":
    app.main()
