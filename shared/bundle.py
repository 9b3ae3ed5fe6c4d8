"""Model bundles: one immutable, content-addressed, pickle-free directory per trained model.

Layout of a bundle directory::

    manifest.json                  typed manifest (format_version, bundle_id, files, ...)
    <component>.npz                numeric arrays, loaded with allow_pickle=False
    <component>.json               JSON metadata
    <component>.<blob name>        opaque files in another library's format (XGBoost UBJSON)

``bundle_id`` is the SHA-256 of the canonical JSON of the manifest without its ``bundle_id``
field; the manifest holds the file table (name -> sha256, bytes), so the id covers every file
and every manifest field. :func:`load_bundle` recomputes all of it and refuses a bundle with a
modified, missing or extra file, an edited manifest or a newer format version. Loading never
executes code: JSON, ``np.load(allow_pickle=False)`` and XGBoost's own model format only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from segstream.shared.component import ExportedComponent
from segstream.shared.errors import BundleCompatibilityError, BundleIntegrityError

logger = logging.getLogger(__name__)

#: Version of the on-disk format written by this code. Bundles with a higher version are refused.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    bytes: int


class ComponentEntry(BaseModel):
    """Which files make up one component."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    arrays: str | None = None
    meta: str
    blobs: dict[str, str] = Field(default_factory=dict)


class Manifest(BaseModel):
    """The typed bundle manifest (``manifest.json``; DESIGN.md contract)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    bundle_id: str = ""
    model: str
    created_at: dt.datetime
    config: dict[str, Any] = Field(default_factory=dict)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    data: dict[str, Any] = Field(default_factory=dict)
    components: dict[str, ComponentEntry] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)

    def body_json(self) -> bytes:
        """Canonical JSON of the manifest without ``bundle_id`` (what the id hashes)."""
        d = self.model_dump(mode="json", by_alias=True)
        d.pop("bundle_id", None)
        return orjson.dumps(d, option=orjson.OPT_SORT_KEYS)

    def compute_id(self) -> str:
        return hashlib.sha256(self.body_json()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def build_bundle_files(
    components: Mapping[str, ExportedComponent],
) -> tuple[dict[str, bytes], dict[str, ComponentEntry]]:
    """Serialise components to ``{file name: bytes}`` plus their manifest entries."""
    files: dict[str, bytes] = {}
    entries: dict[str, ComponentEntry] = {}
    for name, comp in components.items():
        if not name.replace("_", "").isalnum():
            raise ValueError(f"component name {name!r} must be alphanumeric/underscore")
        arrays_name = f"{name}.npz" if comp.arrays else None
        if arrays_name:
            files[arrays_name] = _npz_bytes(comp.arrays)
        meta_name = f"{name}.json"
        files[meta_name] = orjson.dumps(comp.meta, option=orjson.OPT_SORT_KEYS
                                        | orjson.OPT_SERIALIZE_NUMPY)
        blobs = {}
        for blob, data in comp.blobs.items():
            fname = f"{name}.{blob}"
            files[fname] = bytes(data)
            blobs[blob] = fname
        entries[name] = ComponentEntry(kind=comp.kind, arrays=arrays_name, meta=meta_name,
                                       blobs=blobs)
    return files, entries


def write_bundle(
    root: str | os.PathLike[str],
    *,
    model: str,
    components: Mapping[str, ExportedComponent],
    config: dict[str, Any] | None = None,
    schema: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    created_at: dt.datetime | None = None,
) -> Path:
    """Write a bundle into ``root/<bundle_id>/`` and return that directory.

    Writing the same content twice is a no-op that returns the existing directory.

    Raises
    ------
    BundleIntegrityError
        When a directory with the same id exists but does not verify.
    """
    files, entries = build_bundle_files(components)
    manifest = Manifest(
        format_version=FORMAT_VERSION, model=model,
        created_at=created_at or dt.datetime.now(dt.UTC),
        config=config or {}, schema=schema or {}, data=data or {}, components=entries,
        metrics=metrics or {}, timings=timings or {},
        files={n: FileEntry(sha256=_sha256(b), bytes=len(b)) for n, b in sorted(files.items())},
    )
    manifest = manifest.model_copy(update={"bundle_id": manifest.compute_id()})
    out = Path(root) / manifest.bundle_id
    if out.exists():
        verify_bundle_dir(out)
        return out
    tmp = Path(root) / f".tmp-{manifest.bundle_id}-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=False)
    for name, content in files.items():
        (tmp / name).write_bytes(content)
    (tmp / MANIFEST).write_bytes(manifest_bytes(manifest))
    tmp.rename(out)
    return out


def manifest_bytes(manifest: Manifest) -> bytes:
    return orjson.dumps(manifest.model_dump(mode="json", by_alias=True),
                        option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """Parse and type-check a manifest; newer formats raise :class:`BundleCompatibilityError`.
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BundleIntegrityError(f"{where}/{MANIFEST}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BundleIntegrityError(f"{where}/{MANIFEST}: not a JSON object")
    version = doc.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise BundleCompatibilityError(
            f"{where}: bundle format_version {version} is newer than this segstream supports "
            f"({FORMAT_VERSION}); upgrade segstream")
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first.get("loc", ()))
        raise BundleIntegrityError(
            f"{where}/{MANIFEST}: invalid manifest at '{key}': {first.get('msg')}") from None
    if manifest.format_version < 1:
        raise BundleIntegrityError(f"{where}: invalid format_version {manifest.format_version}")
    return manifest


