"""Ed25519 signatures of bundle manifests, made and checked with ``cryptography``.

The manifest already pins every file of a bundle (name, size, SHA-256) and its id is the
SHA-256 of its canonical JSON, so one signature over the canonical manifest covers the whole
bundle. It is checked *before* any component is read: a worker or the monitor with
``store.trusted_public_keys`` configured fetches ``manifest.json`` and ``manifest.sig``
first and refuses the bundle (:class:`~segstream.shared.errors.BundleSignatureError`) unless the
signature verifies with one of the trusted keys.

``manifest.sig`` is a small JSON document (:class:`ManifestSignature`)::

    {"format": "segstream-manifest-signature/1", "algorithm": "ed25519",
     "key_id": "<first 16 hex of the SHA-256 of the raw public key>",
     "bundle_id": "<the manifest's bundle_id>", "signature": "<base64, 64 bytes>"}

The signed message is ``b"segstream bundle manifest v1\\n"`` followed by the canonical
manifest JSON without ``bundle_id`` (:meth:`segstream.shared.bundle.Manifest.body_json`): every
field, the run's annotations (``created_at``, ``timings``, ``metrics``) included, which the
bundle id (:meth:`~segstream.shared.bundle.Manifest.identity_json`) leaves out; the prefix keeps
these signatures from being valid for anything else.

Keys are PEM files in the standard formats (PKCS#8 private key, SubjectPublicKeyInfo public
key), as written by :func:`generate_key_pair` (``segstream bundle keygen``) or by
``openssl genpkey -algorithm ed25519``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from segstream.shared.bundle import SIGNATURE, Manifest, verify_bundle_dir
from segstream.shared.errors import BundleSignatureError, SigningKeyError
from segstream.shared.settings import StoreSettings

SIGNATURE_FORMAT = "segstream-manifest-signature/1"
ALGORITHM = "ed25519"
#: Largest ``manifest.sig`` read (bytes).
MAX_SIGNATURE_BYTES = 4096
_CONTEXT = b"segstream bundle manifest v1\n"


class ManifestSignature(msgspec.Struct, forbid_unknown_fields=True):
    """The content of ``manifest.sig``."""

    format: str
    algorithm: str
    key_id: str
    bundle_id: str
    signature: str


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of the SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed_message(manifest: Manifest) -> bytes:
    """The bytes a signature covers: a fixed prefix plus the canonical manifest body."""
    return _CONTEXT + manifest.body_json()


# --------------------------------------------------------------------------- keys
def _private_from_pem(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        # The message of cryptography never contains key material.
        raise SigningKeyError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{where}: not an Ed25519 private key ({type(key).__name__})")
    return key


def _public_from_pem(pem: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{where}: not an Ed25519 public key ({type(key).__name__})")
    return key


def _read_key_file(path: str, setting: str) -> bytes:
    p = Path(path).expanduser()
    try:
        data = p.read_bytes() if p.stat().st_size <= 64 * 1024 else b""
    except OSError as exc:
        raise SigningKeyError(f"{setting}: cannot read key file {p}: {exc.strerror}") from None
    if not data:
        raise SigningKeyError(f"{setting}: key file {p} is empty or larger than 64 KiB")
    return data


def load_private_key(settings: StoreSettings) -> Ed25519PrivateKey | None:
    """The configured signing key (``store.signing_key_file`` or ``store.signing_key``).

    Returns
    -------
    Ed25519PrivateKey or None
        None when signing is not configured.

    Raises
    ------
    SigningKeyError
        Both settings given, an unreadable file, or not an Ed25519 private key in PEM.
    """
    if settings.signing_key_file and settings.signing_key is not None:
        raise SigningKeyError("store.signing_key_file and store.signing_key are both set; set one")
    if settings.signing_key is not None:
        return _private_from_pem(
            settings.signing_key.get_secret_value().encode(), "store.signing_key"
        )
    if settings.signing_key_file:
        where = f"store.signing_key_file ({settings.signing_key_file})"
        return _private_from_pem(
            _read_key_file(settings.signing_key_file, "store.signing_key_file"), where
        )
    return None


def load_public_keys(settings: StoreSettings) -> dict[str, Ed25519PublicKey]:
    """The trusted public keys (``store.trusted_public_keys``), by :func:`key_id`.

    Raises
    ------
    SigningKeyError
        An unreadable file or one that is not an Ed25519 public key in PEM (names it).
    """
    keys: dict[str, Ed25519PublicKey] = {}
    for path in settings.trusted_public_keys:
        where = f"store.trusted_public_keys ({path})"
        key = _public_from_pem(_read_key_file(path, "store.trusted_public_keys"), where)
        keys[key_id(key)] = key
    return keys


def generate_key_pair(
    private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]
) -> str:
    """Write a new Ed25519 key pair as PEM files; return its key id.

    The private key file is created with mode 0600 and never overwritten.

    Raises
    ------
    SigningKeyError
        A file exists already or cannot be written.
    """
    priv, pub = Path(private_path), Path(public_path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for p in (priv, pub):
        if p.exists():
            raise SigningKeyError(f"{p} exists already; not overwriting a key")
    try:
        fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub.write_bytes(pub_pem)
    except OSError as exc:
        raise SigningKeyError(f"cannot write the key pair: {exc}") from None
    return key_id(key.public_key())


# --------------------------------------------------------------------------- sign / verify
def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> bytes:
    """The content of ``manifest.sig`` for ``manifest``, signed with ``private_key``."""
    sig = private_key.sign(signed_message(manifest))
    return msgspec.json.encode(
        ManifestSignature(
            format=SIGNATURE_FORMAT,
            algorithm=ALGORITHM,
            key_id=key_id(private_key.public_key()),
            bundle_id=manifest.bundle_id,
            signature=base64.b64encode(sig).decode(),
        )
    )


def sign_bundle_dir(path: str | os.PathLike[str], private_key: Ed25519PrivateKey) -> Path:
    """Verify the bundle directory ``path`` and write its ``manifest.sig``; return that file.

    Raises
    ------
    BundleIntegrityError
        The bundle does not verify (it is not signed then).
    """
    p = Path(path)
    manifest = verify_bundle_dir(p)
    out = p / SIGNATURE
    out.write_bytes(sign_manifest(manifest, private_key))
    return out


def verify_manifest_signature(
    manifest: Manifest,
    signature: bytes | None,
    trusted: dict[str, Ed25519PublicKey] | Sequence[Ed25519PublicKey],
    where: str,
) -> str:
    """Check ``signature`` (the bytes of ``manifest.sig``, None when there is none).

    Parameters
    ----------
    manifest : Manifest
        The parsed manifest, whose ``bundle_id`` was already checked against its content.
    signature : bytes or None
    trusted : dict of key id to public key, or a sequence of public keys
        At least one.
    where : str
        The bundle's location, for messages.

    Returns
    -------
    str
        The key id of the trusted key that verified it.

    Raises
    ------
    BundleSignatureError
        Unsigned, a malformed signature file, or no trusted key verifies it.
    """
    keys = trusted if isinstance(trusted, dict) else {key_id(k): k for k in trusted}
    if not keys:
        raise ValueError("verify_manifest_signature needs at least one trusted key")
    if signature is None:
        raise BundleSignatureError(
            f"{where}: bundle is not signed (no {SIGNATURE}) and "
            "store.trusted_public_keys requires a signature"
        )
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise BundleSignatureError(f"{where}/{SIGNATURE}: larger than {MAX_SIGNATURE_BYTES} bytes")
    try:
        doc = msgspec.json.decode(signature, type=ManifestSignature)
        raw = base64.b64decode(doc.signature, validate=True)
    except (msgspec.DecodeError, binascii.Error, ValueError) as exc:
        raise BundleSignatureError(f"{where}/{SIGNATURE}: malformed ({exc})") from None
    if doc.format != SIGNATURE_FORMAT or doc.algorithm != ALGORITHM:
        raise BundleSignatureError(
            f"{where}/{SIGNATURE}: unsupported format "
            f"{doc.format[:60]!r} / algorithm {doc.algorithm[:20]!r}"
        )
    if doc.bundle_id != manifest.bundle_id:
        raise BundleSignatureError(
            f"{where}/{SIGNATURE}: signs bundle "
            f"{doc.bundle_id[:12]!r}, not {manifest.bundle_id[:12]}"
        )
    message = signed_message(manifest)
    # The key id only picks the key to try first; every trusted key is tried.
    order = sorted(keys.items(), key=lambda kv: kv[0] != doc.key_id)
    for kid, key in order:
        try:
            key.verify(raw, message)
            return kid
        except InvalidSignature:
            continue
    raise BundleSignatureError(
        f"{where}/{SIGNATURE}: signature (key id {doc.key_id[:16]!r}) "
        "does not verify with any of the "
        f"{len(keys)} trusted public key(s)"
    )
