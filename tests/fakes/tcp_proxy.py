"""A TCP proxy in the test's event loop: forwards to a target, notes HTTP request lines, can cut every connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field


@dataclass
class TcpProxy:
    """Listen on a free port and forward each connection to ``target_host:target_port``.

    ``cut()`` closes every open connection and stops listening (new connections are refused)
    until ``restore()``; ``http_requests`` holds (monotonic time, request line) for each
    HTTP request line seen going to the target.
    """

    target_host: str
    target_port: int
    port: int = 0
    http_requests: list[tuple[float, str]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        """Listen (on the same port again after a cut)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and drop every open connection, as a restarting server would."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Listen again on the same port."""
        await self.start()

    async def close(self) -> None:
        """Cut everything and wait for the forwarding tasks to end."""
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def count(self, marker: str) -> int:
        """Count the HTTP request lines containing ``marker``."""
        return sum(1 for _, line in self.http_requests if marker in line)

    def since(self, moment: float, marker: str) -> list[float]:
        """Return the times of the request lines containing ``marker`` seen after the monotonic ``moment``."""
        return [at for at, line in self.http_requests if at > moment and marker in line]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        tasks = [asyncio.create_task(self._pipe(reader, up_writer, note=True)), asyncio.create_task(self._pipe(up_reader, writer, note=False))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)
        for end in (writer, up_writer):
            end.transport.abort()
            self._writers.discard(end)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, note: bool) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if note:
                    self._note(data)
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    def _note(self, data: bytes) -> None:
        now = time.monotonic()
        for line in data.split(b"\r\n"):
            if line.startswith((b"GET ", b"POST ")) and line.endswith(b"HTTP/1.1"):
                self.http_requests.append((now, line.decode(errors="replace")))
