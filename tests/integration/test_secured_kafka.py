"""The worker, the producer and the commands against a broker's secured listeners, as
managed Kafka services have them (a broker of its own from ``scripts/services.sh`` with
``KAFKA_SASL_SSL_PORT`` and ``KAFKA_SSL_PORT``: SASL over TLS with PLAIN, SCRAM-SHA-256
and SCRAM-SHA-512 users, and mutual TLS; self-signed certificates)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer
from own_services import free_port, own_services
from polling import wait_until
from worker_process import cli, running_worker

from schemas import ItemEvent, RatingEvent
from streamer.process import isolated_env
from streamer.producer import SyncEventProducer
from streamer.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(300)]

PASSWORD = "recsys-secret"  # scripts/services.sh's default KAFKA_SASL_USERS


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("secured") / "services"
    ports = {"KAFKA_SASL_SSL_PORT": str(free_port()), "KAFKA_SSL_PORT": str(free_port())}
    with own_services(state, **ports) as env:
        yield env


def secured_env(services: dict[str, str], mechanism: str, password: str = PASSWORD) -> dict:
    """A run's environment that reaches the broker by its SASL_SSL listener only."""
    env = isolated_env("sasl", services, RECSYS_PARTITIONS="2", RECSYS_K="5")
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=services["KAFKA_SASL_SSL_BOOTSTRAP"],
        RECSYS_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        RECSYS_KAFKA_SASL_MECHANISM=mechanism,
        RECSYS_KAFKA_SASL_USERNAME="recsys",
        RECSYS_KAFKA_SASL_PASSWORD=password,
        RECSYS_KAFKA_SSL_CAFILE=services["KAFKA_SSL_CAFILE"],
    )
    return env


def test_a_worker_on_sasl_over_tls_learns_serves_and_dead_letters(secured, tmp_path) -> None:
    """Each client its own mechanism: the worker SCRAM-SHA-256, the producer PLAIN, the
    dead-letter command SCRAM-SHA-512. The password is never logged."""
    env = secured_env(secured, "SCRAM-SHA-256")
    producing = Settings.from_env({**env, "RECSYS_KAFKA_SASL_MECHANISM": "PLAIN"})
    with running_worker(env, tmp_path / "worker.log") as run:
        settings, log = run.settings, run.log
        wait_until(run.metrics, "the worker's first metrics", log, 90, run.process)
        now = time.time()
        with SyncEventProducer(producing) as producer:
            for j in range(20):
                tags = ["jazz" if j % 2 else "rock"]
                producer.send_item(
                    ItemEvent(op="upsert", item_id=f"i{j}", tags=tags, timestamp=now)
                )
            for j in range(200):
                producer.send_rating(
                    RatingEvent(
                        user_id=f"u{j % 20}", item_id=f"i{j % 20}", rating=1 + j % 5, timestamp=now
                    )
                )

        async def send_bad() -> None:
            raw = AIOKafkaProducer(
                bootstrap_servers=producing.bootstrap_servers, **producing.kafka_security()
            )
            await raw.start()
            try:
                await raw.send_and_wait(settings.ratings_topic, b"{not json", key=b"u1")
            finally:
                await raw.stop()

        asyncio.run(send_bad())
        wait_until(lambda: run.learned() >= 200, "the ratings learned", log, 60, run.process)
        doc = json.loads(run.redis.get(f"{settings.key_prefix}recs:u3") or b"null")
        assert doc and doc["items"], doc
        # The shell producer connects the same way (SCRAM-SHA-512 here).
        listing = {**env, "RECSYS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
        sent = cli(listing, "produce", "rating", "newcomer", "i5", "4.5")
        assert sent.returncode == 0, sent.stderr
        listed = f"{settings.key_prefix}recs:newcomer"
        wait_until(
            lambda: run.redis.get(listed), "the produced rating's list", log, 60, run.process
        )

        def dead_letters() -> list:
            done = cli(listing, "deadletters", "--json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        (row,) = wait_until(dead_letters, "the dead letter listed", log, 30)
        assert row["reason"].startswith("malformed JSON") and row["key"] == "u1"
        assert run.process.poll() is None, log()
    assert PASSWORD not in run.log_path.read_text(errors="replace")


def mutual_tls_env(services: dict[str, str], certificate: bool = True) -> dict:
    """A run's environment that reaches the broker by its mutual-TLS listener only."""
    env = isolated_env("mtls", services, RECSYS_PARTITIONS="2", RECSYS_K="5")
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=services["KAFKA_SSL_BOOTSTRAP"],
        RECSYS_KAFKA_SECURITY_PROTOCOL="SSL",
        RECSYS_KAFKA_SSL_CAFILE=services["KAFKA_SSL_CAFILE"],
    )
    if certificate:
        env.update(
            RECSYS_KAFKA_SSL_CERTFILE=services["KAFKA_SSL_CLIENT_CERT"],
            RECSYS_KAFKA_SSL_KEYFILE=services["KAFKA_SSL_CLIENT_KEY"],
        )
    return env


def test_a_worker_on_mutual_tls_learns_and_serves(secured, tmp_path) -> None:
    with running_worker(mutual_tls_env(secured), tmp_path / "worker.log") as run:
        settings, log = run.settings, run.log
        wait_until(run.metrics, "the worker's first metrics", log, 90, run.process)
        now = time.time()
        with SyncEventProducer(settings) as producer:
            producer.send_item(ItemEvent(op="upsert", item_id="a", tags=["jazz"], timestamp=now))
            producer.send_item(ItemEvent(op="upsert", item_id="b", tags=["jazz"], timestamp=now))
            producer.send_rating(RatingEvent(user_id="ann", item_id="a", rating=5, timestamp=now))
        wait_until(lambda: run.learned() >= 1, "the rating learned", log, 60, run.process)
        doc = json.loads(run.redis.get(f"{settings.key_prefix}recs:ann") or b"null")
        assert doc and [r["item_id"] for r in doc["items"]] == ["b"], doc
    # Without its certificate, the same client is refused.
    done = cli(mutual_tls_env(secured, certificate=False), "deadletters")
    assert done.returncode == 1 and "cannot read" in done.stderr, done.stderr


def test_a_refused_password_stops_the_worker_with_one_clear_line(secured, tmp_path) -> None:
    done = cli(secured_env(secured, "SCRAM-SHA-512", password="not-the-password"), "worker")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys-online: cannot reach Kafka at 127.0.0.1:"), done.stderr
    assert "over SASL_SSL as recsys (SCRAM-SHA-512)" in last
    assert "not-the-password" not in done.stderr + done.stdout


def test_the_broker_refuses_a_client_that_does_not_check_its_certificate(secured) -> None:
    """TLS is not decoration: without the broker's CA the connection fails (the system's
    CAs do not know a self-signed certificate)."""
    env = secured_env(secured, "PLAIN")
    del env["RECSYS_KAFKA_SSL_CAFILE"]
    done = cli(env, "deadletters")
    assert done.returncode == 1
    assert "cannot read" in done.stderr and PASSWORD not in done.stderr
