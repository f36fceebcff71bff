"""A Kafka broker and a Redis of a test's own, started and stopped by the project's
``scripts/services.sh`` with a private state directory and free ports: for tests that
stop the broker, or need one configured otherwise than the shared one."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def services(env: dict[str, str], command: str) -> str:
    """``scripts/services.sh COMMAND`` in ``env``; its stdout (the exports of ``up``)."""
    done = subprocess.run(
        ["bash", str(SERVICES), command], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"services.sh {command} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@contextlib.contextmanager
def own_services(state_dir: Path, **extra: str) -> Iterator[dict[str, str]]:
    """Start them; yield the environment that reaches them (``up``'s exports added, and
    ``RECSYS_STATE_DIR`` naming the state directory); stop them at the end."""
    env = dict(
        os.environ,
        RECSYS_STATE_DIR=str(state_dir),
        KAFKA_PORT=str(free_port()),
        KAFKA_CONTROLLER_PORT=str(free_port()),
        REDIS_PORT=str(free_port()),
        KAFKA_NUM_PARTITIONS="2",
        PYTHON=sys.executable,
        **extra,
    )
    try:
        for line in services(env, "up").splitlines():  # export NAME=value
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
        yield env
    finally:
        services(env, "down")
