"""Streaming benchmark: one worker between the real Kafka and Redis.

Measures, on one synthetic stream over a 10k-item catalog:

1. **Throughput**: ratings pre-loaded into Kafka, then one worker learns them all
   (validate, evaluate, learn, re-rank the touched users, write their lists to Redis);
   ratings/s from the worker's first learned batch to its last, against the same engine
   fed the same ratings in-process in the same batch size (the streaming overhead).
2. **Freshness at a steady rate**: ratings produced at ``--rate`` per second while the
   worker runs; produce-to-Redis latency p50/p99 as the worker measures it.
3. **CPU share** of broker, worker and producer over each phase (from /proc).

Needs the services: ``eval "$(scripts/services.sh up)"``. Usage::

    python -m benchmarks.bench_stream [--ratings 100000] [--rate 5000] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import redis

from recsys_online import synth
from recsys_online.events import Rating
from recsys_online.runtime import limit_blas_threads
from streamer.engine import StreamEngine
from streamer.process import isolated_env, start_worker, stop_worker
from streamer.producer import event_producer, stream_events
from streamer.settings import Settings

STATE_DIR = Path(
    os.environ.get(
        "RECSYS_STATE_DIR",
        Path(os.environ.get("RECSYS_CACHE_DIR", Path.home() / ".cache/recsys-online")) / "run",
    )
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid() -> int | None:
    try:
        return int((STATE_DIR / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def run_settings(batch_max: int) -> tuple[Settings, dict[str, str]]:
    env = isolated_env(
        "bench",
        RECSYS_BATCH_MAX=str(batch_max),
        RECSYS_METRICS_WINDOW="1000000",
        RECSYS_REFRESH_EVERY_S="0.5",
    )
    return Settings.from_env(env), env


def metric(client: redis.Redis, settings: Settings, name: str) -> float:
    raw = client.hget(settings.key("metrics"), name)
    return float(raw) if raw else 0.0


def wait_metric(client, settings, name, target, process, timeout, on_tick=None) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = metric(client, settings, name)
        if value >= target:
            return time.monotonic()
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}")
        if on_tick:
            on_tick(value)
        time.sleep(0.02)
    raise TimeoutError(f"{name} stayed below {target} for {timeout} s")


def core_speed(ds, batch: int) -> float:
    """The same engine, in-process, fed the same ratings in the same batch size."""
    engine = StreamEngine(Settings())
    for item in ds.items.values():
        engine.upsert_item(item.item, item.tags, item.timestamp)
    ratings: list[Rating] = ds.ratings
    started = time.perf_counter()
    for lo in range(0, len(ratings), batch):
        engine.learn_ratings(ratings[lo : lo + batch])
    return len(ratings) / (time.perf_counter() - started)


def throughput(ds, batch: int, log_dir: Path) -> dict:
    settings, env = run_settings(batch)
    client = redis.Redis.from_url(settings.redis_url)
    n = ds.n_ratings
    t0 = time.monotonic()
    producer_cpu0 = cpu_seconds(os.getpid())
    asyncio.run(_produce_all(settings, ds))
    produce_s = time.monotonic() - t0
    producer_cpu = cpu_seconds(os.getpid()) - producer_cpu0
    worker = start_worker(env, log_dir / "throughput-worker.log")
    bpid = broker_pid()
    try:
        wait_metric(client, settings, "events", 1, worker, 120)
        first = time.monotonic()
        cpu_w0, cpu_b0 = cpu_seconds(worker.pid), cpu_seconds(bpid) if bpid else 0.0
        done = wait_metric(client, settings, "events", n, worker, 900)
        cpu_w = cpu_seconds(worker.pid) - cpu_w0
        cpu_b = (cpu_seconds(bpid) - cpu_b0) if bpid else 0.0
    finally:
        stop_worker(worker)
        for key in client.scan_iter(settings.key("*")):
            client.delete(key)
    wall = done - first
    return {
        "ratings": n,
        "batch_max": batch,
        "produce_ratings_per_s": n / produce_s,
        "producer_cpu_s": producer_cpu,
        "stream_ratings_per_s": n / wall,
        "wall_s": wall,
        "worker_cpu_share": cpu_w / wall,
        "broker_cpu_share": cpu_b / wall,
    }


async def _produce_all(settings: Settings, ds) -> None:
    async with event_producer(settings) as producer:
        for event in ds.events():
            await producer.send_core_event(event)


def freshness(ds, rate: float, log_dir: Path) -> dict:
    settings, env = run_settings(1000)
    client = redis.Redis.from_url(settings.redis_url)
    worker = start_worker(env, log_dir / "freshness-worker.log")
    bpid = broker_pid()
    try:
        # Catalog first, then wait until the worker is up before the timed stream.
        asyncio.run(_produce_catalog(settings, ds))
        wait_metric(client, settings, "items", len(ds.items), worker, 120)
        cpu_w0, cpu_b0 = cpu_seconds(worker.pid), cpu_seconds(bpid) if bpid else 0.0
        cpu_p0 = cpu_seconds(os.getpid())
        started = time.monotonic()
        ratings = [e for e in ds.events() if isinstance(e, Rating)]
        asyncio.run(_produce_at(settings, ratings, rate))
        sent_s = time.monotonic() - started
        wait_metric(client, settings, "events", len(ratings), worker, 600)
        time.sleep(1.0)  # the next metrics tick carries the last freshness figures
        wall = time.monotonic() - started
        result = {
            "rate_target": rate,
            "rate_achieved": len(ratings) / sent_s,
            "ratings": len(ratings),
            "freshness_ms_p50": metric(client, settings, "freshness_ms_p50"),
            "freshness_ms_p99": metric(client, settings, "freshness_ms_p99"),
            "worker_cpu_share": (cpu_seconds(worker.pid) - cpu_w0) / wall,
            "broker_cpu_share": ((cpu_seconds(bpid) - cpu_b0) / wall) if bpid else 0.0,
            "producer_cpu_share": (cpu_seconds(os.getpid()) - cpu_p0) / wall,
        }
    finally:
        stop_worker(worker)
        for key in client.scan_iter(settings.key("*")):
            client.delete(key)
    return result


async def _produce_catalog(settings: Settings, ds) -> None:
    async with event_producer(settings) as producer:
        for item in ds.items.values():
            await producer.send_core_event(item)


async def _produce_at(settings: Settings, ratings: list[Rating], rate: float) -> None:
    async with event_producer(settings) as producer:
        await stream_events(producer, ratings, rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=5_000.0)
    parser.add_argument("--fresh-ratings", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stream.json"))
    args = parser.parse_args(argv)
    limit_blas_threads()
    log_dir = args.out.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    ds = synth.generate(n_users=args.users, n_items=args.items, n_ratings=args.ratings, seed=11)
    print(f"stream: {ds.n_ratings:,} ratings, {ds.n_users:,} users, {ds.n_items:,} items")
    core = core_speed(ds, args.batch)
    print(f"core engine in-process: {core:,.0f} ratings/s (batches of {args.batch})")
    tp = throughput(ds, args.batch, log_dir)
    print(
        f"streaming, one worker:  {tp['stream_ratings_per_s']:,.0f} ratings/s "
        f"(ratio to core {tp['stream_ratings_per_s'] / core:.2f}); worker CPU "
        f"{tp['worker_cpu_share']:.0%}, broker CPU {tp['broker_cpu_share']:.0%}"
    )
    fresh_ds = synth.generate(
        n_users=args.users, n_items=args.items, n_ratings=args.fresh_ratings, seed=12
    )
    fr = freshness(fresh_ds, args.rate, log_dir)
    print(
        f"freshness at {fr['rate_achieved']:,.0f}/s: p50 {fr['freshness_ms_p50']:.0f} ms, "
        f"p99 {fr['freshness_ms_p99']:.0f} ms; CPU worker {fr['worker_cpu_share']:.0%}, "
        f"broker {fr['broker_cpu_share']:.0%}, producer {fr['producer_cpu_share']:.0%}"
    )
    targets = {
        "throughput >= 20,000 ratings/s": tp["stream_ratings_per_s"] >= 20_000,
        "freshness p50 <= 20 ms": fr["freshness_ms_p50"] <= 20,
        "freshness p99 <= 100 ms": fr["freshness_ms_p99"] <= 100,
    }
    for name, ok in targets.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    result = {
        "core_ratings_per_s": core,
        "throughput": tp,
        "freshness": fr,
        "targets": targets,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
