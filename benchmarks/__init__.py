"""Benchmarks of the library, run from the repo root as `python -m benchmarks.<name>`."""
