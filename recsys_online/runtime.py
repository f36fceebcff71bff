"""Process-level settings the core's array code depends on for speed."""

from __future__ import annotations

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
    """
    global _limiter
    _limiter = threadpool_limits(limits=n_threads, user_api="blas")
