"""A worker across a restart of its Kafka broker: it keeps running, and once the broker is
back it learns every rating exactly once (a broker of its own, started and stopped by
``scripts/services.sh`` with a private state directory and ports, so the broker the
other tests share is never touched)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from polling import wait_until

from schemas import ItemEvent, RatingEvent
from streamer.process import isolated_env, start_worker, stop_process
from streamer.producer import SyncEventProducer
from streamer.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(300)]

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
N_BEFORE, N_AFTER = 40_000, 2_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _services(env: dict[str, str], command: str) -> str:
    done = subprocess.run(
        ["bash", str(SERVICES), command], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"services.sh {command} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture
def own_services(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A broker and a Redis of this test's own: the environment that reaches them."""
    env = dict(
        os.environ,
        RECSYS_STATE_DIR=str(tmp_path / "services"),
        KAFKA_PORT=str(_free_port()),
        KAFKA_CONTROLLER_PORT=str(_free_port()),
        REDIS_PORT=str(_free_port()),
        KAFKA_NUM_PARTITIONS="2",
        PYTHON=sys.executable,
    )
    try:
        out = _services(env, "up")
        for line in out.splitlines():  # export NAME=value
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
        yield env
    finally:
        _services(env, "down")


def test_a_broker_restart_loses_no_rating_and_learns_none_twice(
    own_services: dict[str, str], tmp_path: Path
) -> None:
    env = isolated_env("restart", own_services, RECSYS_PARTITIONS="2", RECSYS_K="5")
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(env["REDIS_URL"])
    log_path = tmp_path / "worker.log"
    worker = start_worker(env, log_path)

    def log() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    def metrics() -> dict[str, str]:
        raw = client.hgetall(f"{settings.key_prefix}metrics")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def learned() -> int:
        return int(metrics().get("events", 0))

    now = time.time()

    def produce(lo: int, hi: int) -> None:
        with SyncEventProducer(settings) as producer:
            for j in range(lo, hi):
                producer.send_rating(
                    RatingEvent(
                        user_id=f"u{j % 500}",
                        item_id=f"i{j % 50}",
                        rating=1 + j % 5,
                        timestamp=now + j * 1e-3,
                    )
                )

    try:
        wait_until(metrics, "the worker's first metrics", log, 60, worker)
        with SyncEventProducer(settings) as producer:
            for j in range(50):
                producer.send_item(
                    ItemEvent(op="upsert", item_id=f"i{j}", tags=[f"t{j % 7}"], timestamp=now)
                )
        produce(0, N_BEFORE)
        wait_until(lambda: learned() >= N_BEFORE // 4, "a quarter learned", log, 60, worker)
        # The broker stops (a clean shutdown, as in a rolling restart) with ratings left.
        broker = int(Path(own_services["RECSYS_STATE_DIR"], "kafka.pid").read_text())
        os.kill(broker, signal.SIGTERM)
        wait_until(lambda: not _alive(broker), "the broker stopped", log, 60)
        at_stop = learned()
        lines_before = len(log_path.read_text(errors="replace").splitlines())
        time.sleep(5)
        assert worker.poll() is None, log()
        # The Kafka client's complaints are summarised (streamer.logs): a line per kind
        # of complaint per 10 s, where aiokafka alone logs some 170 lines a second.
        outage = log_path.read_text(errors="replace").splitlines()[lines_before:]
        assert 0 < len(outage) < 60, "\n".join(outage[:80])
        _services(own_services, "up")
        produce(N_BEFORE, N_BEFORE + N_AFTER)
        total = N_BEFORE + N_AFTER
        wait_until(lambda: learned() >= total, "every rating learned", log, 120, worker)
        wait_until(lambda: metrics().get("lag") == "0", "lag 0", log, 60, worker)
        time.sleep(2)  # (a rating learned twice would show by now)
        figures = metrics()
        assert at_stop < N_BEFORE, "the broker stopped only after every rating was learned"
        assert int(figures["events"]) == int(figures["evaluated"]) == total, figures
        assert figures["deadletters"] == "0", figures
        doc = json.loads(client.get(f"{settings.key_prefix}recs:u499") or b"null")
        assert doc and doc["items"], doc
        assert worker.poll() is None, log()
    finally:
        stop_process(worker)
        client.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
