"""Secured Kafka end to end: the worker, the monitor and the simulator (``segstream`` CLI
subprocesses, secrets from the environment) and the trainer's announcement producer against a
broker that requires TLS.

What the embedded broker (Tansu 0.6.0) can and cannot do (docs/security.md):

* TLS: Tansu refuses ``--cert`` together with ``--key`` ("the argument '--cert <CERT>' cannot
  be used with '--key <KEY>'"), so :class:`~segstream.shared.broker.EmbeddedBroker` serves TLS through
  its own TLS front. With a client CA it requires client certificates: the positive test runs
  everything with protocol SSL and mutual TLS (encrypted client key + ssl_key_password).
* SASL: ``--authentication`` works, but its storage engines keep no SCRAM users
  (``tansu user create`` answers 0 and nothing is stored; the SCRAM lookup always answers
  unknown-user) and PLAIN is not offered, so *every* login is refused. The SASL_SSL test
  therefore checks the refusal (a wrong password: one clear line, no hang). A successful
  SASL_SSL run needs a real cluster: set ``SEGSTREAM_TEST_SASL_BOOTSTRAP``,
  ``SEGSTREAM_TEST_SASL_USERNAME``, ``SEGSTREAM_TEST_SASL_PASSWORD`` (and optionally
  ``SEGSTREAM_TEST_SASL_MECHANISM``, ``SEGSTREAM_TEST_SASL_CA_FILE``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from segstream.shared.broker import EmbeddedBroker
from segstream.shared.errors import BrokerError
from segstream.shared.kafka import FAST_GROUP_CONFIG, check_reachable, client_config, ensure_topics
from segstream.shared.settings import BrokerSecuritySettings, Settings
from segstream.shared.store import ArtifactStore
from tests.integration.worker_helpers import REPO, publish_fake, worker_settings
from tests.security_helpers import Pki, make_pki

pytestmark = pytest.mark.integration

WRONG_PASSWORD = "wrong-Pa55word-31d9"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_broker(pki: Pki) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(
        tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_client_ca_file=pki.ca
    ) as broker:
        yield broker


@pytest.fixture(scope="module")
def sasl_broker(pki: Pki) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(
        authentication=True, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    ) as broker:
        yield broker


def mtls(pki: Pki) -> dict[str, Any]:
    return {
        "protocol": "SSL",
        "ssl_ca_file": str(pki.ca),
        "ssl_cert_file": str(pki.client_cert),
        "ssl_key_file": str(pki.client_key),
        "ssl_key_password": pki.client_key_password,
    }


def secured_settings(bootstrap: str, security: dict[str, Any], prefix: str, tmp: Path) -> Settings:
    s = worker_settings(bootstrap, prefix, tmp)
    broker = s.broker.model_copy(
        update={
            "security": BrokerSecuritySettings(**security),
            "connect_attempts": 1,
            "connect_timeout_s": 10.0,
        }
    )
    mon = s.monitor.model_copy(
        update={
            "app_id": f"{prefix}-mon",
            "metrics_port": 0,
            "session_timeout_s": 2.0,
            "tick_s": 0.5,
            "bundle_cache_dir": str(tmp / "mcache"),
        }
    )
    sim = s.simulator.model_copy(update={"rate": 5000.0})
    return s.model_copy(update={"broker": broker, "monitor": mon, "simulator": sim})


def write_without_secrets(settings: Settings, path: Path) -> Path:
    """A config file for the subprocesses with the secrets left out (they come from the
    environment, as in production)."""
    data = settings.public_dump()
    for key in ("password", "ssl_key_password"):
        data["broker"]["security"][key] = None
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def secret_env(security: dict[str, Any]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key in ("password", "ssl_key_password"):
        if security.get(key) is not None:
            env[f"SEGSTREAM_BROKER__SECURITY__{key.upper()}"] = str(security[key])
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "segstream", *args]


def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 90.0) -> list[Any]:
    """Read ``topic`` from the start over the secured connection until ``expected`` records."""
    from confluent_kafka import Consumer

    c = Consumer(
        client_config(
            settings.broker,
            group_id=f"r-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **{k.replace(".", "_"): v for k, v in FAST_GROUP_CONFIG.items()},
        )
    )
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out += [m for m in c.consume(1000, 0.5) if m.error() is None]
    finally:
        c.close()
    return out


def metrics_port(log: Path, proc: subprocess.Popen, timeout_s: float = 90.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("metrics_port="):
                return int(line.split("=", 1)[1])
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError("monitor did not print its metrics port")


def monitor_sample(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    return 0.0


def stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def run_pipeline(
    settings: Settings, security: dict[str, Any], tmp: Path, events: int = 300
) -> None:
    """Worker + monitor (subprocesses) + ``segstream simulate``; every event is predicted, the
    monitor reads every prediction, no log line holds a secret."""
    t = settings.topics
    ensure_topics(
        settings.broker,
        [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.outcomes, t.model_updates],
        t.partitions,
    )
    publish_fake(settings, tmp)
    cfg = write_without_secrets(settings, tmp / "secured.yaml")
    env = secret_env(security)
    assert "**********" not in cfg.read_text()
    logs = {name: tmp / f"{name}.log" for name in ("worker", "monitor")}
    outs = {name: open(path, "w") for name, path in logs.items()}  # noqa: SIM115
    worker = subprocess.Popen(
        cli("worker", "--config", str(cfg), "--loader", "tests.fakes:load_fake_bundle"),
        cwd=REPO,
        env=env,
        stdout=outs["worker"],
        stderr=subprocess.STDOUT,
    )
    monitor = subprocess.Popen(
        cli("monitor", "--config", str(cfg)),
        cwd=REPO,
        env=env,
        stdout=outs["monitor"],
        stderr=subprocess.STDOUT,
    )
    try:
        port = metrics_port(logs["monitor"], monitor)
        sim = subprocess.run(
            cli("simulate", "--config", str(cfg), "--limit", str(events), "--quiet"),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sim.returncode == 0, sim.stderr[-3000:]
        assert f"sent={events} events" in sim.stdout and "failed=0" in sim.stdout, sim.stdout
        preds = read_topic(settings, t.predictions, events)
        ids = {orjson.loads(m.value())["event_id"] for m in preds}
        assert len(ids) == events, (len(ids), logs["worker"].read_text()[-3000:])
        deadline = time.monotonic() + 90
        seen = 0.0
        while time.monotonic() < deadline:
            seen = monitor_sample(
                port, 'segstream_monitor_records_total{result="ok",source="predictions"}'
            )
            if seen >= events:
                break
            assert monitor.poll() is None, logs["monitor"].read_text()[-3000:]
            time.sleep(0.5)
        assert seen >= events, logs["monitor"].read_text()[-3000:]
        assert worker.poll() is None and monitor.poll() is None
    finally:
        worker_rc = stop(worker)
        stop(monitor)
        for f in outs.values():
            f.close()
    assert worker_rc == 0, logs["worker"].read_text()[-3000:]
    text = "".join(p.read_text() for p in logs.values()) + sim.stdout + sim.stderr
    for key in ("password", "ssl_key_password"):
        if security.get(key):
            assert security[key] not in text


def test_worker_monitor_simulator_over_mutual_tls(mtls_broker, pki, topic_prefix, tmp_path):
    t0 = time.monotonic()
    security = mtls(pki)
    s = secured_settings(mtls_broker.bootstrap, security, topic_prefix, tmp_path)
    # The listener speaks TLS only and wants a client certificate.
    plain = s.broker.model_copy(
        update={"security": BrokerSecuritySettings(), "connect_timeout_s": 2.0}
    )
    with pytest.raises(BrokerError, match="cannot reach Kafka"):
        check_reachable(plain)
    no_cert = s.broker.model_copy(
        update={
            "security": BrokerSecuritySettings(protocol="SSL", ssl_ca_file=str(pki.ca)),
            "connect_timeout_s": 2.0,
        }
    )
    with pytest.raises(BrokerError, match="SSL connection closed by peer"):
        check_reachable(no_cert)
    run_pipeline(s, security, tmp_path)
    print(f"pipeline over mutual TLS: {time.monotonic() - t0:.0f} s")


def test_trainer_announcement_over_mutual_tls(mtls_broker, pki, topic_prefix, tmp_path):
    from segstream.training.pipeline import _send_model_update

    s = secured_settings(mtls_broker.bootstrap, mtls(pki), topic_prefix, tmp_path)
    bundle_id = publish_fake(s, tmp_path)
    manifest = ArtifactStore(s.store).verify(s.model, bundle_id)
    assert _send_model_update(s, manifest, "file://x") is True
    [msg] = read_topic(s, s.topics.model_updates, 1, timeout_s=30)
    assert orjson.loads(msg.value())["bundle_id"] == bundle_id


def test_other_ca_is_refused_at_once(mtls_broker, pki, topic_prefix, tmp_path):
    sec = {**mtls(pki), "ssl_ca_file": str(pki.other_ca)}
    s = secured_settings(mtls_broker.bootstrap, sec, topic_prefix, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(
        BrokerError,
        match=r"TLS with Kafka at .* failed \(SSL\): .*certificate "
        r"verify failed.*ssl_ca_file",
    ):
        check_reachable(s.broker)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    "command",
    [
        ("worker", "--loader", "tests.fakes:load_fake_bundle"),
        ("monitor",),
        ("simulate", "--limit", "10", "--quiet"),
    ],
)
def test_wrong_password_is_refused_in_one_line(sasl_broker, pki, topic_prefix, tmp_path, command):
    security = {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username": "alice",
        "password": WRONG_PASSWORD,
        "ssl_ca_file": str(pki.ca),
    }
    s = secured_settings(sasl_broker.bootstrap, security, topic_prefix, tmp_path)
    s = s.model_copy(update={"broker": s.broker.model_copy(update={"connect_attempts": 3})})
    cfg = write_without_secrets(s, tmp_path / "c.yaml")
    t0 = time.monotonic()
    r = subprocess.run(
        cli(command[0], "--config", str(cfg), *command[1:]),
        cwd=REPO,
        env=secret_env(security),
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-3000:]
    assert elapsed < 30, f"took {elapsed:.0f} s"  # refused at the first answer, not retried
    errors = [line for line in r.stderr.splitlines() if line.startswith("segstream: error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert errors[0].startswith(
        f"segstream: error: Kafka at {sasl_broker.bootstrap} refused the login of user "
        "'alice' (SASL_SSL, SCRAM-SHA-512): "
    )
    assert "Traceback" not in r.stderr
    assert WRONG_PASSWORD not in r.stdout + r.stderr


def _external_sasl() -> tuple[str, dict[str, Any]] | None:
    bootstrap = os.environ.get("SEGSTREAM_TEST_SASL_BOOTSTRAP")
    user = os.environ.get("SEGSTREAM_TEST_SASL_USERNAME")
    password = os.environ.get("SEGSTREAM_TEST_SASL_PASSWORD")
    if not (bootstrap and user and password):
        return None
    sec: dict[str, Any] = {
        "protocol": "SASL_SSL",
        "username": user,
        "password": password,
        "sasl_mechanism": os.environ.get("SEGSTREAM_TEST_SASL_MECHANISM", "SCRAM-SHA-512"),
    }
    if os.environ.get("SEGSTREAM_TEST_SASL_CA_FILE"):
        sec["ssl_ca_file"] = os.environ["SEGSTREAM_TEST_SASL_CA_FILE"]
    return bootstrap, sec


def test_worker_monitor_simulator_over_sasl_ssl_on_a_real_cluster(topic_prefix, tmp_path):
    target = _external_sasl()
    if target is None:
        pytest.skip(
            "the embedded broker (Tansu 0.6.0) stores no SCRAM users, so no SASL login "
            "can succeed on it; set SEGSTREAM_TEST_SASL_BOOTSTRAP, _USERNAME and "
            "_PASSWORD to run this against a SASL_SSL cluster"
        )
    bootstrap, security = target
    run_pipeline(secured_settings(bootstrap, security, topic_prefix, tmp_path), security, tmp_path)
