"""Small Kafka helpers shared by every service: client configs, topic creation, reachability.

The client settings that make consumer-group joins fast on the embedded broker live here and
nowhere else (:data:`FAST_GROUP_CONFIG`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from segstream.shared.errors import BrokerError
from segstream.shared.settings import BrokerSettings

logger = logging.getLogger(__name__)

#: Group settings with which joins take about a second on Tansu (23 s with librdkafka's
#: defaults; below 1000 ms the group never settles). Harmless on Apache Kafka.
FAST_GROUP_CONFIG: dict[str, Any] = {
    "session.timeout.ms": 3000,
    "heartbeat.interval.ms": 300,
}


def client_config(broker: BrokerSettings, **extra: Any) -> dict[str, Any]:
    """librdkafka config: bootstrap + the configured extra client settings + ``extra``.

    ``extra`` keys use librdkafka names with ``_`` for ``.`` (``group_id`` -> ``group.id``)
    when given as keyword arguments.
    """
    conf: dict[str, Any] = {"bootstrap.servers": broker.bootstrap}
    conf.update(broker.client)
    conf.update({k.replace("_", "."): v for k, v in extra.items()})
    return conf


def check_reachable(broker: BrokerSettings) -> None:
    """Fail fast, with the address in the message, when the broker does not answer.

    Tries ``broker.connect_attempts`` times, ``broker.connect_timeout_s`` each.

    Raises
    ------
    BrokerError
        Naming the bootstrap address.
    """
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0,
                         **{k: v for k, v in broker.client.items() if k.startswith(("security", "sasl", "ssl"))}})
    last: Exception | None = None
    for attempt in range(1, broker.connect_attempts + 1):
        try:
            md = admin.list_topics(timeout=broker.connect_timeout_s)
            if md.brokers:
                return
        except Exception as exc:  # KafkaException: transport failure
            last = exc
        logger.warning("broker %s not reachable (attempt %d/%d)", broker.bootstrap, attempt,
                       broker.connect_attempts)
        if attempt < broker.connect_attempts:
            time.sleep(min(2.0, 0.5 * attempt))
    detail = f": {last}" if last else ""
    raise BrokerError(
        f"cannot reach Kafka at {broker.bootstrap} after {broker.connect_attempts} attempts"
        f"{detail}"
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
    from confluent_kafka import KafkaError, KafkaException  # noqa: PLC0415
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    admin = AdminClient(client_config(broker))
    wanted = list(dict.fromkeys(topics))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    new = [
        NewTopic(t, num_partitions=partitions, replication_factor=replication_factor,
                 config=dict((config or {}).get(t, {})))
        for t in wanted if t not in existing
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
            raise BrokerError(f"cannot create topic {name!r} on {broker.bootstrap}: {exc}") from None
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
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    md = AdminClient(client_config(broker)).list_topics(topic, timeout=timeout_s)
    t = md.topics.get(topic)
    return len(t.partitions) if t is not None and not t.error else 0
