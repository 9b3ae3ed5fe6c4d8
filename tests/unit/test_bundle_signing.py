"""Signed bundles: Ed25519 over the canonical manifest; refused before any component is read."""

from __future__ import annotations

import base64
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import segstream.services.worker.reload as reload_mod
from segstream.cli import main
from segstream.services.monitor.references import ReferenceCache
from segstream.services.worker.reload import BundleSource, BundleWatcher
from segstream.shared.bundle import MANIFEST, SIGNATURE, Manifest
from segstream.shared.errors import BundleIntegrityError, BundleSignatureError, SigningKeyError
from segstream.shared.settings import StoreSettings, load_settings
from segstream.shared.signing import (
    generate_key_pair,
    load_private_key,
    load_public_keys,
    sign_bundle_dir,
)
from segstream.shared.store import LATEST, ArtifactStore
from tests.fakes import load_fake_bundle, write_fake_bundle
from tests.unit.test_control_plane import Recorder, SpyStore, _wait

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "flights.yaml"


@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    """Two fresh key pairs: ``good`` (trusted) and ``other`` (not trusted)."""
    out = {}
    for name in ("good", "other"):
        generate_key_pair(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
        out[name] = tmp_path / f"{name}.key"
        out[f"{name}_pub"] = tmp_path / f"{name}.pub"
    return out


def signed_bundle(tmp_path: Path, key_file: Path | None, tag: str = "A") -> Path:
    schema = load_settings(CONFIG).event_schema
    d = write_fake_bundle(tmp_path / "build", schema, model="flights", tag=tag)
    if key_file is not None:
        sign_bundle_dir(d, load_private_key(StoreSettings(signing_key_file=str(key_file))))
    return d


def trusting(tmp_path: Path, *pubs: Path) -> StoreSettings:
    return StoreSettings(
        url=f"file://{tmp_path / 'store'}", trusted_public_keys=tuple(str(p) for p in pubs)
    )


def component_reads(store: SpyStore) -> list[str]:
    return [Path(p).name for p in store.reads if Path(p).name not in (MANIFEST, SIGNATURE, LATEST)]


# --------------------------------------------------------------------------- keys
def test_key_pair_files_and_key_sources(tmp_path, keys, monkeypatch) -> None:
    assert oct(keys["good"].stat().st_mode & 0o777) == "0o600"
    assert keys["good"].read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(SigningKeyError, match="exists already"):
        generate_key_pair(keys["good"], tmp_path / "new.pub")
    # From a file, or as a secret from the environment (never both).
    from_file = load_private_key(StoreSettings(signing_key_file=str(keys["good"])))
    monkeypatch.setenv("SEGSTREAM_STORE__SIGNING_KEY", keys["good"].read_text())
    s = load_settings(CONFIG)
    assert "PRIVATE KEY" not in repr(s.store) and "PRIVATE KEY" not in s.model_dump_json()
    from_env = load_private_key(s.store)
    assert from_env is not None and from_file is not None
    assert from_env.private_bytes_raw() == from_file.private_bytes_raw()
    with pytest.raises(SigningKeyError, match="both set"):
        load_private_key(s.store.model_copy(update={"signing_key_file": str(keys["good"])}))
    for bad, what in (
        (tmp_path / "missing.pub", "cannot read"),
        (keys["good"], "not a PEM public key"),
    ):
        with pytest.raises(SigningKeyError, match=what):
            load_public_keys(StoreSettings(trusted_public_keys=(str(bad),)))
    with pytest.raises(SigningKeyError, match=r"store\.trusted_public_keys"):
        ArtifactStore(trusting(tmp_path, tmp_path / "missing.pub"))  # at start-up


def test_secret_key_never_appears_in_manifest_or_config_output(
    tmp_path, keys, monkeypatch, capsys
) -> None:
    pem = keys["good"].read_text()
    monkeypatch.setenv("SEGSTREAM_STORE__SIGNING_KEY", pem)
    assert main(["config", "--config", str(CONFIG)]) == 0
    out = capsys.readouterr().out
    body = pem.splitlines()[1]
    assert body not in out and '"signing_key": "**********"' in out


# --------------------------------------------------------------------------- verification
def test_signed_bundle_is_accepted_and_signing_stays_optional(tmp_path, keys) -> None:
    d = signed_bundle(tmp_path, keys["good"])
    ArtifactStore(trusting(tmp_path)).publish(d)  # no trusted keys: nothing checked
    store = SpyStore(trusting(tmp_path, keys["other_pub"], keys["good_pub"]))
    assert store.requires_signature
    got = store.fetch("flights", d.name, tmp_path / "cache")
    assert (got / SIGNATURE).read_bytes() == (d / SIGNATURE).read_bytes()
    assert store.promote("flights", d.name) == d.name
    # An unsigned bundle is fine where no key is trusted.
    u = signed_bundle(tmp_path, None, tag="U")
    plain = ArtifactStore(trusting(tmp_path))
    plain.publish(u)
    assert plain.fetch("flights", u.name, tmp_path / "cache2").name == u.name


def _forge(store_dir: Path, src: str, edit: Any, sig_edit: Any = None) -> str:
    """Copy bundle ``src`` under the id of its manifest after ``edit(doc, dir)``; keep (or
    ``sig_edit``) its signature. Returns the new id."""
    root = store_dir / "bundles" / "flights"
    tmp = root / "forging"
    shutil.copytree(root / src, tmp)
    doc = orjson.loads((tmp / MANIFEST).read_bytes())
    edit(doc, tmp)
    doc["bundle_id"] = Manifest.model_validate(doc).compute_id()
    (tmp / MANIFEST).write_bytes(orjson.dumps(doc))
    if sig_edit is not None and (tmp / SIGNATURE).exists():
        sig = orjson.loads((tmp / SIGNATURE).read_bytes())
        sig_edit(sig, doc["bundle_id"])
        (tmp / SIGNATURE).write_bytes(orjson.dumps(sig))
    if doc["bundle_id"] == src:  # an annotation edit keeps the id: replace the bundle
        shutil.rmtree(root / src)
    tmp.rename(root / doc["bundle_id"])
    return doc["bundle_id"]


def _edit_metric(doc: dict[str, Any], d: Path) -> None:
    """An annotation (outside the id): the signature still covers it."""
    doc["metrics"] = {"test": {"mae": 0.01}}


def _edit_config(doc: dict[str, Any], d: Path) -> None:
    doc["config"] = {**doc["config"], "model": "renamed"}


def _edit_component(doc: dict[str, Any], d: Path) -> None:
    import hashlib

    meta = (d / "fake.json").read_bytes().replace(b'"half_width"', b'"half_widtH"')
    (d / "fake.json").write_bytes(meta)
    doc["files"]["fake.json"] = {"sha256": hashlib.sha256(meta).hexdigest(), "bytes": len(meta)}


def _claim(sig: dict[str, Any], bid: str) -> None:
    sig["bundle_id"] = bid


@pytest.mark.parametrize(
    "case",
    [
        "unsigned",
        "wrong_key",
        "tampered_manifest",
        "tampered_config",
        "tampered_component",
        "malformed_signature",
        "signature_of_another_bundle",
    ],
)
def test_bad_signatures_are_refused_before_any_component_is_read(tmp_path, keys, case) -> None:
    key = {"unsigned": None, "wrong_key": keys["other"]}.get(case, keys["good"])
    d = signed_bundle(tmp_path, key)
    ArtifactStore(trusting(tmp_path)).publish(d)
    bid = d.name
    store_dir = tmp_path / "store"
    if case == "tampered_manifest":  # re-hashed (a valid id), signature kept, its id adjusted
        bid = _forge(store_dir, d.name, _edit_metric, _claim)
    elif case == "tampered_component":  # component and manifest consistent again, re-hashed
        bid = _forge(store_dir, d.name, _edit_component, _claim)
    elif case == "tampered_config":  # an identity field: a new id, the old signature claimed
        bid = _forge(store_dir, d.name, _edit_config, _claim)
    elif case == "signature_of_another_bundle":
        bid = _forge(store_dir, d.name, _edit_config)
    elif case == "malformed_signature":
        p = store_dir / "bundles" / "flights" / bid / SIGNATURE
        doc = orjson.loads(p.read_bytes())
        doc["signature"] = base64.b64encode(b"\0" * 64).decode()[:-3] + "!!!"
        p.write_bytes(orjson.dumps(doc))
    want = {
        "unsigned": "not signed",
        "wrong_key": "does not verify",
        "tampered_manifest": "does not verify",
        "tampered_config": "does not verify",
        "tampered_component": "does not verify",
        "malformed_signature": "malformed",
        "signature_of_another_bundle": "signs bundle",
    }
    store = SpyStore(trusting(tmp_path, keys["good_pub"]))
    for call in (
        lambda: store.fetch("flights", bid, tmp_path / "cache"),
        lambda: store.verify("flights", bid),
        lambda: store.promote("flights", bid),
    ):
        with pytest.raises(BundleSignatureError, match=want[case]):
            call()
    assert component_reads(store) == []
    assert not (tmp_path / "cache" / bid).exists()


def test_a_cached_unsigned_copy_is_not_trusted(tmp_path, keys) -> None:
    u = signed_bundle(tmp_path, None, tag="U")
    ArtifactStore(trusting(tmp_path)).publish(u)
    ArtifactStore(trusting(tmp_path)).fetch("flights", u.name, tmp_path / "cache")
    with pytest.raises(BundleSignatureError, match="not signed"):
        ArtifactStore(trusting(tmp_path, keys["good_pub"])).fetch(
            "flights", u.name, tmp_path / "cache"
        )


def test_a_tampered_signed_component_without_rehash_is_an_integrity_error(tmp_path, keys) -> None:
    d = signed_bundle(tmp_path, keys["good"])
    ArtifactStore(trusting(tmp_path)).publish(d)
    f = tmp_path / "store" / "bundles" / "flights" / d.name / "fake.json"
    f.write_bytes(f.read_bytes().replace(b'"tag"', b'"taG"'))
    with pytest.raises(BundleIntegrityError, match=r"fake\.json: sha256 mismatch"):
        ArtifactStore(trusting(tmp_path, keys["good_pub"])).fetch(
            "flights", d.name, tmp_path / "cache"
        )


# --------------------------------------------------------------------------- worker, monitor
def test_worker_refuses_an_unsigned_bundle_with_one_alert(tmp_path, keys, monkeypatch) -> None:
    monkeypatch.setattr(reload_mod, "warm_up", lambda scorer: None)
    schema = load_settings(CONFIG).event_schema
    first = signed_bundle(tmp_path, keys["good"], tag="A")
    ArtifactStore(trusting(tmp_path)).publish(first)
    store = SpyStore(trusting(tmp_path, keys["good_pub"]))
    source = BundleSource(store, "flights", tmp_path / "cache", schema, loader=load_fake_bundle)
    rec = Recorder()
    w = BundleWatcher(source, first.name, poll_s=0.05, failures=rec.failures)
    unsigned = signed_bundle(tmp_path, None, tag="B")
    ArtifactStore(trusting(tmp_path)).publish(unsigned)
    store.reads.clear()
    w.start()
    try:
        _wait(lambda: rec.counts.get("signature", 0) == 1)
        time.sleep(0.4)  # several more polls of the same LATEST: no retry, no second alert
        assert rec.counts == {"signature": 1}
        assert [(a.type, a.bundle_id, a.current_bundle_id) for a in rec.alerts] == [
            ("bundle_rejected", unsigned.name, first.name)
        ]
        assert "not signed" in rec.alerts[0].reason
        assert component_reads(store) == [] and w.take_pending() is None
        signed = signed_bundle(tmp_path, keys["good"], tag="C")
        ArtifactStore(trusting(tmp_path)).publish(signed)
        _wait(lambda: w.current_id == signed.name)
    finally:
        w.stop()
        w.join(5)


def test_monitor_refuses_an_unsigned_bundle_alerts_once_and_retries(tmp_path, keys) -> None:
    u = signed_bundle(tmp_path, None, tag="U")
    ArtifactStore(trusting(tmp_path)).publish(u)
    store = SpyStore(trusting(tmp_path, keys["good_pub"]))
    rec = Recorder()
    cache = ReferenceCache(
        store,
        "flights",
        tmp_path / "mcache",
        retry_s=0.2,
        failures=rec.failures,
        retry_initial_s=0.05,
    )
    for _ in range(20):
        assert cache(u.name) is None
    assert rec.counts == {"signature": 1} and len(rec.alerts) == 1  # backoff: one attempt
    assert rec.alerts[0].type == "bundle_rejected" and component_reads(store) == []
    time.sleep(0.1)
    assert cache(u.name) is None and rec.counts == {"signature": 2}
    assert len(rec.alerts) == 1  # the same cause alerts once
    # Signed later (segstream bundle sign): the next retry loads it.
    ArtifactStore(trusting(tmp_path)).sign(
        "flights", u.name, load_private_key(StoreSettings(signing_key_file=str(keys["good"])))
    )
    time.sleep(0.25)
    got = cache(u.name)
    assert got is not None and got[0].numeric  # the drift reference
    # Ids named by records are checked before anything is fetched.
    n = len(store.reads)
    for bad in ("../../etc", "/abs", "A" * 64, "x"):
        assert cache(bad) is None
    assert len(store.reads) == n and rec.counts["invalid_id"] == 4


# --------------------------------------------------------------------------- CLI
def test_cli_keygen_sign_inspect_promote(tmp_path, capsys) -> None:
    prefix = tmp_path / "k" / "sig"
    prefix.parent.mkdir()
    assert main(["bundle", "keygen", str(prefix)]) == 0
    out = capsys.readouterr().out
    assert f"public_key={prefix}.pub" in out and "key_id=" in out
    u = signed_bundle(tmp_path, None, tag="U")
    ArtifactStore(trusting(tmp_path)).publish(u)
    env = {"SEGSTREAM_STORE__TRUSTED_PUBLIC_KEYS": f'["{prefix}.pub"]'}
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        store_arg = ["--config", str(CONFIG), "--store", f"file://{tmp_path / 'store'}"]
        assert main(["bundle", "inspect", *store_arg, u.name[:10]]) == 0
        assert "signature: unsigned (NOT verified by any trusted key)" in capsys.readouterr().out
        assert main(["bundle", "promote", *store_arg, u.name]) == 2
        assert "not signed" in capsys.readouterr().err
        assert main(["bundle", "promote", *store_arg, "../../etc"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "expected LATEST" in err
        mp.setenv("SEGSTREAM_STORE__SIGNING_KEY_FILE", f"{prefix}.key")
        assert main(["bundle", "sign", *store_arg, u.name]) == 0
        capsys.readouterr()
        assert main(["bundle", "inspect", *store_arg, u.name]) == 0
        assert "(verified by a trusted key)" in capsys.readouterr().out
        assert main(["bundle", "promote", *store_arg, u.name]) == 0
    finally:
        mp.undo()


def test_concurrent_fetches_of_one_bundle_into_one_cache(tmp_path, keys) -> None:
    d = signed_bundle(tmp_path, keys["good"])
    ArtifactStore(trusting(tmp_path)).publish(d)
    store = ArtifactStore(trusting(tmp_path, keys["good_pub"]))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            store.fetch("flights", d.name, tmp_path / "cache")
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=run) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [d.name]
    assert not errors or all("cannot write" in str(e) for e in errors)
