"""The secret scan (tests/conftest.py) really fails a test that leaks, wherever the leak shows up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import APP_TOKEN, KNOWN_SECRETS, SLACK_URL, WEBHOOK_SECRET, find_secrets

ROOT = Path(__file__).resolve().parents[2]
LEAKY_TESTS = """
import logging
import sys

from tests.conftest import APP_TOKEN, SLACK_URL, WEBHOOK_SECRET, watch_output


def test_prints_the_token():
    print("token is", APP_TOKEN)


def test_writes_the_secret_key_to_stderr():
    sys.stderr.write("key " + WEBHOOK_SECRET.removeprefix("whsec_") + "\\n")


def test_logs_the_slack_url():
    logging.getLogger("leaky").warning("posting to %s", SLACK_URL)


def test_subprocess_output_leaks():
    watch_output(lambda: "child said " + APP_TOKEN)


def test_clean():
    print("nothing to see")
"""


def test_find_secrets_names_each_known_secret():
    """Every known test secret, and only those, is found in a string that embeds it."""
    assert find_secrets("nothing here: tok_live_***, whsec_***") == []
    assert find_secrets(f"x-app-token: {APP_TOKEN}") == ["app token"]
    assert find_secrets(f"url={SLACK_URL}") == ["Slack URL", "Slack URL token"]
    assert "webhook secret key" in find_secrets("key=" + WEBHOOK_SECRET.removeprefix("whsec_"))
    assert all(find_secrets(value) for value in KNOWN_SECRETS.values())


def test_the_autouse_scan_fails_leaking_tests(tmp_path):
    """A test that prints, writes, logs or collects a secret from a child process fails; a clean one passes."""
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    isolated = ["-p", "no:cacheprovider", "-c", os.devnull, "-o", "asyncio_default_fixture_loop_scope=function", "--rootdir", str(tmp_path)]
    proc = subprocess.run(  # noqa: S603 - our own interpreter on our own file
        [sys.executable, "-m", "pytest", *isolated, "-p", "tests.conftest", "-q", "-rE", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 1, report
    assert "5 passed, 4 errors" in report, report  # each leaky call passes, then its teardown scan errors
    assert "app token in stdout" in report
    assert "webhook secret key in stderr" in report
    assert "Slack URL in log records" in report
    assert "app token in watched output" in report
