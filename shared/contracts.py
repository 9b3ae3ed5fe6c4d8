"""Typed wire contracts: every record that crosses a process boundary, as a ``msgspec.Struct``.

One module holds them all (the data contracts page, ``docs/contracts.md``, points here):

| record | type | produced by → consumed by |
|---|---|---|
| event (value) | :func:`event_struct` | producers, simulator → worker |
| outcome (value) | :func:`outcome_struct` | producers, simulator → monitor |
| prediction (value) | :class:`Prediction` | worker → monitor, consumers |
| DLQ headers | :class:`DlqHeaders` | worker → operators, re-processing tools |
| stats (value) | :class:`StatsRecord` | worker → monitor |
| alert (value) | :class:`Alert` | worker, monitor → alerting |
| model update (value) | :class:`ModelUpdate` | ``segstream train`` → worker |

Events and outcomes are configuration-driven, so their types are built from the schema with
:func:`msgspec.defstruct`; the others are fixed classes. JSON Schemas generated from these types
(:func:`json_schemas`) are committed under ``docs/schemas/`` for producers in other languages;
``python -m segstream.shared.contracts --write docs/schemas`` regenerates them and ``--check``
compares (a unit test does the same).

**Unknown fields** are ignored when decoding (msgspec's default, ``forbid_unknown_fields=False``):
a producer may add a field before its consumers know it. **Missing fields** are errors, except
those with a default here (the optional ``contributions`` of a prediction, the fields that only
some alert types carry, ``uri``/``created_at`` of a model update). Values are decoded strictly
(no string-to-number coercion), except the DLQ headers, whose values are text on the wire.

Decode with a reusable decoder, e.g. ``msgspec.json.Decoder(StatsRecord).decode(value)``, or
``msgspec.convert(obj, StatsRecord)`` for an already decoded JSON object; both raise
:class:`msgspec.ValidationError` naming the offending field (``$.numeric.x[1]``).
"""

from __future__ import annotations

import argparse
import json
import keyword
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

if TYPE_CHECKING:
    from segstream.shared.settings import SchemaSettings

__all__ = [
    "ALERT_TYPES",
    "DLQ_REASONS",
    "SEVERITIES",
    "Alert",
    "DlqHeaders",
    "ModelUpdate",
    "Prediction",
    "StatsRecord",
    "event_struct",
    "json_schemas",
    "outcome_struct",
]

# ----------------------------------------------------------------------------- shared types
#: A bundle id: the content hash of a bundle (also checked with
#: :func:`segstream.shared.bundle.is_bundle_id`, which refuses a trailing newline that a JSON
#: Schema ``$`` lets through).
BundleId = Annotated[
    str,
    Meta(pattern="^[0-9a-f]{64}$", description="Bundle id: 64 lowercase hexadecimal characters."),
]
#: A count of events, records or bins.
Count = Annotated[int, Meta(ge=0)]
#: Counts per bin, in the bins of the bundle's drift reference (:mod:`segstream.shared.drift`).
BinCounts = list[Count]
#: An ISO 8601 time in UTC written by segstream (``2013-09-01T05:16:00.000Z``).
UtcTime = Annotated[str, Meta(description="ISO 8601 UTC time, e.g. 2013-09-01T09:16:00.000Z.")]
#: An ISO 8601 time as a producer sent it (an offset or ``Z``; without one, UTC is assumed).
EventTime = Annotated[
    str, Meta(description="ISO 8601 time (with a UTC offset or Z; without one it is taken as UTC).")
]

#: The fixed set of DLQ reasons (the worker's ``WORKER_DLQ_REASONS``: the decoder's reasons,
#: ``scoring_error`` and ``event_time_out_of_range``; a unit test keeps them equal).
DLQ_REASONS: tuple[str, ...] = (
    "empty",
    "too_large",
    "invalid_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_time",
    "undecodable",
    "scoring_error",
    "event_time_out_of_range",
)
DlqReason = Literal[
    "empty",
    "too_large",
    "invalid_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_time",
    "undecodable",
    "scoring_error",
    "event_time_out_of_range",
]

