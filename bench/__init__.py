"""Benchmark scripts; run them from the repository root, e.g. ``python -m bench.webhook_throughput``."""
