"""Streaming benchmark: one worker between the real Kafka and Redis.

Measures, on one synthetic stream over a 10k-item catalog:

1. **Throughput**: ratings pre-loaded into Kafka, then one worker learns them all
   (validate, evaluate, learn, re-rank the touched users, write their lists to Redis);
   ratings/s from the worker's first learned batch to its last, against the same engine
   fed the same ratings in-process in the same batch size (the streaming overhead).
2. **Freshness at a steady rate**: ratings produced at ``--rate`` per second while the
   worker runs, with the items that arrive mid-stream produced in their place;
   produce-to-Redis latency p50/p99 as the worker measures it.
3. **CPU share** of broker, worker and producer over each phase (from /proc), and the
   freshness run's transport alone: the same ratings at the same rate read by a plain
   consumer doing no work (the floor under the worker's freshness on this machine).
4. **Scale-out**: the throughput phase again with 2..``--workers`` workers in one group
   (each worker's CPU share; on 2 cores the workers, the broker and Redis compete).
5. **Quality parity**: the worker's whole-run prequential RMSE/NDCG@10/Recall@10 against
   ``recsys-online replay`` (its defaults) on the same events, for the full-speed run and
   for the steady-rate run (target: within 2%).
6. **Live-paced**: throughput, parity and freshness again on streams shaped like live
   traffic (``Dataset.live_paced``): the synthetic stream above is a year replayed in
   seconds, so each micro-batch spans days of event time and holds whole sessions of its
   users, and the worker learns it in dozens of steps per batch to follow event time; live
   traffic at these rates spreads a user's ratings over minutes, so a batch is one step.

Needs the services: ``eval "$(scripts/services.sh up)"``. Usage::

    python -m benchmarks.bench_stream [--ratings 100000] [--rate 5000] [--workers 2] [--out FILE]

``--only freshness`` runs the live-paced freshness runs alone (``--fresh-repeats`` of them
at ``--rate``, each beside a run of Kafka alone; a few minutes) and writes them to
``benchmarks/results/freshness.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
from aiokafka import AIOKafkaConsumer

from recsys_online import synth
from recsys_online.events import Rating
from recsys_online.runtime import limit_blas_threads, tune_gc
from streamer.app import ensure_topics
from streamer.client import RecommendationClient, redis_client
from streamer.engine import StreamEngine, event_time_steps
from streamer.metrics import numeric_figures as numeric
from streamer.process import clear_run, isolated_env, remove_topics, start_worker, stop_process
from streamer.producer import event_producer, stream_events
from streamer.settings import Settings

_PORTS = [
    os.environ.get(n, d)
    for n, d in (("KAFKA_PORT", "9092"), ("KAFKA_CONTROLLER_PORT", "9093"), ("REDIS_PORT", "6379"))
]
STATE_DIR = Path(  # (where services.sh keeps the broker's pid: its `up` exports it)
    os.environ.get("RECSYS_SERVICES_STATE")
    or os.environ.get("RECSYS_STATE_DIR")
    or Path(os.environ.get("RECSYS_CACHE_DIR", Path.home() / ".cache/recsys-online"))
    / ("run" if _PORTS == ["9092", "9093", "6379"] else "run-" + "-".join(_PORTS))
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


def run_settings(batch_max: int, **extra: str) -> tuple[Settings, dict[str, str]]:
    env = isolated_env(
        "bench",
        RECSYS_BATCH_MAX=str(batch_max),
        RECSYS_METRICS_WINDOW="1000000",
        RECSYS_REFRESH_EVERY_S="0.5",
        **extra,
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


def core_speed(ds, batch: int, learn_window_s: float = Settings.learn_window_s) -> float:
    """The same engine, in-process, fed the same events in the same batch size: like a
    worker catching up on a backlog, it holds each item back until the ratings reach the
    item's arrival."""
    engine = StreamEngine(Settings(learn_window_s=learn_window_s))
    engine.live = False
    for item in ds.items.values():
        engine.upsert_item(item.item, item.tags, item.timestamp)
    ratings: list[Rating] = ds.ratings
    started = time.perf_counter()
    for lo in range(0, len(ratings), batch):
        engine.learn_ratings(ratings[lo : lo + batch])
    return len(ratings) / (time.perf_counter() - started)


