""" "More like this" benchmark: what the items' similar lists cost the worker.

Every live item's list (``similar:{item}``) is written by the worker beside the users'
lists; this measures the price, always against a baseline timed in the same run:

1. **In-process, per list**: the ``StreamEngine`` learns 30,000 ratings of the
   live-paced stream over a 10,000-item catalog, then writes every item's list
   (``similar_lists`` in slices of 64, documents encoded as the sink does) and, as the
   baseline, re-ranks 10,000 users' lists (``serve`` in slices of 256, encoded the same
   way): microseconds per list of each, alternated ``--rounds`` times.
2. **Reading the catalog**: 10,000 item upserts one at a time (how a worker reads the
   items topic at start) with the lists on and off (``RECSYS_SIMILAR_EVERY_S=0``),
   alternated.
3. **Quality, in-process**: bench_stream's synthetic year (100,000 ratings, sessions of
   related items, 30% of items arriving mid-stream), learned in batches of 1,000 with the
   lists due written after each batch on event time: each relevant rating is looked up,
   before it is learned, in the list of the item its user rated before, and in the
   popular list as served (the baseline): Recall@10 and NDCG@10 of both.
4. **The worker, on and off, alternated** (``--pairs`` of each): live-paced throughput
   on a backlog of 100,000 ratings, and freshness at 5,000 ratings/s over 50,000
   (``benchmarks.bench_stream``'s functions and streams). Needs the services:
   ``eval "$(scripts/services.sh up)"``.

Usage::

    python -m benchmarks.bench_similar [--pairs 3] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.bench_stream import (
    LIVE_RATE,
    _git_head,
    freshness,
    throughput,
    uniform_users,
)
from recsys_online import synth
from recsys_online.runtime import limit_blas_threads, tune_gc
from streamer.engine import StreamEngine
from streamer.settings import Settings
from streamer.sink import list_documents

OFF = {"RECSYS_SIMILAR_EVERY_S": "0"}


def learned_engine(ds, n_ratings: int) -> StreamEngine:
    engine = StreamEngine(Settings())
    for item in ds.items.values():
        engine.upsert_item(item.item, item.tags, item.timestamp)
    ratings = ds.ratings[:n_ratings]
    for lo in range(0, len(ratings), 1000):
        engine.learn_ratings(ratings[lo : lo + 1000])
    return engine


def per_list_us(engine: StreamEngine, users: list[str]) -> tuple[float, float]:
    """Microseconds per similar list (every item's, written afresh) and per user list."""
    engine.similar.written_at[:] = -float("inf")  # every item due again
    started, n = time.perf_counter(), 0
    while lists := engine.similar_lists(64):
        list_documents(lists, engine.version, 0.0, "item_id")
        n += len(lists)
    similar = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    for lo in range(0, len(users), 256):
        list_documents(engine.serve(users[lo : lo + 256]), engine.version, 0.0)
    return similar, (time.perf_counter() - started) / len(users) * 1e6


def catalog_s(ds, every: float) -> float:
    engine = StreamEngine(Settings(similar_every_s=every))
    started = time.perf_counter()
    for item in ds.items.values():
        engine.upsert_item(item.item, item.tags, item.timestamp)
    return time.perf_counter() - started


def quality(ds) -> dict[str, float]:
    """The lists' hit rate on ``ds`` against the popular list's (see the docstring)."""
    engine = StreamEngine(Settings())
    engine.live = False
    engine.similar_clock = lambda: engine.watermark
    for item in ds.items.values():
        engine.upsert_item(item.item, item.tags, item.timestamp)
    ratings = ds.ratings
    for lo in range(0, len(ratings), 1000):
        engine.learn_ratings(ratings[lo : lo + 1000])
        while engine.similar_lists(4096):
            pass
        engine.popular()
    m = engine.metrics()
    return {
        "evaluated": m["similar_evaluated"],
        "similar_recall_at_k": m["similar_recall_at_k_total"],
        "popular_recall_at_k": m["similar_recall_at_k_popular_total"],
        "similar_ndcg_at_k": engine.similar_ranking.summary()["ndcg_at_k"],
        "popular_ndcg_at_k": engine.similar_popular.summary()["ndcg_at_k"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="worker runs of each, alternated")
    parser.add_argument("--rounds", type=int, default=3, help="in-process rounds")
    parser.add_argument("--no-worker", action="store_true", help="in-process parts only")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/similar.json"))
    args = parser.parse_args(argv)
    limit_blas_threads()
    tune_gc()
    shape = argparse.Namespace(users=20_000, items=10_000)
    live = uniform_users(shape, 100_000, 13).live_paced(LIVE_RATE, start=1.7e9)
    result: dict = {"git_head": _git_head(), "items": len(live.items)}

    engine = learned_engine(live, 30_000)
    users = list(engine.served)[-10_000:]
    rounds = [per_list_us(engine, users) for _ in range(args.rounds)]
    similar, user = (statistics.median(r[j] for r in rounds) for j in (0, 1))
    result["in_process"] = {
        "similar_us_per_list": similar,
        "user_us_per_list": user,
        "ratio": statistics.median(s / u for s, u in rounds),
        "rounds": rounds,
    }
    print(
        f"in-process: a similar list {similar:.0f} us, a user's list {user:.0f} us "
        f"({result['in_process']['ratio']:.2f}x), {len(users):,} users, "
        f"{len(live.items):,} items"
    )
    loads = [(catalog_s(live, 0.0), catalog_s(live, 300.0)) for _ in range(args.rounds)]
    off_s, on_s = (statistics.median(x[j] for x in loads) for j in (0, 1))
    result["catalog"] = {"off_s": off_s, "on_s": on_s, "rounds": loads}
    print(
        f"reading the catalog one upsert at a time: {on_s:.2f} s with the lists, "
        f"{off_s:.2f} s without ({(on_s - off_s) / len(live.items) * 1e6:.1f} us an item)"
    )
    year = synth.generate(n_users=20_000, n_items=10_000, n_ratings=100_000, seed=11)
    result["quality"] = q = quality(year)
    print(
        f"quality on the synthetic year, {q['evaluated']:,} relevant ratings after another: "
        f"Recall@10 {q['similar_recall_at_k']:.4f} in the previous item's list against "
        f"{q['popular_recall_at_k']:.4f} in the popular list "
        f"({q['similar_recall_at_k'] / max(q['popular_recall_at_k'], 1e-12):.2f}x); NDCG@10 "
        f"{q['similar_ndcg_at_k']:.4f} against {q['popular_ndcg_at_k']:.4f}"
    )
    if not args.no_worker:
        log_dir = Path(tempfile.mkdtemp(prefix="bench-similar-"))
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        for _ in range(args.pairs):
            for label, extra in (("off", OFF), ("on", {})):
                tp = throughput(live, 1000, log_dir, 1, **extra)
                fresh_ds = uniform_users(shape, 50_000, 14).live_paced(5000.0, start=time.time())
                fr = freshness(fresh_ds, 5000.0, log_dir, **extra)
                run = {
                    "ratings_per_s": tp["stream_ratings_per_s"],
                    "worker_cpu_share": tp["worker_cpu_share"],
                    "freshness_ms_p50": fr["freshness_ms_p50"],
                    "freshness_ms_p99": fr["freshness_ms_p99"],
                }
                runs[label].append(run)
                shown = ", ".join(f"{k} {v:,.2f}" for k, v in run.items())
                print(f"worker, lists {label}: {shown}", flush=True)
        medians = {
            label: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for label, rs in runs.items()
        }
        result["worker"] = {
            "runs": runs,
            "medians": medians,
            "throughput_on_over_off": [
                on["ratings_per_s"] / off["ratings_per_s"]
                for on, off in zip(runs["on"], runs["off"], strict=True)
            ],
        }
        print(
            "worker medians: "
            + "; ".join(
                f"{label}: {m['ratings_per_s']:,.0f} ratings/s, freshness p50 "
                f"{m['freshness_ms_p50']:.1f} ms p99 {m['freshness_ms_p99']:.1f} ms"
                for label, m in medians.items()
            )
        )
    elif args.out.exists():  # in-process only: the last worker runs stay, with their commit
        before = json.loads(args.out.read_text())
        if "worker" in before:
            result["worker"] = before["worker"]
            result["worker_git_head"] = before.get("worker_git_head", before.get("git_head"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
