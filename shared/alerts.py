"""The alert record, built in one place for the worker and the monitor.

An alert is a :class:`segstream.shared.contracts.Alert` (its JSON Schema:
``docs/schemas/alert.json``), encoded with :func:`encode_alert` and keyed by its subject
(``feature``, ``segment`` or the key, see :func:`alert_key`)::

    {"alert_id", "type", "severity", "model", "bundle_id", "feature", "segment",
     "statistic", "value", "threshold", "window_start", "window_end", "count",
     "detected_at", ...the fields of its type}

``type`` is ``drift`` | ``new_segment`` | ``performance`` | ``bundle_rejected`` |
``bundle_reload_failed`` (the store or ``LATEST`` cannot be read; :mod:`segstream.shared.reloads`).
Monitor alerts have a **deterministic** ``alert_id`` (:func:`alert_id`) computed from the
type, model, bundle, subject, statistic and window, so a duplicate (e.g. re-sent after a
restart) carries the same id and is recognisable downstream. ``bundle_rejected`` and
``bundle_reload_failed`` alerts are one-off
events with a random id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

import msgspec

from segstream.shared.contracts import ALERT_TYPES, SEVERITIES, Alert

__all__ = [
    "ALERT_TYPES",
    "SEVERITIES",
    "Alert",
    "alert_id",
    "alert_key",
    "alert_record",
    "bundle_rejected_alert",
    "bundle_reload_failed_alert",
    "encode_alert",
    "iso_ms",
    "scoring_failed_alert",
    "subject_of",
    "utc_now_iso",
]

_ENCODER = msgspec.json.Encoder()


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC with milliseconds (``...Z``)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_ms(t_ms: int | float | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC (``...Z``); None stays None."""
    if t_ms is None:
        return None
    t = dt.datetime.fromtimestamp(t_ms / 1000.0, dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_id(
    type_: str,
    model: str,
    bundle_id: str | None,
    subject: str,
    window_start: str | None,
    window_end: str | None,
    statistic: str = "",
) -> str:
    """Deterministic id (32 hex chars) of an alert from its type, subject, statistic and window.

    The statistic is part of the id because one subject can break two checks in one window
    (a performance window's MAE ratio and its interval coverage).

    Examples
    --------
    >>> a = alert_id("drift", "flights", "b1", "feature=temp", "2013-12-01T00:00:00.000Z",
    ...              "2013-12-02T00:00:00.000Z")
    >>> a == alert_id("drift", "flights", "b1", "feature=temp", "2013-12-01T00:00:00.000Z",
    ...               "2013-12-02T00:00:00.000Z")
    True
    >>> len(a)
    32
    """
    text = "\x1f".join(
        [type_, model, bundle_id or "", subject, window_start or "", window_end or "", statistic]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def subject_of(feature: str | None, segment: Any) -> str:
    """The subject string of an alert: ``feature=F``, ``segment=S`` or both (``;``)."""
    parts = []
    if feature is not None:
        parts.append(f"feature={feature}")
    if segment is not None:
        parts.append(f"segment={segment}")
    return ";".join(parts) or "model"


def alert_record(
    *,
    type_: str,
    severity: str,
    model: str,
    bundle_id: str | None,
    feature: str | None,
    segment: Any,
    statistic: str,
    value: float | None,
    threshold: float | None,
    window_start: str | None,
    window_end: str | None,
    count: int,
    detected_at: str | None = None,
    **extra: Any,
) -> Alert:
    """A monitor alert with its deterministic ``alert_id`` (see the module docstring).

    Parameters
    ----------
    type_ : {"drift", "new_segment", "performance"}
    severity : {"warning", "critical"}
    model, bundle_id : str
    feature : str or None
        Feature name (``"prediction"`` for the prediction's own distribution).
    segment : int, str or None
        Segment id, or the unknown key of a ``new_segment`` alert.
    statistic : str
        ``psi``, ``count``, ``mae_ratio``, ``interval_coverage``.
    value, threshold : float
    window_start, window_end : str
        ISO 8601 UTC bounds of the event-time window.
    count : int
        Events behind the value.
    extra
        The fields of the alert's type (``js_distance``, ``first_seen``, ``mae``,
        ``baseline_mae``, ``band``, ``n_nan``: see :class:`~segstream.shared.contracts.Alert`).

    Returns
    -------
    Alert

    Raises
    ------
    ValueError
        An unknown type or severity.
    TypeError
        A field in ``extra`` that the alert contract does not have.
    """
    if type_ not in ALERT_TYPES:
        raise ValueError(f"unknown alert type {type_!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"unknown alert severity {severity!r}")
    subject = subject_of(feature, segment)
    return Alert(
        alert_id=alert_id(type_, model, bundle_id, subject, window_start, window_end, statistic),
        type=type_,  # type: ignore[arg-type]  # checked above
        severity=severity,  # type: ignore[arg-type]  # checked above
        model=model,
        bundle_id=bundle_id,
        feature=feature,
        segment=segment,
        statistic=statistic,
        value=value,
        threshold=threshold,
        window_start=window_start,
        window_end=window_end,
        count=int(count),
        detected_at=detected_at or utc_now_iso(),
        **extra,
    )


def alert_key(alert: Alert) -> bytes:
    """The Kafka key of an alert: its subject (``feature=...;segment=...``)."""
    return subject_of(alert.feature, alert.segment).encode()


def encode_alert(alert: Alert) -> bytes:
    """The JSON value of an alert record (fields its type does not carry are left out)."""
    return _ENCODER.encode(alert)


def _one_off(
    type_: str,
    *,
    model: str,
    bundle_id: str | None,
    statistic: str,
    severity: str,
    value: float | None = None,
    threshold: float | None = None,
    count: int = 1,
    **extra: Any,
) -> Alert:
    """An alert about an event rather than a window (random ``alert_id``; the window is the
    moment it was detected; no feature or segment)."""
    now = utc_now_iso()
    return Alert(
        alert_id=uuid.uuid4().hex,
        type=type_,  # type: ignore[arg-type]  # one of ALERT_TYPES, fixed by the callers
        severity=severity,  # type: ignore[arg-type]  # "warning" or "critical"
        model=model,
        bundle_id=bundle_id,
        feature=None,
        segment=None,
        statistic=statistic,
        value=value,
        threshold=threshold,
        window_start=now,
        window_end=now,
        count=count,
        detected_at=now,
        **extra,
    )


def bundle_rejected_alert(
    *,
    model: str,
    bundle_id: str,
    current_bundle_id: str | None,
    reason: str,
    severity: str = "critical",
) -> Alert:
    """A ``bundle_rejected`` alert record (one-off event: random ``alert_id``)."""
    return _one_off(
        "bundle_rejected",
        model=model,
        bundle_id=bundle_id,
        statistic="bundle_verification",
        severity=severity,
        reason=reason,
        current_bundle_id=current_bundle_id,
    )


def bundle_reload_failed_alert(
    *,
    model: str,
    bundle_id: str | None,
    current_bundle_id: str | None,
    reason: str,
    detail: str,
    severity: str = "warning",
) -> Alert:
    """A ``bundle_reload_failed`` alert: bundles cannot be reloaded for now (the store is
    unreachable, ``LATEST`` is malformed or names a missing bundle, a model-updates record is
    invalid); the current bundle keeps serving. One-off event: random ``alert_id``.

    Parameters
    ----------
    reason : str
        The ``reason`` label of ``segstream_bundle_reload_failures_total``.
    detail : str
        The error message.
    """
    return _one_off(
        "bundle_reload_failed",
        model=model,
        bundle_id=bundle_id,
        statistic="bundle_reload",
        severity=severity,
        reason=detail,
        current_bundle_id=current_bundle_id,
        failure=reason,
    )


def scoring_failed_alert(
    *,
    model: str,
    bundle_id: str,
    worker: str,
    failed: int,
    scored: int,
    max_failed_share: float,
    exception: str,
    reason: str,
    severity: str = "critical",
) -> Alert:
    """A ``scoring_failed`` alert (one-off event: random ``alert_id``): a worker's scoring
    failed for more than ``max_failed_share`` of the events it scored, so it judged its
    bundle broken and stopped consuming.

    Parameters
    ----------
    model, bundle_id, worker : str
    failed : int
        Events whose scoring failed (at least; counting stops at the limit).
    scored : int
        Events scored in the window judged (the batch, or the last ``1 / max_failed_share``).
    max_failed_share : float
    exception : str
        Type of the (last) exception.
    reason : str
        Its message, cut to 500 characters.
    """
    return _one_off(
        "scoring_failed",
        model=model,
        bundle_id=bundle_id,
        statistic="failed_share",
        severity=severity,
        value=failed / scored if scored else None,
        threshold=max_failed_share,
        count=int(failed),
        worker=worker,
        exception=exception,
        reason=reason[:500],
    )
