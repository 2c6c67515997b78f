"""Readiness, liveness and RELAY_HTTP_LISTEN parsing: pure decisions, table-driven."""

from __future__ import annotations

import pytest

from daemon.readiness import liveness, readiness, stale_after_s
from daemon.urls import parse_listen

NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("interval_s", "expected_s"),
    [(30.0, 120.0), (0.1, 120.0), (40.0, 120.0), (60.0, 180.0), (300.0, 900.0)],
)
def test_stale_after_is_three_polls_but_never_under_two_minutes(interval_s, expected_s):
    """A poll may be three intervals old, and at least 120 s, before the relay stops being ready."""
    assert stale_after_s(interval_s) == expected_s


@pytest.mark.parametrize(
    ("last_ok_at", "kwargs", "ready", "detail"),
    [
        (NOW - 10, {}, True, "last successful poll 10s ago"),
        (NOW - 120, {}, True, "last successful poll 120s ago"),
        (NOW - 121, {}, False, "last successful poll 121s ago (limit 120s)"),
        (NOW - 800, {"poll_interval_s": 300.0}, True, "last successful poll 800s ago"),
        (NOW - 901, {"poll_interval_s": 300.0}, False, "last successful poll 901s ago (limit 900s)"),
        (None, {}, False, "no successful poll yet"),
        (NOW - 1, {"auth_failed": True}, False, "Voucherify refused the credentials (wrong keys or wrong cluster)"),
        (None, {"auth_failed": True}, False, "Voucherify refused the credentials (wrong keys or wrong cluster)"),
        (NOW - 1, {"stopping": True}, False, "shutting down"),
        (NOW + 5, {}, True, "last successful poll 0s ago"),
        (NOW - 1, {"store_problem": "cannot write the state database (disk full)"}, False, "cannot write the state database (disk full)"),
        (NOW - 1, {"store_problem": "gone", "auth_failed": True}, False, "gone"),
        (NOW - 1, {"store_problem": "gone", "stopping": True}, False, "shutting down"),
    ],
)
def test_readiness(last_ok_at, kwargs, ready, detail):
    """Ready means not stopping, the state database works, keys accepted and a poll succeeded within the staleness limit."""
    args = {"now": NOW, "poll_interval_s": 30.0, "auth_failed": False} | kwargs
    assert readiness(last_ok_at, **args) == (ready, detail)


@pytest.mark.parametrize(
    ("last_tick_at", "kwargs", "alive", "detail"),
    [
        (NOW - 1, {}, True, "scheduler running"),
        (None, {}, True, "scheduler running"),
        (NOW - 1, {"scheduler_running": False}, False, "scheduler is not running"),
        (NOW - 31, {}, False, "no scheduler tick for 31s"),
        (NOW - 31, {"max_silence_s": 60.0}, True, "scheduler running"),
        (NOW - 1, {"poll_started_at": NOW - 60}, True, "scheduler running"),
        (NOW - 1, {"poll_started_at": NOW - 901}, False, "a poll cycle has been running for 901s"),
    ],
)
def test_liveness(last_tick_at, kwargs, alive, detail):
    """Alive means the scheduler runs, ticked within 30 s and no poll has hung for 15 minutes."""
    args = {"now": NOW, "scheduler_running": True} | kwargs
    assert liveness(last_tick_at, **args) == (alive, detail)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),  # noqa: S104 - the container's listen address
        ("[::1]:9464", ("::1", 9464)),
        ("[::]:80", ("::", 80)),
        (":9464", ("", 9464)),
        ("localhost:0", ("localhost", 0)),
        (" relay.internal:9100 ", ("relay.internal", 9100)),
        ("off", None),
        ("OFF", None),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_listen_accepts(value, expected):
    """HOST:PORT, [IPv6]:PORT and :PORT parse; off or empty disables the listener."""
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("9464", "HOST:PORT"),
        ("127.0.0.1", "HOST:PORT"),
        ("127.0.0.1:", "HOST:PORT"),
        ("127.0.0.1:http", "HOST:PORT"),
        ("127.0.0.1:65536", "HOST:PORT"),
        ("127.0.0.1:-1", "HOST:PORT"),
        ("::1:9464", "brackets"),
        ("fe80::1:9464", "brackets"),
        ("[not-ipv6]:9464", "not an IPv6 address"),
        ("http://127.0.0.1:9464", "HOST:PORT"),
        ("bad host:9464", "HOST:PORT"),
        ("on", "HOST:PORT"),
    ],
)
def test_parse_listen_rejects_with_a_clear_message(value, hint):
    """Anything else is a ValueError that shows the accepted forms and the bad value."""
    with pytest.raises(ValueError, match="must be HOST:PORT") as caught:
        parse_listen(value)
    assert hint in str(caught.value)
    assert repr(value) in str(caught.value)


def test_several_projects_are_ready_only_together_and_the_detail_names_the_failing_ones():
    """One project's verdict is the relay's; with several, every one must be ready, and the detail names each that is not."""
    from daemon.readiness import all_ready  # noqa: PLC0415 - beside the other rules' imports would reorder the file

    assert all_ready({"default": (False, "no poll yet")}) == (False, "no poll yet")
    assert all_ready({"eu": (True, "ok"), "us": (True, "ok")}) == (True, "2 projects ready")
    assert all_ready({"eu": (True, "ok"), "us": (False, "credentials refused"), "as": (False, "no poll yet")}) == (
        False,
        "us: credentials refused; as: no poll yet",
    )
