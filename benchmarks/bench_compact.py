"""Compaction benchmark: a catalog that turned over, before and after
:meth:`Recommender.compact` frees the deleted items' rows.

The hybrid learns a synthetic stream (items arriving over time), then the oldest items
are deleted, as a catalog that turns over deletes them, until ``--deleted`` of the rows
are deleted ones. Reported, before and after compacting, in the same run: item rows,
the snapshot's size (the pickled model: what a restart reads), and the median time of
``recommend_many`` for 1,000 users, with the time of the popularity model on the same
catalog, not compacted, beside it (a control: this machine's speed of the moment); plus
the compaction's own time and whether every list stayed the same. Usage::

    python -m benchmarks.bench_compact [--users 50000] [--items 20000]
        [--ratings 500000] [--deleted 0.75] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_core import warm
from recsys_online import synth
from recsys_online.cli import MODELS
from recsys_online.recommender import Recommender, RecommenderConfig
from recsys_online.runtime import limit_blas_threads


def _median_s(call, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _state(model: Recommender, users: list[str], baseline: Recommender) -> dict:
    model.recommend_many(users, 10)  # (first call: caches and buffers)
    baseline.recommend_many(users, 10)
    return {
        "item_rows": model.n_items,
        "deleted_rows": model.n_deleted,
        "snapshot_mb": round(len(pickle.dumps(model, protocol=5)) / 1e6, 2),
        "recommend_many_ms": round(1e3 * _median_s(lambda: model.recommend_many(users, 10)), 2),
        "popularity_recommend_many_ms": round(
            1e3 * _median_s(lambda: baseline.recommend_many(users, 10)), 2
        ),
    }


def run(n_users: int, n_items: int, n_ratings: int, deleted: float) -> dict:
    ds = synth.generate(n_users=n_users, n_items=n_items, n_ratings=n_ratings, seed=5)
    events = list(ds.events())
    hybrid, baseline = (
        Recommender(RecommenderConfig(signals=MODELS[name])) for name in ("hybrid", "popularity")
    )
    started = time.perf_counter()
    for model in (hybrid, baseline):
        warm(model, events)
    learn_s = time.perf_counter() - started
    live = [x for x in hybrid.items.ids if not hybrid.is_deleted(x)]
    oldest = live[: int(deleted * hybrid.n_items) - hybrid.n_deleted]
    for model in (hybrid, baseline):
        for item in oldest:
            model.delete_item(item)
    rng = np.random.default_rng(7)
    rated = [u for u in hybrid.users.ids if hybrid.user_n[hybrid.users.get(u)] > 0]
    users = [rated[j] for j in rng.choice(len(rated), 1000, replace=False).tolist()]
    lists = [[(r.item, r.score) for r in recs] for recs in hybrid.recommend_many(users, 10)]
    before = _state(hybrid, users, baseline)
    started = time.perf_counter()
    freed = hybrid.compact()
    compact_s = time.perf_counter() - started
    after = _state(hybrid, users, baseline)
    again = [[(r.item, r.score) for r in recs] for recs in hybrid.recommend_many(users, 10)]
    same = all(
        [i for i, _ in a] == [i for i, _ in b]
        and np.allclose([s for _, s in a], [s for _, s in b], rtol=1e-5)
        for a, b in zip(lists, again, strict=True)
    )
    return {
        "users": hybrid.n_users,
        "ratings": n_ratings,
        "learn_s": round(learn_s, 1),
        "freed": freed,
        "compact_s": round(compact_s, 3),
        "lists_unchanged": same,
        "before": before,
        "after": after,
        "recommend_many_ratio_after_before": round(
            after["recommend_many_ms"] / before["recommend_many_ms"], 3
        ),
        "popularity_ratio_after_before": round(
            after["popularity_recommend_many_ms"] / before["popularity_recommend_many_ms"], 3
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--ratings", type=int, default=500_000)
    parser.add_argument("--deleted", type=float, default=0.75, help="share of rows deleted")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compact.json"))
    args = parser.parse_args(argv)
    limit_blas_threads()
    result = run(args.users, args.items, args.ratings, args.deleted)
    result["git"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["lists_unchanged"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
