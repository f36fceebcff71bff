"""The refresh's check of served lists for changed catalog items: how long it holds the
ratings in one step, sliced by users (``StreamEngine.REFRESH_USERS``) against one pass
over every served user (the baseline), alternated in the same run.

A ``StreamEngine`` learns a synthetic stream (6,000 users, 3,000 items, 60,000 ratings)
and serves every user once; then, per round, five items are retagged and
``refresh_steps`` runs to its end with each setting: the longest time between two
yields (what the ratings wait for at most) and the whole check.

Usage::

    python -m benchmarks.bench_refresh [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

from recsys_online import synth
from streamer.engine import StreamEngine
from streamer.settings import Settings


def check(engine: StreamEngine) -> tuple[float, float]:
    """One ``refresh_steps`` run to its end: (longest step, whole) in seconds."""
    started = last = time.perf_counter()
    longest = 0.0
    for _ in engine.refresh_steps():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    return longest, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    ds = synth.generate(n_users=6000, n_items=3000, n_ratings=60_000, seed=3)
    engine = StreamEngine(Settings(k=10))
    for item in ds.items.values():
        engine.upsert_item(item.item, item.tags)
    for lo in range(0, len(ds.ratings), 1000):
        engine.learn_ratings(ds.ratings[lo : lo + 1000])
    engine.serve(list(engine.model.users.ids))
    items = list(ds.items.values())
    settings = {"sliced": StreamEngine.REFRESH_USERS, "one pass": 10**9}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
    fresh = iter(range(0, len(items), 5))  # five items not retagged before, each check
    for n in range(args.rounds):
        for name, per_pass in sorted(settings.items(), reverse=n % 2 == 1):
            start = next(fresh)
            for item in items[start : start + 5]:
                engine.upsert_item(item.item, dict(item.tags) | {"retagged": 0.5})
            engine.REFRESH_USERS = per_pass
            times[name].append(check(engine))
    print(f"{len(engine.served):,} served users, five items retagged a round, {args.rounds} rounds")
    for name, runs in times.items():
        longest = statistics.median(t[0] for t in runs) * 1e3
        whole = statistics.median(t[1] for t in runs) * 1e3
        print(f"{name:>9}: longest step {longest:.1f} ms, whole check {whole:.1f} ms (medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
