from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import orjson
import pytest

from segstream.shared.bundle import (
    FORMAT_VERSION,
    GAUSSIAN_FORMAT_VERSION,
    MANIFEST,
    load_components,
    verify_bundle_dir,
    write_bundle,
)
from segstream.shared.component import ExportedComponent
from segstream.shared.errors import BundleCompatibilityError, BundleIntegrityError, StoreError
from segstream.shared.settings import StoreSettings
from segstream.shared.store import ArtifactStore


def components(seed: int = 0) -> dict[str, ExportedComponent]:
    rng = np.random.default_rng(seed)
    return {
        "alpha": ExportedComponent(
            "partitioner",
            {"a": rng.normal(size=(5, 3)), "ids": np.arange(4, dtype=np.int32)},
            {"features": ["x", "y"], "k": 4},
        ),
        "beta": ExportedComponent(
            "profiles",
            {"edges": np.linspace(0, 1, 11)},
            {"masses": [0.8]},
            {"classifier.ubj": b"\x00\x01binary"},
        ),
    }


def make(tmp_path: Path, seed: int = 0, **kw) -> Path:
    return write_bundle(
        tmp_path / "local",
        model="m",
        components=components(seed),
        metrics={"test": {"mae": 1.5}},
        **kw,
    )


def test_round_trip_and_content_address(tmp_path):
    d = make(tmp_path)
    loaded = load_components(d)
    assert loaded.manifest.bundle_id == d.name and len(d.name) == 64
    assert loaded.manifest.format_version == GAUSSIAN_FORMAT_VERSION  # no family: format 2
    np.testing.assert_array_equal(loaded["alpha"].arrays["a"], components()["alpha"].arrays["a"])
    assert loaded["alpha"].arrays["ids"].dtype == np.int32
    assert loaded["beta"].blobs["classifier.ubj"] == b"\x00\x01binary"
    assert loaded["alpha"].meta == {"features": ["x", "y"], "k": 4}
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["manifest.json", "alpha.npz", "alpha.json", "beta.npz", "beta.json", "beta.classifier.ubj"]
    )
    # same content, same id: writing again is a no-op
    created = loaded.manifest.created_at
    assert make(tmp_path, created_at=created) == d
    assert make(tmp_path, seed=1, created_at=created) != d


def _tamper_cases(d: Path):
    for f in sorted(p.name for p in d.iterdir()):
        yield f"flip a byte in {f}", f


@pytest.mark.parametrize(
    "name",
    ["alpha.npz", "alpha.json", "beta.npz", "beta.json", "beta.classifier.ubj", "manifest.json"],
)
def test_flipped_byte_in_any_file_is_refused(tmp_path, name):
    d = make(tmp_path)
    p = d / name
    data = bytearray(p.read_bytes())
    i = len(data) // 2
    data[i] = (data[i] + 1) % 256
    p.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=name.replace(".", r"\.")):
        load_components(d)


def test_removed_and_extra_files_are_refused(tmp_path):
    d = make(tmp_path)
    (d / "beta.classifier.ubj").unlink()
    with pytest.raises(BundleIntegrityError, match=r"beta\.classifier\.ubj: file missing"):
        load_components(d)
    d = make(tmp_path, seed=2)
    (d / "evil.py").write_text("import os")
    with pytest.raises(BundleIntegrityError, match=r"evil\.py: file not listed"):
        load_components(d)


@pytest.mark.parametrize(
    "edit",
    [
        lambda doc: doc["data"].update(fingerprint="0" * 64),
        lambda doc: doc["config"].update(seed=7),
        lambda doc: doc["components"]["alpha"].update(kind="profiles"),
        lambda doc: doc.update(model="other"),
    ],
    ids=["data", "config", "components", "model"],
)
def test_edited_manifest_is_refused_even_with_valid_json(tmp_path, edit):
    d = make(tmp_path, data={"fingerprint": "a" * 64}, config={"seed": 1})
    doc = orjson.loads((d / MANIFEST).read_bytes())
    edit(doc)
    (d / MANIFEST).write_bytes(orjson.dumps(doc))
    with pytest.raises(BundleIntegrityError, match="manifest edited"):
        load_components(d)


