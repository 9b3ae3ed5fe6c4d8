"""Small Kafka helpers shared by every service: client configs, topic creation, reachability.

The client settings that make consumer-group joins fast on the embedded broker live here and
nowhere else (:data:`FAST_GROUP_CONFIG`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from segstream.shared.errors import BrokerError, ConfigError
from segstream.shared.settings import BrokerSecuritySettings, BrokerSettings

logger = logging.getLogger(__name__)

#: Group settings with which joins take about a second on Tansu (23 s with librdkafka's
#: defaults; below 1000 ms the group never settles). Harmless on Apache Kafka.
FAST_GROUP_CONFIG: dict[str, Any] = {
    "session.timeout.ms": 3000,
    "heartbeat.interval.ms": 300,
}


def security_config(security: BrokerSecuritySettings) -> dict[str, Any]:
    """librdkafka settings of ``broker.security`` (empty for PLAINTEXT).

    Secrets are revealed here, into the dict handed to the client, and nowhere else: the
    result must not be logged or dumped.

    Raises
    ------
    ConfigError
        A configured TLS file does not exist or is not readable (names the key and file).
    """
    conf: dict[str, Any] = {}
    if security.protocol == "PLAINTEXT":
        return conf
    conf["security.protocol"] = security.protocol
    if security.sasl:
        conf["sasl.mechanism"] = security.sasl_mechanism
        conf["sasl.username"] = security.username
        conf["sasl.password"] = _reveal(security.password)
    files = {
        "ssl_ca_file": "ssl.ca.location",
        "ssl_cert_file": "ssl.certificate.location",
        "ssl_key_file": "ssl.key.location",
    }
    for field, key in files.items():
        path = getattr(security, field)
        if path is not None:
            conf[key] = _readable_file(field, path)
    if security.ssl_key_password is not None:
        conf["ssl.key.password"] = _reveal(security.ssl_key_password)
    return conf


def client_config(broker: BrokerSettings, **extra: Any) -> dict[str, Any]:
    """librdkafka config: bootstrap + ``broker.security`` + the configured extra client
    settings + ``extra``.

    ``extra`` keys use librdkafka names with ``_`` for ``.`` (``group_id`` -> ``group.id``)
    when given as keyword arguments. The result holds secrets: never log or dump it.
    """
    conf: dict[str, Any] = {"bootstrap.servers": broker.bootstrap}
    conf.update(security_config(broker.security))
    conf.update(broker.client)
    conf.update({k.replace("_", "."): v for k, v in extra.items()})
    return conf


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _readable_file(field: str, path: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file() or not os.access(p, os.R_OK):
        raise ConfigError(f"broker.security.{field}: {path} is not a readable file")
    return str(p)


def check_reachable(broker: BrokerSettings) -> None:
    """Fail fast, with the address in the message, when the broker does not answer.

    Tries ``broker.connect_attempts`` times, ``broker.connect_timeout_s`` each. A refused
    login or a failed TLS handshake is not retried: it raises at once (a wrong password does
    not get better by waiting).

    Raises
    ------
    BrokerError
        Naming the bootstrap address; for a refused login the user and mechanism, for a TLS
        failure the TLS settings to check.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    refused: list[Any] = []

    def on_error(err: Any) -> None:
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
            refused.append(err)

    failures = _LastFailure()
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "error_cb": on_error,
        "logger": failures.logger,
        **security_config(broker.security),
        **{k: v for k, v in broker.client.items() if k.startswith(("security", "sasl", "ssl"))},
    }
    try:
        admin = AdminClient(conf)
    except KafkaException as exc:  # e.g. a key that does not open with ssl_key_password
        reason = exc.args[0].str() if exc.args else exc
        raise ConfigError(
            f"broker.security: the Kafka client refused the TLS/SASL settings: "
            f"{reason} (a wrong ssl_key_password, or a file that is not PEM?)"
        ) from None
    last: Exception | None = None
    for attempt in range(1, broker.connect_attempts + 1):
        deadline = time.monotonic() + broker.connect_timeout_s
        while True:
            try:
                md = admin.list_topics(timeout=min(0.25, broker.connect_timeout_s))
                if md.brokers:
                    return
            except Exception as exc:  # KafkaException: transport failure
                last = exc
            admin.poll(0)  # serves error_cb
            if refused:
                raise BrokerError(_refusal_message(broker, refused[0]))
            if time.monotonic() >= deadline:
                break
        logger.warning(
            "broker %s not reachable (attempt %d/%d)",
            broker.bootstrap,
            attempt,
            broker.connect_attempts,
        )
        if attempt < broker.connect_attempts:
            time.sleep(min(2.0, 0.5 * attempt))
    detail = f": {failures.last}" if failures.last else (f": {last}" if last else "")
    hint = ""
    if broker.security.protocol != "PLAINTEXT":
        hint = (
            f"; is broker.security.protocol {broker.security.protocol} what the listener "
            "speaks (and, for SSL with client certificates, are ssl_cert_file and "
            "ssl_key_file set)?"
        )
    raise BrokerError(
        f"cannot reach Kafka at {broker.bootstrap} after {broker.connect_attempts} attempts"
        f"{detail}{hint}"
    )


