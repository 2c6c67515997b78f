"""Bad configuration: every variable, missing, malformed, out of range or contradictory, is refused by name.

The table runs against ``load_settings(environ)`` in-process (the CLI turns the same
ConfigError into exit 78; tests/e2e/test_cli.py proves that path with a handful of
subprocess cases). ``test_every_setting_has_a_bad_case`` derives the field list from
the models, so a new setting without a row here fails the suite.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.settings import RelaySettings, load_settings
from daemon.sink_settings import SinkSettings
from tests.conftest import APP_TOKEN, SLACK_URL, WEBHOOK_SECRET

ABSENT = None  # an override of None removes the variable
SINK = {"RELAY_SINKS__OPS__KIND": "webhook", "RELAY_SINKS__OPS__URL": "https://ops.example.com/in"}
APP_SLACK_TOKEN = "xoxb-1-2-n0tArealB0tT0ken"
APP_SINK = {"SINKS__OPS__KIND": "slack_app", "SINKS__OPS__TOKEN": APP_SLACK_TOKEN, "SINKS__OPS__CHANNEL": "C0123ABCD"}
BAD_APP: list[tuple[str, dict[str, str | None]]] = [
    ("token", {"SINKS__OPS__TOKEN": None}),
    ("token", {"SINKS__OPS__TOKEN": "xoxp-1-2-a-user-token"}),
    ("token", {"SINKS__OPS__TOKEN": "xoxb-1-2\r\nX: 1"}),
    ("channel", {"SINKS__OPS__CHANNEL": None}),
    ("channel", {"SINKS__OPS__CHANNEL": "#ops"}),
    ("url", {"SINKS__OPS__URL": "https://hooks.slack.com/services/T/B/X"}),
    ("api_url", {"SINKS__OPS__API_URL": "slack.com/api"}),
    ("update_interval_s", {"SINKS__OPS__UPDATE_INTERVAL_S": "0"}),
]
MISSING_FILE = "/nonexistent/voucherify-relay/secret"
DIRECTORY = "/"  # a path that exists but cannot be read as a file (the suite may run as root)


def base_env(tmp_path: Path) -> dict[str, str]:
    """Return a complete, valid environment: the table changes one thing at a time."""
    return {
        "RELAY_ENV_FILE": str(tmp_path / "absent.env"),
        "RELAY_VOUCHERIFY_APP_ID": "app-123",
        "RELAY_VOUCHERIFY_APP_TOKEN": APP_TOKEN,
        "RELAY_WEBHOOK_URL": "https://hooks.example.com/in",
        "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }


@dataclass(frozen=True)
class Bad:
    """One bad environment: the setting it targets, what changes, the variable the error must name."""

    field: str  # a RelaySettings field, or "sinks.<SinkSettings field>"
    overrides: dict[str, str | None]
    variable: str
    defect: str | None = None  # a known defect: the case is xfail(strict) with this reason

    @property
    def id(self) -> str:
        """Name the case after what it sets."""
        return "+".join(f"{k.removeprefix('RELAY_')}={v!r}" if v is not None else f"no {k.removeprefix('RELAY_')}" for k, v in self.overrides.items())


def bad(field: str, variable: str, defect: str | None = None, /, **overrides: str | None) -> Bad:
    """Build a case; keyword names are variables without the RELAY_ prefix."""
    return Bad(field, {f"RELAY_{k}": v for k, v in overrides.items()}, variable, defect)


def sink(field: str, variable: str, defect: str | None = None, /, **overrides: str | None) -> Bad:
    """Build a case on the named sink ``ops`` (a valid webhook sink unless overridden)."""
    case = bad(f"sinks.{field}", variable, defect, **overrides)
    return Bad(case.field, {**SINK, **case.overrides}, variable, defect)


def eu_project(variable: str, /, **overrides: str | None) -> Bad:
    """Build a case on a valid named project ``eu`` beside ``default``."""
    return bad("projects", variable, None, PROJECTS__EU__APP_ID="eu-app", PROJECTS__EU__APP_TOKEN=APP_TOKEN, **overrides)


CASES = [
    # voucherify
    bad("voucherify_api_url", "RELAY_VOUCHERIFY_API_URL", VOUCHERIFY_API_URL="api.voucherify.io"),
    bad("voucherify_api_url", "RELAY_VOUCHERIFY_API_URL", VOUCHERIFY_API_URL="ftp://api.voucherify.io"),
    bad("voucherify_api_url", "RELAY_VOUCHERIFY_API_URL", VOUCHERIFY_API_URL="https://"),
    bad("voucherify_app_id", "RELAY_VOUCHERIFY_APP_ID", VOUCHERIFY_APP_ID=ABSENT),
    bad("voucherify_app_id", "RELAY_VOUCHERIFY_APP_ID", VOUCHERIFY_APP_ID=""),
    bad("voucherify_app_id", "RELAY_VOUCHERIFY_APP_ID", VOUCHERIFY_APP_ID="   "),
    bad("voucherify_app_token", "RELAY_VOUCHERIFY_APP_TOKEN", VOUCHERIFY_APP_TOKEN=ABSENT),
    bad("voucherify_app_token", "RELAY_VOUCHERIFY_APP_TOKEN", VOUCHERIFY_APP_TOKEN=""),
    bad("voucherify_app_token", "RELAY_VOUCHERIFY_APP_TOKEN", VOUCHERIFY_APP_TOKEN="  "),
    bad("voucherify_app_token", "RELAY_VOUCHERIFY_APP_TOKEN_FILE", VOUCHERIFY_APP_TOKEN=ABSENT, VOUCHERIFY_APP_TOKEN_FILE=MISSING_FILE),
    bad("voucherify_app_token", "RELAY_VOUCHERIFY_APP_TOKEN_FILE", VOUCHERIFY_APP_TOKEN=ABSENT, VOUCHERIFY_APP_TOKEN_FILE=DIRECTORY),
    bad("voucherify_app_token", "RELAY_VOUCHERIFY_APP_TOKEN_FILE", VOUCHERIFY_APP_TOKEN_FILE=MISSING_FILE),  # both set
    # polling
    bad("poll_interval", "RELAY_POLL_INTERVAL", POLL_INTERVAL="soon"),
    bad("poll_interval", "RELAY_POLL_INTERVAL", POLL_INTERVAL="30s"),
    bad("poll_interval", "RELAY_POLL_INTERVAL", POLL_INTERVAL="0"),
    bad("poll_interval", "RELAY_POLL_INTERVAL", POLL_INTERVAL="-5"),
    bad("poll_interval", "RELAY_POLL_INTERVAL", POLL_INTERVAL="86401"),
    bad("poll_interval", "RELAY_POLL_INTERVAL", POLL_INTERVAL="nan"),
    bad("poll_interval", "RELAY_POLL_INTERVAL", POLL_INTERVAL="inf"),
    bad("idle_poll_interval", "RELAY_IDLE_POLL_INTERVAL", IDLE_POLL_INTERVAL="slow"),
    bad("idle_poll_interval", "RELAY_IDLE_POLL_INTERVAL", IDLE_POLL_INTERVAL="0"),
    bad("idle_poll_interval", "RELAY_IDLE_POLL_INTERVAL", POLL_INTERVAL="60", IDLE_POLL_INTERVAL="30"),  # faster than the fast pace
    bad("state_url", "RELAY_STATE_URL", STATE_URL="mysql://db/relay"),
    bad("state_url", "RELAY_STATE_URL", STATE_URL="postgresql://relay:pg-Passw0rd-9f3c@db:notaport/relay"),
    bad("state_url", "RELAY_STATE_URL", STATE_URL="postgres://relay:pg-Passw0rd-9f3c@db/relay?sslmod=require"),
    bad("state_url", "RELAY_STATE_URL", STATE_URL="sqlite:///"),
    bad("state_url", "RELAY_STATE_URL", STATE_URL="./relay.db"),
    bad("backfill", "RELAY_BACKFILL", BACKFILL="yesterday"),
    bad("backfill", "RELAY_BACKFILL", BACKFILL="-1h"),
    bad("backfill", "RELAY_BACKFILL", BACKFILL="2 fortnights"),
    bad("backfill", "RELAY_BACKFILL", BACKFILL="99999999999d"),
    bad("stuck_after", "RELAY_STUCK_AFTER", STUCK_AFTER="a while"),
    bad("stuck_after", "RELAY_STUCK_AFTER", STUCK_AFTER="-10m"),
    bad("api_budget_per_hour", "RELAY_API_BUDGET_PER_HOUR", API_BUDGET_PER_HOUR="many"),
    bad("api_budget_per_hour", "RELAY_API_BUDGET_PER_HOUR", API_BUDGET_PER_HOUR="1"),
    bad("api_budget_per_hour", "RELAY_API_BUDGET_PER_HOUR", API_BUDGET_PER_HOUR="-100"),
    bad("api_budget_per_hour", "RELAY_API_BUDGET_PER_HOUR", API_BUDGET_PER_HOUR="1.5"),
    bad("api_budget_per_month", "RELAY_API_BUDGET_PER_MONTH", API_BUDGET_PER_MONTH="lots"),
    bad("api_budget_per_month", "RELAY_API_BUDGET_PER_MONTH", API_BUDGET_PER_MONTH="99"),
    bad("api_budget_per_month", "RELAY_API_BUDGET_PER_MONTH", API_BUDGET_PER_MONTH="10k"),
    bad("billing_cycle_day", "RELAY_BILLING_CYCLE_DAY", BILLING_CYCLE_DAY="0"),
    bad("billing_cycle_day", "RELAY_BILLING_CYCLE_DAY", BILLING_CYCLE_DAY="29"),
    bad("billing_cycle_day", "RELAY_BILLING_CYCLE_DAY", BILLING_CYCLE_DAY="monday"),
    bad("live_progress_interval", "RELAY_LIVE_PROGRESS_INTERVAL", LIVE_PROGRESS_INTERVAL="often"),
    bad("live_progress_interval", "RELAY_LIVE_PROGRESS_INTERVAL", LIVE_PROGRESS_INTERVAL="0"),
    bad("pacing", "RELAY_PACING", PACING="smart"),
    bad("pacing", "RELAY_PACING", PACING=" "),
    bad("api_timeout_s", "RELAY_API_TIMEOUT_S", API_TIMEOUT_S="fast"),
    bad("api_timeout_s", "RELAY_API_TIMEOUT_S", API_TIMEOUT_S="0"),
    bad("api_timeout_s", "RELAY_API_TIMEOUT_S", API_TIMEOUT_S="121"),
    bad("api_timeout_s", "RELAY_API_TIMEOUT_S", API_TIMEOUT_S="inf"),
    bad("api_max_attempts", "RELAY_API_MAX_ATTEMPTS", API_MAX_ATTEMPTS="0"),
    bad("api_max_attempts", "RELAY_API_MAX_ATTEMPTS", API_MAX_ATTEMPTS="11"),
    bad("api_max_attempts", "RELAY_API_MAX_ATTEMPTS", API_MAX_ATTEMPTS="2.5"),
    bad("api_max_response_bytes", "RELAY_API_MAX_RESPONSE_BYTES", API_MAX_RESPONSE_BYTES="1048575"),  # below 1 MiB
    bad("api_max_response_bytes", "RELAY_API_MAX_RESPONSE_BYTES", API_MAX_RESPONSE_BYTES="1073741825"),  # above 1 GiB
    bad("api_max_response_bytes", "RELAY_API_MAX_RESPONSE_BYTES", API_MAX_RESPONSE_BYTES="16MB"),
    bad("list_page_size", "RELAY_LIST_PAGE_SIZE", LIST_PAGE_SIZE="0"),
    bad("list_page_size", "RELAY_LIST_PAGE_SIZE", LIST_PAGE_SIZE="101"),
    bad("list_page_size", "RELAY_LIST_PAGE_SIZE", LIST_PAGE_SIZE="ten"),
    bad("max_pages_per_cycle", "RELAY_MAX_PAGES_PER_CYCLE", MAX_PAGES_PER_CYCLE="0"),
    bad("max_pages_per_cycle", "RELAY_MAX_PAGES_PER_CYCLE", MAX_PAGES_PER_CYCLE="1001"),
    bad("max_pages_per_cycle", "RELAY_MAX_PAGES_PER_CYCLE", MAX_PAGES_PER_CYCLE="all"),
    bad("max_event_bytes", "RELAY_MAX_EVENT_BYTES", MAX_EVENT_BYTES="16383"),
    bad("max_event_bytes", "RELAY_MAX_EVENT_BYTES", MAX_EVENT_BYTES="16777217"),
    bad("max_event_bytes", "RELAY_MAX_EVENT_BYTES", MAX_EVENT_BYTES="256k"),
    # delivery
    bad("delivery_retry_max_delay", "RELAY_DELIVERY_RETRY_MAX_DELAY", DELIVERY_RETRY_MAX_DELAY="0"),
    bad("delivery_retry_max_delay", "RELAY_DELIVERY_RETRY_MAX_DELAY", DELIVERY_RETRY_MAX_DELAY="86401"),
    bad("delivery_retry_max_delay", "RELAY_DELIVERY_RETRY_MAX_DELAY", DELIVERY_RETRY_MAX_DELAY="nan"),
    bad("delivery_retry_max_delay", "RELAY_DELIVERY_RETRY_MAX_DELAY", DELIVERY_RETRY_MAX_DELAY="5m"),
    bad("delivery_max_age", "RELAY_DELIVERY_MAX_AGE", DELIVERY_MAX_AGE="forever"),
    bad("delivery_max_age", "RELAY_DELIVERY_MAX_AGE", DELIVERY_MAX_AGE="-1s"),
    bad("retention", "RELAY_RETENTION", RETENTION="a week"),
    bad("retention", "RELAY_RETENTION", RETENTION="1e400"),
    bad("retention", "RELAY_RETENTION", RETENTION="0s"),
    bad("retention", "RELAY_RETENTION", RETENTION="99999999999d"),
    # replicas and the polling lease
    bad("replica_id", "RELAY_REPLICA_ID", REPLICA_ID="relay a"),
    bad("replica_id", "RELAY_REPLICA_ID", REPLICA_ID="r" * 65),
    bad("replica_id", "RELAY_REPLICA_ID", REPLICA_ID="relay/1"),
    bad("lease_ttl", "RELAY_LEASE_TTL", LEASE_TTL="500ms"),
    bad("lease_ttl", "RELAY_LEASE_TTL", LEASE_TTL="1h"),
    bad("lease_ttl", "RELAY_LEASE_TTL", LEASE_TTL="soon"),
    # logging
    bad("log_format", "RELAY_LOG_FORMAT", LOG_FORMAT="xml"),
    bad("log_level", "RELAY_LOG_LEVEL", LOG_LEVEL="trace"),
    bad("log_level", "RELAY_LOG_LEVEL", LOG_LEVEL="loud"),
    # health and metrics listener
    bad("http_listen", "RELAY_HTTP_LISTEN", HTTP_LISTEN="9464"),
    bad("http_listen", "RELAY_HTTP_LISTEN", HTTP_LISTEN="localhost:99999"),
    bad("http_listen", "RELAY_HTTP_LISTEN", HTTP_LISTEN="::1:9464"),
    bad("watch_token", "RELAY_WATCH_TOKEN", WATCH_TOKEN="short"),
    bad("watch_token", "RELAY_WATCH_TOKEN_FILE", WATCH_TOKEN_FILE=DIRECTORY),
    # the webhook shortcut
    bad("webhook_url", "RELAY_WEBHOOK_URL", WEBHOOK_URL="ftp://hooks.example.com/in"),
    bad("webhook_url", "RELAY_WEBHOOK_URL", WEBHOOK_URL="hooks.example.com/in"),
    bad("webhook_url", "RELAY_WEBHOOK_URL", WEBHOOK_URL=ABSENT, WEBHOOK_SECRET=ABSENT),  # no sink at all
    bad("webhook_url", "RELAY_WEBHOOK_URL_FILE", WEBHOOK_URL_FILE=MISSING_FILE),  # both set
    bad("webhook_url", "RELAY_WEBHOOK_URL", SINKS__WEBHOOK__KIND="webhook", SINKS__WEBHOOK__URL="https://other.example.com/in"),
    bad("webhook_secret", "RELAY_WEBHOOK_SECRET", WEBHOOK_SECRET="not-a-secret"),
    bad("webhook_secret", "RELAY_WEBHOOK_SECRET", WEBHOOK_SECRET="whsec_c2hvcnQ="),  # 5 bytes
    bad("webhook_secret", "RELAY_WEBHOOK_SECRET", WEBHOOK_SECRET="whsec_!!!not-base64!!!"),
    bad("webhook_secret", "RELAY_WEBHOOK_SECRET", WEBHOOK_SECRET=f"{WEBHOOK_SECRET} whsec_c2hvcnQ="),  # rotation, one bad
    bad("webhook_secret", "RELAY_WEBHOOK_SECRET", WEBHOOK_URL=ABSENT, SINKS__OPS__KIND="webhook", SINKS__OPS__URL="https://ops.example.com/in"),
    bad("webhook_secret", "RELAY_WEBHOOK_SECRET_FILE", WEBHOOK_SECRET=ABSENT, WEBHOOK_SECRET_FILE=DIRECTORY),
    bad("webhook_secret", "RELAY_WEBHOOK_SECRET_FILE", WEBHOOK_SECRET_FILE=MISSING_FILE),  # both set
    # the Slack shortcut
    bad("slack_webhook_url", "RELAY_SLACK_WEBHOOK_URL", SLACK_WEBHOOK_URL="hooks.slack.com/services/T000/B000/X"),
    bad("slack_webhook_url", "RELAY_SLACK_WEBHOOK_URL", SLACK_WEBHOOK_URL="ftp://hooks.slack.com/services/T000/B000/X"),
    bad("slack_webhook_url", "RELAY_SLACK_WEBHOOK_URL_FILE", SLACK_WEBHOOK_URL=SLACK_URL, SLACK_WEBHOOK_URL_FILE=MISSING_FILE),
    # named sinks
    bad("sinks", "RELAY_SINKS", SINKS="[]"),
    bad("sinks", "RELAY_SINKS", SINKS="{not json"),
    bad("sinks", "RELAY_SINKS__OPS", SINKS__OPS="webhook"),
    sink("kind", "RELAY_SINKS__OPS__KIND", SINKS__OPS__KIND=ABSENT),
    sink("kind", "RELAY_SINKS__OPS__KIND", SINKS__OPS__KIND="pager"),
    sink("url", "RELAY_SINKS__OPS__URL", SINKS__OPS__URL=ABSENT),
    sink("url", "RELAY_SINKS__OPS__URL", SINKS__OPS__URL="ops.example.com/in"),
    sink("url", "RELAY_SINKS__OPS__URL", SINKS__OPS__URL="mailto:ops@example.com"),
    sink("secret", "RELAY_SINKS__OPS__SECRET", SINKS__OPS__SECRET="whsec_abc"),
    sink("secret", "RELAY_SINKS__OPS__SECRET", SINKS__OPS__SECRET="s3cret"),
    sink("secret", "RELAY_SINKS__OPS", SINKS__OPS__KIND="slack", SINKS__OPS__URL=SLACK_URL, SINKS__OPS__SECRET=WEBHOOK_SECRET),
    sink("max_concurrency", "RELAY_SINKS__OPS__MAX_CONCURRENCY", SINKS__OPS__MAX_CONCURRENCY="0"),
    sink("max_concurrency", "RELAY_SINKS__OPS__MAX_CONCURRENCY", SINKS__OPS__MAX_CONCURRENCY="65"),
    sink("max_concurrency", "RELAY_SINKS__OPS__MAX_CONCURRENCY", SINKS__OPS__MAX_CONCURRENCY="lots"),
    sink("timeout_s", "RELAY_SINKS__OPS__TIMEOUT_S", SINKS__OPS__TIMEOUT_S="0"),
    sink("timeout_s", "RELAY_SINKS__OPS__TIMEOUT_S", SINKS__OPS__TIMEOUT_S="301"),
    sink("timeout_s", "RELAY_SINKS__OPS__TIMEOUT_S", SINKS__OPS__TIMEOUT_S="nan"),
    sink("types", "RELAY_SINKS__OPS__TYPES", SINKS__OPS__TYPES="VOUCHERS.IMPORT;DROP"),
    sink("types", "RELAY_SINKS__OPS__TYPES", SINKS__OPS__TYPES="VOUCHERS.*,<script>"),
    sink("outcomes", "RELAY_SINKS__OPS__OUTCOMES", SINKS__OPS__OUTCOMES="failure,maybe"),
    sink("events", "RELAY_SINKS__OPS__EVENTS", SINKS__OPS__EVENTS="started,finished"),
    sink("events", "RELAY_SINKS__OPS__EVENTS", SINKS__OPS__EVENTS=","),
    sink("events", "RELAY_SINKS__OPS__EVENTS", SINKS__OPS__KIND="slack", SINKS__OPS__URL=SLACK_URL, SINKS__OPS__EVENTS="started,failed"),
    sink("token", "RELAY_SINKS__OPS__TOKEN", SINKS__OPS__TOKEN=APP_SLACK_TOKEN),  # a webhook takes no token
    *[sink(f, f"RELAY_SINKS__OPS__{f.upper()}", **{"SINKS__OPS__URL": ABSENT, **APP_SINK, **bad_app}) for f, bad_app in BAD_APP],
    sink("min_interval_s", "RELAY_SINKS__OPS__MIN_INTERVAL_S", SINKS__OPS__MIN_INTERVAL_S="-1"),
    sink("min_interval_s", "RELAY_SINKS__OPS__MIN_INTERVAL_S", SINKS__OPS__MIN_INTERVAL_S="61"),
    sink("min_interval_s", "RELAY_SINKS__OPS__MIN_INTERVAL_S", SINKS__OPS__MIN_INTERVAL_S="1s"),
    sink("extra", "RELAY_SINKS__OPS__COLOR", SINKS__OPS__COLOR="red"),  # a typo in a sink field
    sink("projects", "RELAY_SINKS__OPS__PROJECTS", SINKS__OPS__PROJECTS="eu"),  # no such project
    sink("projects", "RELAY_SINKS__OPS__PROJECTS", SINKS__OPS__PROJECTS="default,Bad-Name"),
    # several projects
    bad("projects", "RELAY_PROJECTS__DEFAULT__APP_ID", PROJECTS__DEFAULT__APP_ID="other", PROJECTS__DEFAULT__APP_TOKEN=APP_TOKEN),  # both styles
    bad("projects", "RELAY_PROJECTS", PROJECTS__1EU__APP_ID="x", PROJECTS__1EU__APP_TOKEN=APP_TOKEN),  # starts with a digit
    bad("projects", "RELAY_PROJECTS__EU__APP_TOKEN", PROJECTS__EU__APP_ID="eu-app"),
    bad("projects", "RELAY_PROJECTS__EU__APP_ID", PROJECTS__EU__APP_TOKEN=APP_TOKEN),
    eu_project("RELAY_PROJECTS__EU__API_URL", PROJECTS__EU__API_URL="eu.example"),
    eu_project("RELAY_PROJECTS__EU__POLL_INTERVAL", PROJECTS__EU__POLL_INTERVAL="0"),
    bad(
        "projects",
        "RELAY_PROJECTS__EU__IDLE_POLL_INTERVAL",
        PROJECTS__EU__APP_ID="e",
        PROJECTS__EU__APP_TOKEN=APP_TOKEN,
        PROJECTS__EU__POLL_INTERVAL="60",
        PROJECTS__EU__IDLE_POLL_INTERVAL="30",
    ),
    eu_project("RELAY_PROJECTS__EU__BACKFILL", PROJECTS__EU__BACKFILL="soon"),
    bad(
        "projects",
        "RELAY_PROJECTS__EU__API_BUDGET_PER_HOUR",
        PROJECTS__EU__APP_ID="e",
        PROJECTS__EU__APP_TOKEN=APP_TOKEN,
        PROJECTS__EU__API_BUDGET_PER_HOUR="1",
    ),
    eu_project("RELAY_PROJECTS__EU__REGION", PROJECTS__EU__REGION="eu"),  # a typo
]


# control characters would split a header or a request line: refused in every secret and URL
CONTROL = [
    ("voucherify_app_token", "RELAY_VOUCHERIFY_APP_TOKEN", {"VOUCHERIFY_APP_TOKEN": f"{APP_TOKEN}\r\nX-Injected: 1"}),
    ("voucherify_app_token", "RELAY_VOUCHERIFY_APP_TOKEN", {"VOUCHERIFY_APP_TOKEN": f"{APP_TOKEN}\tx"}),
    ("voucherify_app_id", "RELAY_VOUCHERIFY_APP_ID", {"VOUCHERIFY_APP_ID": "app-123\nX-Injected: 1"}),
    ("voucherify_api_url", "RELAY_VOUCHERIFY_API_URL", {"VOUCHERIFY_API_URL": "https://api.voucherify.io/\r\nX: 1"}),
    ("voucherify_api_url", "RELAY_VOUCHERIFY_API_URL", {"VOUCHERIFY_API_URL": "https://api.voucherify.io/\x7f"}),
    ("webhook_url", "RELAY_WEBHOOK_URL", {"WEBHOOK_URL": "https://hooks.example.com/in\r\nX: 1"}),
    ("webhook_secret", "RELAY_WEBHOOK_SECRET", {"WEBHOOK_SECRET": f"{WEBHOOK_SECRET}\t{WEBHOOK_SECRET}"}),
    ("slack_webhook_url", "RELAY_SLACK_WEBHOOK_URL", {"SLACK_WEBHOOK_URL": f"{SLACK_URL}\n"}),
    ("watch_token", "RELAY_WATCH_TOKEN", {"WATCH_TOKEN": "watch-token-0123456789\r\nabcdef"}),
    ("state_url", "RELAY_STATE_URL", {"STATE_URL": "sqlite:///./relay\x00.db"}),
    ("sinks.url", "RELAY_SINKS__OPS__URL", {"SINKS__OPS__URL": "https://ops.example.com/in\r\nX: 1"}),
    ("sinks.secret", "RELAY_SINKS__OPS__SECRET", {"SINKS__OPS__SECRET": f"{WEBHOOK_SECRET}\r\n"}),
]
CASES += [
    Bad(name, {**(SINK if name.startswith("sinks.") else {}), **{f"RELAY_{k}": v for k, v in overrides.items()}}, variable)
    for name, variable, overrides in CONTROL
]


def _params() -> list[object]:
    return [pytest.param(case, id=case.id, marks=[pytest.mark.xfail(strict=True, reason=case.defect)] if case.defect else []) for case in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_environment_is_refused_naming_the_variable(case, tmp_path):
    """Each bad environment raises ConfigError naming exactly the variable to fix, in one line with no secret."""
    env = {**base_env(tmp_path), **case.overrides}
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    error = caught.value
    assert error.variable == case.variable, str(error)
    assert case.variable in str(error)
    assert "\n" not in str(error)
    for secret in (APP_TOKEN, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"), SLACK_URL):
        assert secret not in str(error)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://relay:pg-Passw0rd-9f3c@db:notaport/relay",
        "postgres://relay:pg-Passw0rd-9f3c@db/relay?sslmod=require",
        "postgresql://relay@db/relay?password=pg-Passw0rd-9f3c&bogus=1",
    ],
)
def test_a_bad_postgres_url_is_refused_without_its_password(url, tmp_path):
    """A PostgreSQL URL libpq cannot use is a ConfigError naming RELAY_STATE_URL and the problem, never the password."""
    with pytest.raises(ConfigError) as caught:
        load_settings({**base_env(tmp_path), "RELAY_STATE_URL": url})
    assert caught.value.variable == "RELAY_STATE_URL"
    assert "pg-Passw0rd-9f3c" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://relay:pg-Passw0rd-9f3c@db.internal:5433/relay?sslmode=require", "postgresql://relay@db.internal:5433/relay"),
        ("postgres://db/relay", "postgresql://db/relay"),
        ("postgresql://relay@db/relay?password=pg-Passw0rd-9f3c", "postgresql://relay@db/relay"),
    ],
)
def test_a_postgres_url_selects_postgres_and_is_shown_without_its_password(url, shown, tmp_path):
    """postgresql:// and postgres:// URLs select the PostgreSQL store; they are shown without password or query, and the password is redacted in logs."""
    settings = load_settings({**base_env(tmp_path), "RELAY_STATE_URL": url})
    assert (settings.state_kind, settings.state_display()) == ("postgres", shown)
    assert ("pg-Passw0rd-9f3c" in settings.secret_values()) == ("pg-Passw0rd-9f3c" in url)


