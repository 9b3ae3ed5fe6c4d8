"""The artifact store: versioned bundles plus an atomically replaced ``LATEST`` per model.

Built on fsspec, so any fsspec URL works; segstream uses ``file://DIR`` (default
``./artifacts``) and ``s3://BUCKET/PREFIX`` (s3fs; MinIO in docker compose). Layout::

    bundles/<model>/<bundle_id>/manifest.json, <component files>
    bundles/<model>/LATEST          {"bundle_id": ..., "updated_at": ...}

``LATEST`` is replaced only after every file of a bundle is written and verified by reading it
back, so a failed publish leaves it where it was. Publishing a bundle that is already there is a
no-op. Secrets (S3 keys) are passed to s3fs and never logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from segstream.shared.bundle import MANIFEST, Manifest, parse_manifest, read_dir_files, verify_files
from segstream.shared.errors import BundleIntegrityError, StoreError
from segstream.shared.settings import StoreSettings

logger = logging.getLogger(__name__)

LATEST = "LATEST"


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
        ``url`` plus optional S3 endpoint and credentials.

    Raises
    ------
    StoreError
        Unsupported or unreachable URL (naming it).
    """

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.url = settings.url
        self._fs: Any = None
        self._root = ""

    # ------------------------------------------------------------------ plumbing
    def _open(self) -> tuple[Any, str]:
        if self._fs is None:
            import fsspec  # noqa: PLC0415

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
                url = "file://" + os.path.abspath(url[len("file://"):])
            elif "://" not in url:
                url = "file://" + os.path.abspath(url)
            try:
                self._fs, self._root = fsspec.core.url_to_fs(url, **opts)
            except (ImportError, ValueError) as exc:
                raise StoreError(f"artifact store {self.url}: {exc}") from None
        return self._fs, self._root

    def _path(self, *parts: str) -> str:
        _, root = self._open()
        return posixpath.join(root, "bundles", *parts)

    def uri(self, model: str, bundle_id: str) -> str:
        """The URL of a stored bundle directory."""
        return self.url.rstrip("/") + f"/bundles/{model}/{bundle_id}"

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except FileNotFoundError:
            raise
        except (OSError, PermissionError) as exc:
            raise StoreError(f"artifact store {self.url}: cannot {what}: {exc}") from None
        except Exception as exc:  # botocore/aiohttp errors for unreachable S3 endpoints
            raise StoreError(f"artifact store {self.url}: cannot {what}: "
                             f"{type(exc).__name__}: {exc}") from None

    def _read(self, path: str) -> bytes:
        fs, _ = self._open()
        return self._call(f"read {path}", fs.cat_file, path)

    def _write(self, path: str, data: bytes) -> None:
        fs, _ = self._open()
        self._call(f"create {posixpath.dirname(path)}", fs.makedirs, posixpath.dirname(path),
                   exist_ok=True)
        self._call(f"write {path}", fs.pipe_file, path, data)

    # ------------------------------------------------------------------ API
    def publish(self, bundle_dir: str | os.PathLike[str], *, promote: bool = True) -> str:
        """Copy a verified local bundle into the store; move ``LATEST`` to it if ``promote``.

        Returns
        -------
        str
            The bundle's URI in the store.

        Raises
        ------
        BundleIntegrityError
            The local bundle does not verify.
        StoreError
            The store cannot be written (``LATEST`` is unchanged).
        """
        src = Path(bundle_dir)
        manifest = parse_manifest((src / MANIFEST).read_bytes(), str(src))
        files = read_dir_files(src)
        verify_files(manifest, files, str(src))
        model, bid = manifest.model, manifest.bundle_id
        if self._exists_verified(model, bid):
            logger.info("bundle %s already in %s: publish is a no-op", bid[:12], self.url)
        else:
            dest = self._path(model, bid)
            for name, content in files.items():
                self._write(posixpath.join(dest, name), content)
            # The manifest goes last: a bundle without one is not listed.
            self._write(posixpath.join(dest, MANIFEST), (src / MANIFEST).read_bytes())
            if not self._exists_verified(model, bid):
                raise StoreError(f"artifact store {self.url}: bundle {bid[:12]} did not verify "
                                 "after upload")
        if promote:
            self._set_latest(model, bid)
        return self.uri(model, bid)

    def _exists_verified(self, model: str, bundle_id: str) -> bool:
        try:
            self.verify(model, bundle_id)
            return True
        except (FileNotFoundError, BundleIntegrityError):
            return False

    def _set_latest(self, model: str, bundle_id: str) -> None:
        fs, _ = self._open()
        path = self._path(model, LATEST)
        body = orjson.dumps({"bundle_id": bundle_id,
                             "updated_at": dt.datetime.now(dt.UTC).isoformat()})
        from fsspec.implementations.local import LocalFileSystem  # noqa: PLC0415

        if isinstance(fs, LocalFileSystem):
            # Local: write a temporary file and rename it over LATEST (atomic on POSIX).
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            self._write(tmp, body)
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise StoreError(f"artifact store {self.url}: cannot replace {path}: {exc}") \
                    from None
        else:
            self._write(path, body)  # an object PUT is atomic on S3
        logger.info("LATEST of %s -> %s", model, bundle_id[:12])

    def latest(self, model: str) -> str | None:
        """The bundle id ``LATEST`` points to, or None when the model has none."""
        try:
            doc = orjson.loads(self._read(self._path(model, LATEST)))
        except FileNotFoundError:
            return None
        return str(doc["bundle_id"])

    def read_manifest(self, model: str, bundle_id: str) -> Manifest:
        raw = self._read(self._path(model, bundle_id, MANIFEST))
        return parse_manifest(raw, self.uri(model, bundle_id))

    def verify(self, model: str, bundle_id: str) -> Manifest:
        """Verify a stored bundle in place; return its manifest.

        Raises
        ------
        FileNotFoundError
            No such bundle.
        BundleIntegrityError
            Naming the file that does not match.
        """
        files = self._fetch_files(model, bundle_id)
        manifest = parse_manifest(files.pop(MANIFEST), self.uri(model, bundle_id))
        verify_files(manifest, files, self.uri(model, bundle_id))
        if manifest.bundle_id != bundle_id:
            raise BundleIntegrityError(f"{self.uri(model, bundle_id)}: directory name does not "
                                       f"match bundle_id {manifest.bundle_id[:12]}")
        return manifest

    def _fetch_files(self, model: str, bundle_id: str) -> dict[str, bytes]:
        fs, _ = self._open()
        d = self._path(model, bundle_id)
        if not self._call(f"list {d}", fs.exists, posixpath.join(d, MANIFEST)):
            raise FileNotFoundError(self.uri(model, bundle_id))
        names = [posixpath.basename(p) for p in self._call(f"list {d}", fs.ls, d, detail=False)]
        return {n: self._read(posixpath.join(d, n)) for n in names}

    def fetch(self, model: str, bundle_id: str, cache_dir: str | os.PathLike[str]) -> Path:
        """Download a bundle into ``cache_dir/<bundle_id>`` (verified) and return the path."""
        dest = Path(cache_dir) / bundle_id
        if (dest / MANIFEST).is_file():
            from segstream.shared.bundle import verify_bundle_dir  # noqa: PLC0415

            try:
                verify_bundle_dir(dest)
                return dest
            except BundleIntegrityError:
                logger.warning("cached bundle %s does not verify; downloading again", dest)
        files = self._fetch_files(model, bundle_id)
        manifest = parse_manifest(files[MANIFEST], self.uri(model, bundle_id))
        body = {k: v for k, v in files.items() if k != MANIFEST}
        verify_files(manifest, body, self.uri(model, bundle_id))
        tmp = Path(cache_dir) / f".tmp-{bundle_id}-{uuid.uuid4().hex[:6]}"
        tmp.mkdir(parents=True)
        for name, content in files.items():
            (tmp / name).write_bytes(content)
        if dest.exists():
            import shutil  # noqa: PLC0415

            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest

    def list(self, model: str) -> list[BundleInfo]:
        """Stored bundles of ``model``, oldest first."""
        fs, _ = self._open()
        d = self._path(model)
        try:
            entries = self._call(f"list {d}", fs.ls, d, detail=False)
        except FileNotFoundError:
            return []
        latest = self.latest(model)
        out = []
        for p in entries:
            name = posixpath.basename(p.rstrip("/"))
            if name == LATEST or name.startswith((".", LATEST + ".tmp")):
                continue
            try:
                m = self.read_manifest(model, name)
            except (FileNotFoundError, BundleIntegrityError):
                continue
            out.append(BundleInfo(model, m.bundle_id, m.created_at, m.bundle_id == latest,
                                  self.uri(model, m.bundle_id), m.metrics))
        return sorted(out, key=lambda b: b.created_at)

    def resolve(self, model: str, ref: str) -> str:
        """A full bundle id from ``ref``: ``LATEST``, a full id or a unique prefix.

        Raises
        ------
        StoreError
            Unknown or ambiguous reference.
        """
        if ref == LATEST:
            bid = self.latest(model)
            if bid is None:
                raise StoreError(f"artifact store {self.url}: model {model!r} has no LATEST")
            return bid
        ids = [b.bundle_id for b in self.list(model) if b.bundle_id.startswith(ref)]
        if len(ids) != 1:
            raise StoreError(f"artifact store {self.url}: bundle {ref!r} of model {model!r} "
                             f"{'not found' if not ids else 'is ambiguous'}")
        return ids[0]

    def promote(self, model: str, ref: str) -> str:
        """Point ``LATEST`` at an existing, verified bundle (roll-out or roll-back)."""
        bid = self.resolve(model, ref)
        self.verify(model, bid)
        self._set_latest(model, bid)
        return bid
