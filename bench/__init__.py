"""Benchmark scripts: each runs a baseline and alignd side by side in one run and prints ratios.

Run them from the repository root as modules, e.g. `python -m bench.submit_latency --quick`.
Results and the machine they were taken on are in bench/RESULTS.md.
"""
