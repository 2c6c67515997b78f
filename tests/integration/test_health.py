"""The health and metrics listener, served for real on a loopback port, scraped and parsed."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.errors import AuthError, BudgetExhaustedError, ConfigError, NotFoundError, RateLimitedError, StoreError, TransportError
from daemon.health import HealthServer
from daemon.metrics import MAX_ACTION_TYPES, RelayMetrics, failure_reason
from daemon.model import Event
from daemon.poller import PollReport
from daemon.settings import load_settings
from daemon.store import CycleResult, OutboxStats
from daemon.store.sqlite import open_sqlite
from tests.conftest import APP_TOKEN, WEBHOOK_SECRET

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

NOW = 1_800_000_000.0
SLACK_URL = "https://hooks.slack.com/services/T000/B000/sl4ckS3cretPathToken"
HOOK_URL = "https://receiver.example.com/hooks/voucherify?token=qu3ryS3cretToken123"
FAMILIES = {
    "voucherify_relay_info": "gauge",
    "voucherify_relay_polls": "counter",
    "voucherify_relay_poll_duration_seconds": "histogram",
    "voucherify_relay_api_requests": "counter",
    "voucherify_relay_api_rate_limit_remaining": "gauge",
    "voucherify_relay_transitions": "counter",
    "voucherify_relay_events": "counter",
    "voucherify_relay_actions_in_flight": "gauge",
    "voucherify_relay_deliveries": "counter",
    "voucherify_relay_last_successful_poll_timestamp_seconds": "gauge",
    "voucherify_relay_outbox_pending_deliveries": "gauge",
    "voucherify_relay_dead_letters": "gauge",
    "voucherify_relay_oldest_pending_delivery_age_seconds": "gauge",
    "voucherify_relay_ready": "gauge",
    "process_resident_memory_bytes": "gauge",
}


@dataclass
class FakeSource:
    """A HealthSource whose answers the test sets."""

    alive_answer: tuple[bool, str] = (True, "scheduler running")
    ready_answer: tuple[bool, str] = (True, "last successful poll 3s ago")
    broken: bool = False

    def alive(self) -> tuple[bool, str]:
        """Return the scripted liveness."""
        if self.broken:
            raise RuntimeError("boom")
        return self.alive_answer

    def ready(self) -> tuple[bool, str]:
        """Return the scripted readiness."""
        return self.ready_answer


@dataclass
class FakeOutbox:
    """Outbox figures read at scrape time; ``fail`` makes the read raise like a closed store."""

    stats: OutboxStats = field(default_factory=lambda: OutboxStats(pending=0, dead=0, oldest_pending_created_at=None))
    fail: bool = False

    def __call__(self) -> OutboxStats:
        """Return the current figures."""
        if self.fail:
            raise StoreError("database is closed")
        return self.stats


@pytest.fixture
def source() -> FakeSource:
    """Give a healthy source."""
    return FakeSource()


@pytest.fixture
def outbox() -> FakeOutbox:
    """Give an empty outbox."""
    return FakeOutbox()


@pytest.fixture
def metrics(source: FakeSource, outbox: FakeOutbox) -> RelayMetrics:
    """Metrics on a fixed clock, watching the fake outbox and the source's readiness."""
    registry = RelayMetrics(clock=lambda: NOW)
    registry.watch(outbox_stats=outbox, ready=source.ready)
    return registry


@pytest.fixture
async def base_url(source: FakeSource, metrics: RelayMetrics) -> AsyncIterator[str]:
    """Serve the listener on a free loopback port."""
    server = HealthServer(source, metrics)
    port = await server.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """Give an HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str]]:
    """GET a health endpoint; return the status and the JSON body."""
    async with http.get(url) as response:
        return response.status, await response.json()


async def scrape(http: aiohttp.ClientSession, base_url: str) -> str:
    """GET /metrics and return the text."""
    async with http.get(f"{base_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse an exposition into {(sample name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


async def test_healthz_answers_200_when_alive_and_503_when_not(http, base_url, source):
    """/healthz mirrors the source's liveness with a short JSON body."""
    assert await get(http, f"{base_url}/healthz") == (200, {"status": "ok", "detail": "scheduler running"})
    source.alive_answer = (False, "no scheduler tick for 45s")
    assert await get(http, f"{base_url}/healthz") == (503, {"status": "unavailable", "detail": "no scheduler tick for 45s"})


