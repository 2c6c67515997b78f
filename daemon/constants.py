"""Values more than one adapter shares (the API client, the sinks, the delivery policy)."""

from __future__ import annotations

import aiohttp

from daemon import __version__

USER_AGENT = f"voucherify-relay/{__version__} (+aiohttp/{aiohttp.__version__})"
# a Retry-After longer than an hour is a receiver's mistake (or an epoch read as seconds)
MAX_RETRY_AFTER_S = 3600.0
