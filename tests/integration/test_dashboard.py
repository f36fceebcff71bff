"""Monitoring end to end: a real worker's Prometheus endpoint, and the dashboard page in
headless Chromium against it (the screenshot is kept in artifacts/dashboard.png)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from polling import wait_until
from prometheus_client.parser import text_string_to_metric_families

from recsys_online.recommender import Recommendation
from schemas import ItemEvent, RatingEvent
from streamer.process import (
    clear_run,
    isolated_env,
    start_dashboard,
    start_worker,
    stop_process,
)
from streamer.producer import SyncEventProducer
from streamer.settings import Settings
from streamer.sink import list_document

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("RECSYS_ARTIFACTS_DIR", REPO / "artifacts"))
CHARTS = ("chart-error", "chart-ranking", "chart-throughput", "chart-lag", "chart-freshness")


def chromium() -> str:
    """Debian's chromium; the tests fail (never skip) without it."""
    path = (
        os.environ.get("RECSYS_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if not path:
        pytest.fail(
            "headless Chromium is needed for the dashboard test: run `scripts/services.sh "
            "browser` (installs Debian's chromium) or set RECSYS_CHROMIUM",
            pytrace=False,
        )
    return path


def browse(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={tmp}",
            "--window-size=1400,1000",
            "--virtual-time-budget=6000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.fixture(scope="module")
def running(kafka_bootstrap: str, redis_url: str, tmp_path_factory) -> Iterator[dict]:
    env = isolated_env(
        "dash",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=redis_url,
        RECSYS_PARTITIONS="2",
        RECSYS_K="5",
        RECSYS_REFRESH_EVERY_S="0.3",
        RECSYS_WEB_PORT="0",
    )
    tmp = tmp_path_factory.mktemp("dash")
    worker = start_worker(env, tmp / "worker.log")

    def worker_log() -> str:
        return (tmp / "worker.log").read_text(errors="replace")[-3000:]

    settings = Settings.from_env(env)
    client = redis.Redis.from_url(redis_url)
    dashboard = None
    try:
        metrics = wait_until(
            lambda: client.hgetall(settings.key("metrics")),
            "the worker's first metrics",
            worker_log,
        )
        assert b"metrics_url" in metrics
        with SyncEventProducer(settings) as producer:
            for j in range(12):
                producer.send_item(
                    ItemEvent(
                        op="upsert",
                        item_id=f"m{j}",
                        title=f"Movie {j}",
                        tags=["jazz" if j % 2 else "rock"],
                        timestamp=time.time(),
                    )
                )
            producer.flush()
            for n in range(200):
                producer.send_rating(
                    RatingEvent(
                        user_id=f"u{n % 10}",
                        item_id=f"m{n % 12}",
                        rating=float(1 + (n * 7) % 5),
                        timestamp=time.time(),
                    )
                )
        wait_until(
            lambda: int(client.hget(settings.key("metrics"), "events") or 0) >= 200,
            "200 ratings learned",
            worker_log,
        )
        dashboard, dashboard_url = start_dashboard(env, tmp / "dashboard.log")
        wait_until(
            lambda: client.llen(settings.key("metrics", "history")) >= 3,
            "three metrics snapshots",
            worker_log,
        )
        yield {
            "env": env,
            "settings": settings,
            "redis": client,
            "tmp": tmp,
            "dashboard_url": dashboard_url,
            "worker": worker,
        }
    finally:
        if dashboard is not None:
            stop_process(dashboard, timeout=10)
        stop_process(worker)
        client.close()
        clear_run(env)


def test_worker_serves_prometheus_metrics(running: dict) -> None:
    settings, client = running["settings"], running["redis"]
    url = client.hget(settings.key("metrics"), "metrics_url").decode()
    url = re.sub(r"//[^:/]+:", "//127.0.0.1:", url)  # advertised by host name
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["recsys_events"].samples[0].value >= 200
    for name in (
        "recsys_deadletters",
        "recsys_consumer_lag",
        "recsys_rmse",
        "recsys_mae",
        "recsys_ndcg_at_k",
        "recsys_recall_at_k",
    ):
        assert name in fams, name
    counts = {
        s.name: s.value
        for f in ("recsys_freshness_seconds", "recsys_refresh_seconds")
        for s in fams[f].samples
        if s.name.endswith("_count")
    }
    assert counts["recsys_freshness_seconds_count"] >= 200
    assert counts["recsys_refresh_seconds_count"] >= 1


def test_dashboard_api_serves_history_and_lists(running: dict) -> None:
    base = running["dashboard_url"]
    with urllib.request.urlopen(base + "api/history?limit=50", timeout=10) as r:
        points = json.load(r)["points"]
    assert len(points) >= 3 and points[-1]["t"] >= points[0]["t"]
    assert points[-1]["events"] >= 200
    with urllib.request.urlopen(base + "api/recs/u3", timeout=10) as r:
        recs = json.load(r)
    assert recs["served_from"] == "user" and recs["items"]
    assert all(it["title"].startswith("Movie ") for it in recs["items"])
    similar = similar_written(running, "m1")
    with urllib.request.urlopen(base + "api/similar/m1", timeout=10) as r:
        more = json.load(r)
    assert more["item_id"] == "m1" and more["served_from"] == "item"
    assert [it["item_id"] for it in more["items"]] == similar
    assert all(it["title"].startswith("Movie ") for it in more["items"])
    with urllib.request.urlopen(base + "api/similar/nothing-here", timeout=10) as r:
        assert json.load(r)["served_from"] == "popular"
    # Any id the events allow has its list served, braces included (aiohttp's default
    # path pattern refuses them) and a slash.
    client, settings = running["redis"], running["settings"]
    for user in ("{team}", "a/b"):
        listed = [Recommendation("m2", 1.5, "popular", "pop", None)]
        client.set(settings.key("recs", user), list_document(user, listed, 1, time.time()))
        quoted = urllib.parse.quote(user, safe="")
        with urllib.request.urlopen(base + "api/recs/" + quoted, timeout=10) as r:
            recs = json.load(r)
        assert recs["served_from"] == "user" and [it["item_id"] for it in recs["items"]] == ["m2"]


def similar_written(running: dict, item: str) -> list[str]:
    """The item's "more like this" list as the worker wrote it (waiting for it)."""
    client, settings = running["redis"], running["settings"]
    raw = wait_until(
        lambda: client.get(settings.key("similar", item)),
        f"{item}'s more-like-this list",
        lambda: "",
    )
    listed = [r["item_id"] for r in json.loads(raw)["items"]]
    assert listed, "m1 shares its tag with five items"
    return listed


def test_dashboard_page_in_headless_chromium(running: dict) -> None:
    base, client, settings = running["dashboard_url"], running["redis"], running["settings"]
    expected = [r["item_id"] for r in json.loads(client.get(settings.key("recs", "u3")))["items"]]
    similar = similar_written(running, "m1")
    result = browse(base + "?user=u3&item=m1", running["tmp"] / "profile", "--dump-dom")
    dom = result.stdout
    assert "<main" in dom, f"chromium returned no page: {result.stderr[-2000:]}"
    for chart in CHARTS:
        points = re.search(rf'id="{chart}"[^>]*data-points="(\d+)"', dom)
        assert points and int(points.group(1)) >= 3, f"{chart} has no data"
        assert re.search(rf'id="{chart}".*?<polyline', dom, re.S), f"{chart} drew no line"
    rows = re.findall(r'<tr class="rec"><td>\d+</td><td><a [^>]*>([^<]+)</a></td>', dom)
    assert rows and rows[0] in expected, (rows, expected)
    more = re.findall(r'<tr class="similar"><td>\d+</td><td><a [^>]*>([^<]+)</a></td>', dom)
    assert more == similar, (more, similar)
    assert "1 live worker" in dom

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    browse(base + "?user=u3", running["tmp"] / "profile", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
