"""Offline checks of the Kubernetes manifests (k8s/): rendered with ``kubectl kustomize``,
the core kinds validated by ``kubernetes-validate`` against the Kubernetes OpenAPI schemas
(strict: unknown fields refused), KEDA's ScaledObject validated by ``jsonschema`` against the
schema in ``k8s/schemas/`` (KEDA 2.16), and their values checked against the settings.

``kubectl`` is needed to render; without it the tests skip and say so.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from segstream.shared.settings import TopicSettings, WorkerSettings, settings_rows

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
KEDA_SCHEMA = K8S / "schemas" / "keda-scaledobject-v1alpha1.json"
#: The oldest Kubernetes release the manifests are validated for.
KUBERNETES_VERSION = "1.31.0"
KUSTOMIZATIONS = ["base", "overlays/local"]


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


SETTINGS = _env_file(K8S / "base" / "settings.env")
SECRETS = _env_file(K8S / "base" / "secrets.example.env")


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders k8s/")
    r = subprocess.run(
        [kubectl, "kustomize", str(K8S / request.param)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _keda_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_kind_validates(rendered) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert {"Deployment", "Job", "ConfigMap", "Secret", "ScaledObject"} <= set(kinds)
    for d in rendered:
        if d["kind"] == "ScaledObject":
            _keda_validator().validate(d)
        else:
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)


def test_the_validators_refuse_a_misspelt_field(rendered) -> None:
    """Both checks can fail: a typo in a Deployment and in the ScaledObject is refused."""
    dep = copy.deepcopy(_one(rendered, "Deployment", "segstream-worker"))
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBERNETES_VERSION, strict=True)
    so = copy.deepcopy(_one(rendered, "ScaledObject", "segstream-worker"))
    so["spec"]["maxReplicas"] = so["spec"].pop("maxReplicaCount")
    assert list(_keda_validator().iter_errors(so))
    so = copy.deepcopy(_one(rendered, "ScaledObject", "segstream-worker"))
    so["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5000  # must be a string
    assert list(_keda_validator().iter_errors(so))


def test_worker_scales_on_lag_up_to_the_partition_count(rendered) -> None:
    so = _one(rendered, "ScaledObject", "segstream-worker")
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == "segstream-worker"
    _one(rendered, "Deployment", spec["scaleTargetRef"]["name"])
    assert spec["maxReplicaCount"] == int(SETTINGS["SEGSTREAM_TOPICS__PARTITIONS"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["topic"] == TopicSettings().events
    assert meta["consumerGroup"] == SETTINGS["SEGSTREAM_WORKER__GROUP_ID"]
    assert meta["bootstrapServers"] == SETTINGS["SEGSTREAM_BROKER__BOOTSTRAP"]
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0


def test_probes_grace_and_resources(rendered) -> None:
    drain = 2 * WorkerSettings().transaction_timeout_s + 10 + 5 + 5
    for name, port in (("segstream-worker", 9100), ("segstream-monitor", 9101)):
        pod = _one(rendered, "Deployment", name)["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz", name
        assert c["ports"][0]["containerPort"] == port
        assert pod["terminationGracePeriodSeconds"] >= drain, name
        assert c["resources"]["requests"] and c["resources"]["limits"], name
        assert pod["securityContext"]["runAsNonRoot"] is True
    worker = _one(rendered, "Deployment", "segstream-worker")["spec"]
    # A surge pod beyond the partition count would never be ready and stall the roll-out.
    assert worker["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert _one(rendered, "Deployment", "segstream-monitor")["spec"]["strategy"] == {
        "type": "Recreate"
    }
    job = _one(rendered, "Job", "segstream-trainer")["spec"]["template"]["spec"]
    (c,) = job["containers"]
    assert c["args"][0] == "train" and job["restartPolicy"] == "Never"
    report_dir = c["args"][c["args"].index("--report-dir") + 1]
    assert report_dir in {m["mountPath"] for m in c["volumeMounts"]}


def test_settings_in_a_configmap_and_secrets_in_a_secret(rendered) -> None:
    rows = {env: desc for _, env, _, desc in settings_rows()}
    secret_vars = {env for env, desc in rows.items() if "(secret" in desc}
    assert not set(SETTINGS) - set(rows), "not settings: " + str(set(SETTINGS) - set(rows))
    assert not set(SECRETS) - secret_vars, "not secret settings in the Secret"
    assert not set(SETTINGS) & secret_vars, "a secret setting in the ConfigMap"
    assert set(SECRETS.values()) == {"change-me"}, "only placeholders are committed"
    assert SETTINGS["SEGSTREAM_STORE__URL"] == "s3://segstream"  # the store adds bundles/
    cm = _one(rendered, "ConfigMap", "segstream-settings")
    secret = _one(rendered, "Secret", "segstream-secrets")
    assert set(SETTINGS) <= set(cm["data"]) and set(secret["data"]) == set(SECRETS)
    for kind, name in (
        ("Deployment", "segstream-worker"),
        ("Deployment", "segstream-monitor"),
        ("Job", "segstream-trainer"),
    ):
        (c,) = _one(rendered, kind, name)["spec"]["template"]["spec"]["containers"]
        refs = {next(iter(e.values()))["name"] for e in c["envFrom"]}  # the generated, hashed names
        assert refs == {cm["metadata"]["name"], secret["metadata"]["name"]}, name
