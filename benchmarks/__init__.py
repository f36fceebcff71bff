"""Benchmarks of recsys-online: run by hand (``python -m benchmarks.bench_core``), not by pytest."""
