"""Sharing benchmark: two workers of one group, with and without exchanging their item
changes (``RECSYS_SHARE_ITEMS_EVERY_S``), against one worker, in the same run.

Each worker's model learns the item side (item and tag vectors, counts and popularity,
co-occurrence, the blend) from its own users only unless the workers share it; this
measures what sharing buys in the models' prequential RMSE and NDCG@10 and what it costs
in throughput, on bench_stream's two streams (100k ratings, 10k items) pre-loaded as a
backlog: the synthetic year, and the live-paced stream (every user equally active, at
20,000 ratings/s of event time). Two workers' figures are also given as their mean
weighted by the ratings each evaluated. First, the same comparison in-process
(:func:`in_process`: the workers' engines exchanging after every batch, no Kafka), which
shows what sharing does with the least lag, for two and for four engines. The workers
need the services: ``eval "$(scripts/services.sh up)"``. Usage::

    python -m benchmarks.bench_share [--ratings 100000] [--every 1] [--out FILE]
        [--repeats 3] [--streams year,live-paced] [--in-process-ratings 30000]
        [--in-process-only] [--engines 2,4]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import time
import zlib
from pathlib import Path

from benchmarks.bench_stream import LIVE_RATE, throughput
from recsys_online import synth
from recsys_online.runtime import limit_blas_threads, tune_gc
from streamer.engine import StreamEngine
from streamer.settings import Settings

FIGURES = ("evaluated", "rmse_total", "ndcg_at_k_total", "items_shared", "items_received")


def weighted(run: dict, name: str) -> float:
    """The workers' ``name`` weighted by the ratings each evaluated; a worker with nothing
    measured (the figure NaN: no rating evaluated, or none relevant) counts for nothing.

    >>> idle = {"evaluated": 0, "x": float("nan")}
    >>> weighted({"per_worker": {"a": {"evaluated": 3, "x": 0.5}, "b": idle}}, "x")
    0.5
    """
    figures = [f for f in run["per_worker"].values() if not math.isnan(f[name])]
    total = sum(f["evaluated"] for f in figures)
    return sum(f[name] * f["evaluated"] for f in figures) / total if total else math.nan


def summary(run: dict) -> dict:
    return {
        "workers": run["workers"],
        "ratings_per_s": run["stream_ratings_per_s"],
        "rmse": weighted(run, "rmse_total"),
        "ndcg_at_k": weighted(run, "ndcg_at_k_total"),
        "per_worker": [
            {k: f.get(k) for k in FIGURES if k in f} for f in run["per_worker"].values()
        ],
    }


def median_of(runs: list[dict]) -> dict[str, float]:
    """Each figure's median over runs."""
    return {
        name: statistics.median(r[name] for r in runs)
        for name in ("ratings_per_s", "rmse", "ndcg_at_k")
    }


def in_process(ds, n_ratings: int, every: int, n_engines: int = 2) -> dict[str, dict[str, float]]:
    """The same comparison without Kafka or timing: the workers' engines in this process,
    the first ``n_ratings`` split between ``n_engines`` by a hash of the user, fed in
    batches of ``every`` ratings, exchanging their changes after every batch (the
    shortest lag a worker could have: sharing's own effect). One engine learns every
    batch for the comparison."""
    out = {}
    for name, n, share in (
        ("one engine", 1, False),
        (f"{n_engines} engines, not sharing", n_engines, False),
        (f"{n_engines} engines, sharing", n_engines, True),
    ):
        settings = Settings(share_items_every_s=1.0 if share else 0.0)
        engines = [StreamEngine(settings) for _ in range(n)]
        for engine in engines:
            engine.live = False
            for item in ds.items.values():
                engine.upsert_item(item.item, item.tags, item.timestamp)
        ratings = ds.ratings[:n_ratings]
        for lo in range(0, len(ratings), every):
            parts = [[] for _ in engines]
            for r in ratings[lo : lo + every]:
                parts[zlib.crc32(r.user.encode()) % n].append(r)
            for engine, part in zip(engines, parts, strict=True):
                engine.learn_ratings(part)
            if share:  # every engine adds in what each other engine learned
                changes = [e.model.take_item_changes() for e in engines]
                for to, engine in enumerate(engines):
                    for sent, change in enumerate(changes):
                        if sent != to:
                            engine.model.apply_item_changes(change)
        run = {"per_worker": {str(j): e.metrics() for j, e in enumerate(engines)}}
        out[name] = {
            "rmse": weighted(run, "rmse_total"),
            "ndcg_at_k": weighted(run, "ndcg_at_k_total"),
        }
    return out


