"""The README's main command, end to end: the demo streams, shows metrics and lists, and
leaves nothing running, whether it finishes or is stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(240)]


@pytest.fixture
def demo_processes() -> Iterator[list[subprocess.Popen]]:
    """Demos started by a test; a failing test still leaves nothing behind (each demo runs
    in its own process group, killed whole at the end)."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def demo(
    started: list, kafka_bootstrap: str, redis_url: str, *args: str, **more: str
) -> subprocess.Popen:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "RECSYS_DASHBOARD_PORT": "0",
        "RECSYS_WEB_PORT": "0",
        **more,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "demo", *args],
        start_new_session=True,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    started.append(process)
    return process


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too (our child, reaped by its parent only).
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1].startswith("Z")


def lines_until(process: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """The demo's output lines up to the first holding ``marker`` (or its end, or the
    timeout)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if marker in line or not line:
            break
    return lines


def stopped_by(process: subprocess.Popen, sig: int, lines: list[str]) -> None:
    """Send ``sig`` to the demo: it says it stops, exits 130 and leaves its worker and
    dashboard (their pids in its output) gone."""
    process.send_signal(sig)
    rest, _ = process.communicate(timeout=90)
    out = "".join(lines) + rest
    assert process.returncode == 130, out[-3000:]
    assert "interrupted: stopping" in out
    assert len(pids(out)) == 2
    assert all(gone(pid) for pid in pids(out))


def pids(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"(?:worker|dashboard) pid (\d+)", output)]


def test_demo_runs_end_to_end_and_stops_everything(
    kafka_bootstrap, redis_url, redis_key_prefix, demo_processes
):
    """The demo's path, against services already up: under the key prefix set, and
    deleting nothing of a Redis it did not start (it deleted the default prefix's
    metrics, history and popular list, whatever the prefix)."""
    r = redis.Redis.from_url(redis_url)
    r.rpush(f"{redis_key_prefix}metrics:history", b"someone's")
    process = demo(
        demo_processes,
        kafka_bootstrap,
        redis_url,
        "--ratings",
        "4000",
        "--rate",
        "4000",
        "--then",
        "exit",
        RECSYS_KEY_PREFIX=redis_key_prefix,
    )
    out, _ = process.communicate(timeout=200)
    assert b"someone's" in r.lrange(f"{redis_key_prefix}metrics:history", 0, -1)
    shown = re.findall(rf"{re.escape(redis_key_prefix)}recs:(\S+)", out)
    assert shown and r.exists(f"{redis_key_prefix}recs:{shown[0]}"), out[-3000:]
    r.close()
    assert process.returncode == 0, out[-3000:]
    assert "using Kafka at" in out  # the services from the environment, left running
    assert re.search(r"open http://\S+/", out), out[-3000:]
    final = re.search(r"final: learned\s+([\d,]+)\s+RMSE ([\d.]+)\s+NDCG@10 ([\d.]+)", out)
    assert final, out[-3000:]
    assert int(final.group(1).replace(",", "")) == 4000
    assert 0 < float(final.group(2)) < 1.5
    # The lists shown are personalised: some item is there for a reason of the user's own
    # (a liked item, their tags, their tastes), not only because it is popular. Which
    # personal reason wins varies between runs: asking for a liked item or tags only
    # failed once in six runs.
    lists = out[out.index("6/6") :]
    assert re.search(r"because you liked|matches your tags|close to your tastes", lists), lists
    assert re.search(r"similar:\S+  \(more like \S+\)\n    1\. ", lists), lists
    assert len(pids(out)) == 2
    assert all(gone(pid) for pid in pids(out))


@pytest.mark.parametrize(
    "sig",
    [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
    ids=["ctrl-c", "kill", "terminal-closed"],
)
def test_a_stopped_demo_leaves_nothing_running(kafka_bootstrap, redis_url, sig, demo_processes):
    process = demo(
        demo_processes,
        kafka_bootstrap,
        redis_url,
        "--ratings",
        "200000",
        "--rate",
        "1000",
        "--then",
        "wait",
    )
    lines = lines_until(process, "streaming ratings into Kafka", 120)
    time.sleep(2)
    stopped_by(process, sig, lines)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_a_demo_kept_up_after_its_stream_stops_everything_on_a_signal(
    kafka_bootstrap, redis_url, sig, demo_processes
):
    """Step 6 of the README's demo: the worker and dashboard stay up after the stream
    until Ctrl-C (or the terminal closes), and then none is left running."""
    process = demo(
        demo_processes,
        kafka_bootstrap,
        redis_url,
        "--ratings",
        "1000",
        "--rate",
        "4000",
        "--then",
        "wait",
    )
    lines = lines_until(process, "worker and dashboard stay up", 150)
    assert "worker and dashboard stay up" in lines[-1], "".join(lines)[-3000:]
    time.sleep(1)
    assert process.poll() is None  # still up, waiting
    assert not any(gone(pid) for pid in pids("".join(lines)))
    stopped_by(process, sig, lines)