def verify_files(manifest: Manifest, files: Mapping[str, bytes], where: str) -> None:
    """Check ids and the file table against ``files`` (all files but the manifest).

    Raises
    ------
    BundleIntegrityError
        Naming the first file (or the manifest) that does not match.
    """
    if manifest.compute_id() != manifest.bundle_id:
        raise BundleIntegrityError(
            f"{where}/{MANIFEST}: content does not match bundle_id {manifest.bundle_id[:12]} "
            "(manifest edited?)")
    extra = sorted(set(files) - set(manifest.files))
    if extra:
        raise BundleIntegrityError(f"{where}/{extra[0]}: file not listed in the manifest")
    for name, entry in manifest.files.items():
        if name not in files:
            raise BundleIntegrityError(f"{where}/{name}: file missing")
        content = files[name]
        if len(content) != entry.bytes or _sha256(content) != entry.sha256:
            raise BundleIntegrityError(f"{where}/{name}: sha256 mismatch (file modified)")
    for name, comp in manifest.components.items():
        for f in [comp.arrays, comp.meta, *comp.blobs.values()]:
            if f is not None and f not in manifest.files:
                raise BundleIntegrityError(
                    f"{where}/{MANIFEST}: component {name!r} names unlisted file {f!r}")


def read_dir_files(path: Path) -> dict[str, bytes]:
    """All regular files of a bundle directory except the manifest (sub-directories refused)."""
    out = {}
    for p in sorted(path.iterdir()):
        if p.name == MANIFEST:
            continue
        if not p.is_file():
            raise BundleIntegrityError(f"{path}/{p.name}: unexpected entry in bundle directory")
        out[p.name] = p.read_bytes()
    return out


def verify_bundle_dir(path: str | os.PathLike[str]) -> Manifest:
    """Verify a bundle directory; return its manifest.

    Raises
    ------
    BundleIntegrityError, BundleCompatibilityError
    """
    p = Path(path)
    mpath = p / MANIFEST
    if not mpath.is_file():
        raise BundleIntegrityError(f"{p}/{MANIFEST}: missing (not a bundle directory?)")
    manifest = parse_manifest(mpath.read_bytes(), str(p))
    verify_files(manifest, read_dir_files(p), str(p))
    return manifest


class LoadedComponents:
    """The verified, decoded parts of a bundle: per component its arrays, meta and blobs."""

    def __init__(self, manifest: Manifest, files: Mapping[str, bytes]) -> None:
        self.manifest = manifest
        self.components: dict[str, ExportedComponent] = {}
        for name, entry in manifest.components.items():
            arrays: dict[str, np.ndarray] = {}
            if entry.arrays:
                with np.load(io.BytesIO(files[entry.arrays]), allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
            meta = orjson.loads(files[entry.meta])
            blobs = {b: files[f] for b, f in entry.blobs.items()}
            self.components[name] = ExportedComponent(entry.kind, arrays, meta, blobs)

    def __getitem__(self, name: str) -> ExportedComponent:
        try:
            return self.components[name]
        except KeyError:
            raise BundleIntegrityError(
                f"bundle {self.manifest.bundle_id[:12]} has no component {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.components


def load_components(path: str | os.PathLike[str]) -> LoadedComponents:
    """Verify a bundle directory and decode its components (no scoring objects yet).

    Raises
    ------
    BundleIntegrityError
        A file is modified, missing or extra, or the manifest was edited (names the file).
    BundleCompatibilityError
        The bundle's format is newer than this code.
    """
    p = Path(path)
    mpath = p / MANIFEST
    if not mpath.is_file():
        raise BundleIntegrityError(f"{p}/{MANIFEST}: missing (not a bundle directory?)")
    manifest = parse_manifest(mpath.read_bytes(), str(p))
    files = read_dir_files(p)
    verify_files(manifest, files, str(p))
    return LoadedComponents(manifest, files)