class _LastFailure(logging.Handler):
    """Keeps the last connection-failure line librdkafka logs (``FAIL``): the reason a broker
    cannot be reached (``SSL connection closed by peer``, ``Connection refused``) that no
    error callback carries."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last: str | None = None
        # A private logger object (not in the logging registry): nothing reaches the root.
        self.logger = logging.Logger("segstream.kafka.reachability")
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("FAIL"):
            self.last = " ".join(msg.split("]: ", 1)[-1].split())


def _refusal_message(broker: BrokerSettings, err: Any) -> str:
    """One line for a login refused or a TLS handshake failed (librdkafka's reason kept)."""
    from confluent_kafka import KafkaError

    sec = broker.security
    reason = " ".join(str(err.str()).split())
    if err.code() == KafkaError._AUTHENTICATION:
        return (
            f"Kafka at {broker.bootstrap} refused the login of user {sec.username!r} "
            f"({sec.protocol}, {sec.sasl_mechanism}): {reason}; check "
            "broker.security.username, password (SEGSTREAM_BROKER__SECURITY__PASSWORD) "
            "and sasl_mechanism"
        )
    return (
        f"TLS with Kafka at {broker.bootstrap} failed ({sec.protocol}): {reason}; check "
        "broker.security.protocol, ssl_ca_file, ssl_cert_file and ssl_key_file"
    )


def ensure_topics(
    broker: BrokerSettings,
    topics: Iterable[str],
    partitions: int,
    replication_factor: int = 1,
    config: Mapping[str, Mapping[str, str]] | None = None,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Existing topics are left as they are (their partition count is not changed).

    Raises
    ------
    BrokerError
        When a creation fails for another reason than "already exists".
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(broker))
    wanted = list(dict.fromkeys(topics))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    new = [
        NewTopic(
            t,
            num_partitions=partitions,
            replication_factor=replication_factor,
            config=dict((config or {}).get(t, {})),
        )
        for t in wanted
        if t not in existing
    ]
    created: list[str] = []
    if not new:
        return created
    for name, fut in admin.create_topics(new, operation_timeout=timeout_s).items():
        try:
            fut.result(timeout_s)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if getattr(err, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BrokerError(
                f"cannot create topic {name!r} on {broker.bootstrap}: {exc}"
            ) from None
    # Wait until the metadata shows the new topics with their leaders.
    deadline = time.monotonic() + timeout_s
    while created and time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout_s).topics
        if all(t in md and md[t].partitions and not md[t].error for t in created):
            break
        time.sleep(0.05)
    logger.info("created topics %s", created)
    return created


def topic_partitions(broker: BrokerSettings, topic: str, timeout_s: float = 10.0) -> int:
    """Number of partitions of ``topic`` (0 when it does not exist)."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient(client_config(broker)).list_topics(topic, timeout=timeout_s)
    t = md.topics.get(topic)
    return len(t.partitions) if t is not None and not t.error else 0