def test_the_state_url_may_come_from_a_file(tmp_path):
    """RELAY_STATE_URL_FILE holds the URL (and its password) like every other secret file."""
    secret = tmp_path / "state-url"
    secret.write_text("postgresql://relay:pg-Passw0rd-9f3c@db/relay\n")
    settings = load_settings({**base_env(tmp_path), "RELAY_STATE_URL_FILE": str(secret)})
    assert settings.state_display() == "postgresql://relay@db/relay"
    assert "pg-Passw0rd-9f3c" in settings.secret_values()


@pytest.mark.parametrize(("state_url", "redacted"), [("postgresql://relay@db/relay", True), ("sqlite:///./state.db", False)])
def test_pgpassword_is_redacted_when_the_state_is_on_postgres(state_url, redacted, tmp_path):
    """The PGPASSWORD libpq will use joins the redactor's secrets when RELAY_STATE_URL is PostgreSQL."""
    settings = load_settings({**base_env(tmp_path), "RELAY_STATE_URL": state_url})
    assert ("pg-env-Passw0rd-77" in settings.secret_values({"PGPASSWORD": "pg-env-Passw0rd-77"})) is redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.zapier.com/hooks/catch/123/abcdef/", "https://hooks.zapier.com/hooks/…"),
        ("https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/services/…"),
        ("http://127.0.0.1:8080/hook", "http://127.0.0.1:8080/hook"),
        ("https://ops.example.com/in?token=s3cret", "https://ops.example.com/in/…"),
        ("https://user:pass@ops.example.com", "https://ops.example.com"),
        ("http://[::1]:9000/a/b", "http://[::1]:9000/a/…"),
    ],
)
@pytest.mark.parametrize("kind", ["webhook", "slack"])
def test_a_sink_url_is_shown_without_its_secret_parts(url, shown, kind, tmp_path):
    """Every sink kind shows scheme, host, port and at most the first path segment; a hiding display makes the URL a secret."""
    env = {**base_env(tmp_path), "RELAY_SINKS__OPS__KIND": kind, "RELAY_SINKS__OPS__URL": url}
    settings = load_settings(env)
    assert settings.all_sinks()["ops"].display_url() == shown
    assert (url in settings.secret_values()) == (shown != url)


