"""A PostgreSQL server that asks for a cleartext password and refuses it, quoting it back.

Just enough of the frontend/backend protocol (v3) for libpq: SSL and GSS encryption
requests are declined (``N``), the startup message is answered with
AuthenticationCleartextPassword, and the password message with a FATAL ErrorResponse
whose text holds the password received: the worst a server or a proxy could echo, so a
test can see whether the relay shows what libpq sent.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

_ENCRYPTION_REQUESTS = {80877103, 80877104}  # SSLRequest, GSSENCRequest
_CLEARTEXT_PASSWORD = b"R" + struct.pack("!ii", 8, 3)


def error_response(message: str) -> bytes:
    """Return a FATAL ErrorResponse (invalid_password) carrying ``message``."""
    fields = b"".join(code + text.encode() + b"\0" for code, text in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28P01"), (b"M", message)))
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


class EchoingPostgres:
    """Serves on a loopback port; remembers the passwords clients sent."""

    def __init__(self) -> None:
        self.passwords: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Decline encryption, ask for the password, refuse it by name."""
        try:
            while True:
                (length,) = struct.unpack("!i", await reader.readexactly(4))
                payload = await reader.readexactly(length - 4)
                if struct.unpack("!i", payload[:4])[0] not in _ENCRYPTION_REQUESTS:
                    break
                writer.write(b"N")
            writer.write(_CLEARTEXT_PASSWORD)
            await writer.drain()
            kind, (length,) = await reader.readexactly(1), struct.unpack("!i", await reader.readexactly(4))
            password = (await reader.readexactly(length - 4)).rstrip(b"\0").decode()
            if kind == b"p":
                self.passwords.append(password)
            writer.write(error_response(f"password authentication failed: {password!r} is not the password"))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def echoing_postgres() -> AsyncIterator[tuple[EchoingPostgres, int]]:
    """Run the server for the block; yield it and its port."""
    fake = EchoingPostgres()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    try:
        yield fake, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