async def test_readyz_answers_200_when_ready_and_503_when_not(http, base_url, source):
    """/readyz mirrors the source's readiness with a short JSON body."""
    assert await get(http, f"{base_url}/readyz") == (200, {"status": "ok", "detail": "last successful poll 3s ago"})
    source.ready_answer = (False, "Voucherify refused the credentials (wrong keys or wrong cluster)")
    status, body = await get(http, f"{base_url}/readyz")
    assert (status, body["status"]) == (503, "unavailable")
    assert "refused the credentials" in body["detail"]


async def test_a_check_that_raises_is_unhealthy_not_a_server_error(http, base_url, source):
    """A source that raises makes the endpoint answer 503 naming the exception type, not 500."""
    source.broken = True
    assert await get(http, f"{base_url}/healthz") == (503, {"status": "unavailable", "detail": "health check raised RuntimeError"})


async def test_metrics_parse_and_hold_every_family(http, base_url):
    """/metrics is valid Prometheus text with every documented family and its type."""
    families = {f.name: f.type for f in text_string_to_metric_families(await scrape(http, base_url))}
    assert {name: families.get(name) for name in FAMILIES} == FAMILIES


async def test_metrics_follow_what_the_app_reports(http, base_url, metrics, outbox):
    """Polls, API calls, events, deliveries and outbox depth show up with the right labels and values."""
    project = metrics.project("eu")
    project.observe_poll(PollReport(transitions=3, in_flight=2), duration_s=0.4)
    project.poll_failed("auth", duration_s=0.1)
    project.observe_api_calls(Counter({("list", "200"): 2, ("get", "404"): 1}))
    project.set_rate_limit_remaining(97)
    metrics.observe_event("async_action.failed", outcome="failure", action_type="VOUCHERS.IMPORT_CSV", project="eu")
    metrics.declare_sinks(["ops"])
    metrics.delivery_result("ops", "delivered")
    outbox.stats = OutboxStats(pending=4, dead=1, oldest_pending_created_at=NOW - 125.0)
    found = samples(await scrape(http, base_url))
    eu = (("project", "eu"),)
    assert found[("voucherify_relay_polls_total", (("outcome", "success"), *eu))] == 1
    assert found[("voucherify_relay_polls_total", (("outcome", "auth"), *eu))] == 1
    assert found[("voucherify_relay_polls_total", (("outcome", "crashed"), *eu))] == 0
    assert found[("voucherify_relay_poll_duration_seconds_count", eu)] == 2
    assert found[("voucherify_relay_transitions_total", eu)] == 3
    assert found[("voucherify_relay_actions_in_flight", eu)] == 2
    assert found[("voucherify_relay_api_requests_total", (("endpoint", "get"), *eu, ("status", "404")))] == 1
    assert found[("voucherify_relay_api_rate_limit_remaining", eu)] == 97
    assert found[("voucherify_relay_leader", eu)] == 0, "a project's leader gauge exists from its first use"
    event_labels = (("action_type", "VOUCHERS.IMPORT_CSV"), ("event_type", "async_action.failed"), ("outcome", "failure"), *eu)
    assert found[("voucherify_relay_events_total", event_labels)] == 1
    assert found[("voucherify_relay_deliveries_total", (("result", "delivered"), ("sink", "ops")))] == 1
    assert found[("voucherify_relay_deliveries_total", (("result", "expired"), ("sink", "ops")))] == 0
    assert found[("voucherify_relay_outbox_pending_deliveries", ())] == 4
    assert found[("voucherify_relay_dead_letters", ())] == 1
    assert found[("voucherify_relay_oldest_pending_delivery_age_seconds", ())] == 125
    assert found[("voucherify_relay_last_successful_poll_timestamp_seconds", eu)] == NOW
    assert found[("voucherify_relay_ready", ())] == 1
    assert found[("voucherify_relay_info", (("version", "0.1.0"),))] == 1


