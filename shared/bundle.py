"""Model bundles: one immutable, content-addressed, pickle-free directory per trained model.

Layout of a bundle directory::

    manifest.json                  typed manifest (format_version, bundle_id, files, ...)
    <component>.npz                numeric arrays, loaded with allow_pickle=False
    <component>.json               JSON metadata
    <component>.<blob name>        opaque files in another library's format (XGBoost UBJSON)

``bundle_id`` is the SHA-256 of the canonical JSON of what determines the model
(:meth:`Manifest.identity_json`): the format version, the model name, the resolved config, the
schema, the data description (row counts, time ranges, fingerprint), the component table and
the file table (name -> sha256, bytes), so the id covers every file. The run's *annotations*
(:data:`ANNOTATION_FIELDS`: ``created_at``, ``timings``, ``metrics``) are outside the content
address (format 2 on), so training the same data with the same config twice gives the same
id and re-publishing it is a no-op. Annotations never change what is served (scoring reads
the components only); a signature covers them as well. :func:`load_components` recomputes
the id and the file table and refuses a bundle with a modified, missing or extra file, an
edited identity field or a newer format version. Loading never executes code: JSON, ``.npy``
arrays without pickles and XGBoost's own model format only.

``family`` (``gaussian``, ``binomial`` or ``poisson``: which outcome the segment models
predict) and ``threshold`` (the binomial decision threshold) are identity fields from format 3
on. A ``gaussian`` bundle leaves both out of its manifest and is written as format 2, byte for
byte as before they existed, so its id and its signature do not change and an older reader
still loads it; a ``binomial`` or ``poisson`` bundle is format 3, which an older reader refuses
with "upgrade segstream" instead of misreading it as a linear model.

A bundle may carry ``manifest.sig``, an Ed25519 signature of the whole manifest but its
``bundle_id`` (:meth:`Manifest.body_json`, annotations included;
:mod:`segstream.shared.signing`); it is not part of the content address and not in the file
table.

Everything read from a bundle is bounded before it is parsed (see the ``MAX_*`` limits below):
the manifest's size, each file's size, the bundle's total size and the decompressed size of
each component's arrays, so that a hostile bundle cannot exhaust memory before it is refused.
Bundle ids entering from anywhere are checked by :func:`check_bundle_id` before they build a
path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import math
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from segstream.shared.component import ExportedComponent
from segstream.shared.errors import BundleCompatibilityError, BundleIdError, BundleIntegrityError

logger = logging.getLogger(__name__)

#: Version of the on-disk format written by this code. Bundles with a higher version are refused.
#: 1: the id hashes every manifest field but ``bundle_id``; 2: the id leaves out the
#: :data:`ANNOTATION_FIELDS`; 3: the manifest may carry ``family`` and ``threshold`` (written
#: for ``binomial`` and ``poisson`` bundles only; ``gaussian`` ones are still written as 2).
#: All three are read.
FORMAT_VERSION = 3
#: The format a ``gaussian`` bundle is written in (no ``family`` in its manifest).
GAUSSIAN_FORMAT_VERSION = 2
#: Outcome families of the segment models (``training.regression.family``).
FAMILIES = ("gaussian", "binomial", "poisson")
#: Identity fields left out of the manifest when they hold these defaults (format 2 bundles).
_OMITTED_DEFAULTS: dict[str, Any] = {"family": "gaussian", "threshold": None}
#: Manifest fields outside the content address from format 2 on: when the run happened, how
#: long its steps took and what it measured. Nothing that is served reads them.
ANNOTATION_FIELDS = ("created_at", "timings", "metrics")
MANIFEST = "manifest.json"
#: The optional signature file beside the manifest (:mod:`segstream.shared.signing`).
SIGNATURE = "manifest.sig"

#: Largest ``manifest.json`` read (bytes); larger ones are refused unread.
MAX_MANIFEST_BYTES = 16 << 20
#: Largest single file of a bundle (bytes), as declared in the manifest and as found.
MAX_FILE_BYTES = 1 << 30
#: Largest bundle: the sum of its files (bytes).
MAX_BUNDLE_BYTES = 4 << 30
#: Largest decompressed size of one component's arrays (the members of its ``.npz``, bytes).
MAX_ARRAYS_BYTES = 1 << 30

_BUNDLE_ID_RE = re.compile(r"[0-9a-f]{64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: A bundle file name: one path component, no leading dot.
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


def is_bundle_id(value: object) -> bool:
    """Whether ``value`` is a bundle id: a str of 64 lowercase hexadecimal characters.

    Examples
    --------
    >>> is_bundle_id("ab" * 32), is_bundle_id("../../etc"), is_bundle_id("AB" * 32)
    (True, False, False)
    """
    return isinstance(value, str) and _BUNDLE_ID_RE.fullmatch(value) is not None


def check_bundle_id(value: object, where: str) -> str:
    """Return ``value`` if it is a bundle id (64 lowercase hex characters), else raise.

    The one validator for bundle ids from the store, the cache, the model-updates topic, the
    records the monitor reads and the command line; call it before ``value`` builds a path.

    Parameters
    ----------
    value : object
        The candidate id, as received.
    where : str
        Where it came from (a topic, a file, a record), for the message.

    Raises
    ------
    BundleIdError
        Naming ``where`` and (a shortened ``repr`` of) the value.
    """
    if is_bundle_id(value):
        return value  # type: ignore[return-value]  # is_bundle_id checked the type
    raise BundleIdError(
        f"{where}: bundle id {repr(value)[:80]} is not 64 lowercase hexadecimal characters"
    )


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
    """The typed bundle manifest (``manifest.json``; DESIGN.md contract).

    ``family`` is the outcome family of the segment models (``"gaussian"``: linear models of
    a continuous outcome; ``"binomial"``: logistic models of a 0/1 outcome; ``"poisson"``:
    log-linear models of a count); ``threshold`` is the binomial decision threshold in (0, 1)
    (None for the other families). Both are left out of the JSON when they hold their
    defaults (``gaussian``, None), see the module docstring.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    bundle_id: str = ""
    model: str
    created_at: dt.datetime
    family: Literal["gaussian", "binomial", "poisson"] = "gaussian"
    threshold: float | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    data: dict[str, Any] = Field(default_factory=dict)
    components: dict[str, ComponentEntry] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        """The manifest as JSON-ready data, ``family``/``threshold`` left out when they hold
        their defaults (so a ``gaussian`` manifest reads exactly as before they existed)."""
        d = self.model_dump(mode="json", by_alias=True)
        for key, default in _OMITTED_DEFAULTS.items():
            if d.get(key) == default:
                d.pop(key, None)
        return d

    def body_json(self) -> bytes:
        """Canonical JSON of the manifest without ``bundle_id``: what a signature covers
        (:mod:`segstream.shared.signing`), annotations included."""
        d = self.to_doc()
        d.pop("bundle_id", None)
        return orjson.dumps(d, option=orjson.OPT_SORT_KEYS)

    def identity_json(self) -> bytes:
        """Canonical JSON of what determines the model: what the bundle id hashes.

        Format 1 hashed the whole body (:meth:`body_json`); from format 2 on the
        :data:`ANNOTATION_FIELDS` are left out.
        """
        if self.format_version < 2:
            return self.body_json()
        d = self.to_doc()
        for key in ("bundle_id", *ANNOTATION_FIELDS):
            d.pop(key, None)
        return orjson.dumps(d, option=orjson.OPT_SORT_KEYS)

    def compute_id(self) -> str:
        """The content address: SHA-256 (hex) of :meth:`identity_json`."""
        return hashlib.sha256(self.identity_json()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    np.savez(buf, **contiguous)  # type: ignore[arg-type]  # numpy's stub lets **kwds fill allow_pickle
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
        files[meta_name] = orjson.dumps(
            comp.meta, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
        )
        blobs = {}
        for blob, data in comp.blobs.items():
            fname = f"{name}.{blob}"
            files[fname] = bytes(data)
            blobs[blob] = fname
        entries[name] = ComponentEntry(
            kind=comp.kind, arrays=arrays_name, meta=meta_name, blobs=blobs
        )
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
    family: str = "gaussian",
    threshold: float | None = None,
) -> Path:
    """Write a bundle into ``root/<bundle_id>/`` and return that directory.

    Writing the same content twice (annotations aside: ``created_at``, ``timings``,
    ``metrics``) is a no-op that returns the existing directory, whose annotations are kept.

    Parameters
    ----------
    family : {"gaussian", "binomial", "poisson"}
        Outcome family of the segment models; ``gaussian`` bundles are written as format
        :data:`GAUSSIAN_FORMAT_VERSION`, the others as :data:`FORMAT_VERSION`.
    threshold : float in (0, 1), optional
        Binomial decision threshold; required for ``binomial``, None for the others.

    Raises
    ------
    ValueError
        An unknown ``family``, or a ``threshold`` that does not fit it.
    BundleIntegrityError
        When a directory with the same id exists but does not verify.
    """
    problem = _family_problem(family, threshold)
    if problem:
        raise ValueError(problem)
    files, entries = build_bundle_files(components)
    manifest = Manifest(
        format_version=FORMAT_VERSION if family != "gaussian" else GAUSSIAN_FORMAT_VERSION,
        model=model,
        created_at=created_at or dt.datetime.now(dt.UTC),
        family=family,  # type: ignore[arg-type]  # checked by _family_problem above
        threshold=threshold,
        config=config or {},
        schema=schema or {},
        data=data or {},
        components=entries,
        metrics=metrics or {},
        timings=timings or {},
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


def _family_problem(family: object, threshold: object) -> str | None:
    """Why ``family``/``threshold`` cannot go together in a manifest, or None."""
    if family not in FAMILIES:
        return f"family {family!r} is not one of {list(FAMILIES)}"
    if family == "binomial":
        ok = isinstance(threshold, float | int) and 0.0 < float(threshold) < 1.0
        if not ok:
            return f"family 'binomial' needs a threshold in (0, 1), got {threshold!r}"
    elif threshold is not None:
        return f"threshold {threshold!r} given for family {family!r} (binomial only)"
    return None


def manifest_bytes(manifest: Manifest) -> bytes:
    return orjson.dumps(
        manifest.to_doc(),
        option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
    )


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """Parse and type-check a manifest; newer formats raise :class:`BundleCompatibilityError`.

    Besides the types, the bundle id and every file name and size are checked (a file name is
    one path component; sizes within :data:`MAX_FILE_BYTES` and :data:`MAX_BUNDLE_BYTES`), so
    that nothing in a parsed manifest can build a path outside its bundle directory.

    Raises
    ------
    BundleIntegrityError
        Too large, not JSON, wrong types, a bad id, file name or size (names the key).
    BundleCompatibilityError
        A newer ``format_version``.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleIntegrityError(
            f"{where}/{MANIFEST}: {len(raw):,} bytes, more than the limit of {MAX_MANIFEST_BYTES:,}"
        )
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
            f"({FORMAT_VERSION}); upgrade segstream"
        )
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first.get("loc", ()))
        raise BundleIntegrityError(
            f"{where}/{MANIFEST}: invalid manifest at '{key}': {first.get('msg')}"
        ) from None
    if manifest.format_version < 1:
        raise BundleIntegrityError(f"{where}: invalid format_version {manifest.format_version}")
    fields_set = manifest.model_fields_set & set(_OMITTED_DEFAULTS)
    if fields_set and manifest.format_version < 3:
        raise BundleIntegrityError(
            f"{where}/{MANIFEST}: invalid manifest at '{sorted(fields_set)[0]}': "
            f"not part of format_version {manifest.format_version}"
        )
    problem = _family_problem(manifest.family, manifest.threshold)
    if problem:
        raise BundleIntegrityError(f"{where}/{MANIFEST}: invalid manifest at 'family': {problem}")
    if not is_bundle_id(manifest.bundle_id):
        raise BundleIntegrityError(
            f"{where}/{MANIFEST}: invalid manifest at 'bundle_id': "
            "not 64 lowercase hexadecimal characters"
        )
    total = 0
    for name, entry in manifest.files.items():
        if not _FILE_NAME_RE.fullmatch(name) or name in (MANIFEST, SIGNATURE):
            raise BundleIntegrityError(
                f"{where}/{MANIFEST}: invalid manifest at 'files': "
                f"file name {name[:80]!r} is not allowed"
            )
        if not _SHA256_RE.fullmatch(entry.sha256):
            raise BundleIntegrityError(
                f"{where}/{MANIFEST}: invalid manifest at 'files.{name}.sha256'"
            )
        if not 0 <= entry.bytes <= MAX_FILE_BYTES:
            raise BundleIntegrityError(
                f"{where}/{name}: declared size {entry.bytes:,} bytes is outside 0 .. "
                f"{MAX_FILE_BYTES:,}"
            )
        total += entry.bytes
    if total > MAX_BUNDLE_BYTES:
        raise BundleIntegrityError(
            f"{where}: files add up to {total:,} bytes, more than the limit of {MAX_BUNDLE_BYTES:,}"
        )
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
            "(manifest edited?)"
        )
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
                    f"{where}/{MANIFEST}: component {name!r} names unlisted file {f!r}"
                )


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file (not a symlink) of at most ``limit`` bytes.

    Raises
    ------
    BundleIntegrityError
        A symlink, not a regular file, or larger than ``limit`` (checked before reading).
    """
    if path.is_symlink() or not path.is_file():
        raise BundleIntegrityError(
            f"{path}: unexpected entry in bundle directory (not a regular file)"
        )
    size = path.stat().st_size
    if size > limit:
        raise BundleIntegrityError(f"{path}: {size:,} bytes, more than the limit of {limit:,}")
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise BundleIntegrityError(f"{path}: more than the limit of {limit:,} bytes")
    return data


def read_manifest_file(path: Path) -> Manifest:
    """Parse ``path/manifest.json`` (bounded by :data:`MAX_MANIFEST_BYTES`).

    Raises
    ------
    BundleIntegrityError, BundleCompatibilityError
    """
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleIntegrityError(f"{path}/{MANIFEST}: missing (not a bundle directory?)")
    return parse_manifest(read_bounded(mpath, MAX_MANIFEST_BYTES), str(path))


def read_dir_files(path: Path) -> dict[str, bytes]:
    """All regular files of a bundle directory except the manifest and its signature.

    Sub-directories and symlinks are refused; each file is read only when it is within
    :data:`MAX_FILE_BYTES` and the running total within :data:`MAX_BUNDLE_BYTES`.
    """
    out = {}
    total = 0
    for p in sorted(path.iterdir()):
        if p.name in (MANIFEST, SIGNATURE):
            continue
        out[p.name] = read_bounded(p, min(MAX_FILE_BYTES, MAX_BUNDLE_BYTES - total))
        total += len(out[p.name])
    return out


def verify_bundle_dir(path: str | os.PathLike[str]) -> Manifest:
    """Verify a bundle directory; return its manifest.

    Raises
    ------
    BundleIntegrityError, BundleCompatibilityError
    """
    p = Path(path)
    manifest = read_manifest_file(p)
    verify_files(manifest, read_dir_files(p), str(p))
    return manifest


def load_npz(data: bytes, where: str, limit: int = MAX_ARRAYS_BYTES) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive, with every size checked before it is decompressed.

    The members' declared sizes must add up to at most ``limit``; each member must be a
    ``.npy`` array without objects whose header (shape times item size) accounts for exactly
    its declared size. :mod:`zipfile` never inflates a member beyond its declared size, and
    numpy allocates an array by its header's shape, so both are bounded before any allocation.

    Parameters
    ----------
    data : bytes
        The archive.
    where : str
        The file, for messages.
    limit : int
        Largest total decompressed size (bytes); default :data:`MAX_ARRAYS_BYTES`.

    Returns
    -------
    dict of str to numpy.ndarray
        Member name without ``.npy`` -> array.

    Raises
    ------
    BundleIntegrityError
        Not a zip archive, a member that is not such an array, or a size beyond ``limit``.
    """
    fmt = np.lib.format
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise BundleIntegrityError(f"{where}: not an .npz archive ({exc})") from None
    out: dict[str, np.ndarray] = {}
    with zf:
        infos = zf.infolist()
        total = sum(i.file_size for i in infos)
        if total > limit:
            raise BundleIntegrityError(
                f"{where}: arrays decompress to {total:,} bytes, more than the limit of {limit:,}"
            )
        for info in infos:
            name = info.filename
            if not name.endswith(".npy") or "/" in name or name[:-4] in out:
                raise BundleIntegrityError(f"{where}: unexpected archive member {name[:80]!r}")
            try:
                with zf.open(info) as f:
                    version = fmt.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = fmt.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = fmt.read_array_header_2_0(f)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                    if dtype.hasobject:
                        raise ValueError("object arrays are never loaded")
                    declared = f.tell() + math.prod(shape) * dtype.itemsize
                if declared != info.file_size:
                    raise ValueError(
                        f"its header declares {declared:,} bytes, the archive {info.file_size:,}"
                    )
                with zf.open(info) as f:
                    out[name[:-4]] = fmt.read_array(f, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise BundleIntegrityError(f"{where}/{name[:80]}: {exc}") from None
    return out


class LoadedComponents:
    """The verified, decoded parts of a bundle: per component its arrays, meta and blobs."""

    def __init__(self, manifest: Manifest, files: Mapping[str, bytes]) -> None:
        self.manifest = manifest
        self.components: dict[str, ExportedComponent] = {}
        for name, entry in manifest.components.items():
            arrays: dict[str, np.ndarray] = {}
            if entry.arrays:
                arrays = load_npz(files[entry.arrays], entry.arrays)
            try:
                meta = orjson.loads(files[entry.meta])
            except orjson.JSONDecodeError as exc:
                raise BundleIntegrityError(f"{entry.meta}: not valid JSON ({exc})") from None
            blobs = {b: files[f] for b, f in entry.blobs.items()}
            self.components[name] = ExportedComponent(entry.kind, arrays, meta, blobs)

    def __getitem__(self, name: str) -> ExportedComponent:
        try:
            return self.components[name]
        except KeyError:
            raise BundleIntegrityError(
                f"bundle {self.manifest.bundle_id[:12]} has no component {name!r}"
            ) from None

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
    manifest = read_manifest_file(p)
    files = read_dir_files(p)
    verify_files(manifest, files, str(p))
    return LoadedComponents(manifest, files)
