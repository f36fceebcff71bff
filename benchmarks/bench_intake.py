"""Intake benchmark: how fast events leave Kafka, before any work is done on them.

One topic of ``--partitions`` partitions is pre-loaded with ``--events`` rating events,
then read to the end three times on the same machine, in the same run:

1. by a Faust agent (``stream.take_events(1000, within=0.02)``, raw bytes, the project's
   broker settings) that only counts what it gets, in its own process
   (``benchmarks._intake_agent``): Faust's per-event path;
2. by the worker's consumer handing the records over in batches, as the worker takes
   ratings (``_App.batch_topic``), counting them, in its own process;
3. by a plain aiokafka consumer, ``getmany(max_records=1000)`` in a loop.

The first two are the ceilings of a worker built on each path whatever its model
costs; the third, of any consumer in Python. Needs the services:
``eval "$(scripts/services.sh up)"``. Usage::

    python -m benchmarks.bench_intake [--events 100000] [--partitions 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamer.app import delete_topics
from streamer.settings import Settings

EVENT = b'{"user_id":"u1","item_id":"i2","rating":4.0,"timestamp":1700000000}'


async def preload(servers: str, topic: str, partitions: int, n: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=5)
    await producer.start()
    try:
        for j in range(n):
            await producer.send(topic, key=f"u{j % 5000}".encode(), value=EVENT)
        await producer.flush()
    finally:
        await producer.stop()


async def read_plain(servers: str, topic: str, n: int) -> float:
    """Events/s of a plain consumer from its first batch to the n-th event."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=servers,
        group_id=f"intake-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=Settings.fetch_partition_bytes,
    )
    await consumer.start()
    try:
        got, started = 0, None
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            if batch and started is None:
                started = time.perf_counter()
            got += sum(len(records) for records in batch.values())
        return got / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def read_faust(
    servers: str, topic: str, partitions: int, n: int, log: Path, mode: str = "agent"
) -> float:
    """Events/s of the Faust app (its own process, ``mode`` agent or batch), from its
    first batch to the n-th event."""
    env = dict(
        os.environ,
        INTAKE_MODE=mode,
        INTAKE_TOPIC=topic,
        INTAKE_PARTITIONS=str(partitions),
        INTAKE_EVENTS=str(n),
        INTAKE_APP=f"intake-{uuid.uuid4().hex[:8]}",
        KAFKA_BOOTSTRAP_SERVERS=servers,
    )
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "benchmarks._intake_agent", "worker", "-l", "warn"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
    for line in log.read_text().splitlines():
        words = line.split()
        if "INTAKE" in words:  # (Faust's logger may wrap the printed line)
            return float(words[words.index("INTAKE") + 1])
    raise RuntimeError(f"the Faust agent reported nothing; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/intake.json"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    servers = Settings.from_env().bootstrap_servers
    topic = f"intake-{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(preload(servers, topic, args.partitions, args.events))
        faust_rate = read_faust(
            servers, topic, args.partitions, args.events, args.out.parent / "intake-agent.log"
        )
        batch_rate = read_faust(
            servers,
            topic,
            args.partitions,
            args.events,
            args.out.parent / "intake-batch.log",
            mode="batch",
        )
        plain_rate = asyncio.run(read_plain(servers, topic, args.events))
    finally:
        asyncio.run(delete_topics(servers, [topic]))  # (a broker keeping them runs out of files)
    print(f"{args.events:,} events, {args.partitions} partitions")
    print(f"Faust agent, take_events(1000), no work: {faust_rate:,.0f} events/s")
    print(f"Faust consumer, batches (the worker's):  {batch_rate:,.0f} events/s")
    print(f"plain aiokafka getmany(1000):            {plain_rate:,.0f} events/s")
    print(f"agent / plain: {faust_rate / plain_rate:.3f}; batches / plain: ", end="")
    print(f"{batch_rate / plain_rate:.3f}")
    result = {
        "events": args.events,
        "partitions": args.partitions,
        "faust_agent_events_per_s": faust_rate,
        "faust_batches_events_per_s": batch_rate,
        "plain_consumer_events_per_s": plain_rate,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
