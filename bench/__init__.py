"""Benchmarks: each module compares a stage with a reference measured in the same run."""