def test_annotations_are_outside_the_content_address(tmp_path):
    """created_at, timings and metrics describe a run, not the model: the same components,
    config and data give the same id whatever they say; everything else changes the id."""
    import datetime as dt

    base = dict(data={"fingerprint": "a" * 64, "rows": 10}, config={"seed": 1})
    d = make(tmp_path, **base, timings={"fit": 1.0})
    again = write_bundle(
        tmp_path / "other",
        model="m",
        components=components(0),
        metrics={"test": {"mae": 9.9}},
        timings={"fit": 2.5},
        created_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        **base,
    )
    assert again.name == d.name and again.parent != d.parent
    assert (again / MANIFEST).read_bytes() != (d / MANIFEST).read_bytes()
    assert load_components(again).manifest.metrics == {"test": {"mae": 9.9}}
    for changed in (
        dict(base, config={"seed": 2}),
        dict(base, data={"fingerprint": "b" * 64, "rows": 10}),
    ):
        assert make(tmp_path, **changed).name != d.name
    assert make(tmp_path, seed=1, **base).name != d.name
    # an unsigned bundle's annotations are not checked (a signature covers them)
    doc = orjson.loads((d / MANIFEST).read_bytes())
    doc["metrics"]["test"]["mae"] = 0.1
    (d / MANIFEST).write_bytes(orjson.dumps(doc))
    assert load_components(d).manifest.bundle_id == d.name


def test_format_1_bundles_keep_their_id(tmp_path):
    """A format-1 bundle hashed every field but bundle_id; it still verifies, and an edit of
    its metrics is still refused."""
    d = make(tmp_path)
    doc = orjson.loads((d / MANIFEST).read_bytes())
    doc["format_version"] = 1
    from segstream.shared.bundle import Manifest

    m = Manifest.model_validate(doc)
    assert m.identity_json() == m.body_json()
    doc["bundle_id"] = m.compute_id()
    v1 = d.parent / doc["bundle_id"]
    d.rename(v1)
    (v1 / MANIFEST).write_bytes(orjson.dumps(doc))
    assert load_components(v1).manifest.bundle_id == v1.name
    doc["metrics"]["test"]["mae"] = 0.1
    (v1 / MANIFEST).write_bytes(orjson.dumps(doc))
    with pytest.raises(BundleIntegrityError, match="manifest edited"):
        load_components(v1)


def test_newer_format_version_is_refused(tmp_path):
    d = make(tmp_path)
    doc = orjson.loads((d / MANIFEST).read_bytes())
    doc["format_version"] = FORMAT_VERSION + 1
    (d / MANIFEST).write_bytes(orjson.dumps(doc))
    with pytest.raises(BundleCompatibilityError, match="newer"):
        load_components(d)


def test_pickled_array_is_never_loaded(tmp_path):
    """A bundle whose npz holds an object array (needs pickle) is refused, even when the
    manifest was re-hashed to match: object arrays are refused before any pickle is read."""
    import hashlib
    import io

    d = make(tmp_path)
    buf = io.BytesIO()
    np.savez(buf, a=np.array([{"x": 1}], dtype=object), ids=np.arange(4, dtype=np.int32))
    (d / "alpha.npz").write_bytes(buf.getvalue())
    doc = orjson.loads((d / MANIFEST).read_bytes())
    doc["files"]["alpha.npz"] = {
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "bytes": len(buf.getvalue()),
    }
    from segstream.shared.bundle import Manifest

    m = Manifest.model_validate(doc)
    doc["bundle_id"] = m.compute_id()
    (d / MANIFEST).write_bytes(orjson.dumps(doc))
    with pytest.raises(BundleIntegrityError, match=r"alpha\.npz/a\.npy: object arrays"):
        load_components(d)


def test_object_arrays_cannot_be_exported():
    with pytest.raises(TypeError, match="non-object"):
        ExportedComponent("x", {"a": np.array(["a", None], dtype=object)}, {})


def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(StoreSettings(url=f"file://{tmp_path}/store"))


def test_store_publish_list_promote_and_fetch(tmp_path):
    s = store(tmp_path)
    assert s.latest("m") is None and s.list("m") == []
    d1, d2 = make(tmp_path, seed=1), make(tmp_path, seed=2)
    uri1 = s.publish(d1)
    assert uri1.endswith(f"/bundles/m/{d1.name}") and s.latest("m") == d1.name
    s.publish(d2)
    assert s.latest("m") == d2.name
    listed = s.list("m")
    assert [b.bundle_id for b in listed] == [d1.name, d2.name]
    assert [b.is_latest for b in listed] == [False, True]
    assert s.promote("m", d1.name[:10]) == d1.name  # roll back by prefix
    assert s.latest("m") == d1.name
    assert s.publish(d2, promote=False) and s.latest("m") == d1.name  # no-op re-publish
    got = s.fetch("m", d2.name, tmp_path / "cache")
    assert verify_bundle_dir(got).bundle_id == d2.name
    with pytest.raises(StoreError, match="not found"):
        s.promote("m", "ffff")


