"""Worker processes for the demo, the benchmarks and the tests: isolated names, start, stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path


def isolated_env(kind: str, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Environment for a worker whose topics, consumer group and Redis keys are its own.

    >>> env = isolated_env("demo", {})
    >>> env["RECSYS_RATINGS_TOPIC"].startswith("demo-"), env["RECSYS_KEY_PREFIX"][-1]
    (True, ':')
    """
    run = f"{kind}-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "RECSYS_APP_ID": run,
            "RECSYS_RATINGS_TOPIC": f"{run}.ratings",
            "RECSYS_ITEMS_TOPIC": f"{run}.items",
            "RECSYS_USERS_TOPIC": f"{run}.users",
            "RECSYS_DEADLETTER_TOPIC": f"{run}.deadletter",
            "RECSYS_KEY_PREFIX": f"{run.replace('-', ':', 1)}:",
        }
    )
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``recsys-online worker`` as a child process, its output in ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (a clean shutdown of a worker or the dashboard), then SIGKILL if it takes
    longer than ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_dashboard(
    env: dict[str, str], log_path: Path, port: int = 0, timeout: float = 30.0
) -> tuple[subprocess.Popen, str]:
    """``recsys-online dashboard`` as a child process, its output in ``log_path`` (a file,
    not a pipe nobody reads, which would block it once full); returns it and its URL."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "dashboard", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = re.search(r"dashboard at (http://\S+/)", text)
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    stop_process(process, timeout=5)
    last = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    raise RuntimeError(f"the dashboard did not start: {last[0]}")
