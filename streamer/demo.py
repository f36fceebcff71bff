"""The one-command demo: services, a worker, a synthetic stream, live metrics and lists."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from recsys_online import synth
from streamer.process import isolated_env, start_worker, stop_worker
from streamer.producer import event_producer, stream_events
from streamer.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"


def say(text: str) -> None:
    print(text, flush=True)


def services_up() -> dict[str, str]:
    """Start Kafka and Redis with the project's script; returns the addresses it prints."""
    out = subprocess.run(
        ["bash", str(SERVICES), "up"], stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    env = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line.removeprefix("export ").split("=", 1)
            env[name] = value.strip("'\"")
    return env


def metrics_line(client: redis.Redis, settings: Settings) -> str:
    m = {k.decode(): v.decode() for k, v in client.hgetall(settings.key("metrics")).items()}
    if not m:
        return "worker warming up"
    k = m["k"]
    return (
        f"learned {int(m['events']):>7,}  RMSE {float(m['rmse']):.3f}  "
        f"NDCG@{k} {float(m['ndcg_at_k']):.3f}  Recall@{k} {float(m['recall_at_k']):.3f}  "
        f"fresh p50/p99 {float(m['freshness_ms_p50']):.0f}/"
        f"{float(m['freshness_ms_p99']):.0f} ms  lag {m['lag']}"
    )


def learned(client: redis.Redis, settings: Settings) -> int:
    raw = client.hget(settings.key("metrics"), "events")
    return int(raw) if raw else 0


def show_lists(client: redis.Redis, settings: Settings, users: list[str]) -> None:
    for user in users:
        raw = client.get(settings.key("recs", user))
        if raw is None:
            continue
        doc = json.loads(raw)
        say(f"\n  {settings.key('recs', user)}  (model version {doc['model_version']})")
        for n, rec in enumerate(doc["items"][:5], 1):
            say(f"    {n}. {rec['item_id']:<8} {rec['score']:7.3f}  {rec['reason']}")


def run_demo(n_ratings: int, rate: float, keep_services: bool) -> int:
    worker: subprocess.Popen | None = None
    started = time.monotonic()
    try:
        say("== 1/5 starting Kafka and Redis (the first run fetches Kafka from Maven Central) ==")
        # Fresh topics for each demo, but the default key prefix, so `redis-cli GET
        # recsys:recs:<user>` works as the README says.
        env = isolated_env("demo", {**os.environ, **services_up()}, RECSYS_KEY_PREFIX="recsys:")
        run = env["RECSYS_APP_ID"]
        settings = Settings.from_env(env)
        client = redis.Redis.from_url(settings.redis_url)
        client.delete(settings.key("metrics"))

        say(f"\n== 2/5 generating a synthetic stream of {n_ratings:,} ratings ==")
        ds = synth.generate(n_users=2000, n_items=3000, n_ratings=n_ratings, seed=7)
        new_items = sum(1 for i in ds.items.values() if i.timestamp > ds.ratings[0].timestamp)
        say(
            f"   {ds.n_users:,} users, {ds.n_items:,} items ({new_items:,} arrive mid-stream "
            "with tags and no ratings), sessions, power-law popularity"
        )

        log_path = Path(tempfile.gettempdir()) / f"recsys-{run}-worker.log"
        say(f"\n== 3/5 starting a worker (log: {log_path}) ==")
        worker = start_worker(env, log_path)
        asyncio.run(_wait_ready(settings))
        say(f"   worker ready after {time.monotonic() - started:.0f} s")

        say(f"\n== 4/5 streaming ratings into Kafka at {rate:,.0f}/s; the worker learns each ==")
        asyncio.run(_stream(settings, ds, rate, client, n_ratings))
        deadline = time.monotonic() + 120
        while learned(client, settings) < n_ratings and time.monotonic() < deadline:
            print(f"\r   catching up: {metrics_line(client, settings)}", end="", flush=True)
            time.sleep(0.5)
        time.sleep(1.2)  # one more metrics tick
        say("\n   " + metrics_line(client, settings))

        say("\n== 5/5 live lists in Redis (what apps read) ==")
        # Recently active users with a real history: their lists show every kind of reason.
        counts: dict[str, int] = {}
        for r in ds.ratings:
            counts[r.user] = counts.get(r.user, 0) + 1
        recent_users = list(dict.fromkeys(r.user for r in reversed(ds.ratings)))
        heavy = [
            u for u in recent_users if counts[u] >= 20 and client.exists(settings.key("recs", u))
        ][:3]
        show_lists(client, settings, heavy)
        say(
            f"\n   read one yourself: redis-cli GET {settings.key('recs', heavy[0])}"
            if heavy
            else ""
        )
        say(f"   metrics: redis-cli HGETALL {settings.key('metrics')}")
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted: stopping")
        return 130
    finally:
        if worker is not None:
            say("\n== stopping the worker ==")
            stop_worker(worker)
        if not keep_services:
            say("== stopping Kafka and Redis ==")
            subprocess.call(["bash", str(SERVICES), "down"])
        say(f"== demo finished in {time.monotonic() - started:.0f} s ==")


async def _wait_ready(settings: Settings, timeout: float = 90.0) -> None:
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + timeout
    try:
        while not await client.exists(settings.key("metrics")):
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not become ready; see its log")
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def _stream(settings: Settings, ds, rate: float, client: redis.Redis, total: int) -> None:
    last = 0.0

    async def progress(sent: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 1.0:
            last = now
            bar = "#" * int(20 * sent / total)
            print(
                f"\r   [{bar:<20}] sent {sent:>7,}  |  {metrics_line(client, settings)}",
                end="",
                flush=True,
            )

    async with event_producer(settings) as producer:
        await stream_events(producer, ds.events(), rate, progress)
    print(flush=True)