#: Alert types and severities (see :class:`Alert`).
ALERT_TYPES: tuple[str, ...] = (
    "drift",
    "new_segment",
    "performance",
    "bundle_rejected",
    "bundle_reload_failed",
    "scoring_failed",
)
AlertType = Literal[
    "drift",
    "new_segment",
    "performance",
    "bundle_rejected",
    "bundle_reload_failed",
    "scoring_failed",
]
SEVERITIES: tuple[str, ...] = ("warning", "critical")
Severity = Literal["warning", "critical"]


# ----------------------------------------------------------------------------- events
#: JSON types the worker accepts per schema field type (``services/worker/decode.py``):
#: any JSON number in float and int fields, ``true``/``false`` in bool fields, strings in
#: string and datetime fields.
_EVENT_TYPES: dict[str, Any] = {
    "float": float,
    "int": float,
    "bool": bool,
    "string": str,
    "datetime": str,
}


def _attr(name: str, i: int) -> str:
    """A Python attribute name for the JSON field ``name`` (renamed back on the wire)."""
    return (
        name
        if name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")
        else f"field_{i}"
    )


def event_struct(schema: SchemaSettings, *, name: str = "Event") -> type[Struct]:
    """The Struct type of an event value of ``schema``: one field per event field (all but
    the target).

    The Kafka key of an event is its id field as UTF-8 text. A required field must be present
    and not null; an optional one may be absent or null (``None``). Types are those the worker
    accepts: any JSON number in ``float`` and ``int`` fields, ``true``/``false`` in ``bool``
    fields, strings in ``string`` and ``datetime`` fields (a datetime must also parse as ISO
    8601 between 1677 and 2262, which the worker checks: DLQ reason ``bad_time``). Unknown
    fields are ignored, as the worker ignores them.

    Parameters
    ----------
    schema : SchemaSettings
    name : str
        The Struct's name (the title of its JSON Schema).

    Returns
    -------
    type
        A ``msgspec.Struct`` subclass (keyword-only, required fields first); attributes are
        the field names (``field_<i>`` for names that are not Python identifiers).

    Examples
    --------
    >>> from segstream.shared.settings import SchemaSettings
    >>> schema = SchemaSettings(fields=[
    ...     {"name": "id", "type": "string", "role": "id", "required": True},
    ...     {"name": "t", "type": "datetime", "role": "time", "required": True},
    ...     {"name": "x", "type": "int", "role": "numeric"},
    ...     {"name": "y", "type": "float", "role": "target"}])
    >>> Event = event_struct(schema)
    >>> msgspec.json.decode(b'{"id": "a", "t": "2013-01-01T00:00:00Z", "x": 2}', type=Event)
    Event(id='a', t='2013-01-01T00:00:00Z', x=2.0)
    >>> msgspec.json.decode(b'{"id": "a", "x": 2}', type=Event)
    Traceback (most recent call last):
    ...
    msgspec.ValidationError: Object missing required field `t`
    """
    required: list[tuple[str, Any]] = []
    optional: list[tuple[str, Any, Any]] = []
    rename: dict[str, str] = {}
    for i, f in enumerate(schema.event_fields):
        attr = _attr(f.name, i)
        if attr != f.name:
            rename[attr] = f.name
        text = f"{f.role} ({f.type}{', required' if f.required else ''})"
        if f.description:
            text += f": {f.description}"
        base = EventTime if f.type == "datetime" else _EVENT_TYPES[f.type]
        t: Any = Annotated[base, Meta(description=text)]
        if f.required:
            required.append((attr, t))
        else:
            optional.append((attr, t | None, None))
    # gc=False: the fields are scalars, so an event is never part of a reference cycle.
    return msgspec.defstruct(
        name, [*required, *optional], kw_only=True, gc=False, rename=rename or None, module=__name__
    )


