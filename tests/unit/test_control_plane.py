"""The control plane: bundle ids, LATEST, bounded fetches, the cache, and the bundle watcher
under hostile model-update records (no broker: the feed is a list of raw record values)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import segstream.services.worker.reload as reload_mod
from segstream.services.worker.reload import BundleSource, BundleWatcher, load_initial
from segstream.shared.alerts import Alert
from segstream.shared.bundle import (
    MANIFEST,
    Manifest,
    check_bundle_id,
    is_bundle_id,
    load_npz,
    parse_manifest,
)
from segstream.shared.errors import BundleIdError, BundleIntegrityError, LatestError, StoreError
from segstream.shared.reloads import Backoff, ReloadFailures
from segstream.shared.settings import Settings, load_settings
from segstream.shared.store import (
    LATEST,
    RELOAD_FAILURE_REASONS,
    ArtifactStore,
    ModelUpdate,
    encode_model_update,
)
from tests.fakes import load_fake_bundle, write_fake_bundle

REPO = Path(__file__).resolve().parents[2]
HOSTILE_IDS = [
    "../../..",
    "../" * 10 + "etc/passwd",
    "/etc",
    "/tmp/x",
    "",
    ".",
    "..",
    "a" * 63,
    "a" * 65,
    "A" * 64,
    "g" * 64,
    "a" * 64 + "\n",
    "a" * 64 + "/..",
    "s3://other-bucket/x",
    "a" * 32 + "/" + "a" * 31,
]


# --------------------------------------------------------------------------- helpers
def listing(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (files with their content, directories and links as None)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = None
        for n in filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = None if os.path.islink(p) else Path(p).read_bytes()
    return out


def outside(before: dict[str, Any], after: dict[str, Any], *allowed: str) -> dict[str, Any]:
    """Entries that changed and are not under one of ``allowed`` (relative prefixes)."""
    keys = set(before) | set(after)
    return {
        k: after.get(k)
        for k in keys
        if before.get(k) != after.get(k)
        and not any(k == a or k.startswith(a + os.sep) for a in allowed)
    }


@pytest.fixture
def settings(tmp_path) -> Settings:
    return load_settings(
        REPO / "config" / "flights.yaml", {"store": {"url": f"file://{tmp_path / 'store'}"}}
    )


@pytest.fixture
def no_warm_up(monkeypatch):
    """Skip the numba warm-up of loaded scorers (25 s of JIT; not what is tested here)."""
    monkeypatch.setattr(reload_mod, "warm_up", lambda scorer: None)


def publish(settings: Settings, tmp: Path, tag: str, promote: bool = True) -> str:
    d = write_fake_bundle(tmp / "build", settings.event_schema, model=settings.model, tag=tag)
    ArtifactStore(settings.store).publish(d, promote=promote)
    return d.name


class SpyStore(ArtifactStore):
    """An ArtifactStore that records every path it reads."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.reads: list[str] = []
        self.fail_reads: BaseException | None = None

    def _read(self, path: str, limit: int | None = None) -> bytes:
        self.reads.append(path)
        if self.fail_reads is not None:
            raise self.fail_reads
        return super()._read(path, limit)


def is_ref_prefix(s: str) -> bool:
    return 0 < len(s) <= 64 and all(c in "0123456789abcdef" for c in s)


# --------------------------------------------------------------------------- bundle ids
@given(st.text(max_size=80))
def test_a_bundle_id_is_exactly_64_lowercase_hex_characters(s: str) -> None:
    valid = len(s) == 64 and all(c in "0123456789abcdef" for c in s)
    assert is_bundle_id(s) is valid
    if valid:
        assert check_bundle_id(s, "here") == s
    else:
        with pytest.raises(BundleIdError, match="here: bundle id"):
            check_bundle_id(s, "here")


