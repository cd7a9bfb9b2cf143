"""Benchmarks of payworker (not tests): `make bench`."""
