"""Benchmarks for voucherify-relay: each module prints its figures; ``run_all`` runs them all.

Run from the repository root: ``python bench/run_all.py`` or ``python -m bench.<name>``.
"""