@pytest.mark.parametrize("bad", [*HOSTILE_IDS, None, 7, ["a" * 64]])
def test_store_refuses_hostile_ids_before_any_path_is_built(tmp_path, settings, bad) -> None:
    bid = publish(settings, tmp_path, "A")
    store = SpyStore(settings.store)
    before = listing(tmp_path)
    for call in (
        lambda: store.fetch("flights", bad, tmp_path / "cache"),
        lambda: store.verify("flights", bad),
        lambda: store.read_manifest("flights", bad),
        lambda: store.uri("flights", bad),
    ):
        with pytest.raises(BundleIdError):
            call()
    if not (isinstance(bad, str) and is_ref_prefix(bad)):  # "a" * 63 is a valid prefix
        with pytest.raises(BundleIdError, match="expected LATEST"):
            store.promote("flights", bad)
    assert store.reads == [] and listing(tmp_path) == before
    assert store.latest("flights") == bid


def test_model_names_cannot_walk_out_of_the_store(tmp_path, settings) -> None:
    from segstream.shared.errors import ConfigError

    store = ArtifactStore(settings.store)
    for model in ("..", "../x", "/abs", "a/b", ""):
        with pytest.raises(ConfigError, match="model"):
            store.latest(model)


# --------------------------------------------------------------------------- LATEST
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"bundle": "x"}',
        b'{"bundle_id": "../../etc"}',
        b'{"bundle_id": 12}',
        b'{"bundle_id": "' + b"A" * 64 + b'"}',
        b'{"bundle_id": "' + b"a" * 64 + b'", "pad": "' + b"x" * 5000 + b'"}',
    ],
)
def test_malformed_latest_is_a_named_error_and_promote_repairs_it(
    tmp_path, settings, content
) -> None:
    store = ArtifactStore(settings.store)
    bid = publish(settings, tmp_path, "A")
    latest = tmp_path / "store" / "bundles" / "flights" / LATEST
    latest.write_bytes(content)
    with pytest.raises(LatestError, match="bundles/flights/LATEST"):
        store.latest("flights")
    rows = store.list("flights")  # listing still works (nothing marked latest) ...
    assert [(r.bundle_id, r.is_latest) for r in rows] == [(bid, False)]
    assert store.promote("flights", bid[:10]) == bid  # ... so promote can repair LATEST
    assert store.latest("flights") == bid


# --------------------------------------------------------------------------- fetch
def _rehash(doc: dict[str, Any]) -> dict[str, Any]:
    doc["bundle_id"] = Manifest.model_validate(doc).compute_id()
    return doc


def test_fetch_checks_the_manifest_id_before_reading_any_component(tmp_path, settings) -> None:
    a = publish(settings, tmp_path, "A")
    b = publish(settings, tmp_path, "B", promote=False)
    root = tmp_path / "store" / "bundles" / "flights"
    # Bundle B's directory now holds A's files: a valid bundle, but not the one asked for.
    for f in (root / b).iterdir():
        f.unlink()
    for f in (root / a).iterdir():
        (root / b / f.name).write_bytes(f.read_bytes())
    store = SpyStore(settings.store)
    with pytest.raises(BundleIntegrityError, match="not the one asked for"):
        store.fetch("flights", b, tmp_path / "cache")
    assert [Path(p).name for p in store.reads] == [MANIFEST]
    assert not (tmp_path / "cache" / b).exists()
    assert store.fetch("flights", a, tmp_path / "cache").name == a


def test_manifest_file_names_and_sizes_are_checked_before_anything_is_read(
    tmp_path, settings
) -> None:
    from segstream.shared.bundle import MAX_FILE_BYTES

    a = publish(settings, tmp_path, "A")
    doc = orjson.loads((tmp_path / "store" / "bundles" / "flights" / a / MANIFEST).read_bytes())
    for files in (
        {"../../outside.json": {"sha256": "0" * 64, "bytes": 1}},
        {"/etc/passwd": {"sha256": "0" * 64, "bytes": 1}},
        {".hidden": {"sha256": "0" * 64, "bytes": 1}},
        {"fake.json": {"sha256": "0" * 64, "bytes": MAX_FILE_BYTES + 1}},
    ):
        bad = _rehash({**doc, "files": {**doc["files"], **files}})
        with pytest.raises(BundleIntegrityError, match=r"file name|declared size"):
            parse_manifest(orjson.dumps(bad), "x")
    with pytest.raises(BundleIntegrityError, match="more than the limit"):
        parse_manifest(b" " * (16 << 20) + b"{}", "x")


