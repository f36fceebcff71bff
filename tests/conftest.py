"""Session fixtures for the real Kafka and Redis services, and per-test topic and key names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient

from streamer.process import delete_keys

KAFKA_ENV = "KAFKA_BOOTSTRAP_SERVERS"
REDIS_ENV = "REDIS_URL"
CHECK_TIMEOUT_SECONDS = 15.0

# Docker fallback only: the Kafka 4 / Redis 7 lines that scripts/services.sh runs.
# Confluent Platform 8.0 ships Apache Kafka 4.0; testcontainers' KafkaContainer drives cp-kafka.
KAFKA_IMAGE = "confluentinc/cp-kafka:8.0.0"
REDIS_IMAGE = "redis:7"

HOW_TO_START = (
    'Start the services with `eval "$(scripts/services.sh up)"` (or run `scripts/services.sh up` '
    f"and export the {KAFKA_ENV}=... and {REDIS_ENV}=... lines it prints), then rerun pytest; "
    "or deselect these tests with -m 'not kafka and not redis'."
)


def _fail(message: str) -> NoReturn:
    """Fail the requesting test with ``message`` and no traceback (the message says it all)."""
    pytest.fail(message, pytrace=False)


def _describe(exc: BaseException) -> str:
    """A one-line reason for a failed check."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT_SECONDS:.0f} s"
    text = str(exc).strip().rstrip(".")
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def _run_detached(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine to completion on a private event loop in a worker thread.

    Sync fixtures may run while pytest-asyncio owns this thread's event loop; a thread keeps
    the two apart.
    """

    async def bounded() -> Any:
        return await asyncio.wait_for(make(), CHECK_TIMEOUT_SECONDS)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="service-check") as pool:
        return pool.submit(asyncio.run, bounded()).result()


async def _list_topics(bootstrap: str) -> list[str]:
    """One real metadata request, as ``scripts/services.sh`` does for readiness."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        return await admin.list_topics()
    finally:
        await admin.close()


def _kafka_problem(bootstrap: str) -> str | None:
    """``None`` when the broker answers a metadata request, else why not."""
    try:
        _run_detached(lambda: _list_topics(bootstrap))
    except Exception as exc:
        return _describe(exc)
    return None


def _redis_problem(url: str) -> str | None:
    """``None`` when Redis answers PING, else why not."""
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
            socket_timeout=CHECK_TIMEOUT_SECONDS,
        )
        try:
            if not client.ping():
                return "PING did not return PONG"
        finally:
            client.close()
    except Exception as exc:
        return _describe(exc)
    return None


def _docker_problem() -> str | None:
    """``None`` when a Docker engine answers, else why not (no engine, no socket, no package)."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # docker.errors.DockerException above all
        return _describe(exc)
    return None


def _service(
    name: str,
    env: str,
    problem: Callable[[str], str | None],
    container: Callable[[], Any],
    address_of: Callable[[Any], str],
) -> Iterator[str]:
    """Yield the address of a service that answers: ``$env`` if set, else a test container.

    Fails (never skips, in CI or not) when the service is missing or does not answer.
    """
    address = os.environ.get(env, "").strip()
    if address:
        why = problem(address)
        if why is not None:
            _fail(
                f"{name} at {address} (from {env}) does not answer: {why}. "
                f"Is it running? {HOW_TO_START}"
            )
        yield address
        return

    docker_why = _docker_problem()
    started = None
    if docker_why is None:
        try:
            started = container()
        except Exception as exc:  # the engine answered, but the container client did not build
            docker_why = _describe(exc)
    if started is None:
        _fail(
            f"{name} is missing for the integration tests: {env} is not set and no Docker "
            f"engine answers for testcontainers ({docker_why}). {HOW_TO_START}"
        )

    try:
        started.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            started.stop()
        _fail(f"{name} test container ({started.image}) did not start: {_describe(exc)}")
    try:
        address = address_of(started)
        why = problem(address)
        if why is not None:
            _fail(f"{name} test container ({started.image}) at {address} does not answer: {why}")
        yield address
    finally:
        started.stop()


def _kafka_container() -> Any:
    from testcontainers.community.kafka import KafkaContainer

    return KafkaContainer(KAFKA_IMAGE).with_kraft()


def _redis_container() -> Any:
    from testcontainers.community.redis import RedisContainer

    return RedisContainer(REDIS_IMAGE)


def _redis_container_url(container: Any) -> str:
    host = container.get_container_host_ip()
    return f"redis://{host}:{container.get_exposed_port(container.port)}/0"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a Kafka broker that answers metadata requests.

    ``$KAFKA_BOOTSTRAP_SERVERS`` when set (checked with ``list_topics()``), else a KRaft
    ``KafkaContainer`` when a Docker engine answers, else the test fails with how to start one.
    """
    yield from _service(
        "Kafka",
        KAFKA_ENV,
        _kafka_problem,
        _kafka_container,
        lambda container: container.get_bootstrap_server(),
    )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server that answers PING.

    ``$REDIS_URL`` when set, else a ``RedisContainer`` when a Docker engine answers, else the
    test fails with how to start one.
    """
    yield from _service("Redis", REDIS_ENV, _redis_problem, _redis_container, _redis_container_url)


@pytest.fixture
async def topic_name(kafka_bootstrap: str) -> AsyncIterator[str]:
    """A topic name no other test uses, ``test-<uuid>``; the topic is deleted afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    from streamer.app import delete_topics  # (Faust: only for the tests that use Kafka)

    try:
        left = await delete_topics(kafka_bootstrap, [name])
    except Exception as exc:
        warnings.warn(f"could not delete test topic {name}: {_describe(exc)}", stacklevel=1)
    else:
        if left:
            warnings.warn(f"deleting test topic {name}: the broker refused", stacklevel=1)


@pytest.fixture
def redis_key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses, ``test:<uuid>:``; its keys are deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    delete_keys(redis_url, prefix, CHECK_TIMEOUT_SECONDS)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a service fixture, so ``-m 'not kafka'`` always drops it."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "kafka_bootstrap" in fixtures:
            item.add_marker(pytest.mark.kafka)
        if "redis_url" in fixtures:
            item.add_marker(pytest.mark.redis)
