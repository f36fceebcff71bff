"""Process-level settings: BLAS threads, and the garbage collector's tuning for long-lived
workers."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from recsys_online.runtime import tune_gc


def test_tune_gc_freezes_what_exists_and_collects_the_young_less_often() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
        tune_gc(12_345)
        assert gc.get_threshold() == (12_345, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_blas_limit_holds_when_set_before_numpy_is_imported() -> None:
    """A fresh process that limits BLAS before importing numpy runs numpy's BLAS on one
    thread (a limit reaches only the libraries loaded when it is set)."""
    code = (
        "from recsys_online.runtime import limit_blas_threads\n"
        "limit_blas_threads()\n"
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'"
        " and 'numpy' in i['filepath']}))\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[1]", out.stdout + out.stderr