def test_npz_members_are_bounded_before_decompression() -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, z=np.zeros(1_000_000))  # 8 MB of zeros in a few KB
    data = buf.getvalue()
    assert len(data) < 100_000
    with pytest.raises(BundleIntegrityError, match="decompress to 8,000,128 bytes"):
        load_npz(data, "bomb.npz", limit=1_000_000)
    assert load_npz(data, "ok.npz")["z"].shape == (1_000_000,)
    # A header that declares far more than the member holds is refused before allocation.
    npy = io.BytesIO()
    np.lib.format.write_array(npy, np.zeros(4))
    raw = npy.getvalue().replace(b"(4,)", b"(10000000000000,)".ljust(4))
    forged = io.BytesIO()
    with zipfile.ZipFile(forged, "w") as zf:
        zf.writestr("huge.npy", raw)
    with pytest.raises(BundleIntegrityError, match=r"huge\.npy: its header declares"):
        load_npz(forged.getvalue(), "forged.npz")
    with pytest.raises(BundleIntegrityError, match=r"not an \.npz"):
        load_npz(b"PK\x03\x04 not a zip", "junk.npz")


def test_the_cache_is_never_replaced_outside_its_root(tmp_path, settings) -> None:
    a = publish(settings, tmp_path, "A")
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_bytes(b"keep me")
    (cache / a).symlink_to(victim, target_is_directory=True)  # a link planted in the cache
    store = ArtifactStore(settings.store)
    got = store.fetch("flights", a, cache)
    assert got == cache / a and not got.is_symlink() and (got / MANIFEST).is_file()
    assert listing(victim) == {"precious": b"keep me"}
    # A corrupt cached copy is replaced in place; no temporary directory is left behind.
    (got / "fake.json").write_bytes(b"{}")
    assert store.fetch("flights", a, cache) == got
    assert sorted(p.name for p in cache.iterdir()) == [a]
    assert (
        hashlib.sha256((got / "fake.json").read_bytes()).hexdigest()
        == Manifest.model_validate_json((got / MANIFEST).read_bytes()).files["fake.json"].sha256
    )


# --------------------------------------------------------------------------- watcher
class ListFeed:
    """An UpdateFeed over a list of raw record values (thread-safe)."""

    topic = "t.model-updates"

    def __init__(self) -> None:
        self.values: list[bytes | None] = []
        self.lock = threading.Lock()
        self.closed = False

    def put(self, *values: bytes | None) -> None:
        with self.lock:
            self.values.extend(values)

    def poll_updates(self, timeout_s: float) -> list[bytes | None]:
        with self.lock:
            out, self.values = self.values, []
        if not out:
            time.sleep(min(timeout_s, 0.02))
        return out

    def close(self) -> None:
        self.closed = True


class Recorder:
    """Counts (per reason) and alerts of a ReloadFailures."""

    def __init__(self, model: str = "flights") -> None:
        self.counts: dict[str, int] = {}
        self.alerts: list[Alert] = []
        self.failures = ReloadFailures(model, count=self.count, alert=self.alerts.append)

    def count(self, reason: str) -> None:
        assert reason in RELOAD_FAILURE_REASONS
        self.counts[reason] = self.counts.get(reason, 0) + 1


def _wait(pred, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def update(bid: Any, model: str = "flights") -> bytes:
    return orjson.dumps(
        {"model": model, "bundle_id": bid, "uri": "file:///x", "created_at": "2024-01-01T00:00:00Z"}
    )


def hostile_updates(old: str) -> list[bytes | None]:
    deep = b'{"model": "flights", "bundle_id": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    return [
        *(update(h) for h in HOSTILE_IDS),
        update(None),
        update(12),
        update("a" * 64),
        b"{not json",
        b"",
        None,
        b"[]",
        b'"flights"',
        deep,
        orjson.dumps({"model": "flights"}),
        b'{"model": "flights", "bundle_id": "' + b"a" * 64 + b'", "pad": "' + b"x" * 20_000 + b'"}',
        update(old),
    ]  # an older, valid bundle: never loaded from a record