def worker_figures(reader: RecommendationClient) -> dict[str, dict[str, float]]:
    """Each live worker's numeric figures, by worker id."""
    return {worker: numeric(fields) for worker, fields in reader.worker_metrics().items()}


def evaluated(reader: RecommendationClient) -> float:
    """Live ratings processed, summed over the workers (replays after a rebalance are
    not counted, so the sum reaches the number produced exactly once)."""
    return sum(f.get("evaluated", 0.0) for f in worker_figures(reader).values())


def all_learned(reader: RecommendationClient, target: float) -> bool:
    """Every produced rating is in the workers' models and none is behind: the models'
    ratings add up to ``target`` (each worker's model holds its own partitions) and
    every lag is 0. Ratings a worker relearns from the log after a rebalance count here,
    not in ``evaluated``."""
    figures = worker_figures(reader).values()
    return (
        sum(f.get("events", 0.0) for f in figures) >= target
        and all(f.get("lag", 1.0) == 0 for f in figures)
    ) or evaluated(reader) >= target


def wait_evaluated(reader, target, workers, timeout) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all_learned(reader, target) if target > 1 else evaluated(reader) >= target:
            return time.monotonic()
        for w in workers:
            if w.poll() is not None:
                raise RuntimeError(f"worker exited with {w.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {target} ratings evaluated after {timeout} s")


def throughput(ds, batch: int, log_dir: Path, n_workers: int = 1, **extra: str) -> dict:
    """Pre-load every event, then ``n_workers`` workers of one group learn them all."""
    settings, env = run_settings(batch, **extra)
    reader = RecommendationClient(
        settings.redis_url, settings.key_prefix, cluster=settings.redis_cluster
    )
    n = ds.n_ratings
    t0 = time.monotonic()
    producer_cpu0 = cpu_seconds(os.getpid())
    asyncio.run(_produce_all(settings, ds))
    produce_s = time.monotonic() - t0
    producer_cpu = cpu_seconds(os.getpid()) - producer_cpu0
    tag = "-".join(f"{k}={v}" for k, v in extra.items())
    workers = [
        start_worker(env, log_dir / f"throughput-{n_workers}w{tag}-worker{j}.log")
        for j in range(n_workers)
    ]
    bpid = broker_pid()
    try:
        wait_evaluated(reader, 1, workers, 180)
        first = time.monotonic()
        # (the first tick already counts a batch or more: those are not timed)
        before = evaluated(reader)
        cpu_w0 = [cpu_seconds(w.pid) for w in workers]
        cpu_b0 = cpu_seconds(bpid) if bpid else 0.0
        done = wait_evaluated(reader, n, workers, 900)
        cpu_w = [cpu_seconds(w.pid) - c for w, c in zip(workers, cpu_w0, strict=True)]
        cpu_b = (cpu_seconds(bpid) - cpu_b0) if bpid else 0.0
        time.sleep(1.5)  # the next metrics tick carries the final figures
        figures = worker_figures(reader)
    finally:
        for w in workers:
            stop_process(w)
        clear_run(env)
    wall = done - first
    return {
        "workers": n_workers,
        "ratings": n,
        "batch_max": batch,
        "learn_window_s": settings.learn_window_s,
        "produce_ratings_per_s": n / produce_s,
        "producer_cpu_s": producer_cpu,
        "stream_ratings_per_s": (n - before) / wall,
        "ratings_before_the_clock": before,
        "wall_s": wall,
        "worker_cpu_share": sum(cpu_w) / wall,
        "worker_cpu_shares": [c / wall for c in cpu_w],
        "broker_cpu_share": cpu_b / wall,
        "per_worker": figures,
    }


def stream_quality(figures: dict[str, dict[str, float]]) -> dict[str, float]:
    """Whole-run prequential figures of one worker (its metrics window covers the run)."""
    (f,) = figures.values()
    return {
        "rmse": f["rmse_total"],
        "ndcg_at_k": f["ndcg_at_k_total"],  # in the list last served
        "recall_at_k": f["recall_at_k_total"],
        "ndcg_at_k_fresh": f["ndcg_at_k_fresh_total"],  # in a list ranked at the rating
        "recall_at_k_fresh": f["recall_at_k_fresh_total"],
        "evaluated": f["evaluated"],
    }


