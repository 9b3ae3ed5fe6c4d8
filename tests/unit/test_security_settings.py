"""broker.security: validation, environment overrides, what every client receives, and the
masking rule (secrets never appear in a dump, an error message or CLI output)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segstream.shared.errors import ConfigError
from segstream.shared.kafka import client_config, security_config
from segstream.shared.settings import MASK, is_secret_key, load_settings, redact_secrets
from tests.security_helpers import make_pki

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "flights.yaml"
PASSWORD = "sasl-Pw-9c41e7"
S3_SECRET = "s3-Secret-52ab0d"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def sasl_ssl(pki, **extra):
    return {
        "broker": {
            "security": {
                "protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-256",
                "username": "alice",
                "password": PASSWORD,
                "ssl_ca_file": str(pki.ca),
                **extra,
            }
        }
    }


def test_default_is_plaintext_and_adds_nothing():
    s = load_settings(CONFIG)
    assert s.broker.security.protocol == "PLAINTEXT"
    assert security_config(s.broker.security) == {}
    assert client_config(s.broker) == {"bootstrap.servers": s.broker.bootstrap}


def test_sasl_ssl_reaches_librdkafka_with_the_secret_revealed_only_there(pki):
    s = load_settings(
        CONFIG,
        sasl_ssl(
            pki,
            ssl_cert_file=str(pki.client_cert),
            ssl_key_file=str(pki.client_key),
            ssl_key_password=pki.client_key_password,
        ),
    )
    conf = client_config(s.broker, group_id="g")
    assert conf == {
        "bootstrap.servers": s.broker.bootstrap,
        "group.id": "g",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "alice",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(pki.ca),
        "ssl.certificate.location": str(pki.client_cert),
        "ssl.key.location": str(pki.client_key),
        "ssl.key.password": pki.client_key_password,
    }
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.broker)


def test_every_worker_client_gets_the_security_settings(pki):
    from segstream.services.worker.kafka_io import (
        AlertProducer,
        ModelUpdatesFeed,
        consumer_config,
        producer_config,
    )

    s = load_settings(CONFIG, sasl_ssl(pki))
    confs = [
        consumer_config(s),
        producer_config(s, transactional_id="t"),
        AlertProducer(s).conf,
        ModelUpdatesFeed(s).conf,
    ]
    for conf in confs:
        assert (conf["security.protocol"], conf["sasl.password"], conf["ssl.ca.location"]) == (
            "SASL_SSL",
            PASSWORD,
            str(pki.ca),
        )


def test_every_monitor_client_gets_the_security_settings(pki):
    """The monitor's consumer, producer (alerts, partials, changelog) and restore reader."""
    from segstream.services.monitor.loop import consumer_config, producer_config

    s = load_settings(CONFIG, sasl_ssl(pki))
    for conf in (consumer_config(s), producer_config(s)):
        assert (conf["security.protocol"], conf["sasl.password"], conf["ssl.ca.location"]) == (
            "SASL_SSL",
            PASSWORD,
            str(pki.ca),
        )
    # the restore reader is built from the consumer's config (loop.read_changelog)
    assert consumer_config(s)["isolation.level"] == "read_committed"


def test_environment_overrides_every_field(tmp_path, monkeypatch, pki):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.read_text() + "\nbroker:\n  bootstrap: k:9093\n")
    env = {
        "PROTOCOL": "SASL_SSL",
        "SASL_MECHANISM": "SCRAM-SHA-512",
        "USERNAME": "bob",
        "PASSWORD": PASSWORD,
        "SSL_CA_FILE": str(pki.ca),
        "SSL_CERT_FILE": str(pki.client_cert),
        "SSL_KEY_FILE": str(pki.client_key),
        "SSL_KEY_PASSWORD": pki.client_key_password,
    }
    for k, v in env.items():
        monkeypatch.setenv(f"SEGSTREAM_BROKER__SECURITY__{k}", v)
    sec = load_settings(cfg).broker.security
    assert load_settings(cfg).broker.bootstrap == "k:9093"  # the file's section is kept
    assert (
        sec.protocol,
        sec.sasl_mechanism,
        sec.username,
        sec.ssl_ca_file,
        sec.ssl_cert_file,
        sec.ssl_key_file,
    ) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "bob",
        str(pki.ca),
        str(pki.client_cert),
        str(pki.client_key),
    )
    assert sec.password.get_secret_value() == PASSWORD
    assert sec.ssl_key_password.get_secret_value() == pki.client_key_password


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ({"protocol": "SASL_SSL", "username": "a"}, r"needs password"),
        ({"protocol": "SASL_PLAINTEXT"}, r"needs username and password"),
        ({"protocol": "PLAINTEXT", "username": "a", "password": "p"}, r"does not use SASL"),
        (
            {"protocol": "SASL_PLAINTEXT", "username": "a", "password": "p", "ssl_ca_file": "x"},
            r"ssl_ca_file set but protocol SASL_PLAINTEXT does not use TLS",
        ),
        ({"protocol": "SSL", "ssl_cert_file": "c"}, r"ssl_cert_file and ssl_key_file go together"),
        ({"protocol": "SSL", "ssl_key_password": "x"}, r"ssl_key_password set without"),
        ({"protocol": "TLS"}, r"broker\.security\.protocol"),
        (
            {"protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "username": "a", "password": "p"},
            r"broker\.security\.sasl_mechanism",
        ),
        ({"protocl": "SSL"}, r"broker\.security\.protocl': unknown key"),
    ],
)
def test_invalid_security_is_a_config_error_naming_the_key(security, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(CONFIG, {"broker": {"security": security}})
    assert "'p'" not in str(err.value)  # the password of these cases is never echoed


def test_missing_tls_file_names_key_and_file(tmp_path):
    s = load_settings(
        CONFIG,
        {"broker": {"security": {"protocol": "SSL", "ssl_ca_file": str(tmp_path / "nope.pem")}}},
    )
    with pytest.raises(ConfigError, match=r"broker\.security\.ssl_ca_file: .*nope\.pem"):
        client_config(s.broker)


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("sasl.password", "password"),
        ("sasl.username", "username"),
        ("security.protocol", "protocol"),
        ("sasl.mechanisms", "sasl_mechanism"),
        ("ssl.key.password", "ssl_key_password"),
        ("ssl.ca.location", "ssl_ca_file"),
    ],
)
def test_broker_client_refuses_what_security_types(key, field):
    with pytest.raises(
        ConfigError,
        match=rf"'{key}' is not allowed: set "
        rf"broker\.security\.{field}",
    ) as err:
        load_settings(CONFIG, {"broker": {"client": {key: "Hunter2-secret"}}})
    assert "Hunter2-secret" not in str(err.value)