def outcome_struct(
    id_field: str, time_field: str, target: str, *, name: str = "Outcome"
) -> type[Struct]:
    """The Struct type of an outcome value: ``{<id>, <target>, <time>, outcome_time}``.

    Sent (keyed by the event id, so co-partitioned with the event and its prediction) by the
    simulator (:func:`segstream.shared.events.encode_outcomes`) or any producer that learns
    outcomes; the monitor joins it to the prediction. The field names are the schema's:
    ``outcome_struct(schema.id_field, schema.time_field, schema.target)``.

    Fields: the id (a string); the target (a number, or null when there is no outcome, e.g. a
    cancelled flight); the event's time (ISO 8601, required); ``outcome_time`` (ISO 8601 or
    null: when the outcome became known, the monitor's outcome clock; null means the event
    time).

    Returns
    -------
    type
        A ``msgspec.Struct`` subclass; all four fields must be present.
    """
    names = [id_field, target, time_field, "outcome_time"]
    if len(set(names)) != len(names):
        raise ValueError(f"outcome_struct: field names must differ, got {names}")
    fields = [
        (id_field, Annotated[str, Meta(description="The event id (also the Kafka key).")]),
        (
            target,
            Annotated[
                float | None,
                Meta(description="The outcome, or null when there is none (cancelled, diverted)."),
            ],
        ),
        (time_field, Annotated[EventTime, Meta(description="The event's time.")]),
        (
            "outcome_time",
            Annotated[
                EventTime | None,
                Meta(description="When the outcome became known; null: at the event time."),
            ],
        ),
    ]
    attrs = [(_attr(n, i), t) for i, (n, t) in enumerate(fields)]
    rename = {a: n for (a, _), (n, _) in zip(attrs, fields, strict=True) if a != n}
    return msgspec.defstruct(name, attrs, gc=False, rename=rename or None, module=__name__)


# ----------------------------------------------------------------------------- predictions
#: Target families of a bundle (``training.regression.family``).
Family = Literal["gaussian", "binomial", "poisson"]


class Prediction(Struct, gc=False, omit_defaults=True):
    """A prediction record (topic ``topics.predictions``, key: the event id).

    One per scored event, written by the worker
    (:func:`segstream.services.worker.records.encode_predictions`). Non-finite numbers are
    written as null. Consumers keep one record per ``event_id`` (an at-least-once redelivery
    or a duplicated event scores the same id again).

    The bundle's target family decides how to read the numbers: ``gaussian`` (no ``family``
    field) a point prediction in target units with a split-conformal interval and the
    outcome pattern; ``binomial`` the probability of the outcome 1 (``prediction`` and
    ``probability``), its ``label`` by the bundle's ``threshold``, no interval (null) and no
    pattern (-1, null); ``poisson`` the expected count, with the central Poisson interval of
    mass ``interval_mass`` and no pattern.
    """

    event_id: str
    model: str
    bundle_id: BundleId
    segment: Annotated[int, Meta(description="The segment (leaf) the event was routed to.")]
    fallback_level: Annotated[
        int,
        Meta(
            ge=0,
            description=(
                "0: the segment's own model predicted; k: its k-th ancestor's (too little data)."
            ),
        ),
    ]
    prediction: Annotated[
        float | None,
        Meta(
            description=(
                "Point prediction, target units (binomial: P(outcome = 1); poisson: the "
                "expected count)."
            )
        ),
    ]
    interval: Annotated[
        tuple[float | None, float | None],
        Meta(
            description=(
                "[low, high] prediction interval of mass interval_mass; null: unbounded "
                "(binomial: both null)."
            )
        ),
    ]
    interval_mass: float
    pattern: Annotated[
        int,
        Meta(description="Most probable outcome pattern of the event (-1: none, not gaussian)."),
    ]
    pattern_proba: float | None
    event_time: Annotated[str | None, Meta(description="The event's time, as it was sent.")]
    scored_at: UtcTime
    family: Annotated[Family, Meta(description="The bundle's target family; absent: gaussian.")] = (
        "gaussian"
    )
    probability: Annotated[
        float | UnsetType | None,
        Meta(description="binomial: P(outcome = 1), the same as prediction."),
    ] = UNSET
    label: Annotated[
        Annotated[int, Meta(ge=-1, le=1)] | UnsetType,
        Meta(description="binomial: the class by the threshold, 1 or 0 (-1: no probability)."),
    ] = UNSET
    threshold: Annotated[
        float | UnsetType | None,
        Meta(
            description=(
                "binomial: the bundle's probability threshold of label (chosen on the "
                "validation slice or set in the configuration)."
            )
        ),
    ] = UNSET
    contributions: Annotated[
        dict[str, float | None] | UnsetType,
        Meta(
            description=(
                "Per-feature contributions to the prediction (with "
                "worker.include_contributions); binomial and poisson: to the linear "
                "predictor (log-odds, log of the expected count)."
            )
        ),
    ] = UNSET


