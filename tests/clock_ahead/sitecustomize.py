"""With this folder on ``PYTHONPATH``, a Python process's wall clock (``time.time`` and
``time.time_ns``) runs ``RECSYS_TEST_CLOCK_AHEAD_S`` seconds ahead: a worker started as if
days later, for the tests of what is judged by the clock. Python runs ``sitecustomize``
before anything else it imports, so every ``time.time`` the worker calls is this one."""

import os
import time

_AHEAD_S = float(os.environ.get("RECSYS_TEST_CLOCK_AHEAD_S", "0"))

if _AHEAD_S:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _AHEAD_S
    time.time_ns = lambda: _time_ns() + int(_AHEAD_S * 1e9)