def test_hostile_model_updates_never_choose_the_bundle(tmp_path, settings, no_warm_up) -> None:
    old = publish(settings, tmp_path, "OLD")
    cur = publish(settings, tmp_path, "CUR")
    store = SpyStore(settings.store)
    source = BundleSource(
        store, "flights", tmp_path / "cache", settings.event_schema, loader=load_fake_bundle
    )
    feed, rec = ListFeed(), Recorder()
    w = BundleWatcher(
        source, cur, poll_s=3600.0, feed=feed, failures=rec.failures, hint_min_interval_s=0.0
    )
    before = listing(tmp_path)
    w.start()
    try:
        values = hostile_updates(old)
        feed.put(*values)
        _wait(lambda: not feed.values and w.iterations > 3)
        time.sleep(0.2)
        assert w.is_alive() and w.take_pending() is None and w.current_id == cur
        # Every record was either refused (counted) or, for a valid one, a hint to read LATEST;
        # only LATEST was read, never a bundle named by a record.
        assert rec.counts == {"invalid_update": len(values) - 2}  # two were valid hints
        assert {Path(p).name for p in store.reads} == {LATEST}
        assert [a.type for a in rec.alerts] == ["bundle_reload_failed"]
        assert rec.alerts[0].failure == "invalid_update"
        assert outside(before, listing(tmp_path)) == {}  # nothing written, not even the cache
        # A hint re-reads LATEST at once (poll_s is an hour): the bundle LATEST names loads,
        # whatever id the record carries.
        new = publish(settings, tmp_path, "NEW")
        feed.put(update(old))
        _wait(lambda: w.current_id == new)
        scorer = w.take_pending()
        assert scorer is not None and scorer.bundle_id == new
        assert outside(before, listing(tmp_path), "store", "cache", "build") == {}
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [new]
    finally:
        w.stop()
        w.join(5)
    assert not w.is_alive() and feed.closed


def test_model_updates_of_other_models_are_ignored(tmp_path, settings, no_warm_up) -> None:
    cur = publish(settings, tmp_path, "CUR")
    store = SpyStore(settings.store)
    source = BundleSource(
        store, "flights", tmp_path / "cache", settings.event_schema, loader=load_fake_bundle
    )
    feed, rec = ListFeed(), Recorder()
    w = BundleWatcher(source, cur, poll_s=3600.0, feed=feed, failures=rec.failures)
    feed.put(update("b" * 64, model="other"))
    w.step()
    w.step()
    assert store.reads == [] and rec.counts == {}


def test_malformed_latest_at_runtime_is_counted_alerted_once_and_retried(
    tmp_path, settings, no_warm_up
) -> None:
    cur = publish(settings, tmp_path, "CUR")
    store = ArtifactStore(settings.store)
    source = BundleSource(
        store, "flights", tmp_path / "cache", settings.event_schema, loader=load_fake_bundle
    )
    rec = Recorder()
    w = BundleWatcher(
        source, cur, poll_s=0.05, feed=ListFeed(), failures=rec.failures, backoff_max_s=0.2
    )  # the feed paces iterations at ~20 ms
    latest = tmp_path / "store" / "bundles" / "flights" / LATEST
    latest.write_bytes(b'{"bundle_id": "../../../etc"}')
    w.start()
    try:
        _wait(lambda: rec.counts.get("latest_malformed", 0) >= 4)
        time.sleep(0.5)
        n = rec.counts["latest_malformed"]
        assert 4 <= n <= 25  # backoff: a handful of reads in ~1 s, not one per iteration
        assert w.iterations > 2 * n
        assert [a.failure for a in rec.alerts] == ["latest_malformed"]  # alerted once
        assert "LATEST" in rec.alerts[0].reason and w.is_alive()
        assert w.take_pending() is None
        new = publish(settings, tmp_path, "NEW")  # LATEST repaired: the new bundle loads
        _wait(lambda: w.current_id == new)
        latest.write_bytes(b"garbage")  # broken again: a new cause, a new alert
        _wait(lambda: len(rec.alerts) == 2)
        assert [a.failure for a in rec.alerts] == ["latest_malformed"] * 2
    finally:
        w.stop()
        w.join(5)


