"""Waiting on a live system in integration tests: poll until true, fail with the logs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    what: str,
    logs: Callable[[], str],
    timeout: float = 60.0,
    process: subprocess.Popen | None = None,
    interval: float = 0.1,
) -> T:
    """Poll ``check`` until it returns something truthy and return that; on timeout (or
    when ``process`` exits first) fail the test naming ``what``, with ``logs()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"process exited ({process.returncode}) before {what}\n{logs()}")
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")