def gap_closed(figures: dict[str, dict[str, float]]) -> float:
    """The share of several models' NDCG gap to one that sharing closes."""
    one, apart, shared = (f["ndcg_at_k"] for f in figures.values())
    return (shared - apart) / (one - apart) if one != apart else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between exchanges")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/share.json"))
    parser.add_argument(
        "--in-process-ratings", type=int, default=30_000, help="ratings of the in-process runs"
    )
    parser.add_argument(
        "--in-process-only", action="store_true", help="skip the workers (no services needed)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternated two-worker runs")
    parser.add_argument(
        "--engines", default="2,4", help="engines of the in-process runs (comma-separated)"
    )
    parser.add_argument(
        "--streams", default="year,live-paced", help="which streams (comma-separated)"
    )
    args = parser.parse_args(argv)
    limit_blas_threads()
    tune_gc()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    year = synth.generate(n_users=20_000, n_items=10_000, n_ratings=args.ratings, seed=11)
    live = synth.generate(
        n_users=20_000, n_items=10_000, n_ratings=args.ratings, seed=13, activity_exponent=0.0
    ).live_paced(LIVE_RATE, start=year.ratings[0].timestamp)
    log_dir = args.out.parent
    result: dict = {"in_process": {}}
    chosen = [(n, d) for n, d in (("year", year), ("live-paced", live)) if n in args.streams]
    for stream, ds in chosen:
        for n_engines in (int(n) for n in args.engines.split(",")):
            for every in (1000, 100):
                figures = in_process(ds, args.in_process_ratings, every, n_engines)
                key = f"{stream}, every {every} ratings"
                result["in_process"][key + ("" if n_engines == 2 else f", {n_engines}")] = figures
                print(
                    f"in-process, {stream}, {args.in_process_ratings:,} ratings, "
                    f"{n_engines} engines, every {every}:"
                )
                for name, f in figures.items():
                    print(f"  {name}: RMSE {f['rmse']:.4f} NDCG@10 {f['ndcg_at_k']:.4f}")
                print(f"  sharing closes {gap_closed(figures):.0%} of their NDCG gap to one")
    for stream, ds in chosen:
        if args.in_process_only:
            break
        # Two workers' figures swing from run to run with how their batches interleave:
        # the two settings alternate, and the medians are compared.
        one = summary(throughput(ds, 1000, log_dir, 1))
        pairs: dict[str, list[dict]] = {"two workers, not sharing": [], "two workers, sharing": []}
        for _ in range(args.repeats):
            pairs["two workers, not sharing"].append(summary(throughput(ds, 1000, log_dir, 2)))
            shared = throughput(ds, 1000, log_dir, 2, RECSYS_SHARE_ITEMS_EVERY_S=str(args.every))
            pairs["two workers, sharing"].append(summary(shared))
        result[stream] = {"one worker": one, **{name: median_of(r) for name, r in pairs.items()}}
        result[stream + ", runs"] = pairs
        print(f"{stream} (two workers: medians of {args.repeats} alternated runs):")
        for name, run in result[stream].items():
            print(
                f"  {name}: {run['ratings_per_s']:,.0f} ratings/s; RMSE {run['rmse']:.4f} "
                f"NDCG@10 {run['ndcg_at_k']:.4f}"
            )
        for name, runs in pairs.items():
            each = ", ".join(f"{r['rmse']:.4f} / {r['ndcg_at_k']:.4f}" for r in runs)
            print(f"    {name}, each run's RMSE / NDCG@10: {each}")
        print(f"  sharing closes {gap_closed(result[stream]):.0%} of two workers' NDCG gap to one")
    result["every_s"] = args.every
    result["git"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
