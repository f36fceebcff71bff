"""Process-level settings the core's array code depends on for speed."""

from __future__ import annotations

import gc

from threadpoolctl import threadpool_limits

_limiter: threadpool_limits | None = None


def limit_blas_threads(n_threads: int = 1) -> None:
    """Keep BLAS to ``n_threads`` threads in this process.

    The core multiplies small matrices (a few users by the catalog) between many cheap
    element-wise steps. A multi-threaded BLAS leaves its threads spinning after each
    product, and they steal the cores the next element-wise step needs: measured here,
    12 users x 2,000 items with a bias add took 6.0 ms with OpenBLAS on 2 threads against
    0.08 ms on one. Scale by running more worker processes instead. Entry points (CLI,
    worker, benchmarks) call this once at start.

    numpy is imported first: a limit reaches only the BLAS libraries loaded when it is
    set, and a process that called this before its first numpy import ran on every core.
    """
    global _limiter
    import numpy  # noqa: F401  (loads numpy's BLAS, so that the limit covers it)

    _limiter = threadpool_limits(limits=n_threads, user_api="blas")


def tune_gc(young: int = 50_000) -> None:
    """Let the garbage collector run less often in a long-lived process.

    CPython collects its youngest generation every 700 allocations and, every 100 of
    those passes at most, walks every tracked object, which in a worker holding many
    users' state is a pause that grows with the model. The state at the call (imported
    modules, anything loaded at start) is frozen out of collection, and the youngest
    generation is collected every ``young`` allocations (0 keeps CPython's settings).
    Measured on a live-paced stream, the worker's engine in-process: collections took
    0.69-0.71 s of a 10.5 s run with CPython's thresholds, none at 50,000, and the run
    was 7-10% faster. Reference cycles are still collected, later.
    """
    if young <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
