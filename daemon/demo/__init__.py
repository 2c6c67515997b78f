"""The demo's room: a Voucherify stand-in, a recording webhook receiver and ``voucherify-relay demo``.

Tests and benchmarks use the same stand-in and receiver. The run path (``voucherify-relay run``)
never imports this package; tests/e2e/test_run_imports.py checks it.
"""