def test_named_projects_take_the_global_defaults_and_keep_their_own(tmp_path):
    """RELAY_PROJECTS__<NAME>__* define lower-cased projects beside `default`; unset fields fall back to the global settings."""
    env = {
        **base_env(tmp_path),
        "RELAY_POLL_INTERVAL": "20",
        "RELAY_PROJECTS__EU__APP_ID": "eu-app",
        "RELAY_PROJECTS__EU__APP_TOKEN": APP_TOKEN,
        "RELAY_PROJECTS__US__APP_ID": "us-app",
        "RELAY_PROJECTS__US__APP_TOKEN": APP_TOKEN,
        "RELAY_PROJECTS__US__API_URL": "https://us1.api.voucherify.io/",
        "RELAY_PROJECTS__US__POLL_INTERVAL": "5",
        "RELAY_SINKS__OPS__KIND": "webhook",
        "RELAY_SINKS__OPS__URL": "https://ops.example.com/in",
        "RELAY_SINKS__OPS__PROJECTS": "EU,us",
    }
    settings = load_settings(env)
    projects = settings.all_projects()
    assert list(projects) == ["default", "eu", "us"]
    assert (projects["eu"].api_url, projects["eu"].poll_interval) == ("https://api.voucherify.io", 20)
    assert (projects["us"].api_url, projects["us"].poll_interval, projects["us"].app_id) == ("https://us1.api.voucherify.io", 5, "us-app")
    ops = settings.all_sinks()["ops"]
    assert ops.accepts(action_type="X", outcome="success", project="us")
    assert not ops.accepts(action_type="X", outcome="success", project="default")


