"""``python -m daemon``: the same as the ``voucherify-relay`` command."""

from daemon.cli import main

raise SystemExit(main())
