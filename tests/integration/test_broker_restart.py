"""A worker across a restart of its Kafka broker: it keeps running, and once the broker is
back it learns every rating exactly once (a broker of its own, started and stopped by
``scripts/services.sh`` with a private state directory and ports, so the broker the
other tests share is never touched)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from own_services import SERVICES, own_services, services
from polling import wait_until
from worker_process import running_worker

from schemas import ItemEvent, RatingEvent
from streamer.process import isolated_env
from streamer.producer import SyncEventProducer
from streamer.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(300)]

N_BEFORE, N_AFTER = 60_000, 2_000


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[dict[str, str]]:
    with own_services(tmp_path / "services") as env:
        yield env


def test_a_broker_restart_loses_no_rating_and_learns_none_twice(
    own_broker: dict[str, str], tmp_path: Path
) -> None:
    env = isolated_env("restart", own_broker, RECSYS_PARTITIONS="2", RECSYS_K="5")
    now = time.time()

    def produce(settings: Settings, lo: int, hi: int) -> None:
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

    with running_worker(env, tmp_path / "worker.log") as run:
        settings, log, learned = run.settings, run.log, run.learned
        wait_until(run.metrics, "the worker's first metrics", log, 60, run.process)
        with SyncEventProducer(settings) as producer:
            for j in range(50):
                producer.send_item(
                    ItemEvent(op="upsert", item_id=f"i{j}", tags=[f"t{j % 7}"], timestamp=now)
                )
        produce(settings, 0, N_BEFORE)
        # (Early: the broker takes a second or two to stop, the worker ~10,000 ratings/s.)
        wait_until(lambda: learned() >= 2_000, "the first ratings learned", log, 60, run.process)
        # The broker stops (a clean shutdown, as in a rolling restart) with ratings left.
        broker = int(Path(own_broker["RECSYS_STATE_DIR"], "kafka.pid").read_text())
        lines_before = len(run.log_path.read_text(errors="replace").splitlines())
        os.kill(broker, signal.SIGTERM)
        wait_until(lambda: not _alive(broker), "the broker stopped", log, 60)
        at_stop = learned()
        time.sleep(8)
        assert run.process.poll() is None, log()
        services(own_broker, "up")
        produce(settings, N_BEFORE, N_BEFORE + N_AFTER)
        total = N_BEFORE + N_AFTER
        wait_until(lambda: learned() >= total, "every rating learned", log, 120, run.process)
        wait_until(lambda: run.metrics().get("lag") == "0", "lag 0", log, 60, run.process)
        time.sleep(2)  # (a rating learned twice would show by now)
        figures = run.metrics()
        # The Kafka client's complaints over the outage (some 10-15 s) were summarised
        # (streamer.logs): a line per kind of complaint per 10 s, saying how many it stood
        # for, where aiokafka alone logs some 170 lines a second.
        outage = run.log_path.read_text(errors="replace").splitlines()[lines_before:]
        assert len(outage) < 100, "\n".join(outage[:120])
        assert any("more like it in" in line for line in outage), "\n".join(outage)
        assert at_stop < N_BEFORE, "the broker stopped only after every rating was learned"
        assert int(figures["events"]) == int(figures["evaluated"]) == total, figures
        assert figures["deadletters"] == "0", figures
        doc = json.loads(run.redis.get(f"{settings.key_prefix}recs:u499") or b"null")
        assert doc and doc["items"], doc
        assert run.process.poll() is None, log()
    # `down redis` stops Redis alone (what a test run or a demo that started only Redis
    # stops at its end), leaving the broker up.
    services(own_broker, "down", "redis")
    status = subprocess.run(
        ["bash", str(SERVICES), "status"], env=own_broker, capture_output=True, text=True
    ).stdout
    assert "kafka: up" in status and "redis: DOWN" in status, status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