async def test_api_calls_are_counted_by_difference_across_scrapes_and_client_restarts(metrics):
    """The client's cumulative Counter is added by its growth; a smaller total (a new client) counts from zero."""
    calls: Counter[tuple[str, str]] = Counter({("list", "200"): 5})
    project = metrics.project("default")
    project.observe_api_calls(calls)
    project.observe_api_calls(calls)
    calls[("list", "200")] += 2
    project.observe_api_calls(calls)
    project.observe_api_calls(Counter({("list", "200"): 1}))
    metrics.project("eu").observe_api_calls(Counter({("list", "200"): 3}))
    labels = {"endpoint": "list", "status": "200"}
    assert metrics.registry.get_sample_value("voucherify_relay_api_requests_total", {**labels, "project": "default"}) == 8
    assert metrics.registry.get_sample_value("voucherify_relay_api_requests_total", {**labels, "project": "eu"}) == 3, "each project counts its own client"


def test_rate_limit_remaining_is_nan_until_voucherify_reports_it(metrics):
    """An unknown remaining quota reads NaN (no false alarm at 0) and returns to NaN when unknown again."""
    project, labels = metrics.project("default"), {"project": "default"}
    assert math.isnan(metrics.registry.get_sample_value("voucherify_relay_api_rate_limit_remaining", labels))
    project.set_rate_limit_remaining(0)
    assert metrics.registry.get_sample_value("voucherify_relay_api_rate_limit_remaining", labels) == 0
    project.set_rate_limit_remaining(None)
    assert math.isnan(metrics.registry.get_sample_value("voucherify_relay_api_rate_limit_remaining", labels))


async def test_an_outbox_that_cannot_answer_leaves_its_figures_out_but_the_scrape_works(http, base_url, outbox):
    """A store that raises (closing, say) drops the outbox gauges from that scrape; the rest is served."""
    outbox.fail = True
    names = {f.name for f in text_string_to_metric_families(await scrape(http, base_url))}
    assert "voucherify_relay_outbox_pending_deliveries" not in names
    assert "voucherify_relay_polls" in names


def test_action_type_labels_are_clipped_and_capped(metrics):
    """Unknown action types keep a safe charset and length, and past MAX_ACTION_TYPES distinct ones become OTHER."""
    metrics.observe_event("async_action.completed", outcome="success", action_type='NEW.TYPE {"x"}\n' + "A" * 200, project="default")
    for n in range(MAX_ACTION_TYPES + 10):
        metrics.observe_event("async_action.completed", outcome="success", action_type=f"FUTURE.TYPE_{n}", project="default")
    metrics.observe_event("async_action.stuck", outcome=None, action_type=None, project="default")
    types = {s.labels["action_type"] for f in metrics.registry.collect() if f.name == "voucherify_relay_events" for s in f.samples}
    assert len(types) == MAX_ACTION_TYPES + 1
    assert "OTHER" in types
    assert all(len(t) <= 64 and t.replace("_", "").replace(".", "").isalnum() for t in types)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (AuthError("401"), "auth"),
        (RateLimitedError("429", retry_at=0.0), "rate_limited"),
        (BudgetExhaustedError("budget", retry_at=0.0), "budget"),
        (TransportError("timeout"), "api_error"),
        (NotFoundError("404"), "api_error"),
        (StoreError("disk full"), "store_error"),
        (ConfigError("RELAY_X", "bad"), "crashed"),
        (KeyError("x"), "crashed"),
    ],
)
def test_failure_reason_maps_errors_to_the_fixed_vocabulary(exc, reason):
    """Every exception a poll can raise becomes one of the few polls_total outcomes."""
    assert failure_reason(exc) == reason


