"""`check` against a Voucherify address it cannot use: the variable, the host and port, and the cause in words."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import APP_TOKEN

BASE = {"RELAY_VOUCHERIFY_APP_ID": "app-123", "RELAY_VOUCHERIFY_APP_TOKEN": APP_TOKEN, "RELAY_WEBHOOK_URL": "https://hooks.example.com/in"}


def free_port() -> int:
    """Return a loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """Accept TCP connections and never answer; yield the port."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """Generate a self-signed certificate for 127.0.0.1; return (certificate, key) files."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(  # noqa: S603 - fixed arguments
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],  # noqa: S607
        check=True,
        capture_output=True,
    )
    return cert, key


@asynccontextmanager
async def self_signed_https(cert: Path, key: Path) -> AsyncIterator[int]:
    """Serve https with a self-signed certificate; yield the port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def check(run_cli, url: str, **extra: str) -> tuple[int, str]:
    """Run `check` against ``url``; return the exit status and everything it printed."""
    code, out, err = await run_cli("check", env={**BASE, "RELAY_VOUCHERIFY_API_URL": url, **extra})
    assert "Traceback" not in out + err
    return code, out + err


async def test_refused_port_is_named(run_cli):
    """Nothing listening: `check` exits 1 saying the connection was refused, with the variable, host and port."""
    port = free_port()
    code, out = await check(run_cli, f"http://127.0.0.1:{port}")
    assert code == 1
    assert f"cannot reach 127.0.0.1:{port} (RELAY_VOUCHERIFY_API_URL): connection refused" in out


async def test_unresolvable_name_is_named(run_cli):
    """A host name that does not resolve: `check` says the name was not resolved."""
    code, out = await check(run_cli, "https://api.voucherify.invalid")
    assert code == 1
    assert "cannot reach api.voucherify.invalid:443 (RELAY_VOUCHERIFY_API_URL): name not resolved" in out


async def test_https_to_a_plain_http_server_is_named(run_cli, standin):
    """https:// to a plain http server: `check` says the TLS handshake failed."""
    port = standin.base_url.rsplit(":", 1)[1]
    code, out = await check(run_cli, f"https://127.0.0.1:{port}")
    assert code == 1
    assert f"cannot reach 127.0.0.1:{port} (RELAY_VOUCHERIFY_API_URL): TLS handshake failed" in out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
async def test_untrusted_certificate_is_named(run_cli, certificate):
    """A self-signed certificate: `check` says the TLS certificate is not trusted."""
    async with self_signed_https(*certificate) as port:
        code, out = await check(run_cli, f"https://127.0.0.1:{port}")
    assert code == 1
    assert f"cannot reach 127.0.0.1:{port} (RELAY_VOUCHERIFY_API_URL): TLS certificate not trusted" in out


async def test_a_server_that_never_answers_times_out_in_words(run_cli):
    """A server that accepts but never answers: `check` says it timed out, naming RELAY_API_TIMEOUT_S."""
    async with silent_server() as port:
        code, out = await check(run_cli, f"http://127.0.0.1:{port}", RELAY_API_TIMEOUT_S="0.5")
    assert code == 1
    assert f"cannot reach 127.0.0.1:{port} (RELAY_VOUCHERIFY_API_URL): timed out after 0.5s (RELAY_API_TIMEOUT_S)" in out