@pytest.mark.parametrize(
    ("extra", "fast", "project_fast"),
    [
        ({}, 26.0, 26.0),  # progress pacing (the default): 26 s
        ({"RELAY_PACING": "progress"}, 26.0, 26.0),
        ({"RELAY_PACING": "ADAPTIVE"}, 30.0, 30.0),  # the other strategies keep 30 s
        ({"RELAY_PACING": "fixed"}, 30.0, 30.0),
        ({"RELAY_POLL_INTERVAL": "30"}, 30.0, 30.0),  # set: as set, whatever the strategy
        ({"RELAY_PACING": "adaptive", "RELAY_POLL_INTERVAL": "26"}, 26.0, 26.0),
        ({"RELAY_PROJECTS__EU__POLL_INTERVAL": "40", "RELAY_IDLE_POLL_INTERVAL": "400"}, 26.0, 40.0),
    ],
)
def test_the_fast_pace_default_depends_on_the_strategy(extra, fast, project_fast, tmp_path):
    """RELAY_POLL_INTERVAL, unset, is 26 s under progress pacing and 30 s under adaptive and fixed; a named project inherits it."""
    env = {**base_env(tmp_path), "RELAY_PROJECTS__EU__APP_ID": "eu-app", "RELAY_PROJECTS__EU__APP_TOKEN": APP_TOKEN, **extra}
    settings = load_settings(env)
    assert (settings.poll_interval, settings.all_projects()["eu"].poll_interval) == (fast, project_fast)