# ----------------------------------------------------------------------------- DLQ headers
#: Prefix of the headers the worker adds to a DLQ record.
DLQ_HEADER_PREFIX = "segstream.dlq."


class DlqHeaders(Struct, rename=lambda f: DLQ_HEADER_PREFIX + f, forbid_unknown_fields=False):
    """The headers the worker adds to a DLQ record (topic ``topics.dlq``).

    The DLQ record keeps the rejected event's key, value and headers, then these headers
    follow (``services/worker/records.py``, ``dlq_value_and_headers``). Kafka header values are
    bytes: each is the UTF-8 text of the field, integers in decimal. Parse them with
    :meth:`from_headers`; :meth:`to_headers` writes them.
    """

    reason: Annotated[DlqReason, Meta(description="Why the event was rejected.")]
    detail: Annotated[
        str,
        Meta(
            max_length=500,
            description=(
                "What was wrong (the offending field, the parser's message); at most 500 bytes."
            ),
        ),
    ]
    topic: Annotated[str, Meta(description="The topic the event was read from.")]
    partition: Annotated[int, Meta(ge=0, description="Its partition.")]
    offset: Annotated[int, Meta(ge=0, description="Its offset.")]
    worker: Annotated[str, Meta(description="The worker that rejected it.")]
    truncated_from_bytes: Annotated[
        Count | UnsetType,
        Meta(
            description=(
                "The original value's size, when the DLQ value is truncated (to "
                "worker.dlq_max_value_bytes, or to fit the producer's message.max.bytes)."
            )
        ),
    ] = UNSET
    key_truncated_from_bytes: Annotated[
        Count | UnsetType,
        Meta(
            description=("The original key's size, when the key is cut to fit message.max.bytes.")
        ),
    ] = UNSET
    headers_dropped: Annotated[
        Count | UnsetType,
        Meta(
            description=(
                "How many of the event's own headers were dropped to fit message.max.bytes."
            )
        ),
    ] = UNSET
    exception: Annotated[
        str | UnsetType,
        Meta(description=("scoring_error: the type of the exception scoring raised.")),
    ] = UNSET
    watermark: Annotated[
        UtcTime | UnsetType,
        Meta(
            description=(
                "event_time_out_of_range: the source partition's event-time watermark the "
                "event was judged against."
            )
        ),
    ] = UNSET
    limit: Annotated[
        str | UnsetType,
        Meta(
            description=(
                "event_time_out_of_range: the limit the event exceeded, in seconds: "
                "max_future_s=86400 (ahead of the watermark) or max_past_s=604800 (behind)."
            )
        ),
    ] = UNSET

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes | None]] | None) -> DlqHeaders:
        """Parse the ``segstream.dlq.*`` headers of a DLQ record (other headers are the
        event's own and are skipped; a repeated name keeps the last value).

        Raises
        ------
        msgspec.ValidationError
            A header is missing, or its value is not of its type (``$.segstream.dlq.offset``).
        UnicodeDecodeError
            A value is not UTF-8.
        """
        text = {k: (v or b"").decode() for k, v in headers or () if k.startswith(DLQ_HEADER_PREFIX)}
        return msgspec.convert(text, cls, strict=False)

    def to_headers(self) -> list[tuple[str, bytes]]:
        """The headers as ``(name, UTF-8 value)`` pairs, in field order."""
        return [(k, str(v).encode()) for k, v in msgspec.to_builtins(self).items()]


