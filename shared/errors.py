"""One exception root for segstream.

Every error an operator can cause (a bad config, a missing file, an unreachable broker, a
tampered bundle) is a :class:`SegstreamError` subclass whose message names the offending key,
field, file or address. The CLI prints such errors as one line and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SegstreamError(Exception):
    """Root of all segstream errors. The message says what is wrong and where."""

    exit_code = 2


class ConfigError(SegstreamError, ValueError):
    """A configuration file or environment override is invalid.

    The message names the key (dotted path), the file and, where it came from the environment,
    the variable. Fix the key or the variable and start again.
    """


class SchemaError(SegstreamError, ValueError):
    """Data or an event does not match the declared schema (missing column, wrong type).

    The message names the column. Fix the data or the schema in the config.
    """


class DataError(SegstreamError, ValueError):
    """Input data cannot be used as given (empty, no finite target, unparsable times).

    The message names the file or column. Fix the data set or the config that selects it.
    """


class NotFittedError(SegstreamError, ValueError, AttributeError):
    """An estimator was used before ``fit``. Call ``fit`` first (scikit-learn convention)."""


class BrokerError(SegstreamError, RuntimeError):
    """The Kafka broker cannot be started or reached.

    The message names the bootstrap address or port. Check that the broker runs and the address
    is right, or pick a free port for the embedded broker.
    """


class SchedulerError(SegstreamError, ConnectionError):
    """A Dask scheduler (``--dask-scheduler``) cannot be reached.

    The message names the address. Check that the scheduler runs and listens there (``dask
    scheduler`` prints its address), or leave the address out to start a local cluster.
    """


class BundleIntegrityError(SegstreamError):
    """A model bundle failed verification (hash mismatch, missing or extra file, bad format).

    The message names the file. Do not use the bundle: re-publish it from the trainer.
    """


class BundleCompatibilityError(SegstreamError):
    """A bundle is valid but cannot serve this deployment (newer format, different schema).

    Upgrade segstream or train a bundle for this schema.
    """


class StoreError(SegstreamError, OSError):
    """The artifact store cannot be read or written (unreachable, read-only, missing bundle).

    The message names the URL. Check the store URL and its credentials.
    """


class BundleIdError(SegstreamError, ValueError):
    """A bundle id is not 64 lowercase hexadecimal characters (a SHA-256).

    Bundle ids come from the store (``LATEST``, directory names), the model-updates topic,
    records read by the monitor and the command line; none of them builds a path before it
    passed this check. The message names where the id came from. Use a full id (or, on the
    command line, a unique prefix) as printed by ``segstream bundle list``.
    """


class LatestError(StoreError):
    """A model's ``LATEST`` in the artifact store is not a valid pointer to a bundle.

    The message names the file. Point it at a good bundle again with
    ``segstream bundle promote ID``.
    """


class BundleSignatureError(BundleIntegrityError):
    """A bundle is unsigned, or its signature does not verify with any trusted public key.

    Raised before any component of the bundle is read. Sign the bundle with a trusted key
    (``store.signing_key_file`` on the trainer, or ``segstream bundle sign``), or add its
    public key to ``store.trusted_public_keys``.
    """


class SigningKeyError(ConfigError):
    """A configured signing or trusted public key cannot be used (missing file, not an
    Ed25519 key in PEM format).

    The message names the setting and the file. Generate a key pair with
    ``segstream bundle keygen``.
    """


class ModelUpdateError(SegstreamError, ValueError):
    """A record on the model-updates topic is not a model-update message (not JSON, wrong
    fields, too large, an invalid bundle id).

    The record is ignored (a model update is only a hint to re-read ``LATEST``). Find out who
    produces to the topic; only the trainer should.
    """
