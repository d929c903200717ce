"""Benchmarks: print numbers, compare with a peer in the same run. Not part of the test suite."""
