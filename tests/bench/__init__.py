"""Benchmark (not collected by pytest): ``python -m tests.bench.run``."""