def test_an_unknown_failure_reason_is_refused(metrics):
    """poll_failed accepts only the fixed vocabulary, so labels cannot grow by accident."""
    with pytest.raises(ValueError, match="unknown poll failure reason"):
        metrics.project("default").poll_failed("dns")


async def test_no_secret_reaches_a_metric_label(http, base_url, metrics, tmp_path):
    """With secret URLs, tokens and signing keys configured, no secret appears anywhere in /metrics."""
    settings = load_settings(
        {
            "RELAY_ENV_FILE": str(tmp_path / "absent.env"),
            "RELAY_VOUCHERIFY_APP_ID": "app-123",
            "RELAY_VOUCHERIFY_APP_TOKEN": APP_TOKEN,
            "RELAY_WEBHOOK_URL": HOOK_URL,
            "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "RELAY_SLACK_WEBHOOK_URL": SLACK_URL,
        }
    )
    metrics.declare_sinks(settings.all_sinks())
    for sink in settings.all_sinks():
        metrics.delivery_result(sink, "retry")
    metrics.project("default").observe_api_calls(Counter({("list", "401"): 1}))
    metrics.project("default").poll_failed("auth")
    text = await scrape(http, base_url)
    secrets = [*settings.secret_values(), "qu3ryS3cretToken123", "sl4ckS3cretPathToken"]
    assert len(secrets) > 3
    assert [s for s in secrets if s in text] == []
    assert {"webhook", "slack"} <= {s.labels.get("sink") for f in text_string_to_metric_families(text) for s in f.samples}


async def test_outbox_figures_come_from_a_real_store(tmp_path):
    """Watching figures read from a real SQLite outbox, the gauges show its pending rows and the oldest one's age."""
    stores = open_sqlite(tmp_path / "state.db")
    try:
        event = Event(id="evt_1", type="async_action.completed", timestamp="2026-01-01T00:00:00.000Z", data={"id": "aa_1"})
        await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(event, ["webhook", "slack"])]), now=NOW - 30.0)
        stats = await stores.outbox.stats()
        metrics = RelayMetrics(clock=lambda: NOW)
        metrics.watch(outbox_stats=lambda: stats)
        found = samples(metrics.render().decode())
    finally:
        await stores.close()
    assert found[("voucherify_relay_outbox_pending_deliveries", ())] == 2
    assert found[("voucherify_relay_dead_letters", ())] == 0
    assert found[("voucherify_relay_oldest_pending_delivery_age_seconds", ())] == 30


async def test_without_metrics_the_listener_serves_only_health(http, source):
    """A listener built without RelayMetrics answers 404 on /metrics and still serves /healthz."""
    server = HealthServer(source)
    port = await server.start("127.0.0.1", 0)
    try:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 404
        assert (await get(http, f"http://127.0.0.1:{port}/healthz"))[0] == 200
    finally:
        await server.close()


async def test_close_stops_listening(http, source):
    """After close() the port refuses connections."""
    server = HealthServer(source)
    port = await server.start("127.0.0.1", 0)
    await server.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, f"http://127.0.0.1:{port}/healthz")


ALERTS = Path(__file__).parents[2] / "docs" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
RELAY = {"instance": "relay:9464", "job": "voucherify-relay"}


