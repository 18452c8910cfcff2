"""Benchmarks (`make bench`): each bench_*.py module has main() and prints ratios vs a baseline."""