def test_an_idle_interval_under_the_default_fast_pace_names_both_variables(tmp_path):
    """RELAY_IDLE_POLL_INTERVAL under the strategy's default fast pace exits 78 naming it and the pace it must reach."""
    with pytest.raises(ConfigError, match=r"RELAY_IDLE_POLL_INTERVAL: must be at least RELAY_POLL_INTERVAL \(26s\)"):
        load_settings({**base_env(tmp_path), "RELAY_IDLE_POLL_INTERVAL": "20"})


def test_named_projects_alone_need_no_single_project_variables(tmp_path):
    """A deployment of only named projects needs no RELAY_VOUCHERIFY_APP_ID; there is no `default` project then."""
    env = {k: v for k, v in base_env(tmp_path).items() if "VOUCHERIFY" not in k}
    env |= {"RELAY_PROJECTS__EU__APP_ID": "eu-app", "RELAY_PROJECTS__EU__APP_TOKEN": APP_TOKEN}
    assert list(load_settings(env).all_projects()) == ["eu"]


def test_the_base_environment_is_valid(tmp_path):
    """The environment every case starts from loads, so each refusal is caused by the case's change."""
    settings = load_settings(base_env(tmp_path))
    assert list(settings.all_sinks()) == ["webhook"]
    assert load_settings({**base_env(tmp_path), **SINK}).all_sinks()["ops"].kind == "webhook"