def test_store_outage_and_loader_bugs_never_kill_the_watcher(
    tmp_path, settings, no_warm_up
) -> None:
    cur = publish(settings, tmp_path, "CUR")
    store = SpyStore(settings.store)
    calls = {"n": 0}

    def loader(path: Path):
        calls["n"] += 1
        raise RuntimeError("loader bug")

    source = BundleSource(
        store, "flights", tmp_path / "cache", settings.event_schema, loader=loader
    )
    rec = Recorder()
    w = BundleWatcher(source, cur, poll_s=0.05, failures=rec.failures, backoff_max_s=0.2)
    store.fail_reads = StoreError("artifact store file:///x: cannot read: connection reset")
    w.start()
    try:
        _wait(lambda: rec.counts.get("store_unavailable", 0) >= 3)
        assert [a.failure for a in rec.alerts] == ["store_unavailable"]
        store.fail_reads = None
        bad = publish(settings, tmp_path, "BUG")
        _wait(lambda: rec.counts.get("load_error", 0) == 1)
        time.sleep(0.3)
        assert calls["n"] == 1 and rec.counts["load_error"] == 1  # refused once, not retried
        assert rec.alerts[-1].type == "bundle_rejected"
        assert rec.alerts[-1].bundle_id == bad and "loader bug" in rec.alerts[-1].reason
        assert w.is_alive() and w.current_id == cur
    finally:
        w.stop()
        w.join(5)


def test_an_unexpected_error_in_an_iteration_is_reported_and_the_thread_goes_on(
    tmp_path, settings
) -> None:
    cur = publish(settings, tmp_path, "CUR")
    source = BundleSource(
        ArtifactStore(settings.store),
        "flights",
        tmp_path / "cache",
        settings.event_schema,
        loader=load_fake_bundle,
    )
    rec = Recorder()
    w = BundleWatcher(source, cur, poll_s=0.01, failures=rec.failures, backoff_max_s=0.05)
    boom = {"n": 0}

    def check_latest() -> None:
        boom["n"] += 1
        raise KeyError("unexpected")

    w.check_latest = check_latest  # type: ignore[method-assign]
    w.start()
    try:
        _wait(lambda: boom["n"] >= 3)
        assert w.is_alive() and rec.counts.get("load_error", 0) >= 3
        assert len(rec.alerts) == 1
    finally:
        w.stop()
        w.join(5)


def test_start_up_with_a_malformed_latest_is_one_named_error(tmp_path, settings) -> None:
    publish(settings, tmp_path, "A")
    (tmp_path / "store" / "bundles" / "flights" / LATEST).write_bytes(b"{oops")
    source = BundleSource(
        ArtifactStore(settings.store),
        "flights",
        tmp_path / "cache",
        settings.event_schema,
        loader=load_fake_bundle,
    )
    with pytest.raises(LatestError, match=r"bundles/flights/LATEST: not valid JSON$"):
        load_initial(source, threading.Event(), Recorder().failures)


def test_start_up_waits_out_a_store_outage_with_backoff(tmp_path, settings, no_warm_up) -> None:
    a = publish(settings, tmp_path, "A")
    store = SpyStore(settings.store)
    store.fail_reads = StoreError("artifact store: cannot read: down")
    source = BundleSource(
        store, "flights", tmp_path / "cache", settings.event_schema, loader=load_fake_bundle
    )
    rec, stop, got = Recorder(), threading.Event(), {}
    t = threading.Thread(
        target=lambda: got.update(
            s=load_initial(source, stop, rec.failures, wait_s=0.02, backoff_max_s=0.1)
        )
    )
    t.start()
    _wait(lambda: rec.counts.get("store_unavailable", 0) >= 3)
    store.fail_reads = None
    t.join(10)
    assert got["s"].bundle_id == a and len(rec.alerts) == 1


def test_backoff_doubles_up_to_its_bound() -> None:
    b = Backoff(0.5, 4.0, jitter=0.1)
    delays = [b.next_delay() for _ in range(6)]
    for d, want in zip(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0], strict=True):
        assert want * 0.9 <= d <= want * 1.1


def test_model_update_contract_round_trip() -> None:
    u = ModelUpdate(model="flights", bundle_id="c" * 64, uri="s3://b/x", created_at="t")
    assert orjson.loads(encode_model_update(u)) == {
        "model": "flights",
        "bundle_id": "c" * 64,
        "uri": "s3://b/x",
        "created_at": "t",
    }