def replay_quality(ds) -> dict[str, float]:
    """The replay CLI's figures on the same events (its defaults, as a user runs it)."""
    from streamer.cli import main as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        ratings_path, items_path = synth.write(ds, Path(tmp))
        out = Path(tmp) / "replay.json"
        argv = ["replay", str(ratings_path), "--items", str(items_path), "--quiet"]
        cli_main([*argv, "--json", str(out)])
        summary = json.loads(out.read_text())
    keys = ("rmse", "ndcg_at_k", "recall_at_k", "events", "events_per_s")
    return {k: math.nan if summary[k] is None else summary[k] for k in keys}  # (JSON null)


def parity(stream: dict[str, float], replay: dict[str, float]) -> dict[str, float]:
    """Relative difference of the stream's figures from the replay's (target: within 2%)."""
    out = {k: stream[k] / replay[k] - 1.0 for k in ("rmse", "ndcg_at_k", "recall_at_k")}
    out["ndcg_at_k_fresh"] = stream["ndcg_at_k_fresh"] / replay["ndcg_at_k"] - 1.0
    return out


def parity_text(stream: dict, replay: dict, relative: dict) -> str:
    return (
        f"RMSE {stream['rmse']:.4f} vs {replay['rmse']:.4f} ({relative['rmse']:+.1%}), "
        f"NDCG@10 {stream['ndcg_at_k']:.4f} vs {replay['ndcg_at_k']:.4f} "
        f"({relative['ndcg_at_k']:+.1%})"
    )


def freshness_text(run: dict) -> str:
    return (
        f"{run['rate_achieved']:,.0f}/s: p50 {run['freshness_ms_p50']:.1f} ms, p99 "
        f"{run['freshness_ms_p99']:.0f} ms over the run (last 1,000 ratings: "
        f"{run['freshness_ms_p50_last_1000']:.1f} / {run['freshness_ms_p99_last_1000']:.0f} ms)"
        f"; CPU worker {run['worker_cpu_share']:.0%}, broker "
        f"{run['broker_cpu_share']:.0%}, producer {run['producer_cpu_share']:.0%}"
    )


async def _produce_all(settings: Settings, ds) -> None:
    async with event_producer(settings) as producer:
        for event in ds.events():
            await producer.send_core_event(event)


def freshness(ds, rate: float, log_dir: Path, **extra: str) -> dict:
    settings, env = run_settings(1000, **extra)
    client = redis_client(settings.redis_url, cluster=settings.redis_cluster)
    reader = RecommendationClient(
        settings.redis_url, settings.key_prefix, cluster=settings.redis_cluster
    )
    worker = start_worker(env, log_dir / "freshness-worker.log")
    bpid = broker_pid()
    try:
        # The catalog at the stream's start first, and the worker up, before the timed
        # stream; items that arrive later are produced in the stream, when they arrive,
        # as an app would (the replay CLI learns of them at the same point).
        events = list(ds.events())
        start = next(n for n, e in enumerate(events) if isinstance(e, Rating))
        asyncio.run(_produce_at(settings, events[:start], rate))
        wait_metric(client, settings, "items", start, worker, 120)
        cpu_w0, cpu_b0 = cpu_seconds(worker.pid), cpu_seconds(bpid) if bpid else 0.0
        cpu_p0 = cpu_seconds(os.getpid())
        started = time.monotonic()
        ratings = [e for e in events if isinstance(e, Rating)]
        asyncio.run(_produce_at(settings, events[start:], rate))
        sent_s = time.monotonic() - started
        wait_metric(client, settings, "events", len(ratings), worker, 600)
        time.sleep(1.0)  # the next metrics tick carries the last freshness figures
        wall = time.monotonic() - started
        result = {
            "rate_target": rate,
            "rate_achieved": len(ratings) / sent_s,
            "ratings": len(ratings),
            # Over every rating of the run; the hash's plain figures cover only the last
            # RECSYS_METRICS_WINDOW (1,000) ratings, its last 0.2 s at 5,000/s.
            "freshness_ms_p50": metric(client, settings, "freshness_ms_p50_total"),
            "freshness_ms_p99": metric(client, settings, "freshness_ms_p99_total"),
            "freshness_ms_p50_last_1000": metric(client, settings, "freshness_ms_p50"),
            "freshness_ms_p99_last_1000": metric(client, settings, "freshness_ms_p99"),
            "worker_cpu_share": (cpu_seconds(worker.pid) - cpu_w0) / wall,
            "broker_cpu_share": ((cpu_seconds(bpid) - cpu_b0) / wall) if bpid else 0.0,
            "producer_cpu_share": (cpu_seconds(os.getpid()) - cpu_p0) / wall,
            "per_worker": worker_figures(reader),
        }
    finally:
        stop_process(worker)
        clear_run(env)
    return result