def test_the_default_replica_id_is_host_and_pid_in_safe_characters(tmp_path):
    """Without RELAY_REPLICA_ID the replica is named <host>-<pid>, valid as its own setting."""
    replica = load_settings(base_env(tmp_path)).replica_id
    assert replica.endswith(f"-{os.getpid()}")
    assert load_settings({**base_env(tmp_path), "RELAY_REPLICA_ID": replica}).replica_id == replica


def test_every_setting_has_a_bad_case():
    """Every field of RelaySettings and SinkSettings has at least one bad case, so a new setting needs one too."""
    covered = {case.field for case in CASES}
    wanted = set(RelaySettings.model_fields) | {f"sinks.{name}" for name in SinkSettings.model_fields}
    assert wanted - covered == set()


def test_every_contradiction_is_covered():
    """The contradictions named in the issue are in the table: secret without URL, X with X_FILE, sink without URL, unreadable _FILE."""
    ids = [case.id for case in CASES]
    assert any("WEBHOOK_SECRET" in i and "no WEBHOOK_URL" in i for i in ids)
    assert sum(1 for c in CASES if c.variable.endswith("_FILE") and not any(v is None for v in c.overrides.values())) >= 3
    assert any(c.field == "sinks.url" and c.overrides.get("RELAY_SINKS__OPS__URL", "") is None for c in CASES)
    assert any(c.overrides.get("RELAY_VOUCHERIFY_APP_TOKEN_FILE") == DIRECTORY for c in CASES)


