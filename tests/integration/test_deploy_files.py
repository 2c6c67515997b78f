"""deploy/compose.yaml and deploy/kubernetes.yaml: valid YAML that says what docs/deploy.md promises.

No compose engine or cluster runs here; the files are parsed and their promises asserted: PostgreSQL
and two relays on it, replicas behind probes on /healthz and /readyz, a PodDisruptionBudget, and
the state URL and credentials from secrets, never written into an environment value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
HEALTH_PORT = 9464


def load_all(name: str) -> list[dict[str, Any]]:
    """Return the YAML documents of deploy/<name> (safe loader: plain data only)."""
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8")) if doc is not None]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return the manifests keyed by kind."""
    return {doc["kind"]: doc for doc in docs}


COMPOSE = load_all("compose.yaml")[0]
MANIFESTS = load_all("kubernetes.yaml")
KINDS = by_kind(MANIFESTS)


def relays() -> dict[str, dict[str, Any]]:
    """Return the compose services built from the relay image."""
    return {name: svc for name, svc in COMPOSE["services"].items() if svc.get("image") == "voucherify-relay"}


def test_compose_runs_postgres_and_two_relays_on_it():
    """Compose has a PostgreSQL service and two relays whose state URL points at it, each with its own replica id."""
    services = COMPOSE["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert len(relays()) == 2
    for svc in relays().values():
        env = svc["environment"]
        assert re.fullmatch(r"postgresql://[^:@/]+@postgres:5432/\w+(\?.*)?", env["RELAY_STATE_URL"]), "no password in the URL"
        assert "postgres" in svc["depends_on"]
        assert svc["healthcheck"]["test"][:2] == ["CMD", "python"]
        assert "/readyz" in svc["healthcheck"]["test"][-1]
    assert len({svc["environment"]["RELAY_REPLICA_ID"] for svc in relays().values()}) == 2


def test_compose_takes_every_credential_from_a_secret_file():
    """The database password and the relay's credentials come from compose secrets backed by files, named in *_FILE or PGPASSFILE variables."""
    declared = COMPOSE["secrets"]
    assert all("file" in spec for spec in declared.values())
    assert "/run/secrets/postgres-password" in COMPOSE["services"]["postgres"]["environment"].values()
    for svc in relays().values():
        env = svc["environment"]
        assert set(svc["secrets"]) <= set(declared)
        assert env["PGPASSFILE"] == "/run/secrets/pgpass"
        assert env["RELAY_VOUCHERIFY_APP_TOKEN_FILE"].startswith("/run/secrets/")
        assert not [k for k in env if re.search(r"PASSWORD$|TOKEN$|SECRET$", k)]


def test_kubernetes_has_the_expected_kinds():
    """kubernetes.yaml holds a Secret, a ConfigMap, a Deployment, a PodDisruptionBudget and a Service, each with apiVersion and name."""
    assert sorted(KINDS) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service"]
    assert all(doc["apiVersion"] and doc["metadata"]["name"] == "voucherify-relay" for doc in MANIFESTS)
    assert KINDS["PodDisruptionBudget"]["apiVersion"] == "policy/v1"
    assert KINDS["Deployment"]["apiVersion"] == "apps/v1"


def container() -> dict[str, Any]:
    """Return the Deployment's one container."""
    [relay] = KINDS["Deployment"]["spec"]["template"]["spec"]["containers"]
    return relay


def test_deployment_runs_replicas_behind_health_probes():
    """Two or more replicas, liveness on /healthz and readiness on /readyz at the health port, and a rollout that never drops below the replica count."""
    spec = KINDS["Deployment"]["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    relay = container()
    [port] = relay["ports"]
    assert port["containerPort"] == HEALTH_PORT
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert relay["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {relay[p]["httpGet"]["port"] for p in ("livenessProbe", "readinessProbe")} == {port["name"]}
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_pod_disruption_budget_keeps_one_replica_and_selects_the_pods():
    """The PodDisruptionBudget keeps at least one but fewer than all replicas and selects the Deployment's pods."""
    pdb = KINDS["PodDisruptionBudget"]["spec"]
    assert 1 <= pdb["minAvailable"] < KINDS["Deployment"]["spec"]["replicas"]
    assert pdb["selector"] == KINDS["Deployment"]["spec"]["selector"]
    assert KINDS["Service"]["spec"]["selector"] == KINDS["Deployment"]["spec"]["selector"]["matchLabels"]


def test_deployment_takes_credentials_from_the_secret():
    """The state URL comes from the Secret by secretKeyRef and the app token from a mounted Secret file; no environment value holds a credential."""
    relay = container()
    env = {item["name"]: item for item in relay["env"]}
    secret = KINDS["Secret"]
    assert env["RELAY_STATE_URL"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "state-url"}
    assert secret["stringData"]["state-url"].startswith("postgresql://")
    assert env["RELAY_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    [volume] = [v for v in KINDS["Deployment"]["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    [mount] = [m for m in relay["volumeMounts"] if m["name"] == volume["name"]]
    assert env["RELAY_VOUCHERIFY_APP_TOKEN_FILE"]["value"] == f"{mount['mountPath']}/app-token"
    assert {item["key"] for item in volume["secret"]["items"]} <= set(secret["stringData"])
    assert not [item for item in relay["env"] if "value" in item and "://" in item["value"] and "@" in item["value"]]


def test_deployment_runs_as_the_images_non_root_user_read_only():
    """Pods run as UID 10001 (the image's), non-root, with a read-only root file system and no privilege escalation."""
    pod = KINDS["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