def _receive_delays(brokers: str, topic: str, n: int, deadline_s: float, out) -> None:
    """Read ``n`` records of ``topic`` with a plain aiokafka consumer doing nothing else,
    and put each record's delay (receive time minus produce time, ms) on ``out``. Runs
    in a process of its own, as a worker does."""

    async def run() -> list[float]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=brokers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=Settings.fetch_max_wait_ms,
        )
        await consumer.start()
        delays: list[float] = []
        ends = time.monotonic() + deadline_s
        try:
            await consumer.getmany(timeout_ms=500)  # (assigned, at the start of the topic)
            out.put("ready")
            while len(delays) < n and time.monotonic() < ends:
                got = await consumer.getmany(timeout_ms=1000)
                now_ms = time.time() * 1000.0
                for records in got.values():
                    delays.extend(now_ms - r.timestamp for r in records)
        finally:
            await consumer.stop()
        return delays

    out.put(asyncio.run(run()))


def kafka_alone(ds, rate: float) -> dict:
    """The freshness run's transport without the worker: the same ratings produced at
    ``rate`` by the project's producer, received by a plain consumer that does no work.
    Its delays are the floor under the worker's freshness on this machine."""
    settings, env = run_settings(1000)
    asyncio.run(ensure_topics(settings))
    ratings = [e for e in ds.events() if isinstance(e, Rating)]
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    reader = spawn.Process(
        target=_receive_delays,
        args=(settings.brokers, settings.ratings_topic, len(ratings), 600.0, out),
    )
    reader.start()
    try:
        if out.get(timeout=120) != "ready":
            raise RuntimeError("the reader did not start")
        asyncio.run(_produce_at(settings, ratings, rate))
        delays = out.get(timeout=660)
    finally:
        reader.join(timeout=30)
        if reader.is_alive():
            reader.kill()
        remove_topics(env)
    p50, p99 = np.percentile(delays, [50, 99]).tolist() if delays else [math.nan, math.nan]
    return {"rate": rate, "ratings": len(delays), "delay_ms_p50": p50, "delay_ms_p99": p99}


def live_freshness(args: argparse.Namespace, log_dir: Path) -> tuple[list, dict, list, dict]:
    """``--fresh-repeats`` live-paced freshness runs at ``--rate``, each followed by a run
    of Kafka alone on the same kind of stream: the runs, their medians, the floors, theirs.
    Freshness at the target rate varies by 2-3x between runs on a shared machine: the
    targets are judged on the medians."""

    def live_fresh(rate: float):
        return uniform_users(args, args.fresh_ratings, 14).live_paced(rate, start=time.time())

    runs, floors = [], []
    for _ in range(args.fresh_repeats):
        run = freshness(live_fresh(args.rate), args.rate, log_dir)
        runs.append(run)
        print(f"freshness, live-paced at {freshness_text(run)}")
        floors.append(kafka_alone(live_fresh(args.rate), args.rate))
        print(
            f"Kafka alone at {args.rate:,.0f}/s (the project's producer, a plain consumer "
            f"doing no work): produce-to-receive p50 {floors[-1]['delay_ms_p50']:.0f} ms, "
            f"p99 {floors[-1]['delay_ms_p99']:.0f} ms"
        )
    medians = median_run(runs, ("freshness_ms_p50", "freshness_ms_p99"))
    floor = median_run(floors, ("delay_ms_p50", "delay_ms_p99"))
    print(
        f"freshness at {args.rate:,.0f}/s, medians of {args.fresh_repeats} runs: worker p50 "
        f"{medians['freshness_ms_p50']:.0f} ms, p99 {medians['freshness_ms_p99']:.0f} ms; "
        f"Kafka alone p50 {floor['delay_ms_p50']:.0f} ms, p99 {floor['delay_ms_p99']:.0f} ms"
    )
    return runs, medians, floors, floor


