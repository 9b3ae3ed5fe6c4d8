"""The monitor's confluent-kafka loop with fake clients (no broker): each checkpoint flushes
alerts and perf partials, then the changelog, then commits the batch's offsets; a monitor
restored from its changelog on assignment (after a crash: the uncommitted records come again)
raises exactly the alerts of one that never stopped."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from segstream.services.monitor import loop as loop_mod
from segstream.services.monitor.app import MonitorService
from segstream.shared.drift import DriftReference
from segstream.shared.settings import load_settings
from tests.unit.test_monitor_performance import B1, BASE
from tests.unit.test_monitor_scaleout import workload

CONFIG = Path(__file__).resolve().parents[2] / "config" / "flights.yaml"
P = 4  # partitions of test_monitor_scaleout.workload


class Msg:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def error(self) -> None:
        return None


class TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


class FakeProducer:
    def __init__(self, log: list[Any], changelog: list[tuple[int, bytes, bytes | None]]) -> None:
        self.log, self.changelog, self.topic = log, changelog, ""

    def produce(self, topic: str, value: Any, key: Any, partition: int = -1) -> None:
        self.log.append(("produce", topic))
        if topic.endswith("-state-changelog"):
            self.changelog.append((partition, key, value))
        if topic.endswith("-perf-partials"):
            self.partials.append(value)

    def flush(self, timeout: float) -> int:
        self.log.append(("flush",))
        return 0

    def poll(self, timeout: float) -> int:
        return 0


class FakeConsumer:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        self.log.append(("commit", sorted((tp.topic, tp.partition, tp.offset) for tp in offsets)))


def settings() -> Any:
    return load_settings(
        CONFIG,
        {
            "model": "m",
            "topics": {"partitions": P},
            "monitor": {
                "performance_min_count": 20,
                "join_expiry_s": 86_400,
                "lateness_s": 3600,
                "idle_close_s": 60.0,
                "max_future_s": 30 * 86_400.0,
                "tick_s": 1.0,
            },
        },
    )


def service(changelog: list[tuple[int, bytes, bytes | None]], log: list[Any]) -> MonitorService:
    svc = MonitorService(
        settings(), CollectorRegistry(), reference_for={B1: (DriftReference({}, {}), BASE)}.get
    )
    lp = svc.loop
    lp.producer = FakeProducer(log, changelog)
    lp.producer.partials = []
    lp.consumer = FakeConsumer(log)
    lp.ready = True
    lp.assigned = list(range(P))
    return svc


def messages(svc: MonitorService) -> list[Msg]:
    t = svc.settings.topics
    offsets: Counter[tuple[str, int]] = Counter()
    out = []
    for p, kind, rec in workload():
        topic = t.predictions if kind == "p" else t.outcomes
        rec = rec | {"model": "m"} if kind == "p" else rec
        out.append(Msg(topic, p, offsets[(topic, p)], orjson.dumps(rec)))
        offsets[(topic, p)] += 1
    return out


def drive(svc: MonitorService, msgs: list[Msg], now: float) -> None:
    """Micro-batches of 100 with a tick after each; perf partials fed back as partition 0's
    records of the partials topic (the one merging owner)."""
    lp = svc.loop
    for i in range(0, len(msgs), 100):
        lp._process(msgs[i : i + 100], now)
        lp._tick(now)
        feed_partials(svc, now)


def feed_partials(svc: MonitorService, now: float) -> None:
    lp = svc.loop
    while lp.producer.partials:
        recs, lp.producer.partials = lp.producer.partials, []
        base = getattr(lp, "_test_partials_offset", 0)
        lp._process([Msg(lp.partials, 0, base + i, v) for i, v in enumerate(recs)], now)
        lp._test_partials_offset = base + len(recs)


def finish(svc: MonitorService) -> None:
    for now in (2.0, 10_000.0):
        svc.loop._tick(now)
        feed_partials(svc, now)


def instrument(svc: MonitorService) -> None:
    """Record the alert ids the loop produces."""
    svc._sent = []  # type: ignore[attr-defined]
    orig = svc.loop._checkpoint

    def checkpoint(alerts: list[Any], partials: list[Any]) -> None:
        svc._sent += [a.alert_id for a in alerts]  # type: ignore[attr-defined]
        orig(alerts, partials)

    svc.loop._checkpoint = checkpoint  # type: ignore[method-assign]


def test_a_checkpoint_flushes_alerts_then_the_changelog_then_commits() -> None:
    log: list[Any] = []
    changelog: list[Any] = []
    svc = service(changelog, log)
    msgs = messages(svc)[:100]
    svc.loop._process(msgs, 1.0)
    kinds = [e[0] for e in log]
    assert kinds[-1] == "commit" and kinds[-2] == "flush"
    assert all(e == ("produce", svc.loop.changelog) for e in log[:-2])  # no alerts yet
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        last[(m.topic(), m.partition())] = m.offset()
    assert log[-1][1] == sorted((t, p, o + 1) for (t, p), o in last.items())
    # the whole run: every commit comes after a flush of everything produced before it
    finish(svc)
    drive(svc, messages(svc)[100:], 1.0)
    finish(svc)
    pending = False
    for e in log:
        if e[0] == "produce":
            pending = True
        elif e[0] == "flush":
            pending = False
        elif e[0] == "commit":
            assert not pending, "offsets committed before their records were flushed"


def test_a_monitor_restored_on_assignment_raises_exactly_the_alerts_of_one_that_never_stopped(
    monkeypatch,
) -> None:
    log: list[Any] = []
    one_log: list[Any] = []
    one = service([], one_log)
    instrument(one)
    msgs = messages(one)
    drive(one, msgs, 1.0)
    finish(one)
    straight = Counter(one._sent)  # type: ignore[attr-defined]
    assert sum(straight.values()) >= 3 and max(straight.values()) == 1

    changelog: list[tuple[int, bytes, bytes | None]] = []
    a = service(changelog, log)
    instrument(a)
    drive(a, msgs[:1000], 1.0)
    a.loop._process(msgs[1000:1050], 1.0)  # applied and flushed ...
    log.append(("crash",))  # ... but the process dies before that commit counts

    def restore(conf, topic, partitions, apply, timeout_s):
        n = 0
        for p, k, v in changelog:
            if p in partitions:
                assert apply(p, k, v)
                n += 1
        return n, 0

    monkeypatch.setattr(loop_mod, "read_changelog", restore)
    b = service(changelog, log)
    instrument(b)
    b.loop.ready = False
    b.loop._on_assign(None, [TP(b.settings.topics.predictions, p) for p in range(P)])
    assert b.loop.ready and b.loop.assigned == list(range(P))
    assert b.metrics.restored_records._value.get() == len(changelog) > 0
    drive(b, msgs[1000:], 1.0)  # 1000-1049 come again: they were not committed
    finish(b)
    restarted = Counter(a._sent) + Counter(b._sent)  # type: ignore[attr-defined]
    assert restarted == straight  # none lost, none doubled
