"""No secret ever reaches a log line, whatever goes wrong."""

from __future__ import annotations

import pytest

from tests.conftest import APP_TOKEN, PG_PASSWORD, WEBHOOK_SECRET, relay_env, until
from tests.e2e.conftest import RelayProcess
from tests.fakes.postgres_echo import echoing_postgres


async def test_no_secret_in_any_log_line(standin, receiver, tmp_path):
    """Through auth failures, retries, 410s and dead letters at debug level, logs hold no secret."""
    hook_with_token = receiver.url + "?token=hook-query-s3cret-value"
    env = relay_env(tmp_path, standin, receiver, log_level="debug", webhook_url=hook_with_token, delivery_max_age="1s")
    receiver.script.extend([503, 503, 410])
    done = standin.add_action()
    standin.inject("401", path="list")
    standin.inject("500", path="get", times=2)
    relay = RelayProcess(env)
    await relay.start()
    await until(lambda: any("poll.auth_failed" in line for line in relay.output), timeout_s=20)
    await relay.terminate()
    relay = RelayProcess(env)
    await relay.start()
    await until(lambda: any("poll.completed" in line for line in relay.output), timeout_s=20)
    standin.complete_action(done, example="VOUCHERS.IMPORT")
    await until(lambda: any("delivery.dead_lettered" in line for line in relay.output), timeout_s=20)
    assert await relay.terminate() == 0
    logs = "".join(relay.output)
    for secret in (APP_TOKEN, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"), "hook-query-s3cret-value"):
        assert secret not in logs
    assert "delivery.retry_scheduled" in logs


@pytest.mark.parametrize("source", ["PGPASSWORD", "PGPASSFILE"])
async def test_pgpassword_is_never_shown_even_when_the_server_quotes_it(standin, receiver, tmp_path, run_cli, source):
    """With the password in PGPASSWORD or a password file, and a server that quotes it in its refusal, `check` and `run` (debug logs) never show it."""
    async with echoing_postgres() as (server, port):
        env = relay_env(tmp_path, standin, receiver, state_url=f"postgresql://relay@127.0.0.1:{port}/relay", log_level="debug")
        if source == "PGPASSWORD":
            env["PGPASSWORD"] = PG_PASSWORD
        else:
            passfile = tmp_path / "pgpass"
            passfile.write_text(f"# the relay's database\n127.0.0.1:{port}:relay:relay:{PG_PASSWORD}\n", encoding="utf-8")
            passfile.chmod(0o600)
            env["PGPASSFILE"] = str(passfile)
        code, out, err = await run_cli("check", env=env)
        assert code == 1, out + err
        assert "state: FAILED" in out
        assert "password authentication failed" in out
        relay = RelayProcess(env)
        await relay.start()
        status = await relay.wait()
    shown = out + err + "".join(relay.output)
    assert server.passwords.count(PG_PASSWORD) >= 2  # libpq sent it, and the server quoted it back, to both commands
    assert status == 1
    assert "password authentication failed" in "".join(relay.output)
    assert PG_PASSWORD not in shown