def freshness_only(args: argparse.Namespace, log_dir: Path) -> int:
    """``--only freshness``: the live-paced freshness runs, written to ``args.out``."""
    runs, medians, floors, floor = live_freshness(args, log_dir)
    targets = {
        "freshness p50 <= 20 ms (live-paced)": medians["freshness_ms_p50"] <= 20.0,
        "freshness p99 <= 100 ms (live-paced)": medians["freshness_ms_p99"] <= 100.0,
    }
    result = {
        "freshness": runs,
        "freshness_median": medians,
        "kafka_alone": floors,
        "kafka_alone_median": floor,
    }
    write_result(args.out, result, targets)
    print(f"wrote {args.out}")
    return 0


def write_result(out: Path, result: dict, targets: dict[str, bool]) -> None:
    """The run's figures and targets as JSON, dated, with the commit it ran."""
    stamped = result | {
        "targets": targets,
        "date": time.strftime("%Y-%m-%d"),
        "git_head": _git_head(),
    }
    out.write_text(json.dumps(stamped, indent=2) + "\n")


def median_run(runs: list[dict], figures: tuple[str, ...]) -> dict[str, float]:
    """The median of each of ``figures`` over ``runs``, with its range.

    >>> median_run([{"a": 3.0}, {"a": 1.0}, {"a": 2.0}], ("a",))
    {'a': 2.0, 'a_min': 1.0, 'a_max': 3.0}
    """
    out: dict[str, float] = {}
    for name in figures:
        values = [run[name] for run in runs]
        out.update({name: statistics.median(values), f"{name}_min": min(values)})
        out[f"{name}_max"] = max(values)
    return out


async def _produce_at(settings: Settings, events: list, rate: float) -> None:
    """Ratings at ``rate`` per second; catalog events in their place, not counted."""
    async with event_producer(settings) as producer:
        await stream_events(producer, events, rate)


LIVE_RATE = 20_000.0  # ratings/s of event time in the live-paced throughput run


def uniform_users(args: argparse.Namespace, n_ratings: int, seed: int):
    """The benchmark's synthetic stream with every user equally active."""
    return synth.generate(
        n_users=args.users,
        n_items=args.items,
        n_ratings=n_ratings,
        seed=seed,
        activity_exponent=0.0,
    )


def steps_per_batch(ds, batch: int) -> dict[str, float]:
    """Learning steps the engine takes per micro-batch of ``ds`` (default window)."""
    ratings = ds.ratings
    steps = [
        len(event_time_steps(ratings[lo : lo + batch], Settings.learn_window_s))
        for lo in range(0, len(ratings), batch)
    ]
    return {"median": float(statistics.median(steps)), "max": max(steps)}


