"""The worker and the commands against a Redis that wants a password over TLS, as managed
Redis services do (a ``redis-server`` of this module's own, TLS only, with a
certificate made by ``openssl``): everything reaches it through ``REDIS_URL`` alone
(``rediss://:PASSWORD@host:port/0?ssl_ca_certs=ca.pem``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from own_services import free_port
from polling import wait_until
from worker_process import cli, running_worker

from schemas import ItemEvent, RatingEvent
from streamer.process import clear_run, isolated_env
from streamer.producer import SyncEventProducer

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(240)]

PASSWORD = "r3dis-secret"


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A TLS-only, password-protected Redis: its URL, and its CA file."""
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: run scripts/services.sh up"
    tls = tmp_path_factory.mktemp("redis-tls")
    key, ca = str(tls / "key.pem"), str(tls / "cert.pem")
    san = "subjectAltName=IP:127.0.0.1,DNS:localhost"
    openssl = ("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2")
    made = subprocess.run(
        [*openssl, "-subj", "/CN=localhost", "-addext", san, "-keyout", key, "-out", ca],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    port = free_port()
    process = subprocess.Popen(
        [
            *(server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", ca, "--tls-key-file", key, "--tls-ca-cert-file", ca),
            *("--tls-auth-clients", "no", "--requirepass", PASSWORD),
            *("--save", "", "--appendonly", "no", "--dir", str(tls)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    try:
        client = redis.Redis.from_url(url)
        wait_until(lambda: _pings(client), "the TLS Redis", lambda: "", 20, process)
        client.close()
        yield {"url": url, "ca": ca, "port": str(port)}
    finally:
        process.terminate()
        process.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_worker_writes_lists_and_metrics_to_a_tls_redis_with_a_password(
    secured_redis, kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = isolated_env(
        "redistls",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=secured_redis["url"],
        RECSYS_PARTITIONS="2",
        RECSYS_K="5",
    )
    try:
        with running_worker(env, tmp_path / "worker.log") as run:
            settings, log = run.settings, run.log
            wait_until(run.metrics, "the worker's first metrics", log, 60, run.process)
            now = time.time()
            with SyncEventProducer(settings) as producer:
                for item in ("a", "b"):
                    event = ItemEvent(op="upsert", item_id=item, tags=["jazz"], timestamp=now)
                    producer.send_item(event)
                rating = RatingEvent(user_id="ann", item_id="a", rating=5, timestamp=now)
                producer.send_rating(rating)
            listed = f"{settings.key_prefix}recs:ann"
            wait_until(lambda: run.redis.get(listed), "ann's list", log, 60, run.process)
            shown = cli(env, "recs", "ann", "--json")
            assert shown.returncode == 0, shown.stderr
            assert [r["item_id"] for r in json.loads(shown.stdout)["items"]] == ["b"]
            assert run.process.poll() is None, log()
    finally:
        clear_run(env)
    assert PASSWORD not in run.log_path.read_text(errors="replace")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "rediss://:wrong-password@127.0.0.1:{port}/0?ssl_ca_certs={ca}",
            "refused the credentials",
        ),
        ("rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", "refused the credentials"),
        (f"rediss://:{PASSWORD}@127.0.0.1:{{port}}/0", "TLS failed"),
    ],
    ids=["wrong password", "no password", "certificate not trusted"],
)
def test_a_redis_that_refuses_the_worker_stops_it_with_one_line(
    secured_redis, kafka_bootstrap: str, url: str, expected: str
) -> None:
    """A misconfiguration never resolves by waiting: the worker says so and stops (a Redis
    that is only down, by contrast, is waited for)."""
    env = isolated_env(
        "redistls",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=url.format(**secured_redis),
        RECSYS_PARTITIONS="2",
    )
    try:
        done = cli(env, "worker")
    finally:
        clear_run({**env, "REDIS_URL": secured_redis["url"]})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys-online: Redis at rediss://") and expected in last, done.stderr
    assert PASSWORD not in done.stderr + done.stdout
