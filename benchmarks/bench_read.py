"""Read benchmark: what a service pays to read a user's live list from Redis.

The workers' sink writes ``--users`` lists of 10 recommendations (with reasons) and
item metadata under a prefix of this run's own; then, in the same run, alternating
rounds of:

1. a bare ``GET recs:{user}`` with redis-py (the baseline: one round trip, no parsing);
2. ``RecommendationClient.recommend(user)``: one ``GET`` of the user's list, parsed and
   checked into typed results;
3. the same for users with no list (a ``GET`` that finds nothing, then the popular list
   kept for a second), and with ``titles=True`` (a pipeline of ``HGET``s for the items'
   titles);
4. ``AsyncRecommendationClient.recommend`` with 64 reads in flight, against bare
   asynchronous ``GET``s with 64 in flight.

Each figure is the median over the rounds of each round's median latency (or reads/s),
and the client's cost is the median over the rounds of its ratio to the bare read in
the same round.
Needs Redis: ``eval "$(scripts/services.sh up)"``. Usage::

    python -m benchmarks.bench_read [--users 10000] [--reads 20000] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path

import redis
import redis.asyncio as aioredis

from recsys_online.recommender import Recommendation
from schemas import ItemEvent
from streamer.client import AsyncRecommendationClient, RecommendationClient
from streamer.process import delete_keys
from streamer.settings import Settings
from streamer.sink import RedisSink

IN_FLIGHT = 64


def recommendations(user: int, n_items: int) -> list[Recommendation]:
    rng = random.Random(user)
    return [
        Recommendation(
            f"i{rng.randrange(n_items)}",
            rng.random(),
            "because you liked i7" if rank % 2 else "matches your tags jazz, drama",
            "collaborative" if rank % 2 else "content",
            "i7" if rank % 2 else None,
        )
        for rank in range(10)
    ]


async def write_lists(settings: Settings, n_users: int, n_items: int) -> None:
    sink = RedisSink(settings)
    try:
        for lo in range(0, n_users, 1000):
            lists = {f"u{j}": recommendations(j, n_items) for j in range(lo, lo + 1000)}
            await sink.publish_lists(lists, version=1)
        await sink.publish_state(recommendations(-1, n_items), {"events": n_users}, 1, "bench")
        items = [
            ItemEvent(op="upsert", item_id=f"i{j}", title=f"T{j}", tags=["jazz"], timestamp=1.0)
            for j in range(n_items)
        ]
        await sink.publish_items(items)
    finally:
        await sink.close()


def timed_each(read, users: list[str]) -> list[float]:
    """Seconds of each call ``read(user)``."""
    out = []
    for user in users:
        started = time.perf_counter()
        read(user)
        out.append(time.perf_counter() - started)
    return out


async def rate_in_flight(read, users: list[str]) -> float:
    """Reads/s with ``IN_FLIGHT`` reads always in flight."""
    queue = iter(users)

    async def reader() -> None:
        for user in queue:
            await read(user)

    started = time.perf_counter()
    await asyncio.gather(*(reader() for _ in range(IN_FLIGHT)))
    return len(users) / (time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=20_000, help="reads per kind per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/read.json"))
    args = parser.parse_args(argv)
    url = os.environ.get("REDIS_URL", Settings().redis_url)
    prefix = f"benchread-{uuid.uuid4().hex[:8]}:"
    settings = Settings(redis_url=url, key_prefix=prefix)
    asyncio.run(write_lists(settings, args.users, args.items))
    rng = random.Random(1)
    bare = redis.Redis.from_url(url)
    client = RecommendationClient(url, prefix)
    per_round: dict[str, list[dict[str, float]]] = {}

    def record(kind: str, seconds: list[float]) -> None:
        per_round.setdefault(kind, []).append(
            {
                "p50_us": percentile(seconds, 0.5) * 1e6,
                "p99_us": percentile(seconds, 0.99) * 1e6,
                "reads_per_s": len(seconds) / sum(seconds),
            }
        )

    async def in_flight(users: list[str]) -> tuple[float, float]:
        bare_async = aioredis.Redis.from_url(url, max_connections=IN_FLIGHT)
        reader = AsyncRecommendationClient(url, prefix)
        try:
            raw = await rate_in_flight(lambda u: bare_async.get(f"{prefix}recs:{u}"), users)
            typed = await rate_in_flight(reader.recommend, users)
        finally:
            await bare_async.aclose()
            await reader.aclose()
        return raw, typed

    try:
        for _ in range(args.rounds):
            users = [f"u{rng.randrange(args.users)}" for _ in range(args.reads)]
            record("bare GET", timed_each(lambda u: bare.get(f"{prefix}recs:{u}"), users))
            record("recommend", timed_each(client.recommend, users))
            strangers = [f"stranger{j}" for j in range(len(users))]  # no list: popular
            record("recommend, unknown users", timed_each(client.recommend, strangers))
            titled = timed_each(lambda u: client.recommend(u, titles=True), users)
            record("recommend, titles", titled)
            raw, typed = asyncio.run(in_flight(users))
            per_round.setdefault("async bare GET, 64 in flight", []).append({"reads_per_s": raw})
            per_round.setdefault("async recommend, 64 in flight", []).append({"reads_per_s": typed})
    finally:
        client.close()
        bare.close()
        delete_keys(url, prefix)
    figures = {
        kind: {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
        for kind, rounds in per_round.items()
    }

    def ratio(kind: str, base: str, name: str) -> float:
        """The median over rounds of each round's ratio (the machine's speed varies from
        round to round more than the two kinds of read differ)."""
        pairs = zip(per_round[kind], per_round[base], strict=True)
        return statistics.median(a[name] / b[name] for a, b in pairs)

    ratios = {
        "recommend / bare GET, p50": ratio("recommend", "bare GET", "p50_us"),
        "recommend with titles / bare GET, p50": ratio("recommend, titles", "bare GET", "p50_us"),
        "recommend, unknown users / bare GET, p50": ratio(
            "recommend, unknown users", "bare GET", "p50_us"
        ),
        "async recommend / async bare GET, reads/s": ratio(
            "async recommend, 64 in flight", "async bare GET, 64 in flight", "reads_per_s"
        ),
    }
    for kind, f in figures.items():
        shown = ", ".join(
            f"{name} {value:,.0f}" if name == "reads_per_s" else f"{name} {value:.0f}"
            for name, value in f.items()
        )
        print(f"{kind}: {shown}")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python -m benchmarks.bench_read",
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "figures": figures,
        "ratios": ratios,
        "per_round": per_round,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