WHOLE_BATCH = "1e9"  # RECSYS_LEARN_WINDOW_S for one window per micro-batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=5_000.0)
    parser.add_argument("--fresh-ratings", type=int, default=50_000)
    parser.add_argument(
        "--fresh-repeats", type=int, default=3, help="live-paced freshness runs at --rate"
    )
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=2, help="also run 2..N workers")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/results/stream.json (freshness.json with --only freshness)",
    )
    parser.add_argument(
        "--only", choices=("freshness",), help="the live-paced freshness runs alone"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        name = "freshness.json" if args.only == "freshness" else "stream.json"
        args.out = Path("benchmarks/results") / name
    limit_blas_threads()
    tune_gc()  # as in the worker, so the in-process figures compare like with like
    log_dir = args.out.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.only == "freshness":
        return freshness_only(args, log_dir)
    ds = synth.generate(n_users=args.users, n_items=args.items, n_ratings=args.ratings, seed=11)
    span_h = (ds.ratings[-1].timestamp - ds.ratings[0].timestamp) / 3600
    print(
        f"stream: {ds.n_ratings:,} ratings, {ds.n_users:,} users, {ds.n_items:,} items over "
        f"{span_h / 24:,.0f} days of event time (a batch of {args.batch:,} spans about "
        f"{span_h * args.batch / ds.n_ratings:,.0f} h)"
    )
    replay = replay_quality(ds)
    print(f"replay CLI (the core, offline): {replay['events_per_s']:,.0f} ratings/s")
    core = core_speed(ds, args.batch)
    core_whole = core_speed(ds, args.batch, float(WHOLE_BATCH))
    print(
        f"core engine in-process, batches of {args.batch}: {core:,.0f} ratings/s; "
        f"one learning window per batch: {core_whole:,.0f} ratings/s"
    )
    runs = []
    for n_workers in range(1, args.workers + 1):
        tp = throughput(ds, args.batch, log_dir, n_workers)
        runs.append(tp)
        print(
            f"streaming, {n_workers} worker(s): {tp['stream_ratings_per_s']:,.0f} ratings/s "
            f"(ratio to replay CLI {tp['stream_ratings_per_s'] / replay['events_per_s']:.2f}, "
            f"to the engine in-process {tp['stream_ratings_per_s'] / core:.2f}); CPU workers "
            f"{' + '.join(f'{c:.0%}' for c in tp['worker_cpu_shares'])}, broker "
            f"{tp['broker_cpu_share']:.0%} (of one core; 2 cores = 200%)"
        )
    whole = throughput(ds, args.batch, log_dir, 1, RECSYS_LEARN_WINDOW_S=WHOLE_BATCH)
    print(
        f"streaming, 1 worker, one learning window per batch: "
        f"{whole['stream_ratings_per_s']:,.0f} ratings/s (ratio to the engine in-process "
        f"{whole['stream_ratings_per_s'] / core_whole:.2f})"
    )
    stream = stream_quality(runs[0]["per_worker"])
    full_speed_parity = parity(stream, replay)
    whole_quality = stream_quality(whole["per_worker"])
    whole_parity = parity(whole_quality, replay)
    for name, q, rel in (
        ("default window", stream, full_speed_parity),
        ("one window per batch", whole_quality, whole_parity),
    ):
        print(
            f"quality, stream (1 worker, full speed, {name}) vs replay CLI: RMSE "
            f"{q['rmse']:.4f} vs {replay['rmse']:.4f} ({rel['rmse']:+.1%}), NDCG@10 as served "
            f"{q['ndcg_at_k']:.4f} vs {replay['ndcg_at_k']:.4f} ({rel['ndcg_at_k']:+.1%}), "
            f"ranked at the rating {q['ndcg_at_k_fresh']:.4f} ({rel['ndcg_at_k_fresh']:+.1%})"
        )
    fresh_ds = synth.generate(
        n_users=args.users, n_items=args.items, n_ratings=args.fresh_ratings, seed=12
    )
    fr = freshness(fresh_ds, args.rate, log_dir)
    print(f"freshness at {freshness_text(fr)}")
    fresh_replay = replay_quality(fresh_ds)
    fresh_stream = stream_quality(fr["per_worker"])
    steady_parity = parity(fresh_stream, fresh_replay)
    print(
        f"quality, stream (at {args.rate:,.0f}/s) vs replay CLI: "
        + parity_text(fresh_stream, fresh_replay, steady_parity)
    )
    # The same, on live-paced streams (Dataset.live_paced): user activity uniform, since
    # with the default Zipf activity the heaviest user holds 4% of all ratings, which at
    # 20,000/s would be one person rating 780 items a second.
    live_ds = uniform_users(args, args.ratings, 13).live_paced(
        LIVE_RATE, start=ds.ratings[0].timestamp
    )
    live_steps = steps_per_batch(live_ds, args.batch)
    live_replay = replay_quality(live_ds)
    live_core = core_speed(live_ds, args.batch)
    live = throughput(live_ds, args.batch, log_dir, 1)
    live_quality = stream_quality(live["per_worker"])
    live_parity = parity(live_quality, live_replay)
    print(
        f"live-paced at {LIVE_RATE:,.0f}/s of event time ({live_ds.n_users:,} users; learning "
        f"steps per batch: median {live_steps['median']:.0f}, max {live_steps['max']}): "
        f"1 worker {live['stream_ratings_per_s']:,.0f} ratings/s (engine in-process "
        f"{live_core:,.0f}, ratio {live['stream_ratings_per_s'] / live_core:.2f}); CPU worker "
        f"{live['worker_cpu_share']:.0%}, broker {live['broker_cpu_share']:.0%}; vs replay "
        f"CLI: {parity_text(live_quality, live_replay, live_parity)}, ranked at the rating "
        f"{live_quality['ndcg_at_k_fresh']:.4f} ({live_parity['ndcg_at_k_fresh']:+.1%})"
    )
    # At the target rate, and at a rate one worker keeps up with (latency without a queue).
    live_scale = [live] + [
        throughput(live_ds, args.batch, log_dir, n) for n in range(2, args.workers + 1)
    ]
    for tp in live_scale[1:]:
        print(
            f"live-paced, {tp['workers']} workers: {tp['stream_ratings_per_s']:,.0f} ratings/s "
            f"({tp['stream_ratings_per_s'] / live['stream_ratings_per_s']:.2f}x one); CPU "
            f"workers {' + '.join(f'{c:.0%}' for c in tp['worker_cpu_shares'])}, broker "
            f"{tp['broker_cpu_share']:.0%}"
        )

    # The worker's freshness runs alternate with runs of Kafka alone (the transport's floor).
    live_fr_runs, live_fr, floors, floor = live_freshness(args, log_dir)
    slow_ds = uniform_users(args, args.fresh_ratings, 14).live_paced(
        args.rate / 2.5, start=time.time()
    )
    slow = freshness(slow_ds, args.rate / 2.5, log_dir)
    print(f"freshness, live-paced at {freshness_text(slow)}")
    one = runs[0]["stream_ratings_per_s"]
    targets = {
        "throughput >= 20,000 ratings/s": one >= 20_000,
        "freshness p50 <= 20 ms": fr["freshness_ms_p50"] <= 20,
        "freshness p99 <= 100 ms": fr["freshness_ms_p99"] <= 100,
        "throughput >= 20,000 ratings/s (live-paced)": live["stream_ratings_per_s"] >= 20_000,
        "freshness p50 <= 20 ms (live-paced)": live_fr["freshness_ms_p50"] <= 20,
        "freshness p99 <= 100 ms (live-paced)": live_fr["freshness_ms_p99"] <= 100,
        "stream NDCG@10 within 2% of replay (live-paced)": abs(live_parity["ndcg_at_k"]) <= 0.02,
        "stream NDCG@10 ranked at the rating within 2% of replay (live-paced)": (
            abs(live_parity["ndcg_at_k_fresh"]) <= 0.02
        ),
        "stream RMSE within 2% of replay (live-paced)": abs(live_parity["rmse"]) <= 0.02,
        "stream RMSE within 2% of replay (full speed)": abs(full_speed_parity["rmse"]) <= 0.02,
        "stream NDCG@10 within 2% of replay (full speed)": (
            abs(full_speed_parity["ndcg_at_k"]) <= 0.02
        ),
        "stream RMSE within 2% of replay (steady rate)": abs(steady_parity["rmse"]) <= 0.02,
        "stream NDCG@10 within 2% of replay (steady rate)": (
            abs(steady_parity["ndcg_at_k"]) <= 0.02
        ),
    }
    for name, ok in targets.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    for tp in runs[1:]:
        print(f"  {tp['workers']} workers vs 1: {tp['stream_ratings_per_s'] / one:.2f}x throughput")
    result = {
        "replay_ratings_per_s": replay["events_per_s"],
        "core_ratings_per_s": core,
        "core_ratings_per_s_one_window_per_batch": core_whole,
        "throughput": runs[0],
        "scale_out": runs,
        "one_window_per_batch": whole,
        "freshness": fr,
        "quality": {
            "full_speed": {"stream": stream, "replay": replay, "relative": full_speed_parity},
            "full_speed_one_window_per_batch": {
                "stream": whole_quality,
                "replay": replay,
                "relative": whole_parity,
            },
            "steady_rate": {
                "stream": fresh_stream,
                "replay": fresh_replay,
                "relative": steady_parity,
            },
        },
        "live_paced": {
            "rate_of_event_time": LIVE_RATE,
            "users": live_ds.n_users,
            "steps_per_batch": live_steps,
            "core_ratings_per_s": live_core,
            "throughput": live,
            "scale_out": live_scale,
            "quality": {"stream": live_quality, "replay": live_replay, "relative": live_parity},
            "freshness": [*live_fr_runs, slow],
            "freshness_median": live_fr,
            "kafka_alone": floors,
            "kafka_alone_median": floor,
        },
    }
    write_result(args.out, result, targets)
    return 0


def _git_head() -> str:
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
