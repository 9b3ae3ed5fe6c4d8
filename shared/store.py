"""The artifact store: versioned bundles plus an atomically replaced ``LATEST`` per model.

Built on fsspec, so any fsspec URL works; segstream uses ``file://DIR`` (default
``./artifacts``) and ``s3://BUCKET/PREFIX`` (s3fs; MinIO in docker compose). Layout::

    bundles/<model>/<bundle_id>/manifest.json, manifest.sig (optional), <component files>
    bundles/<model>/LATEST          {"bundle_id": ..., "updated_at": ...}

``LATEST`` is replaced only after every file of a bundle is written and verified by reading it
back, so a failed publish leaves it where it was. Publishing a bundle that is already there is a
no-op that leaves ``LATEST`` alone (:meth:`ArtifactStore.publish_bundle`). Secrets (S3 keys) are passed to s3fs and never logged.

The control plane (docs/security-bundles.md): ``LATEST`` is the single source of truth of
which bundle serves; a record on the model-updates topic
(:class:`~segstream.shared.contracts.ModelUpdate`) is only a hint
to re-read it now. Every bundle id that enters (``LATEST``, directory names, the topic, the
command line) passes :func:`segstream.shared.bundle.check_bundle_id` before it builds a path, and the
model name is checked too. :meth:`ArtifactStore.fetch` reads the manifest first, checks its id
and (with ``store.trusted_public_keys``) its signature, and only then reads the files it
lists, each bounded by its declared size.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import posixpath
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson

from segstream.shared.bundle import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    SIGNATURE,
    Manifest,
    check_bundle_id,
    is_bundle_id,
    parse_manifest,
    read_dir_files,
    read_manifest_file,
    verify_bundle_dir,
    verify_files,
)
from segstream.shared.contracts import ModelUpdate  # the contract lives there; re-exported
from segstream.shared.errors import (
    BundleCompatibilityError,
    BundleIdError,
    BundleIntegrityError,
    BundleSignatureError,
    ConfigError,
    LatestError,
    ModelUpdateError,
    StoreError,
)
from segstream.shared.settings import StoreSettings

logger = logging.getLogger(__name__)

LATEST = "LATEST"
#: Largest ``LATEST`` file read (bytes).
MAX_LATEST_BYTES = 4096
#: Largest model-update record value decoded (bytes).
MAX_UPDATE_BYTES = 16 * 1024
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_REF_RE = re.compile(r"[0-9a-f]{1,64}")

#: The ``reason`` label values of ``segstream_bundle_reload_failures_total``
#: (:func:`reload_failure_reason`).
RELOAD_FAILURE_REASONS = (
    "store_unavailable",  # the store cannot be read (LATEST or a bundle file)
    "latest_malformed",  # LATEST is not JSON, has no bundle_id, or an invalid one
    "not_found",  # LATEST (or a record) names a bundle the store does not have
    "integrity",  # a file or the manifest does not verify, or a size limit is hit
    "signature",  # unsigned or not signed by a trusted key
    "incompatible",  # other model, newer format, incompatible schema, fails warm-up
    "invalid_id",  # a record names a bundle id that is not 64 lowercase hex
    "invalid_update",  # a model-updates record that is not a valid model update
    "load_error",  # anything else (a bug: logged with its traceback)
)


def reload_failure_reason(exc: BaseException) -> str:
    """The :data:`RELOAD_FAILURE_REASONS` value of an exception raised while loading a bundle.

    Examples
    --------
    >>> reload_failure_reason(LatestError("x")), reload_failure_reason(StoreError("x"))
    ('latest_malformed', 'store_unavailable')
    """
    if isinstance(exc, LatestError):
        return "latest_malformed"
    if isinstance(exc, BundleIdError):
        return "invalid_id"
    if isinstance(exc, ModelUpdateError):
        return "invalid_update"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, BundleSignatureError):
        return "signature"
    if isinstance(exc, BundleIntegrityError):
        return "integrity"
    if isinstance(exc, BundleCompatibilityError):
        return "incompatible"
    if isinstance(exc, OSError):  # StoreError included
        return "store_unavailable"
    return "load_error"


def check_model_name(model: str) -> str:
    """Return ``model`` if it can name a store directory (letters, digits, ``_.-``).

    Raises
    ------
    ConfigError
        Naming the model.
    """
    if isinstance(model, str) and _MODEL_RE.fullmatch(model) and ".." not in model:
        return model
    raise ConfigError(
        f"model: {repr(model)[:80]} cannot name a store directory (use letters, "
        "digits, '_', '.', '-'; at most 128 characters)"
    )


def encode_model_update(update: ModelUpdate) -> bytes:
    """The JSON value of a model-update record."""
    return msgspec.json.encode(update)


def decode_model_update(value: bytes | None, where: str) -> ModelUpdate:
    """Decode and check a model-update record value (bounded by :data:`MAX_UPDATE_BYTES`).

    Raises
    ------
    ModelUpdateError
        Empty, too large, not JSON, wrong fields or an invalid bundle id (names ``where``).
    """
    if not value:
        raise ModelUpdateError(f"{where}: empty model-update record")
    if len(value) > MAX_UPDATE_BYTES:
        raise ModelUpdateError(
            f"{where}: model-update record of {len(value):,} bytes, more than {MAX_UPDATE_BYTES:,}"
        )
    try:
        update = msgspec.json.decode(value, type=ModelUpdate)
    except msgspec.DecodeError as exc:
        raise ModelUpdateError(f"{where}: not a model-update record ({str(exc)[:200]})") from None
    if not is_bundle_id(update.bundle_id):
        raise ModelUpdateError(
            f"{where}: bundle id {update.bundle_id[:80]!r} is not 64 "
            "lowercase hexadecimal characters"
        )
    return update


@dataclass(frozen=True)
class PublishResult:
    """What :meth:`ArtifactStore.publish_bundle` did."""

    #: The bundle's URL in the store.
    uri: str
    bundle_id: str
    #: False when the store held the bundle already (a no-op).
    uploaded: bool
    #: Whether ``LATEST`` now points at the bundle because of this publish.
    promoted: bool


@dataclass(frozen=True)
class BundleInfo:
    """One stored bundle, as listed by :meth:`ArtifactStore.list`."""

    model: str
    bundle_id: str
    created_at: dt.datetime
    is_latest: bool
    uri: str
    metrics: dict[str, Any]


class ArtifactStore:
    """Publish, list, fetch and promote bundles in an fsspec location.

    Parameters
    ----------
    settings : StoreSettings
        ``url`` plus optional S3 endpoint and credentials, and the trusted public keys
        (``trusted_public_keys``): when set, :meth:`fetch`, :meth:`verify` and
        :meth:`promote` refuse a bundle that is not signed by one of them.

    Raises
    ------
    StoreError
        Unsupported or unreachable URL (naming it).
    SigningKeyError
        A trusted public key file cannot be read or is not an Ed25519 public key.
    """

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.url = settings.url
        self._fs: Any = None
        self._root = ""
        self._trusted: dict[str, Any] = {}
        if settings.trusted_public_keys:
            from segstream.shared.signing import load_public_keys

            self._trusted = load_public_keys(settings)

    @property
    def requires_signature(self) -> bool:
        """Whether bundles must be signed by a trusted key (``store.trusted_public_keys``)."""
        return bool(self._trusted)

    # ------------------------------------------------------------------ plumbing
    def _open(self) -> tuple[Any, str]:
        if self._fs is None:
            import fsspec

            opts: dict[str, Any] = {}
            if self.url.startswith(("s3://", "s3a://")):
                if self.settings.s3_endpoint_url:
                    opts["client_kwargs"] = {"endpoint_url": self.settings.s3_endpoint_url}
                if self.settings.s3_key is not None:
                    opts["key"] = self.settings.s3_key.get_secret_value()
                if self.settings.s3_secret is not None:
                    opts["secret"] = self.settings.s3_secret.get_secret_value()
            url = self.url
            if url.startswith("file://"):
                url = "file://" + os.path.abspath(url[len("file://") :])
            elif "://" not in url:
                url = "file://" + os.path.abspath(url)
            try:
                self._fs, self._root = fsspec.core.url_to_fs(url, **opts)
            except (ImportError, ValueError) as exc:
                raise StoreError(f"artifact store {self.url}: {exc}") from None
        return self._fs, self._root

    def _path(self, model: str, *parts: str) -> str:
        """``<root>/bundles/<model>[/<bundle id or LATEST>[/<file>]]`` from checked parts."""
        _, root = self._open()
        check_model_name(model)
        if parts and parts[0] != LATEST:
            check_bundle_id(parts[0], f"artifact store {self.url}, model {model!r}")
        return posixpath.join(root, "bundles", model, *parts)

    def uri(self, model: str, bundle_id: str) -> str:
        """The URL of a stored bundle directory."""
        check_model_name(model)
        check_bundle_id(bundle_id, f"artifact store {self.url}, model {model!r}")
        return self.url.rstrip("/") + f"/bundles/{model}/{bundle_id}"

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except FileNotFoundError:
            raise
        except (OSError, PermissionError) as exc:
            raise StoreError(f"artifact store {self.url}: cannot {what}: {exc}") from None
        except Exception as exc:  # botocore/aiohttp errors for unreachable S3 endpoints
            raise StoreError(
                f"artifact store {self.url}: cannot {what}: {type(exc).__name__}: {exc}"
            ) from None

    def _read(self, path: str, limit: int | None = None) -> bytes:
        """The bytes of ``path``; with ``limit``, at most ``limit + 1`` bytes are read (the
        caller refuses a longer file)."""
        fs, _ = self._open()
        if limit is None:
            return self._call(f"read {path}", fs.cat_file, path)
        return self._call(f"read {path}", fs.cat_file, path, start=0, end=limit + 1)

    def _write(self, path: str, data: bytes) -> None:
        fs, _ = self._open()
        self._call(
            f"create {posixpath.dirname(path)}", fs.makedirs, posixpath.dirname(path), exist_ok=True
        )
        self._call(f"write {path}", fs.pipe_file, path, data)

    def _read_manifest(self, model: str, bundle_id: str) -> tuple[Manifest, bytes]:
        """The stored manifest of ``bundle_id`` (bounded), checked to be that bundle's."""
        where = self.uri(model, bundle_id)
        raw = self._read(self._path(model, bundle_id, MANIFEST), MAX_MANIFEST_BYTES)
        manifest = parse_manifest(raw, where)
        if manifest.bundle_id != bundle_id:
            raise BundleIntegrityError(
                f"{where}/{MANIFEST}: says it is bundle "
                f"{manifest.bundle_id[:12]}, not the one asked for"
            )
        if manifest.compute_id() != bundle_id:
            raise BundleIntegrityError(
                f"{where}/{MANIFEST}: content does not match bundle_id "
                f"{bundle_id[:12]} (manifest edited?)"
            )
        return manifest, raw

    def _read_signature(self, model: str, bundle_id: str) -> bytes | None:
        from segstream.shared.signing import MAX_SIGNATURE_BYTES

        try:
            return self._read(self._path(model, bundle_id, SIGNATURE), MAX_SIGNATURE_BYTES)
        except FileNotFoundError:
            return None

    def check_signature(
        self, manifest: Manifest, signature: bytes | None, where: str
    ) -> str | None:
        """With trusted keys configured: raise unless ``signature`` verifies; return its key id.

        Raises
        ------
        BundleSignatureError
        """
        if not self._trusted:
            return None
        from segstream.shared.signing import verify_manifest_signature

        return verify_manifest_signature(manifest, signature, self._trusted, where)

    def _read_files(self, model: str, manifest: Manifest) -> dict[str, bytes]:
        """The files the manifest lists, each read up to its declared size and checked."""
        where = self.uri(model, manifest.bundle_id)
        files = {}
        for name, entry in manifest.files.items():
            try:
                content = self._read(self._path(model, manifest.bundle_id, name), entry.bytes)
            except FileNotFoundError:
                raise BundleIntegrityError(f"{where}/{name}: file missing") from None
            if len(content) != entry.bytes or hashlib.sha256(content).hexdigest() != entry.sha256:
                raise BundleIntegrityError(f"{where}/{name}: sha256 mismatch (file modified)")
            files[name] = content
        verify_files(manifest, files, where)  # the components' file references
        return files

    # ------------------------------------------------------------------ API
    def publish(self, bundle_dir: str | os.PathLike[str], *, promote: bool = True) -> str:
        """Copy a verified local bundle into the store; return its URI there.

        The same as :meth:`publish_bundle`, returning only the URI.
        """
        return self.publish_bundle(bundle_dir, promote=promote).uri

    def publish_bundle(
        self, bundle_dir: str | os.PathLike[str], *, promote: bool = True
    ) -> PublishResult:
        """Copy a verified local bundle (and its ``manifest.sig``, if any) into the store;
        move ``LATEST`` to it if ``promote``.

        Publishing a bundle id the store already holds (verified) is a no-op: nothing is
        uploaded and ``LATEST`` stays where it is, so a re-run of the same training (same
        data, same config: same id) never moves ``LATEST`` back to it after a roll-back.
        ``LATEST`` is only set then when the model has none (or a malformed one), as after a
        publish that stopped before it. The stored manifest keeps its own annotations
        (``created_at``, ``timings``, ``metrics``); the local ``manifest.sig`` is copied only
        when the local manifest is byte-for-byte the stored one's body (else it would sign
        other annotations and not verify).

        Returns
        -------
        PublishResult
            The URI, the id, whether files were uploaded and whether ``LATEST`` moved.

        Raises
        ------
        BundleIntegrityError
            The local bundle does not verify.
        StoreError
            The store cannot be written (``LATEST`` is unchanged).
        """
        src = Path(bundle_dir)
        manifest = read_manifest_file(src)
        files = read_dir_files(src)
        verify_files(manifest, files, str(src))
        sig_path = src / SIGNATURE
        signature = sig_path.read_bytes() if sig_path.is_file() else None
        model, bid = manifest.model, manifest.bundle_id
        stored = self._stored_manifest(model, bid)
        if stored is not None:
            logger.info("bundle %s already in %s: publish is a no-op", bid[:12], self.url)
            if (
                signature is not None
                and stored.body_json() == manifest.body_json()
                and self._read_signature(model, bid) != signature
            ):
                self._write(self._path(model, bid, SIGNATURE), signature)
            try:
                current = self.latest(model)
            except LatestError as exc:
                logger.warning("%s: replacing it", exc)
                current = None
            moved = promote and current is None
            if moved:
                self._set_latest(model, bid)
            return PublishResult(self.uri(model, bid), bid, uploaded=False, promoted=moved)
        for name, content in files.items():
            self._write(self._path(model, bid, name), content)
        if signature is not None:
            self._write(self._path(model, bid, SIGNATURE), signature)
        # The manifest goes last: a bundle without one is not listed.
        self._write(self._path(model, bid, MANIFEST), (src / MANIFEST).read_bytes())
        if self._stored_manifest(model, bid) is None:
            raise StoreError(
                f"artifact store {self.url}: bundle {bid[:12]} did not verify after upload"
            )
        if promote:
            self._set_latest(model, bid)
        return PublishResult(self.uri(model, bid), bid, uploaded=True, promoted=promote)

    def _stored_manifest(self, model: str, bundle_id: str) -> Manifest | None:
        """The manifest of the stored bundle when it is there and verifies, else None."""
        try:
            return self.verify(model, bundle_id, check_signature=False)
        except (FileNotFoundError, BundleIntegrityError):
            return None

    def _set_latest(self, model: str, bundle_id: str) -> None:
        fs, _ = self._open()
        path = self._path(model, LATEST)
        check_bundle_id(bundle_id, f"artifact store {self.url}: LATEST of {model!r}")
        body = orjson.dumps(
            {"bundle_id": bundle_id, "updated_at": dt.datetime.now(dt.UTC).isoformat()}
        )
        from fsspec.implementations.local import LocalFileSystem

        if isinstance(fs, LocalFileSystem):
            # Local: write a temporary file and rename it over LATEST (atomic on POSIX).
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            self._write(tmp, body)
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise StoreError(
                    f"artifact store {self.url}: cannot replace {path}: {exc}"
                ) from None
        else:
            self._write(path, body)  # an object PUT is atomic on S3
        logger.info("LATEST of %s -> %s", model, bundle_id[:12])

    def latest(self, model: str) -> str | None:
        """The bundle id ``LATEST`` points to, or None when the model has none.

        Raises
        ------
        LatestError
            ``LATEST`` is larger than :data:`MAX_LATEST_BYTES`, not a JSON object, or has no
            valid ``bundle_id`` (names the file; ``segstream bundle promote`` repairs it).
        StoreError
            The store cannot be read.
        """
        path = self._path(model, LATEST)
        where = f"{self.url.rstrip('/')}/bundles/{model}/{LATEST}"
        try:
            raw = self._read(path, MAX_LATEST_BYTES)
        except FileNotFoundError:
            return None
        if len(raw) > MAX_LATEST_BYTES:
            raise LatestError(f"{where}: larger than {MAX_LATEST_BYTES} bytes")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise LatestError(f"{where}: not valid JSON") from None
        if not isinstance(doc, dict) or "bundle_id" not in doc:
            raise LatestError(f"{where}: not a JSON object with a bundle_id")
        if not is_bundle_id(doc["bundle_id"]):
            raise LatestError(
                f"{where}: bundle_id {repr(doc['bundle_id'])[:80]} is not 64 "
                "lowercase hexadecimal characters"
            )
        return str(doc["bundle_id"])

    def read_manifest(self, model: str, bundle_id: str) -> Manifest:
        """The manifest of a stored bundle (checked against its id; files not read)."""
        return self._read_manifest(model, bundle_id)[0]

    def read_signature(self, model: str, bundle_id: str) -> bytes | None:
        """The stored ``manifest.sig`` of a bundle, or None when it is unsigned."""
        return self._read_signature(model, bundle_id)

    def verify(self, model: str, bundle_id: str, *, check_signature: bool = True) -> Manifest:
        """Verify a stored bundle in place; return its manifest.

        With trusted keys configured (and ``check_signature``), the signature is checked
        after the manifest and before any other file is read.

        Raises
        ------
        BundleIdError
            ``bundle_id`` is not a bundle id.
        FileNotFoundError
            No such bundle.
        BundleIntegrityError
            Naming the file that does not match (an extra file included).
        BundleSignatureError
            Unsigned or not signed by a trusted key.
        """
        fs, _ = self._open()
        manifest, _ = self._read_manifest(model, bundle_id)
        if check_signature:
            self.check_signature(
                manifest, self._read_signature(model, bundle_id), self.uri(model, bundle_id)
            )
        d = self._path(model, bundle_id)
        names = {
            posixpath.basename(p.rstrip("/"))
            for p in self._call(f"list {d}", fs.ls, d, detail=False)
        }
        extra = sorted(names - set(manifest.files) - {MANIFEST, SIGNATURE})
        if extra:
            raise BundleIntegrityError(
                f"{self.uri(model, bundle_id)}/{extra[0][:80]}: file not listed in the manifest"
            )
        self._read_files(model, manifest)
        return manifest

    def fetch(self, model: str, bundle_id: str, cache_dir: str | os.PathLike[str]) -> Path:
        """Download a bundle into ``cache_dir/<bundle_id>`` (verified) and return the path.

        The order makes a hostile store cheap to refuse: the id is checked; the manifest is
        read (at most :data:`~segstream.shared.bundle.MAX_MANIFEST_BYTES`), parsed and checked to be the
        bundle asked for; with trusted keys configured its signature is checked; only then are
        the files it lists read, each up to its declared size, and checked. A cached copy is
        used when it verifies (signature included). Nothing is written or removed outside
        ``cache_dir``: only ``cache_dir/<bundle_id>`` is replaced, through a temporary
        directory inside ``cache_dir``.

        Raises
        ------
        BundleIdError
            ``bundle_id`` is not 64 lowercase hex characters.
        FileNotFoundError
            The store has no such bundle.
        BundleIntegrityError, BundleSignatureError, BundleCompatibilityError
            The bundle is refused (names the file).
        StoreError
            The store or the cache cannot be read or written.
        """
        check_bundle_id(bundle_id, f"artifact store {self.url}: fetch of model {model!r}")
        where = self.uri(model, bundle_id)
        root = Path(cache_dir)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"bundle cache {root}: cannot create it: {exc}") from None
        dest = root / bundle_id  # one path component (checked above)
        if not dest.is_symlink() and (dest / MANIFEST).is_file():
            try:
                cached = verify_bundle_dir(dest)
                if cached.bundle_id != bundle_id:
                    raise BundleIntegrityError(f"{dest}: holds bundle {cached.bundle_id[:12]}")
                sig = dest / SIGNATURE
                self.check_signature(cached, sig.read_bytes() if sig.is_file() else None, str(dest))
                return dest
            except BundleIntegrityError as exc:
                logger.warning(
                    "cached bundle %s does not verify (%s); downloading again", dest, exc
                )
        try:
            manifest, raw = self._read_manifest(model, bundle_id)
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: no such bundle") from None
        signature = self._read_signature(model, bundle_id)
        self.check_signature(manifest, signature, where)  # before any component is read
        files = self._read_files(model, manifest)
        files[MANIFEST] = raw
        if signature is not None:
            files[SIGNATURE] = signature
        self._install(root, dest, files)
        return dest

    @staticmethod
    def _install(root: Path, dest: Path, files: dict[str, bytes]) -> None:
        """Write ``files`` into a temporary directory in ``root`` and swap it in as ``dest``
        (a child of ``root``); an old ``dest`` is moved aside inside ``root`` first."""
        if dest.parent != root:  # never replace anything outside the cache directory
            raise StoreError(f"bundle cache {root}: refusing to write {dest}")
        tmp = root / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
        old = root / f".old-{dest.name}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            for name, content in files.items():
                (tmp / name).write_bytes(content)
            if dest.is_symlink() or dest.is_file():
                dest.unlink()  # a link is removed, never followed
            elif dest.exists():
                dest.rename(old)
            try:
                tmp.rename(dest)
            except OSError:
                if not (dest / MANIFEST).is_file():
                    raise
                # Another fetch installed it meanwhile; it is verified when it is loaded.
        except OSError as exc:
            raise StoreError(f"bundle cache {root}: cannot write {dest.name}: {exc}") from None
        finally:
            for leftover in (tmp, old):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)

    def list(self, model: str) -> list[BundleInfo]:
        """Stored bundles of ``model``, oldest first (entries that are not bundles skipped).

        A malformed ``LATEST`` is logged and no bundle is marked latest, so that
        ``segstream bundle promote`` can still repair it.
        """
        fs, _ = self._open()
        d = self._path(model)
        try:
            entries = self._call(f"list {d}", fs.ls, d, detail=False)
        except FileNotFoundError:
            return []
        try:
            latest = self.latest(model)
        except LatestError as exc:
            logger.warning("%s", exc)
            latest = None
        out = []
        for p in entries:
            name = posixpath.basename(p.rstrip("/"))
            if not is_bundle_id(name):
                continue
            try:
                m = self.read_manifest(model, name)
            except (FileNotFoundError, BundleIntegrityError, BundleCompatibilityError):
                continue
            out.append(
                BundleInfo(
                    model,
                    m.bundle_id,
                    m.created_at,
                    m.bundle_id == latest,
                    self.uri(model, m.bundle_id),
                    m.metrics,
                )
            )
        return sorted(out, key=lambda b: b.created_at)

    def resolve(self, model: str, ref: str) -> str:
        """A full bundle id from ``ref``: ``LATEST``, a full id or a unique prefix.

        Raises
        ------
        BundleIdError
            ``ref`` is neither ``LATEST`` nor 1 to 64 lowercase hex characters.
        StoreError
            Unknown or ambiguous reference (``LatestError``: a malformed ``LATEST``).
        """
        if ref == LATEST:
            bid = self.latest(model)
            if bid is None:
                raise StoreError(f"artifact store {self.url}: model {model!r} has no LATEST")
            return bid
        if not isinstance(ref, str) or not _REF_RE.fullmatch(ref):
            raise BundleIdError(
                f"bundle reference {repr(ref)[:80]}: expected LATEST, a bundle "
                "id or a unique prefix of one (lowercase hexadecimal)"
            )
        ids = [b.bundle_id for b in self.list(model) if b.bundle_id.startswith(ref)]
        if len(ids) != 1:
            raise StoreError(
                f"artifact store {self.url}: bundle {ref!r} of model {model!r} "
                f"{'not found' if not ids else 'is ambiguous'}"
            )
        return ids[0]

    def promote(self, model: str, ref: str) -> str:
        """Point ``LATEST`` at an existing, verified bundle (roll-out or roll-back).

        With trusted keys configured, the bundle must be signed by one of them.
        """
        bid = self.resolve(model, ref)
        self.verify(model, bid)
        self._set_latest(model, bid)
        return bid

    def sign(self, model: str, ref: str, private_key: Any) -> str:
        """Verify a stored bundle and store its ``manifest.sig`` made with ``private_key``
        (an Ed25519 private key); return the bundle id."""
        from segstream.shared.signing import sign_manifest

        bid = self.resolve(model, ref)
        manifest = self.verify(model, bid, check_signature=False)
        self._write(self._path(model, bid, SIGNATURE), sign_manifest(manifest, private_key))
        return bid
