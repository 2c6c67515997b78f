"""Bounded reads of HTTP response bodies: a hostile peer's endless body must not grow memory."""

from __future__ import annotations

import aiohttp

CHUNK_BYTES = 64 * 1024


async def read_at_most(response: aiohttp.ClientResponse, limit: int, *, keep_prefix: bool = True) -> tuple[bytes, bool]:
    """Read up to ``limit`` bytes of the body; return them and whether more was left unread.

    When more is left the response is closed, so the rest is never buffered; without
    ``keep_prefix`` the bytes read are dropped instead of copied once more.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            response.close()
            return (b"".join(chunks)[:limit] if keep_prefix else b""), True
    return b"".join(chunks), False