# ----------------------------------------------------------------------------- stats
class StatsRecord(Struct):
    """A stats record (topic ``topics.stats``, key: the model name).

    One per worker batch and event-time slice (``services/worker/stats.py``): counts in the
    bins of the bundle's drift reference, which add up across batches and workers. The
    monitor sums them per window and judges drift (PSI, JS distance) and new segments.
    """

    model: str
    bundle_id: BundleId
    worker: str
    batch: Annotated[int, Meta(ge=0, description="The batch's sequence number in its worker.")]
    n_events: Annotated[Count, Meta(description="Events of the record: scored + DLQ.")]
    n_scored: Count
    n_dlq: Count
    dlq: Annotated[dict[str, Count], Meta(description="DLQ records per reason.")]
    event_time_min: UtcTime | None
    event_time_max: UtcTime | None
    numeric: Annotated[
        dict[str, BinCounts],
        Meta(description="Per numeric feature: counts per reference bin (last bin: missing)."),
    ]
    categorical: Annotated[
        dict[str, BinCounts],
        Meta(description="Per categorical feature: counts per category, other, missing."),
    ]
    prediction: Annotated[
        BinCounts | None,
        Meta(description="Counts per prediction bin; null without a prediction reference."),
    ]
    fallback_levels: Annotated[
        dict[str, Count], Meta(description='Predictions per fallback level ("0", "1", ...).')
    ]
    unknown_keys: Annotated[
        dict[str, Count],
        Meta(description="Events per unknown key combination (the most frequent ones)."),
    ]
    unknown_keys_other: Annotated[
        Count, Meta(description="Events with an unknown key not named in unknown_keys.")
    ]
    segments: Annotated[
        dict[str, dict[str, BinCounts]],
        Meta(description="Per large segment id: counts per bin of its own references."),
    ]
    partition_time_max: Annotated[
        dict[str, UtcTime],
        Meta(description="Per source partition: the largest event time (the drift watermark)."),
    ]
    imputed: Annotated[Count, Meta(description="Events scored with imputed features.")]
    created_at: str
    slice_start: Annotated[
        UtcTime | None,
        Meta(description="Start of the record's event-time slice; null: unsliced or untimed."),
    ]
    slice_s: Annotated[
        Annotated[int, Meta(gt=0)] | None,
        Meta(description="Slice length in seconds; null: unsliced or untimed."),
    ]
    unknown_key_nodes: Annotated[
        dict[str, Annotated[int, Meta(ge=0)]],
        Meta(
            description=(
                "Per key of unknown_keys: the tree node whose model served most of its events "
                "(the nearest known ancestor segment the routing fell back to)."
            )
        ),
    ] = {}


