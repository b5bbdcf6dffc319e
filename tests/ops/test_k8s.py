"""The Kubernetes manifests (deploy/k8s/): valid against the Kubernetes schemas (offline, the
schemas kubernetes-validate ships), and true to igsync — probes on the right endpoints, a
grace period that covers the drain, secrets only by reference, settings that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from config.settings import SECRET_FIELDS, describe, env_name
from server.app.lifecycle import SHUTDOWN_SECS

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [doc for doc in _documents() if doc["kind"] == kind]
    assert len(found) == 1, f"one {kind} expected"
    return found[0]


@pytest.mark.parametrize("doc", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_an_invalid_manifest_is_refused() -> None:
    """The validation has teeth: a misspelt field fails it."""
    broken = _one("Deployment")
    broken = {**broken, "spec": {**broken["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_manifests_hold_no_secret_value() -> None:
    kinds = {doc["kind"] for doc in _documents()}
    assert "Secret" not in kinds
    container = _container()
    secret_vars = {env_name(name) for name in SECRET_FIELDS} | {"IGSYNC_MONGO_URL", "IGSYNC_REDIS_URL"}
    by_name = {e["name"]: e for e in container["env"]}
    for name in secret_vars:
        assert "secretKeyRef" in by_name[name]["valueFrom"], name
    config = _one("ConfigMap")["data"]
    assert not secret_vars & set(config), "a secret in the ConfigMap"


def test_every_setting_named_exists() -> None:
    known = {row[0] for row in describe()}
    named = set(_one("ConfigMap")["data"]) | {e["name"] for e in _container()["env"]}
    assert named <= known, named - known


def _container() -> dict[str, Any]:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_probes_drain_and_selectors_fit_igsync() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]
    container = _container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = int(_one("ConfigMap")["data"]["IGSYNC_PORT"])
    assert container["ports"][0]["containerPort"] == port
    # The grace period covers the preStop sleep, the drain and the closing of sockets and stores.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(_one("ConfigMap")["data"]["IGSYNC_SHUTDOWN_DRAIN_SECS"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + drain + SHUTDOWN_SECS
    labels = pod["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        doc = _one(kind)
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    assert _one("Service")["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
