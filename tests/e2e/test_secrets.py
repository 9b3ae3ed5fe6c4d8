"""Configured secrets never leave the process: train with a SASL password, a TLS key password
and S3 keys set (from the environment), then search the bundle directory, the report, every
log line (DEBUG), ``segstream config`` and ``segstream bundle inspect --json`` for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segstream.shared.broker import EmbeddedBroker
from segstream.shared.settings import MASK
from tests.security_helpers import make_pki
from tests.train_helpers import january_parquet, small_config

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]

SASL_PASSWORD = "sasl-Secret-8f2b71c0"
S3_KEY = "AKIAS3KEY-4e1d"
S3_SECRET = "s3-Secret-a96c03f2"


def segstream(*args: str, env: dict[str, str], timeout: float = 600):
    return subprocess.run(
        [sys.executable, "-m", "segstream", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_secrets_appear_in_no_bundle_report_log_or_cli_output(flights_df, tmp_path):
    pki = make_pki(tmp_path / "pki", client_key_password="tls-KeyPw-0b7d55e1")
    secrets = (SASL_PASSWORD, pki.client_key_password, S3_KEY, S3_SECRET)
    store, reports, work = tmp_path / "store", tmp_path / "reports", tmp_path / "work"
    with EmbeddedBroker(
        authentication=True, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    ) as broker:
        cfg = small_config(
            tmp_path,
            store,
            broker={
                "bootstrap": broker.bootstrap,
                "connect_timeout_s": 5.0,
                "connect_attempts": 1,
                "security": {
                    "protocol": "SASL_SSL",
                    "sasl_mechanism": "SCRAM-SHA-256",
                    "username": "alice",
                    "ssl_ca_file": str(pki.ca),
                    "ssl_cert_file": str(pki.client_cert),
                    "ssl_key_file": str(pki.client_key),
                },
            },
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SEGSTREAM_BROKER__SECURITY__PASSWORD": SASL_PASSWORD,
            "SEGSTREAM_BROKER__SECURITY__SSL_KEY_PASSWORD": pki.client_key_password,
            "SEGSTREAM_STORE__S3_KEY": S3_KEY,
            "SEGSTREAM_STORE__S3_SECRET": S3_SECRET,
        }
        data = january_parquet(flights_df, tmp_path)
        train = segstream(
            "--log-level",
            "DEBUG",
            "train",
            "--config",
            str(cfg),
            "--data",
            str(data),
            "--quiet",
            "--report-dir",
            str(reports),
            "--work-dir",
            str(work),
            env=env,
        )
    assert train.returncode == 0, train.stderr[-3000:]
    # The announcement producer used the credentials (and the broker refused the login).
    assert "model-update event not sent: Kafka at" in train.stderr
    assert "refused the login of user 'alice' (SASL_SSL, SCRAM-SHA-256)" in train.stderr
    config = segstream("config", "--config", str(cfg), env=env)
    inspect = segstream("bundle", "inspect", "--json", "--config", str(cfg), env=env)
    assert config.returncode == 0 and inspect.returncode == 0, config.stderr + inspect.stderr

    texts = {
        "train stdout": train.stdout,
        "train stderr (DEBUG logs)": train.stderr,
        "segstream config": config.stdout + config.stderr,
        "bundle inspect --json": inspect.stdout + inspect.stderr,
    }
    files = [p for d in (store, reports, work) for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files)
    assert any(p.suffix == ".html" for p in files)
    for p in files:
        texts[str(p)] = p.read_bytes().decode("utf-8", "replace")
    leaks = [
        (where, secret) for where, text in texts.items() for secret in secrets if secret in text
    ]
    assert leaks == []

    # Masked, not dropped: the manifest and the CLI say that a secret is set.
    manifest = json.loads(inspect.stdout)
    sec = manifest["config"]["broker"]["security"]
    assert (sec["password"], sec["ssl_key_password"], sec["username"]) == (MASK, MASK, "alice")
    assert manifest["config"]["store"]["s3_secret"] == MASK
    shown = json.loads(config.stdout)
    assert shown["broker"]["security"]["password"] == MASK
    assert shown["store"]["s3_key"] == MASK