def test_a_named_sinks_secrets_can_come_from_files(tmp_path):
    """RELAY_SINKS__<NAME>__URL_FILE and __TOKEN_FILE are read like every other _FILE variable (the sink's model sees only the value)."""
    (tmp_path / "url").write_text("https://ops.example.com/in\n", encoding="utf-8")
    (tmp_path / "token").write_text(APP_SLACK_TOKEN + "\n", encoding="utf-8")
    env = {
        **base_env(tmp_path),
        "RELAY_SINKS__OPS__KIND": "webhook",
        "RELAY_SINKS__OPS__URL_FILE": str(tmp_path / "url"),
        "RELAY_SINKS__LIVE__KIND": "slack_app",
        "RELAY_SINKS__LIVE__TOKEN_FILE": str(tmp_path / "token"),
        "RELAY_SINKS__LIVE__CHANNEL": "C0123ABCD",
    }
    settings = load_settings(env)
    assert settings.sinks["ops"].target_url() == "https://ops.example.com/in"
    assert settings.sinks["live"].wanted_events() == ("started", "completed", "failed", "stuck")
    assert APP_SLACK_TOKEN in settings.secret_values()
    assert APP_SLACK_TOKEN not in repr(settings)


def test_every_password_in_the_password_file_is_hidden(tmp_path):
    """Libpq's password file (PGPASSFILE) is read for the redactor: each line's password, with its escaped colons and backslashes undone."""
    passfile = tmp_path / "pgpass"
    passfile.write_text("# comment\ndb:5432:relay:relay:pass:with:colons-\\:x\n*:*:*:other:back\\\\slash-pw1\nbroken line\n", encoding="utf-8")
    settings = load_settings({**base_env(tmp_path), "RELAY_STATE_URL": "postgresql://relay@db/relay"})
    secrets = settings.secret_values({"PGPASSFILE": str(passfile)})
    assert "pass:with:colons-:x" in secrets
    assert "back\\slash-pw1" in secrets
    assert not any("comment" in s or "broken" in s for s in secrets)