# ----------------------------------------------------------------------------- alerts
class Alert(Struct, kw_only=True):
    """An alert record (topic ``topics.alerts``, key: its subject, see
    :func:`segstream.shared.alerts.alert_key`).

    Built by :mod:`segstream.shared.alerts` for the worker and the monitor. The fields up to
    ``detected_at`` are always present (null where they do not apply); the others only on
    the alert types named in their descriptions.
    """

    alert_id: Annotated[
        str,
        Meta(
            description=(
                "32 hex characters; deterministic for drift, new_segment and performance alerts "
                "(a re-sent duplicate has the same id), random for one-off bundle alerts."
            )
        ),
    ]
    type: AlertType
    severity: Severity
    model: str
    bundle_id: BundleId | None
    feature: Annotated[
        str | None,
        Meta(description=('The feature ("prediction": the prediction\'s own distribution).')),
    ]
    segment: Annotated[
        int | str | None,
        Meta(description=("The segment id, or the unknown key of a new_segment alert.")),
    ]
    statistic: Annotated[
        str,
        Meta(
            description=(
                "psi, count, mae_ratio, interval_coverage, log_loss_ratio, brier_ratio, "
                "auroc_drop, deviance_ratio, bundle_verification, bundle_reload, failed_share."
            )
        ),
    ]
    value: float | None
    threshold: float | None
    window_start: UtcTime | None
    window_end: UtcTime | None
    count: Annotated[Count, Meta(description="Events behind the value.")]
    detected_at: UtcTime
    # drift
    js_distance: Annotated[
        float | UnsetType, Meta(description="drift: Jensen-Shannon distance (base 2).")
    ] = UNSET
    # new_segment
    first_seen: Annotated[
        UtcTime | UnsetType | None,
        Meta(
            description=(
                "new_segment: earliest event time of the key (of the first stats record "
                "naming it); count is the key's events since then within "
                "monitor.new_segment_lookback_s."
            )
        ),
    ] = UNSET
    serving_segment: Annotated[
        int | UnsetType,
        Meta(
            description=(
                "new_segment: the tree node (an ancestor segment of the partition tree) whose "
                "model serves the key: the nearest known ancestor it falls back to."
            )
        ),
    ] = UNSET
    # performance
    n_nan: Annotated[
        Count | UnsetType, Meta(description="performance: outcomes without a value in the window.")
    ] = UNSET
    mae: Annotated[float | UnsetType, Meta(description="performance: the window's MAE.")] = UNSET
    baseline_mae: Annotated[
        float | UnsetType, Meta(description="performance: the bundles' test MAE.")
    ] = UNSET
    observed: Annotated[
        float | UnsetType,
        Meta(
            description=(
                "performance (log_loss_ratio, brier_ratio, auroc_drop, deviance_ratio): the "
                "window's log loss, Brier score, AUROC or mean Poisson deviance."
            )
        ),
    ] = UNSET
    baseline: Annotated[
        float | UnsetType,
        Meta(description="performance: the bundles' test figure of the same statistic."),
    ] = UNSET
    error_bound: Annotated[
        float | UnsetType,
        Meta(
            description=(
                "performance (auroc_drop): bound of the binned AUROC's error (probabilities "
                "in 1000 bins; pairs in one bin count as ties)."
            )
        ),
    ] = UNSET
    band: Annotated[
        tuple[float, float] | UnsetType,
        Meta(description="performance (interval_coverage): the accepted coverage band."),
    ] = UNSET
    ci: Annotated[
        tuple[float, float] | UnsetType,
        Meta(
            description=(
                "performance: 95 % confidence interval of the value (ratios: normal "
                "approximation of the window's mean over the test figure; interval_coverage: "
                "Wilson score; auroc_drop: Hanley-McNeil standard error)."
            )
        ),
    ] = UNSET
    sample_rate: Annotated[
        float | UnsetType,
        Meta(
            description=(
                "performance: share of events in the join sample (monitor.join_sample_rate), "
                "when below 1; count is the sampled count."
            )
        ),
    ] = UNSET
    # bundle_rejected, bundle_reload_failed
    reason: Annotated[
        str | UnsetType, Meta(description="bundle alerts: what was wrong (the error message).")
    ] = UNSET
    current_bundle_id: Annotated[
        BundleId | UnsetType | None,
        Meta(description="bundle alerts: the bundle that keeps serving."),
    ] = UNSET
    failure: Annotated[
        str | UnsetType,
        Meta(
            description=(
                "bundle_reload_failed: the reason label of segstream_bundle_reload_failures_total."
            )
        ),
    ] = UNSET
    # scoring_failed (reason: the exception's message, cut to 500 characters)
    worker: Annotated[
        str | UnsetType, Meta(description="scoring_failed: the worker that stopped consuming.")
    ] = UNSET
    exception: Annotated[
        str | UnsetType, Meta(description="scoring_failed: the type of the (last) exception.")
    ] = UNSET


# ----------------------------------------------------------------------------- model updates
class ModelUpdate(Struct, frozen=True):
    """A record of the model-updates topic (key: the model name), sent by the trainer after
    it moved ``LATEST``. Only a hint to re-read ``LATEST``: the ids are informational."""

    model: str
    bundle_id: BundleId
    uri: Annotated[str, Meta(description="Where the bundle is stored.")] = ""
    created_at: str = ""


