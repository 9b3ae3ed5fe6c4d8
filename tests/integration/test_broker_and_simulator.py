from __future__ import annotations

import collections
import contextlib
import socket

import orjson
import pytest

from segstream.services.simulator.app import run_simulation
from segstream.shared.broker import EmbeddedBroker
from segstream.shared.errors import BrokerError
from segstream.shared.kafka import check_reachable, ensure_topics, topic_partitions
from segstream.shared.settings import BrokerSettings, load_settings
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration


def test_embedded_broker_start_stop():
    with EmbeddedBroker() as b:
        check_reachable(BrokerSettings(bootstrap=b.bootstrap))
        assert b.is_running()
        port = b.port
    assert not b.is_running()
    with pytest.raises(BrokerError, match=str(port)):
        check_reachable(
            BrokerSettings(bootstrap=f"127.0.0.1:{port}", connect_timeout_s=0.5, connect_attempts=2)
        )


def test_embedded_broker_port_taken_is_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} .* already in use"):
            EmbeddedBroker(port=port).start()


def _settings(flights_config, kafka, prefix, **sim):
    return load_settings(
        flights_config,
        {
            "broker": {"bootstrap": kafka.bootstrap},
            "topics": {
                "events": f"{prefix}.events",
                "outcomes": f"{prefix}.outcomes",
                "partitions": 3,
            },
            "simulator": {"rate": 50_000, "start": "2013-09-01", **sim},
        },
    )


def test_simulator_sends_n_valid_events_in_per_key_order(flights_config, kafka, topic_prefix):
    n = 2000
    s = _settings(flights_config, kafka, topic_prefix, limit=n)
    summary = run_simulation(s, progress=False)
    assert summary.events_sent == n and summary.failed == 0
    assert summary.delivered == n + summary.outcomes_sent
    assert topic_partitions(s.broker, s.topics.events) == 3
    msgs = consume_all(kafka.bootstrap, s.topics.events, n)
    assert len(msgs) == n
    recs = [orjson.loads(m.value()) for m in msgs]
    assert all(m.key().decode() == r["event_id"] for m, r in zip(msgs, recs, strict=False))
    assert len({r["event_id"] for r in recs}) == n
    # per partition, events arrive in event-time order (the order they were sent)
    by_part = collections.defaultdict(list)
    for m, r in zip(msgs, recs, strict=False):
        by_part[m.partition()].append((m.offset(), r["event_time"]))
    for rows in by_part.values():
        times = [t for _, t in sorted(rows)]
        assert times == sorted(times)
    outs = consume_all(kafka.bootstrap, s.topics.outcomes, summary.outcomes_sent)
    assert len(outs) == summary.outcomes_sent
    assert {m.key() for m in outs} <= {m.key() for m in msgs}
    # co-partitioning: an outcome lands on the same partition as its event
    part = {m.key(): m.partition() for m in msgs}
    assert all(part[m.key()] == m.partition() for m in outs)


def test_simulator_malformed_fraction_arrives_as_malformed_bytes(
    flights_config, kafka, topic_prefix
):
    n = 1500
    s = _settings(
        flights_config,
        kafka,
        topic_prefix,
        limit=n,
        bad_fraction=0.2,
        outcomes=False,
        huge_event_bytes=50_000,
    )
    summary = run_simulation(s, progress=False)
    assert summary.failed == 0 and summary.events_sent == n
    assert 0.13 * n < summary.malformed_sent < 0.27 * n
    msgs = consume_all(kafka.bootstrap, s.topics.events, n)
    assert len(msgs) == n
    invalid = 0
    for m in msgs:
        try:
            rec = orjson.loads(m.value() or b"")
            ok = (
                isinstance(rec, dict)
                and all(f.name in rec for f in s.event_schema.event_fields if f.required)
                and not any(isinstance(v, dict) for v in rec.values())
                and len(m.value()) < 50_000
            )
        except orjson.JSONDecodeError:
            ok = False
        invalid += not ok
    assert invalid == summary.malformed_sent


def test_ensure_topics_is_idempotent(kafka, topic_prefix):
    b = BrokerSettings(bootstrap=kafka.bootstrap)
    names = [f"{topic_prefix}.a", f"{topic_prefix}.b"]
    assert sorted(ensure_topics(b, names, 2)) == names
    assert ensure_topics(b, names, 2) == []


def test_broker_dies_with_a_killed_parent(tmp_path):
    """A process that started the embedded broker is SIGKILLed: the broker goes too."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "from shared.broker import EmbeddedBroker; import time\n"
        "b = EmbeddedBroker().start(); print(b.pid, b.port, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    )
    pid, _port = (int(x) for x in parent.stdout.readline().split())
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    import os

    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # reap if it became our zombie; otherwise it belongs to init
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the broker outlived its SIGKILLed parent")
