"""The one-command demo: services, a worker, a synthetic stream, live metrics and lists."""

from __future__ import annotations

import asyncio
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import redis

from recsys_online import synth
from streamer.client import RecommendationClient, aclose_client, redis_client
from streamer.process import (
    isolated_env,
    remove_topics,
    start_dashboard,
    start_worker,
    stop_process,
)
from streamer.producer import event_producer, stream_events
from streamer.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"


def say(text: str) -> None:
    print(text, flush=True)


def external_services(env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The services named by KAFKA_BOOTSTRAP_SERVERS (or RECSYS_BROKERS) and REDIS_URL
    (or RECSYS_REDIS_URL), when both are set: the demo then uses them as they are and
    neither starts nor stops anything.

    >>> external_services({"RECSYS_BROKERS": "k:9092", "RECSYS_REDIS_URL": "redis://r/0"})
    {'KAFKA_BOOTSTRAP_SERVERS': 'k:9092', 'REDIS_URL': 'redis://r/0'}
    >>> external_services({"REDIS_URL": "redis://r/0"}) is None
    True
    """
    env = os.environ if env is None else env
    kafka = env.get("KAFKA_BOOTSTRAP_SERVERS") or env.get("RECSYS_BROKERS")
    redis_url = env.get("REDIS_URL") or env.get("RECSYS_REDIS_URL")
    if kafka and redis_url:
        return {"KAFKA_BOOTSTRAP_SERVERS": kafka, "REDIS_URL": redis_url}
    return None


def services_down() -> list[str]:
    """Of Kafka and Redis, those not up now (as ``services.sh status`` says): what a
    demo starting them is to stop at its end, the others left as they are."""
    status = subprocess.run(
        ["bash", str(SERVICES), "status"], capture_output=True, stdin=subprocess.DEVNULL, text=True
    )
    up = {line.split(":")[0] for line in status.stdout.splitlines() if ": up" in line}
    return [name for name in ("kafka", "redis") if name not in up]


def services_up() -> dict[str, str]:
    """Start Kafka and Redis with the project's script; returns the addresses it prints."""
    out = subprocess.run(
        ["bash", str(SERVICES), "up"], stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    env = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line.removeprefix("export ").split("=", 1)
            env[name] = " ".join(shlex.split(value))  # (printed shell-quoted: %q)
    return env


def metrics_line(client: redis.Redis, key: str) -> str:
    """One line of the figures in the metrics hash ``key`` (the demo's own worker's)."""
    m = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    if not m:
        return "worker warming up"
    k = m["k"]
    return (
        f"learned {int(m['events']):>7,}  RMSE {_figure(m['rmse'], '.3f')}  "
        f"NDCG@{k} {_figure(m['ndcg_at_k'], '.3f')}  "
        f"Recall@{k} {_figure(m['recall_at_k'], '.3f')}  "
        f"fresh p50/p99 {_figure(m['freshness_ms_p50'], '.0f')}/"
        f"{_figure(m['freshness_ms_p99'], '.0f')} ms  lag {m['lag']}"
    )


def _figure(raw: str, spec: str) -> str:
    """A figure of the metrics hash as the demo prints it: ``-`` until it is measured
    (the worker writes NaN before its first rating), not ``nan``."""
    value = float(raw)
    return format(value, spec) if math.isfinite(value) else "-"


def command() -> str:
    """How a shell calls ``recsys-online``: by name where the PATH finds this install's,
    else by its path (``.venv/bin/recsys-online`` where the scripts made a virtual
    environment, which the demo's shell never activated)."""
    installed = Path(sys.executable).parent / "recsys-online"
    found = shutil.which("recsys-online")
    if not installed.exists() or (found and Path(found).resolve() == installed.resolve()):
        return "recsys-online"
    shown = os.path.relpath(installed)
    return shlex.quote(shown if not shown.startswith("..") else str(installed))


def learned(client: redis.Redis, key: str) -> int:
    raw = client.hget(key, "events")
    return int(raw) if raw else 0


def show_lists(settings: Settings, users: list[str]) -> None:
    """Each user's top 5 as an app reads it (``RecommendationClient``)."""
    with RecommendationClient(settings.redis_url, settings.key_prefix) as reader:
        for user in users:
            recs = reader.recommend(user, k=5)
            if recs.served_from != "user":
                continue
            say(f"\n  {settings.key('recs', user)}  (model version {recs.model_version})")
            for n, rec in enumerate(recs.items, 1):
                say(f"    {n}. {rec.item_id:<8} {rec.score:7.3f}  {rec.reason}")


def show_similar(settings: Settings, item: str) -> None:
    """An item's "more like this" list, as an item page reads it (waiting a few seconds
    for a list the worker has not written yet: lists follow ratings in the background)."""
    with RecommendationClient(settings.redis_url, settings.key_prefix) as reader:
        deadline = time.monotonic() + 5.0
        while (more := reader.similar(item, k=5)).fallback and time.monotonic() < deadline:
            time.sleep(0.2)
    if more.fallback:
        return
    say(f"\n  {settings.key('similar', item)}  (more like {item})")
    for n, rec in enumerate(more.items, 1):
        say(f"    {n}. {rec.item_id:<8} {rec.score:7.3f}  {rec.reason}")


def run_demo(n_ratings: int, rate: float, keep_services: bool, wait: bool = False) -> int:
    """The whole path a newcomer should see; ``wait`` keeps the worker and dashboard up
    after the stream until Ctrl-C."""
    worker: subprocess.Popen | None = None
    dashboard: subprocess.Popen | None = None
    env: dict[str, str] | None = None
    started = time.monotonic()
    external = external_services()
    # Only what this demo starts is stopped: services already up (another terminal, a
    # test run) are left as they are.
    stop_services = [] if keep_services or external is not None else services_down()
    # `kill`, a closed terminal or Ctrl-C: each stops everything the demo started (also
    # when started in the background, where a shell leaves SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        if external is None:
            say("== 1/6 starting Kafka and Redis (a first run fetches Kafka from Maven Central) ==")
            addresses = services_up()
        else:
            say(
                f"== 1/6 using Kafka at {external['KAFKA_BOOTSTRAP_SERVERS']} and Redis at "
                f"{external['REDIS_URL']} (from the environment) =="
            )
            addresses = external
        # Fresh topics for each demo, but the key prefix set (default `recsys:`), so
        # `redis-cli GET recsys:recs:<user>` works as the README says.
        # (the addresses in use, under one name each: the RECSYS_ spellings would clash)
        base = {
            k: v for k, v in os.environ.items() if k not in ("RECSYS_BROKERS", "RECSYS_REDIS_URL")
        }
        prefix = os.environ.get("RECSYS_KEY_PREFIX") or Settings().key_prefix
        env = isolated_env("demo", {**base, **addresses}, RECSYS_KEY_PREFIX=prefix)
        run = env["RECSYS_APP_ID"]
        settings = Settings.from_env(env)
        client = redis_client(settings.redis_url, cluster=settings.redis_cluster)
        if external is None:  # the project's own services' Redis: an earlier demo's
            for stale in ("metrics", "popular", "metrics:history"):  # figures go (never
                client.delete(settings.key(*stale.split(":")))  # in a Redis of the env's)

        say(f"\n== 2/6 generating a synthetic stream of {n_ratings:,} ratings ==")
        ds = synth.generate(n_users=2000, n_items=3000, n_ratings=n_ratings, seed=7)
        new_items = sum(1 for i in ds.items.values() if i.timestamp > ds.ratings[0].timestamp)
        say(
            f"   {ds.n_users:,} users, {ds.n_items:,} items ({new_items:,} arrive mid-stream "
            "with tags and no ratings), sessions, power-law popularity"
        )

        log_path = Path(tempfile.gettempdir()) / f"recsys-{run}-worker.log"
        say(f"\n== 3/6 starting a worker (log: {log_path}) ==")
        worker_started = time.monotonic()
        worker = start_worker(env, log_path)
        say(f"   worker pid {worker.pid}")
        # The demo's own worker's hash: another worker on the same prefix (another demo)
        # must not mix its figures in.
        own = asyncio.run(_wait_ready(settings, worker))
        say(f"   worker ready after {time.monotonic() - worker_started:.0f} s")

        say("\n== 4/6 starting the dashboard ==")
        dashboard_log = log_path.with_name(f"recsys-{run}-dashboard.log")
        dashboard, url = start_dashboard(env, dashboard_log, settings.dashboard_port)
        say(f"   dashboard pid {dashboard.pid}")
        say(f"   open {url}  (live charts; pick a user to see their list)")

        say(f"\n== 5/6 streaming ratings into Kafka at {rate:,.0f}/s; the worker learns each ==")
        asyncio.run(_stream(settings, ds, rate, client, n_ratings, own))
        deadline = time.monotonic() + 120
        while learned(client, own) < n_ratings and time.monotonic() < deadline:
            print(f"\r   catching up: {metrics_line(client, own)}", end="", flush=True)
            time.sleep(0.5)
        time.sleep(1.2)  # one more metrics tick
        say("\n   final: " + metrics_line(client, own))

        say("\n== 6/6 live lists in Redis (what apps read) ==")
        # Recently active users with a real history: their lists show every kind of reason.
        counts: dict[str, int] = {}
        for r in ds.ratings:
            counts[r.user] = counts.get(r.user, 0) + 1
        recent_users = list(dict.fromkeys(r.user for r in reversed(ds.ratings)))
        heavy = [
            u for u in recent_users if counts[u] >= 20 and client.exists(settings.key("recs", u))
        ][:3]
        show_lists(settings, heavy)
        liked = next((r.item for r in reversed(ds.ratings) if r.rating >= 4), None)
        if liked is not None:
            show_similar(settings, liked)
        cli = command()
        if heavy:
            say(f"\n   the same from the shell:  {cli} recs {heavy[0]}")
            say(f"                             redis-cli GET {settings.key('recs', heavy[0])}")
        if liked is not None:
            say(f"   more like an item:        {cli} similar {liked}")
        if heavy:
            say(f"   on the dashboard:         {url}?user={heavy[0]}")
        key = settings.key("metrics")
        say(f"   metrics:                  {cli} metrics   ({key}, while a worker runs)")
        if wait:
            say(f"\n   worker and dashboard stay up: {url}  —  Ctrl-C stops everything")
            while worker.poll() is None:
                time.sleep(0.5)
            say("   the worker stopped")
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted: stopping")
        return 130
    finally:
        if dashboard is not None:
            say("\n== stopping the dashboard ==")
            stop_process(dashboard, timeout=10)
        if worker is not None:
            say("== stopping the worker ==")
            stop_process(worker)
        if env is not None:  # this demo's topics (its lists stay in Redis, with their TTL)
            remove_topics(env)
        if stop_services:
            say(f"== stopping {' and '.join(stop_services)} ==")
            subprocess.call(["bash", str(SERVICES), "down", *stop_services])
        say(f"== demo finished in {time.monotonic() - started:.0f} s ==")


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM/SIGHUP take the Ctrl-C path: inside ``asyncio.run`` that cancels the main
    task, so the producer flushes and closes before KeyboardInterrupt reaches
    ``run_demo``; raising here instead would cancel the Kafka client's own tasks first and
    leave the producer waiting for them."""
    signal.raise_signal(signal.SIGINT)


async def _wait_ready(settings: Settings, worker: subprocess.Popen, timeout: float = 90.0) -> str:
    """Wait until the worker publishes its metrics; returns the key of its own hash (its
    id, ``host:pid-token``, found in the registry of live workers by its pid)."""
    client = redis_client(settings.redis_url, cluster=settings.redis_cluster, asynchronous=True)
    started = time.monotonic()
    prefix = f"{socket.gethostname()}:{worker.pid}-"

    async def own() -> str | None:
        ids = await client.zrange(settings.key("metrics", "workers"), 0, -1)
        mine = [i.decode() for i in ids if i.decode().startswith(prefix)]
        key = settings.key("metrics", "worker", mine[0]) if mine else None
        return key if key is not None and await client.exists(key) else None

    try:
        while (key := await own()) is None:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited ({worker.returncode}); see its log")
            waited = time.monotonic() - started
            if waited > timeout:
                raise RuntimeError("the worker did not become ready; see its log")
            print(
                f"\r   waiting for the worker to join its group and read the catalog: "
                f"{waited:.0f} s",
                end="",
                flush=True,
            )
            await asyncio.sleep(0.25)
        print(flush=True)
        return key
    finally:
        await aclose_client(client)


async def _stream(
    settings: Settings, ds, rate: float, client: redis.Redis, total: int, own: str
) -> None:
    """Stream at ``rate``: a live progress line, and one kept line per fifth of the stream
    so the scrollback shows the rolling metrics improving as the model learns."""
    last = 0.0
    milestone = 1

    async def progress(sent: int) -> None:
        nonlocal last, milestone
        now = time.monotonic()
        if sent >= milestone * total / 5:
            milestone += 1
            print(
                f"\r   {100 * sent / total:3.0f}% sent  |  {metrics_line(client, own)}" + " " * 10,
                flush=True,
            )
            last = now
        elif now - last >= 1.0:
            last = now
            bar = "#" * int(20 * sent / total)
            print(
                f"\r   [{bar:<20}] sent {sent:>7,}  |  {metrics_line(client, own)}",
                end="",
                flush=True,
            )

    async with event_producer(settings) as producer:
        # Sent as they happen: each event carries its send time (see stream_events).
        await stream_events(producer, ds.events(), rate, progress, stamp_now=True)
    print(flush=True)
