"""Values more than one adapter shares (the API client and the sinks)."""

from __future__ import annotations

import aiohttp

from daemon import __version__

USER_AGENT = f"voucherify-relay/{__version__} (+aiohttp/{aiohttp.__version__})"