def test_republishing_a_stored_id_leaves_latest_alone(tmp_path):
    """The same bundle id trained again (other annotations) after a roll-back: no upload, the
    stored manifest and LATEST stay; a model without LATEST gets it."""
    import datetime as dt

    s = store(tmp_path)
    d1, d2 = make(tmp_path, seed=1), make(tmp_path, seed=2)
    s.publish(d1)
    s.publish(d2)
    s.promote("m", d1.name)
    stored = tmp_path / "store" / "bundles" / "m" / d2.name / MANIFEST
    before = stored.read_bytes()
    again = write_bundle(
        tmp_path / "rerun",
        model="m",
        components=components(2),
        metrics={"test": {"mae": 1.4}},
        created_at=dt.datetime(2031, 1, 1, tzinfo=dt.UTC),
    )
    assert again.name == d2.name
    r = s.publish_bundle(again)
    assert (r.uploaded, r.promoted, r.bundle_id) == (False, False, d2.name)
    assert s.latest("m") == d1.name and stored.read_bytes() == before
    (tmp_path / "store" / "bundles" / "m" / "LATEST").unlink()
    r = s.publish_bundle(again)
    assert (r.uploaded, r.promoted) == (False, True) and s.latest("m") == d2.name
    assert s.publish_bundle(make(tmp_path, seed=3)).promoted


def test_store_refuses_tampered_bundle_on_promote(tmp_path):
    s = store(tmp_path)
    d1, d2 = make(tmp_path, seed=1), make(tmp_path, seed=2)
    s.publish(d1)
    s.publish(d2)
    stored = tmp_path / "store" / "bundles" / "m" / d1.name / "alpha.npz"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=r"alpha\.npz"):
        s.promote("m", d1.name)
    assert s.latest("m") == d2.name


def test_failed_publish_leaves_latest(tmp_path):
    s = store(tmp_path)
    d1 = make(tmp_path, seed=1)
    s.publish(d1)
    d2 = make(tmp_path, seed=2)
    (d2 / "alpha.json").write_text("{}")
    with pytest.raises(BundleIntegrityError):
        s.publish(d2)
    assert s.latest("m") == d1.name


def _publish_outcome(store_dir: Path, bundle: Path) -> str:
    """Publish ``bundle`` into ``store_dir``; "published", or the exception as text."""
    try:
        ArtifactStore(StoreSettings(url=f"file://{store_dir}")).publish(bundle)
    except StoreError as exc:
        return f"StoreError: {exc}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "published"


def _as_nobody(fn, *args) -> str:
    """``fn(*args)`` in a forked child that dropped root for uid/gid 65534 (nobody), which
    directory permissions apply to; its string result through a pipe."""
    import os

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, fn(*args).encode())
        except BaseException as exc:
            os.write(w, f"child failed: {exc!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_read_only_store_is_store_error(tmp_path):
    """A store directory the process cannot write is a StoreError naming it. As root (the CI
    user, whom directory permissions do not stop) the publish runs in a child that dropped
    to nobody, in a world-readable directory outside pytest's private tmp."""
    import os
    import tempfile

    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            s = ArtifactStore(StoreSettings(url=f"file://{ro}"))
            with pytest.raises(StoreError, match=str(ro)):
                s.publish(make(tmp_path))
        finally:
            ro.chmod(0o700)
        return
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        base.chmod(0o755)
        bundle = make(base, seed=3)
        for p in [base, *base.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        ro = base / "ro"
        ro.mkdir(mode=0o555)  # owned by root: nobody may read and enter it, not write it
        ro.chmod(0o555)
        rw = base / "rw"
        rw.mkdir()
        os.chown(rw, 65534, 65534)
        # Publish once here first: the child cannot import what is lazily imported from the
        # interpreter under /root (mode 700), so everything is loaded before the fork.
        assert _publish_outcome(base / "warm", bundle) == "published"
        # The same child publishes into a writable store: the failure is the permission.
        assert _as_nobody(_publish_outcome, rw, bundle) == "published"
        got = _as_nobody(_publish_outcome, ro, bundle)
        assert got.startswith("StoreError: ") and str(ro) in got, got


def test_unwritable_store_path_is_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    s = ArtifactStore(StoreSettings(url=f"file://{blocker}/sub"))
    with pytest.raises(StoreError, match="cannot"):
        s.publish(make(tmp_path))


def test_concurrent_publish_leaves_a_valid_latest(tmp_path):
    s1, s2 = store(tmp_path), store(tmp_path)
    bundles = [make(tmp_path, seed=i) for i in range(6)]
    errors: list[BaseException] = []

    def pub(st, ds):
        try:
            for d in ds:
                st.publish(d)
        except BaseException as exc:
            errors.append(exc)

    t1 = threading.Thread(target=pub, args=(s1, bundles[:3]))
    t2 = threading.Thread(target=pub, args=(s2, bundles[3:]))
    t1.start()
    t2.start()
    t1.join()
    t2.join()
    assert not errors
    latest = s1.latest("m")
    assert latest in {bundles[2].name, bundles[5].name}
    s1.verify("m", latest)
    assert len(s1.list("m")) == 6
    assert not list((tmp_path / "store" / "bundles" / "m").glob("LATEST.tmp*"))
