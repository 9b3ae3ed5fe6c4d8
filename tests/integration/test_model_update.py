from __future__ import annotations

import orjson
import pytest

from segstream.shared.settings import load_settings
from segstream.training.pipeline import train
from tests.kafka_helpers import consume_all
from tests.train_helpers import january_parquet, small_config

pytestmark = pytest.mark.integration


def test_publish_sends_model_update_event(kafka, topic_prefix, flights_df, tmp_path, monkeypatch):
    from segstream.shared.signing import generate_key_pair
    from segstream.shared.store import ArtifactStore

    generate_key_pair(tmp_path / "k.key", tmp_path / "k.pub")
    monkeypatch.setenv("SEGSTREAM_STORE__SIGNING_KEY", (tmp_path / "k.key").read_text())
    cfg = small_config(
        tmp_path,
        tmp_path / "store",
        broker={"bootstrap": kafka.bootstrap},
        topics={"model_updates": f"{topic_prefix}.model-updates"},
    )
    s = load_settings(cfg)
    r = train(
        s,
        data_path=str(january_parquet(flights_df, tmp_path)),
        progress=False,
        work_dir=str(tmp_path / "w"),
        report_dir=str(tmp_path / "r"),
    )
    assert r.update_sent
    # The trainer signed the bundle: a store trusting the key verifies it; the key is in
    # no file of the bundle.
    trusted = ArtifactStore(
        s.store.model_copy(
            update={"signing_key": None, "trusted_public_keys": (str(tmp_path / "k.pub"),)}
        )
    )
    assert trusted.verify("flights", r.manifest.bundle_id).bundle_id == r.manifest.bundle_id
    secret_line = (tmp_path / "k.key").read_text().splitlines()[1].encode()
    bundle_dir = tmp_path / "store" / "bundles" / "flights" / r.manifest.bundle_id
    assert (bundle_dir / "manifest.sig").is_file()
    assert all(secret_line not in f.read_bytes() for f in bundle_dir.iterdir())
    msgs = consume_all(kafka.bootstrap, s.topics.model_updates, 1)
    assert len(msgs) == 1
    doc = orjson.loads(msgs[0].value())
    assert doc["bundle_id"] == r.manifest.bundle_id and doc["model"] == "flights"
    assert doc["uri"] == r.uri and doc["created_at"].startswith("20")


def test_hostile_model_updates_against_a_running_worker(kafka, topic_prefix, tmp_path):
    """Records on the model-updates topic are hints only: traversal, absolute, unknown and
    older ids and malformed JSON never choose the bundle, nothing outside the store and the
    cache is written, the watcher survives, and a hint makes the worker read LATEST at once."""
    import time

    from confluent_kafka import Producer

    from tests.integration.test_worker import _setup, _ThreadWorker, _wait_for
    from tests.integration.worker_helpers import publish_fake
    from tests.unit.test_control_plane import hostile_updates, listing, outside, update

    s = _setup(kafka, topic_prefix, tmp_path, reload_poll_s=3600.0)
    old = publish_fake(s, tmp_path, tag="OLD")
    cur = publish_fake(s, tmp_path, tag="CUR")
    w = _ThreadWorker(s)
    p = Producer({"bootstrap.servers": kafka.bootstrap})

    def send(*values):
        for v in values:
            p.produce(s.topics.model_updates, v, b"flights")
        assert p.flush(10) == 0

    failures = "segstream_bundle_reload_failures_total"
    invalid = {"reason": "invalid_update"}
    try:
        _wait_for(
            lambda: w.sample("segstream_worker_bundle_reloads_total", {"result": "loaded"}) == 1,
            120,
            "the first bundle",
        )
        # The feed joins its group after the first load: send junk until it is heard.
        deadline = time.monotonic() + 60
        while w.sample(failures, invalid) == 0:
            assert time.monotonic() < deadline, "the model-updates feed never read a record"
            send(b"{canary")
            time.sleep(0.5)
        time.sleep(1.0)
        before_n = w.sample(failures, invalid)
        before = listing(tmp_path)
        values = hostile_updates(old)
        send(*values)
        _wait_for(
            lambda: w.sample(failures, invalid) == before_n + len(values) - 2,
            30,
            "every hostile record counted",
        )
        time.sleep(1.0)
        assert w.sample("segstream_worker_bundle_reloads_total", {"result": "loaded"}) == 1
        assert w.sample(failures, invalid) == before_n + len(values) - 2
        assert outside(before, listing(tmp_path)) == {}
        assert w.thread.is_alive()
        alerts = [
            orjson.loads(m.value())
            for m in consume_all(kafka.bootstrap, s.topics.alerts, 1, 10, 1.0)
        ]
        assert [(a["type"], a["failure"]) for a in alerts] == [
            ("bundle_reload_failed", "invalid_update")
        ]  # once, not once per record
        # A hint (even one naming the old bundle) makes the worker read LATEST now.
        new = publish_fake(s, tmp_path, tag="NEW")
        send(update(old))
        _wait_for(
            lambda: w.sample("segstream_worker_bundle_reloads_total", {"result": "loaded"}) == 2,
            60,
            "the hinted reload",
        )
        assert sorted(q.name for q in (tmp_path / "cache").iterdir()) == sorted([cur, new])
        assert outside(before, listing(tmp_path), "store", "cache", "build") == {}
    finally:
        w.finish()


def test_worker_start_up_with_a_malformed_latest_is_one_line(kafka, topic_prefix, tmp_path):
    import subprocess
    import sys

    from tests.integration.test_worker import _setup
    from tests.integration.worker_helpers import REPO, publish_fake, write_config

    s = _setup(kafka, topic_prefix, tmp_path)
    publish_fake(s, tmp_path, tag="A")
    (tmp_path / "store" / "bundles" / "flights" / "LATEST").write_bytes(b'{"bundle_id": "..')
    cfg = write_config(s, tmp_path / "w.yaml")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "segstream",
            "worker",
            "--config",
            str(cfg),
            "--loader",
            "tests.fakes:load_fake_bundle",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    want = f"segstream: error: file://{tmp_path / 'store'}/bundles/flights/LATEST: not valid JSON"
    assert errors == [want], r.stderr
    assert "Traceback" not in r.stderr
