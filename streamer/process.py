"""Worker processes for the demo, the benchmarks and the tests: isolated names, start, stop."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.settings import Settings


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
            "RECSYS_ITEM_CHANGES_TOPIC": f"{run}.item-changes",
            "RECSYS_KEY_PREFIX": f"{run.replace('-', ':', 1)}:",
        }
    )
    env.update(extra)
    return env


_ISOLATED_RUN = re.compile(r"[a-z][a-z0-9_]*-[0-9a-f]{8}")  # isolated_env's run names


def remove_topics(env: Mapping[str, str]) -> None:
    """Delete the Kafka topics of a run that :func:`isolated_env` named, once it is over
    (a broker that keeps every run's partitions runs out of file descriptors), and its
    folder under ``RECSYS_DATA_DIR`` (Faust's files, snapshots). Only
    topics named after the run's ``RECSYS_APP_ID`` are deleted: any other name is a
    ``ValueError``. A failure to delete is a warning: the run's own results stand.

    >>> remove_topics({"RECSYS_APP_ID": "run1", "RECSYS_RATINGS_TOPIC": "run1.ratings"})
    Traceback (most recent call last):
    ...
    ValueError: not the topics of one isolated run 'run1': ['recsys.items', 'recsys.users', \
'recsys.deadletter', 'recsys.item-changes']
    """
    from streamer.settings import Settings

    _remove_topics(Settings.from_env(env))


def _remove_topics(settings: Settings) -> None:
    """:func:`remove_topics` of parsed settings."""
    from streamer.app import delete_topics, run_topics  # (Faust: only when needed)

    run, topics = settings.app_id, run_topics(settings)
    others = [t for t in topics if not t.startswith(f"{run}.")]
    if others:  # e.g. the default topics: another run's, or an app's
        raise ValueError(f"not the topics of one isolated run {run!r}: {others}")
    try:
        left = asyncio.run(
            delete_topics(settings.bootstrap_servers, topics, security=settings.kafka_security())
        )
    except Exception as exc:  # any client error: report it, do not fail the run
        left, reason = ["all"], f"{type(exc).__name__}: {exc}"
    else:
        reason = "the broker refused"
    if left:
        warnings.warn(f"topics of {run} not deleted ({reason}): {left}", stacklevel=3)
    # Its Faust files and snapshots too (about 30 MB a test run, 1.8 GB over a day of
    # benchmarks and tests on one machine): the run's topics, which they follow, are gone.
    if _ISOLATED_RUN.fullmatch(run):  # (a name isolated_env made, never "." or a path)
        shutil.rmtree(Path(settings.data_dir).expanduser() / run, ignore_errors=True)


def clear_run(env: Mapping[str, str]) -> None:
    """Delete everything a run named by :func:`isolated_env` left behind: its Redis keys
    (under its own key prefix) and its topics (:func:`remove_topics`). The default key
    prefix (an app's lists) is a ``ValueError``; a failure to reach Redis is a warning.

    >>> clear_run({"RECSYS_APP_ID": "run1"})
    Traceback (most recent call last):
    ...
    ValueError: not the Redis keys of one isolated run 'run1': prefix 'recsys:'
    """
    from streamer.client import REDIS_ERRORS  # (only when needed)
    from streamer.settings import Settings

    settings = Settings.from_env(env)
    prefix = settings.key_prefix
    if not prefix or prefix == Settings().key_prefix:
        raise ValueError(
            f"not the Redis keys of one isolated run {settings.app_id!r}: prefix {prefix!r}"
        )
    try:
        delete_keys(settings.redis_url, prefix, cluster=settings.redis_cluster)
    except REDIS_ERRORS as exc:
        warnings.warn(f"Redis keys of {settings.app_id} not deleted: {exc}", stacklevel=2)
    _remove_topics(settings)


def delete_keys(
    redis_url: str, prefix: str, timeout_s: float = 10.0, cluster: bool = False
) -> None:
    """Delete every Redis key under ``prefix`` (a run's or a test's own), in batches
    (on every node of a cluster)."""
    from streamer.client import close_client, glob_escaped, redis_client  # (when needed)

    client = redis_client(redis_url, cluster=cluster, socket_timeout=timeout_s)
    try:
        keys = list(client.scan_iter(match=glob_escaped(prefix) + "*", count=500))
        for lo in range(0, len(keys), 1000):
            client.delete(*keys[lo : lo + 1000])
    finally:
        close_client(client)


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
    try:
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            match = re.search(r"dashboard at (http://\S+/)", text)
            if match:
                return process, match.group(1)
            if process.poll() is not None:
                break
            time.sleep(0.05)
    except BaseException:  # interrupted (Ctrl-C, kill) while waiting: not left running
        stop_process(process, timeout=5)
        raise
    stop_process(process, timeout=5)
    last = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    raise RuntimeError(f"the dashboard did not start: {last[0]}")
