"""The real CLI on PostgreSQL: runs, check, outbox commands, with a password that never shows."""

from __future__ import annotations

import asyncio
import json
import sys

from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn
from daemon.store.postgres_schema import SCHEMA_VERSION
from tests.conftest import relay_env, until
from tests.e2e.conftest import RelayProcess, cli_env

PASSWORD = "pg-Passw0rd-9f3c-never-shown"  # trust auth here accepts any password: it travels, and must never be shown


def with_password(url: str) -> str:
    """Return ``url`` with a password in its user info."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


async def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run one CLI command; return its exit status and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, env=cli_env(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


async def test_relay_on_postgres_delivers_new_completions_once_and_never_shows_the_password(
    tmp_path, standin: VoucherifyStandIn, receiver: RecordingReceiver, pg_url
):
    """Two relays on one PostgreSQL database: no event for history, each new completion delivered once, the password nowhere."""
    standin.add_action("VOUCHERS.IMPORT_CSV", status="DONE", progress=100)
    running = [standin.add_action("CUSTOMERS.IMPORT_CSV") for _ in range(4)]
    env = relay_env(tmp_path, standin, receiver, state_url=with_password(pg_url), http_listen="127.0.0.1:0")
    relays = [RelayProcess(env), RelayProcess(env)]
    for relay in relays:
        await relay.start()
    try:
        await until(lambda: standin.count("list") >= 4, timeout_s=20)
        for action_id in running:
            standin.complete_action(action_id, example="CUSTOMERS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) >= 4, timeout_s=20)
        await asyncio.sleep(1.5)  # room for a duplicate to show up
    finally:
        codes = [await relay.terminate() for relay in relays]
    assert codes == [0, 0]
    assert sorted(r.envelope["data"]["id"] for r in receiver.delivered) == sorted(running)
    assert len({r.event_id for r in receiver.delivered}) == 4
    output = "".join(line for relay in relays for line in relay.output)
    assert "postgresql://postgres@127.0.0.1" in output, "the database is named in the logs"
    assert PASSWORD not in output
    code, listed = await cli(env, "outbox", "list", "--json")
    assert (code, listed.strip()) == (0, ""), "nothing pending"
    code, checked = await cli({**env, "RELAY_VOUCHERIFY_API_URL": standin.base_url}, "check")
    assert f"reachable, schema version {SCHEMA_VERSION}" in checked
    assert PASSWORD not in checked


async def test_outbox_commands_and_check_on_postgres(tmp_path, standin: VoucherifyStandIn, receiver: RecordingReceiver, pg_url):
    """Outbox list/replay work on PostgreSQL; check says the tables are not there yet, then the schema version; wrong port fails clearly."""
    env = relay_env(tmp_path, standin, receiver, state_url=with_password(pg_url))
    code, out = await cli(env, "check")
    assert "no relay tables yet" in out, out
    code, out = await cli(env, "outbox", "list")
    assert code == 1
    assert "has no relay tables yet" in out
    wrong_port = {**env, "RELAY_STATE_URL": with_password(pg_url).replace(":5432/", ":1/")}
    code, out = await cli(wrong_port, "check")
    assert code == 1
    assert "state: FAILED: state database postgresql://postgres@127.0.0.1:1/" in out
    assert PASSWORD not in out
    code, out = await cli(wrong_port, "outbox", "replay", "--dead")
    assert code == 1
    assert PASSWORD not in out
    relay = RelayProcess(env)
    await relay.start()
    try:
        await until(lambda: any("relay.started" in line for line in relay.output), timeout_s=20)
    finally:
        await relay.terminate()
    code, out = await cli(env, "outbox", "replay", "--dead")
    assert (code, out.strip()) == (0, "nothing to replay")
    code, out = await cli(env, "outbox", "list", "--dead", "--json")
    assert (code, [json.loads(line) for line in out.splitlines()]) == (0, [])
