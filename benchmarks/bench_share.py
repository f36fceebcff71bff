"""Sharing benchmark: two workers of one group, with and without exchanging item-vector
changes (``RECSYS_SHARE_ITEMS_EVERY_S``), against one worker, in the same run.

Each worker's model learns item vectors from its own users only unless the workers share
them; this measures what sharing buys in each model's prequential RMSE and NDCG@10 and
what it costs in throughput, on bench_stream's stream (100k ratings, 10k items) pre-loaded
as a backlog. Needs the services: ``eval "$(scripts/services.sh up)"``. Usage::

    python -m benchmarks.bench_share [--ratings 100000] [--every 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from benchmarks.bench_stream import throughput
from recsys_online import synth
from recsys_online.runtime import limit_blas_threads

FIGURES = ("rmse_total", "ndcg_at_k_total", "items_shared", "items_received")


def summary(run: dict) -> dict:
    return {
        "workers": run["workers"],
        "ratings_per_s": run["stream_ratings_per_s"],
        "per_worker": [
            {k: f.get(k) for k in FIGURES if k in f} for f in run["per_worker"].values()
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between exchanges")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/share.json"))
    args = parser.parse_args(argv)
    limit_blas_threads()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ds = synth.generate(n_users=20_000, n_items=10_000, n_ratings=args.ratings, seed=11)
    log_dir = args.out.parent
    runs = {
        "one worker": throughput(ds, 1000, log_dir, 1),
        "two workers, not sharing": throughput(ds, 1000, log_dir, 2),
        "two workers, sharing": throughput(
            ds, 1000, log_dir, 2, RECSYS_SHARE_ITEMS_EVERY_S=str(args.every)
        ),
    }
    result = {name: summary(run) for name, run in runs.items()}
    result["every_s"] = args.every
    result["git"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, run in runs.items():
        models = ", ".join(
            f"RMSE {f['rmse_total']:.4f} NDCG@10 {f['ndcg_at_k_total']:.4f}"
            for f in run["per_worker"].values()
        )
        print(f"{name}: {run['stream_ratings_per_s']:,.0f} ratings/s; {models}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
