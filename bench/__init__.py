"""Benchmarks: each writes its figures to bench/results (JSON and PNG)."""
