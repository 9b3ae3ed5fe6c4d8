"""Poison events of every kind through two workers on a real broker: every event is either
predicted or dead-lettered, every produced record fits, and no worker stops."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from segstream.services.simulator.app import run_simulation
from segstream.services.simulator.replay import Record, Replay
from segstream.services.worker.app import run_worker
from segstream.services.worker.records import record_bytes
from segstream.shared.kafka import ensure_topics
from segstream.shared.settings import Settings
from tests.fakes import load_fake_bundle
from tests.integration.worker_helpers import publish_fake, worker_settings
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration

POISON = "poison-"
MAX_RECORD = 200_000  # the workers' producer message.max.bytes (broker.client)
DLQ_OF_KIND = {
    "invalid_json": "invalid_json",
    "wrong_type": "wrong_type",
    "missing_field": "missing_field",
    "huge_payload": "too_large",
    "not_object": "not_object",
    "empty": "empty",
    "garbage": "invalid_json",
    "deep": "invalid_json",
    "poison": "scoring_error",
    "huge_key": "too_large",
}


class _Worker:
    def __init__(self, settings: Settings, name: str) -> None:
        self.stop = threading.Event()
        self.registry = CollectorRegistry()
        self.code: int | None = None
        s = settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"instance_id": name})}
        )
        self.thread = threading.Thread(target=self._run, args=(s,), daemon=True)
        self.thread.start()

    def _run(self, settings: Settings) -> None:
        self.code = run_worker(
            settings, stop=self.stop, loader=load_fake_bundle, registry=self.registry
        )

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def finish(self) -> int | None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "worker did not stop"
        return self.code


def _wait_for(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _poisoned_stream(settings: Settings, df: Any) -> list[Record]:
    """The replay of ``df`` (2 % malformed of the simulator's kinds) with more poison mixed
    in: deep nesting, events whose scoring raises, oversized keys, long unknown categories."""
    base = list(
        Replay(
            df,
            settings.event_schema,
            outcomes=False,
            bad_fraction=0.02,
            seed=11,
            huge_bytes=100_000,
        )
    )
    out: list[Record] = []
    good_seen = 0
    for i, r in enumerate(base):
        if r.kind != "event":
            out.append(r)
            continue
        good_seen += 1
        doc = orjson.loads(r.value)
        if good_seen % 400 == 0:  # scoring raises for this event (the bundle's poison)
            doc["event_id"] = POISON + doc["event_id"]
            out.append(
                Record(
                    "events",
                    doc["event_id"].encode(),
                    orjson.dumps(doc),
                    r.sim_time_s,
                    "malformed:poison",
                )
            )
        elif good_seen % 300 == 0:  # nested 3000 levels deep: ~6 KB
            if good_seen % 600 == 0:
                value = orjson.dumps(doc)[:-1] + b',"junk":' + b"[" * 3000 + b"]" * 3000 + b"}"
            else:
                value = b'{"a":' * 1500 + b"1" + b"}" * 1500
            out.append(Record("events", r.key, value, r.sim_time_s, "malformed:deep"))
        elif good_seen % 250 == 0:  # an oversized key, and a value too large to score
            key = b"K" * 300_000 + str(i).encode()
            value = orjson.dumps({**doc, "pad": "x" * 300_000})
            out.append(Record("events", key, value, r.sim_time_s, "malformed:huge_key"))
        elif good_seen % 7 == 0:  # a long unknown route (category values of 3-4 KB)
            doc["origin"] = f"O{i}-" + "o" * 3000
            doc["dest"] = f"D{i}-" + "d" * 1000
            out.append(Record("events", r.key, orjson.dumps(doc), r.sim_time_s, "event"))
        elif good_seen % 333 == 0:  # an oversized key on a valid event: predicted
            out.append(Record("events", b"K" * 150_000 + r.key, r.value, r.sim_time_s, "event"))
        else:
            out.append(r)
    return out


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_poison_of_every_kind_through_two_workers(
    kafka, topic_prefix, tmp_path, flights_df, guarantee
):
    df = flights_df[flights_df["event_time"].dt.month == 9].iloc[:3000].reset_index(drop=True)
    s = worker_settings(
        kafka.bootstrap,
        topic_prefix,
        tmp_path,
        guarantee=guarantee,
        batch_size=500,
        max_failed_share=0.05,
        max_unknown_key_chars=200,
    )
    s = s.model_copy(
        update={
            "broker": s.broker.model_copy(
                update={"client": {**s.broker.client, "message.max.bytes": MAX_RECORD}}
            )
        }
    )
    t = s.topics
    ensure_topics(
        s.broker, [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.model_updates], t.partitions
    )
    publish_fake(s, tmp_path, poison_prefix=POISON)
    recs = _poisoned_stream(s, df)
    kinds = Counter(r.kind.split(":", 1)[-1] for r in recs)
    assert {"poison", "deep", "huge_key"} <= set(kinds) and kinds["event"] > 2000
    workers = [_Worker(s, "a"), _Worker(s, "b")]
    try:
        _wait_for(
            lambda: all(w.sample("segstream_worker_assigned_partitions") > 0 for w in workers),
            60,
            "both workers assigned",
        )
        sim = s.simulator.model_copy(update={"rate": 1e6, "speedup": None})
        summary = run_simulation(
            s.model_copy(update={"simulator": sim}), progress=False, records=recs
        )
        assert summary.failed == 0, summary.line()
        _wait_for(
            lambda: (
                sum(w.sample("segstream_worker_events_consumed_total") for w in workers)
                >= len(recs)
            ),
            120,
            "all events consumed",
        )
        for w in workers:  # no worker stopped, restarted, or judged its bundle broken
            assert w.thread.is_alive() and w.code is None
            assert w.sample("segstream_worker_bundle_broken") == 0
            assert w.sample("segstream_worker_events_consumed_total") > 0
    finally:
        codes = [w.finish() for w in workers]
    assert codes == [0, 0]
    good = [r for r in recs if r.kind == "event"]
    bad = [r for r in recs if r.kind != "event"]
    preds = consume_all(kafka.bootstrap, t.predictions, len(good), 60, 2.0)
    dlq = consume_all(kafka.bootstrap, t.dlq, len(bad), 60, 2.0)
    assert len(preds) + len(dlq) == len(recs)
    pred_ids = Counter(orjson.loads(m.value())["event_id"] for m in preds)
    assert pred_ids == Counter(orjson.loads(r.value)["event_id"] for r in good)
    got = Counter(dict(m.headers())["segstream.dlq.reason"].decode() for m in dlq)
    assert got == Counter(DLQ_OF_KIND[r.kind.split(":", 1)[1]] for r in bad)
    for m in dlq:  # every DLQ copy fits; what was cut is said
        h = dict(m.headers())
        assert record_bytes(m.key(), m.value(), m.headers()) <= MAX_RECORD
        reason = h["segstream.dlq.reason"].decode()
        if reason == "scoring_error":
            assert h["segstream.dlq.exception"] == b"tests.fakes.PoisonError"
            assert orjson.loads(m.value())["event_id"].startswith(POISON)
        if m.key() is not None and m.key().startswith(b"K" * 1000):
            assert int(h["segstream.dlq.key_truncated_from_bytes"]) > 300_000
            assert int(h["segstream.dlq.truncated_from_bytes"]) > 300_000
    stats = consume_all(kafka.bootstrap, t.stats, 1, 30, 2.0)
    assert max(len(m.value()) for m in stats) <= MAX_RECORD
    recs_stats = [orjson.loads(m.value()) for m in stats]
    assert sum(r["n_events"] for r in recs_stats) == len(recs)
    assert sum(r["dlq"].get("scoring_error", 0) for r in recs_stats) == kinds["poison"]
    named = [k for r in recs_stats for k in r["unknown_keys"]]
    assert named and max(map(len, named)) <= 200
    assert int(np.sum([r["unknown_keys_other"] for r in recs_stats])) + sum(
        c for r in recs_stats for c in r["unknown_keys"].values()
    ) >= sum(1 for r in good if b'"origin":"O' in r.value)


def test_a_broken_bundle_stops_the_worker_until_a_good_one_is_promoted(
    kafka, topic_prefix, tmp_path, flights_df
):
    """A bundle that fails on every event: no DLQ flood, /readyz 503, one scoring_failed
    alert; promoting a good bundle resumes from the first unscored event."""
    import urllib.error
    import urllib.request

    from segstream.shared.broker import free_port

    df = flights_df[flights_df["event_time"].dt.month == 9].iloc[:1500].reset_index(drop=True)
    port = free_port()
    s = worker_settings(
        kafka.bootstrap,
        topic_prefix,
        tmp_path,
        batch_size=200,
        metrics_port=port,
        reload_poll_s=0.5,
    )
    t = s.topics
    ensure_topics(
        s.broker, [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.model_updates], t.partitions
    )
    # fails on every flight (ids "2013..."), not on the load-time test batch (ids ""): a
    # bundle that passes its checks and breaks on real traffic
    broken = publish_fake(s, tmp_path, tag="broken", poison_prefix="2013")
    recs = list(Replay(df, s.event_schema, outcomes=False))
    sim = s.simulator.model_copy(update={"rate": 1e6, "speedup": None})
    assert (
        run_simulation(s.model_copy(update={"simulator": sim}), progress=False, records=recs).failed
        == 0
    )

    def readyz() -> int:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code

    w = _Worker(s, "a")
    try:
        _wait_for(lambda: w.sample("segstream_worker_bundle_broken") == 1, 60, "judged broken")
        alerts = consume_all(kafka.bootstrap, t.alerts, 1, 30, 1.0)
        time.sleep(1.0)
        assert readyz() == 503
        assert w.thread.is_alive()
        assert consume_all(kafka.bootstrap, t.dlq, 1, 3, 0.5) == []  # not the whole stream
        assert [orjson.loads(a.value())["type"] for a in alerts] == ["scoring_failed"]
        alert = orjson.loads(alerts[0].value())
        assert alert["bundle_id"] == broken and alert["exception"] == "tests.fakes.PoisonError"
        good = publish_fake(s, tmp_path, tag="good")
        _wait_for(lambda: w.sample("segstream_worker_bundle_broken") == 0, 60, "resumed")
        preds = consume_all(kafka.bootstrap, t.predictions, len(recs), 60, 1.0)
        _wait_for(lambda: readyz() == 200, 20, "ready again")
    finally:
        assert w.finish() == 0
    assert sorted(orjson.loads(m.value())["event_id"] for m in preds) == sorted(
        orjson.loads(r.value)["event_id"] for r in recs
    )
    assert {orjson.loads(m.value())["bundle_id"] for m in preds} == {good}
    assert len(consume_all(kafka.bootstrap, t.alerts, 1, 3, 1.0)) == 1  # once