# ----------------------------------------------------------------------------- JSON Schemas
#: The fixed records, by schema file name (without ``.json``).
RECORDS: dict[str, type[Struct]] = {
    "prediction": Prediction,
    "dlq-headers": DlqHeaders,
    "stats": StatsRecord,
    "alert": Alert,
    "model-update": ModelUpdate,
}
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


_ROLE = re.compile(r":[a-z]+:`(~?)([\w.]+)`")


def _plain_text(text: str) -> str:
    def ref(m: re.Match[str]) -> str:
        return m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)

    return _ROLE.sub(ref, text).replace("``", "")


def _plain(node: Any) -> Any:
    """``node`` with the reST markup of descriptions made plain text (````x```` becomes x,
    ``:role:`a.b.x``` a.b.x, ``:role:`~a.b.x``` x): the schemas are read outside Python."""
    if isinstance(node, dict):
        return {
            k: (_plain_text(v) if k == "description" and isinstance(v, str) else _plain(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def json_schema(t: Any) -> dict[str, Any]:
    """The JSON Schema (2020-12) of a contract type."""
    return {"$schema": _DIALECT, **_plain(msgspec.json.schema(t))}


def json_schemas(
    examples: Sequence[str] = ("flights", "flights_late"),
) -> dict[str, dict[str, Any]]:
    """Every contract's JSON Schema by file name: the fixed records, and the event and
    outcome of each packaged example configuration (``flights-event``, ``flights-outcome``,
    ``flights_late-event``, ``flights_late-outcome``: the late-flight classifier, whose outcome
    is the 0/1 ``late``).
    """
    import yaml

    from segstream.shared.settings import SchemaSettings, example_text

    out = {name: json_schema(t) for name, t in RECORDS.items()}
    for ex in examples:
        # The file's schema section only: environment overrides must not change the output.
        schema = SchemaSettings.model_validate(yaml.safe_load(example_text(ex))["schema"])
        title = "".join(w.capitalize() for w in ex.split("_"))
        out[f"{ex}-event"] = json_schema(event_struct(schema, name=f"{title}Event"))
        out[f"{ex}-outcome"] = json_schema(
            outcome_struct(
                schema.id_field, schema.time_field, schema.target, name=f"{title}Outcome"
            )
        )
    return out


def schema_texts(examples: Sequence[str] = ("flights", "flights_late")) -> dict[str, str]:
    """:func:`json_schemas` as file texts (``<name>.json`` → JSON, 2-space indent)."""
    return {
        f"{name}.json": json.dumps(s, indent=2, ensure_ascii=False) + "\n"
        for name, s in json_schemas(examples).items()
    }


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m segstream.shared.contracts",
        description="Write or check the JSON Schemas of the wire contracts.",
    )
    ap.add_argument("dir", nargs="?", default="docs/schemas", help="default: docs/schemas")
    ap.add_argument("--write", action="store_true", help="write the schema files")
    ap.add_argument(
        "--check", action="store_true", help="exit 1 when a file differs from the generated schema"
    )
    args = ap.parse_args(argv)
    root = Path(args.dir)
    texts = schema_texts()
    if args.write:
        root.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (root / name).write_text(text, encoding="utf-8")
            print(root / name)
        return 0
    if args.check:
        stale = [
            n
            for n, t in texts.items()
            if not (root / n).is_file() or (root / n).read_text(encoding="utf-8") != t
        ]
        extra = sorted(p.name for p in root.glob("*.json") if p.name not in texts)
        for n in stale:
            print(f"{root / n}: differs from the generated schema", file=sys.stderr)
        for n in extra:
            print(f"{root / n}: no contract generates it", file=sys.stderr)
        if stale or extra:
            print(
                "regenerate: python -m segstream.shared.contracts --write " + str(root),
                file=sys.stderr,
            )
            return 1
        return 0
    for name, text in texts.items():
        print(f"--- {name}\n{text}", end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
