"""A worker process for an integration test: started with an environment, its log, its
Redis figures, and ``recsys-online`` commands run in the same environment."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from streamer.client import close_client, redis_client
from streamer.process import start_worker, stop_process
from streamer.settings import Settings


@dataclass
class WorkerRun:
    env: dict[str, str]
    settings: Settings
    redis: redis.Redis
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def metrics(self) -> dict[str, str]:
        raw = self.redis.hgetall(f"{self.settings.key_prefix}metrics")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def learned(self) -> int:
        return int(self.metrics().get("events", 0))


@contextlib.contextmanager
def running_worker(env: dict[str, str], log_path: Path) -> Iterator[WorkerRun]:
    """``recsys-online worker`` in ``env``, stopped (and its Redis client closed) after."""
    settings = Settings.from_env(env)
    client = redis_client(settings.redis_url, cluster=settings.redis_cluster)
    run = WorkerRun(env, settings, client, log_path, start_worker(env, log_path))
    try:
        yield run
    finally:
        stop_process(run.process)
        close_client(client)


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``recsys-online ARGS`` in ``env`` (its output captured as text)."""
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
