"""Helpers for tests and benchmarks (local servers); not used by the pipeline."""
