"""Benchmarks (each with a named baseline measured in the same run; results in results/)."""