@pytest.mark.parametrize(
    "key",
    [
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.pem",
        "sasl.oauthbearer.config",
    ],
)
def test_broker_client_refuses_other_secrets(key):
    with pytest.raises(ConfigError, match=r"holds a secret and is not allowed") as err:
        load_settings(CONFIG, {"broker": {"client": {key: "Hunter2-secret"}}})
    assert "Hunter2-secret" not in str(err.value)


def test_broker_client_keeps_ordinary_keys():
    s = load_settings(
        CONFIG,
        {"broker": {"client": {"ssl.endpoint.identification.algorithm": "none", "client.id": "x"}}},
    )
    assert client_config(s.broker)["client.id"] == "x"


def test_public_dump_masks_every_secret(pki):
    s = load_settings(
        CONFIG,
        {
            **sasl_ssl(
                pki,
                ssl_cert_file=str(pki.client_cert),
                ssl_key_file=str(pki.client_key),
                ssl_key_password=pki.client_key_password,
            ),
            "store": {"s3_key": "AKIA-key-id", "s3_secret": S3_SECRET},
        },
    )
    d = s.public_dump()
    text = json.dumps(d)
    for secret in (PASSWORD, S3_SECRET, "AKIA-key-id", pki.client_key_password):
        assert secret not in text
    sec = d["broker"]["security"]
    assert (sec["password"], sec["ssl_key_password"], sec["username"]) == (MASK, MASK, "alice")
    assert (d["store"]["s3_secret"], d["store"]["s3_key"]) == (MASK, MASK)
    assert load_settings(CONFIG).public_dump()["broker"]["security"]["password"] is None


def test_redact_secrets_masks_old_manifests_client_passwords():
    old = {
        "broker": {
            "client": {"sasl.password": "pw1", "sasl.username": "u", "ssl.keystore.password": "pw2"}
        },
        "store": {"s3_secret": None},
        "list": [{"password": "pw3"}],
    }
    out = redact_secrets(old)
    assert out == {
        "broker": {
            "client": {"sasl.password": MASK, "sasl.username": "u", "ssl.keystore.password": MASK}
        },
        "store": {"s3_secret": None},
        "list": [{"password": MASK}],
    }
    assert old["broker"]["client"]["sasl.password"] == "pw1"  # a copy


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.text(max_size=20) | st.integers(),
        lambda kids: (
            st.lists(kids, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "password",
                        "sasl.password",
                        "s3_secret",
                        "name",
                        "client",
                        "ssl_key_password",
                        "value",
                        "Token",
                        "x",
                    ]
                ),
                kids,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_redact_secrets_leaves_no_secret_leaf(data):
    def leaves(d, under_secret=False):
        if isinstance(d, dict):
            for k, v in d.items():
                yield from leaves(v, is_secret_key(k))
        elif isinstance(d, list):
            for v in d:
                yield from leaves(v, False)
        else:
            yield d, under_secret

    for value, secret in leaves(redact_secrets(data)):
        if secret:
            assert value in (MASK, None)


def test_segstream_config_prints_secrets_masked(tmp_path, pki):
    env = {
        "SEGSTREAM_BROKER__SECURITY__PROTOCOL": "SASL_SSL",
        "SEGSTREAM_BROKER__SECURITY__USERNAME": "alice",
        "SEGSTREAM_BROKER__SECURITY__PASSWORD": PASSWORD,
        "SEGSTREAM_BROKER__SECURITY__SSL_CA_FILE": str(pki.ca),
        "SEGSTREAM_STORE__S3_SECRET": S3_SECRET,
        "PATH": "/usr/bin:/bin",
    }
    r = subprocess.run(
        [sys.executable, "-m", "segstream", "config", "--config", str(CONFIG)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["broker"]["security"]["password"] == MASK
    assert out["broker"]["security"]["username"] == "alice"
    assert PASSWORD not in r.stdout + r.stderr and S3_SECRET not in r.stdout + r.stderr
    # A secret in broker.client is refused in one line that does not repeat it.
    env2 = {**env, "SEGSTREAM_BROKER__CLIENT": json.dumps({"sasl.password": PASSWORD})}
    r = subprocess.run(
        [sys.executable, "-m", "segstream", "config", "--config", str(CONFIG)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env2,
        timeout=120,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "broker.security.password" in r.stderr
    assert PASSWORD not in r.stderr