def test_alert_rules_use_only_exported_metrics(metrics):
    """Every voucherify_relay_* name the example alert rules query is one the relay exports."""
    metrics.declare_sinks(["ops"])
    metrics.project("default")
    exported = {s.name for f in metrics.registry.collect() for s in f.samples}
    queried = set(re.findall(r"\bvoucherify_relay_[a-z_]+", ALERTS.read_text(encoding="utf-8")))
    assert queried
    assert queried - exported == set()


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    """Return one promtool input series."""
    selector = ",".join(f'{k}="{v}"' for k, v in (RELAY | labels).items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def fires(alert: str, at: str, **labels: str) -> dict[str, object]:
    """Expect ``alert`` to be firing at ``at`` with these labels (plus the relay's)."""
    severity = "critical" if alert in {"VoucherifyRelayDown", "VoucherifyRelayNotReady", "VoucherifyRelayAuthFailures"} else "warning"
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": RELAY | labels | {"severity": severity}}]}


def fires_by_sink(alert: str, at: str, *, sink: str) -> dict[str, object]:
    """Expect ``alert``, aggregated by instance and sink (no job label), to be firing at ``at``."""
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": {"instance": RELAY["instance"], "sink": sink, "severity": "warning"}}]}


def quiet(alert: str, at: str) -> dict[str, object]:
    """Expect ``alert`` not to be firing at ``at``."""
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_alert_rules_fire_when_they_should_and_only_then(tmp_path):
    """The example rules pass `promtool check`, and each fires on series that should fire it and not before."""
    # promtool compares annotations too; they are prose with templates, so test a copy without them
    rules = re.sub(r"^( +)annotations:\n(?:\1 +.*\n)+", "", ALERTS.read_text(encoding="utf-8"), flags=re.MULTILINE)
    (tmp_path / "rules.yml").write_text(rules, encoding="utf-8")
    healthy = {"instance": "ok:9464"}
    scenario = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("up", "0x10"),
                    series("up", "1x10", **healthy),
                    series("voucherify_relay_ready", "0x10"),
                    series("voucherify_relay_ready", "1x10", **healthy),
                    series("voucherify_relay_last_successful_poll_timestamp_seconds", "0x20"),
                    series("voucherify_relay_last_successful_poll_timestamp_seconds", "0+60x20", **healthy),
                    series("voucherify_relay_polls_total", "0 1 2 3 4", outcome="auth"),
                    series("voucherify_relay_polls_total", "0x4", outcome="auth", **healthy),
                    series("voucherify_relay_dead_letters", "0 0 1 1 1 1"),
                    series("voucherify_relay_dead_letters", "0x5", **healthy),
                    series("voucherify_relay_oldest_pending_delivery_age_seconds", "0+300x6"),
                    series("voucherify_relay_oldest_pending_delivery_age_seconds", "0x6", **healthy),
                    series("voucherify_relay_deliveries_total", "0+1x40", sink="ops", result="retry"),
                    series("voucherify_relay_deliveries_total", "0x40", sink="ops", result="delivered"),
                    series("voucherify_relay_deliveries_total", "0+1x40", sink="slack", result="retry"),
                    series("voucherify_relay_deliveries_total", "0+1x40", sink="slack", result="delivered"),
                ],
                "alert_rule_test": [
                    quiet("VoucherifyRelayDown", "4m"),
                    fires("VoucherifyRelayDown", "6m"),
                    quiet("VoucherifyRelayNotReady", "4m"),
                    fires("VoucherifyRelayNotReady", "6m"),
                    quiet("VoucherifyRelayNoSuccessfulPoll", "10m"),
                    fires("VoucherifyRelayNoSuccessfulPoll", "12m"),
                    quiet("VoucherifyRelayAuthFailures", "0m"),
                    fires("VoucherifyRelayAuthFailures", "3m", outcome="auth"),
                    quiet("VoucherifyRelayDeadLetters", "2m"),
                    fires("VoucherifyRelayDeadLetters", "4m"),
                    quiet("VoucherifyRelayDeliveryBacklog", "3m"),
                    fires("VoucherifyRelayDeliveryBacklog", "5m"),
                    quiet("VoucherifyRelaySinkFailing", "10m"),
                    fires_by_sink("VoucherifyRelaySinkFailing", "35m", sink="ops"),
                ],
            }
        ],
    }
    (tmp_path / "rules_test.yml").write_text(json.dumps(scenario), encoding="utf-8")  # YAML is a superset of JSON
    checked = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", "rules_test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    assert tested.returncode == 0, tested.stdout + tested.stderr
