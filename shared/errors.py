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
