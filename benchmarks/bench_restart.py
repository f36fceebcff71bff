"""Restart benchmark: how long a worker killed with SIGKILL takes to be back in service,
from a snapshot against a full replay of the ratings log.

One worker learns a pre-loaded stream (bench_stream's: 100k ratings over a 10k-item
catalog) with snapshots every few seconds, and is killed with SIGKILL once its model and
a snapshot hold everything and the group has committed. Then, on the same topics:

1. a worker that may use the snapshot is started and timed until its model again holds
   every rating with no lag (``restart_with_snapshot_s``);
2. it is killed too, and a worker with snapshots off (``RECSYS_SNAPSHOT_EVERY_S=0``)
   is timed the same way: it relearns the whole log (``restart_full_replay_s``).

Both include process start, joining the group and reading the catalog. Needs the
services: ``eval "$(scripts/services.sh up)"``. Usage::

    python -m benchmarks.bench_restart [--ratings 100000] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.bench_stream import _produce_all, run_settings
from recsys_online import synth
from recsys_online.runtime import limit_blas_threads
from streamer.client import RecommendationClient
from streamer.process import clear_run, start_worker
from streamer.snapshot import SnapshotStore


def back_in_service(reader: RecommendationClient, n: int, worker: subprocess.Popen) -> float:
    """Wait until ``worker``'s model holds ``n`` ratings with no lag; returns the time."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        figures = reader.worker_metrics()
        mine = [f for w, f in figures.items() if f":{worker.pid}-" in w]  # (host:pid-token)
        if mine and all_learned_one(mine[0], n):
            return time.monotonic()
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"worker {worker.pid} did not learn {n} ratings in 900 s")


def all_learned_one(fields: dict, n: int) -> bool:
    return float(fields.get("events", 0)) >= n and float(fields.get("lag", 1)) == 0


def kill(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait()


def assigned_at(text: str) -> float:
    """Wall time of the worker's last partition assignment, from its log."""
    stamps = [
        line[1:24] for line in text.splitlines() if "Setting newly assigned partitions" in line
    ]
    return datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def timed_restart(env: dict, log: Path, reader: RecommendationClient, n: int) -> dict:
    started = time.monotonic()
    worker = start_worker(env, log)
    try:
        done = back_in_service(reader, n, worker)
        done_wall = time.time()
    finally:
        kill(worker)
    text = log.read_text(errors="replace")
    relearned = sum(
        int(line.split("replayed ")[1].split()[0])
        for line in text.splitlines()
        if "replayed " in line and " ratings of partition" in line
    )
    return {
        "seconds": done - started,
        "after_assignment_s": done_wall - assigned_at(text),
        "relearned": relearned,
        "restored": "restored snapshot" in text,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/restart.json"))
    args = parser.parse_args(argv)
    limit_blas_threads()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ds = synth.generate(n_users=args.users, n_items=args.items, n_ratings=args.ratings, seed=11)
    n = ds.n_ratings
    with tempfile.TemporaryDirectory(prefix="recsys-restart-") as tmp:
        settings, env = run_settings(
            1000,
            RECSYS_SNAPSHOT_EVERY_S="5",
            RECSYS_DATA_DIR=str(Path(tmp) / "data"),
            # A killed worker's partitions move once its session expires: keep that short.
            RECSYS_SESSION_TIMEOUT_S="6",
        )
        reader = RecommendationClient(
            settings.redis_url, settings.key_prefix, cluster=settings.redis_cluster
        )
        store = SnapshotStore(settings.snapshot_path)
        log_dir = args.out.parent
        try:
            asyncio.run(_produce_all(settings, ds))
            first = start_worker(env, log_dir / "restart-first-worker.log")
            t0 = time.monotonic()
            back_in_service(reader, n, first)
            learn_s = time.monotonic() - t0
            deadline = time.monotonic() + 60
            while not any(sum(s.offsets.values()) >= n for s in store.list()):
                if time.monotonic() > deadline:
                    raise TimeoutError("no snapshot of the whole stream in 60 s")
                time.sleep(0.2)
            time.sleep(4.0)  # the group commits (every 2.8 s)
            kill(first)
            snapshot = store.list()[0]
            size = snapshot.path.stat().st_size
            with_snapshot = timed_restart(env, log_dir / "restart-snapshot-worker.log", reader, n)
            full = timed_restart(
                {**env, "RECSYS_SNAPSHOT_EVERY_S": "0"},
                log_dir / "restart-replay-worker.log",
                reader,
                n,
            )
        finally:
            clear_run(env)
    result = {
        "ratings": n,
        "items": args.items,
        "first_learn_s": learn_s,
        "snapshot_bytes": size,
        "session_timeout_s": settings.session_timeout_s,
        "restart_with_snapshot_s": with_snapshot["seconds"],
        "with_snapshot_after_assignment_s": with_snapshot["after_assignment_s"],
        "relearned_with_snapshot": with_snapshot["relearned"],
        "restored": with_snapshot["restored"],
        "restart_full_replay_s": full["seconds"],
        "full_replay_after_assignment_s": full["after_assignment_s"],
        "relearned_full_replay": full["relearned"],
        "speedup": full["seconds"] / with_snapshot["seconds"],
        "speedup_after_assignment": full["after_assignment_s"]
        / with_snapshot["after_assignment_s"],
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{n:,} ratings (first learned in {learn_s:.1f} s); snapshot {size / 1e6:.1f} MB\n"
        f"restart with the snapshot: {with_snapshot['seconds']:.1f} s back in service, "
        f"{with_snapshot['after_assignment_s']:.1f} s after the partitions were assigned "
        f"(relearned {with_snapshot['relearned']:,} ratings, restored: "
        f"{with_snapshot['restored']})\n"
        f"restart replaying the log: {full['seconds']:.1f} s, "
        f"{full['after_assignment_s']:.1f} s after assignment "
        f"(relearned {full['relearned']:,} ratings)\n"
        f"speed-up: {result['speedup']:.1f}x overall, "
        f"{result['speedup_after_assignment']:.1f}x after assignment"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
