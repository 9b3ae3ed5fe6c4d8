"""The monitor's Prometheus metrics as one typed bundle, built from a registry passed in.

Label sets are small and fixed: ``feature`` takes the schema's feature names plus
``prediction``; ``type`` and ``severity`` the alert types and severities; ``source`` / ``result``
the fixed record outcomes below. Segment ids and keys never become labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from segstream.services.monitor.performance import window_statistics
from segstream.shared.alerts import SEVERITIES, Alert
from segstream.shared.store import RELOAD_FAILURE_REASONS

RECORD_SOURCES = ("stats", "predictions", "outcomes")
RECORD_RESULTS = (
    "ok",
    "malformed",
    "late",
    "duplicate",
    "foreign",
    "untimed",
    "no_reference",
    "unsampled",
    "out_of_range",
)
JOIN_RESULTS = (
    "joined",
    "joined_nan",
    "expired_prediction",
    "unmatched_outcome",
    "late",
    "duplicate",
)
WINDOW_KINDS = ("drift", "new_segment", "performance")
#: Bounded state: pending join entries evicted (oldest first) and unknown-key events not
#: tracked, when ``monitor.pending_max`` / ``monitor.new_segment_max_keys`` is reached.
OVERFLOW_STATES = ("pending_predictions", "pending_outcomes", "new_keys")
MONITOR_ALERT_TYPES = ("drift", "new_segment", "performance")
#: The monitor's state tables (:mod:`.state`; changelog topic ``<app_id>-state-changelog``).
STATE_TABLES = ("drift", "newkeys", "pending_p", "pending_o", "perf", "meta", "perfmerge")
#: Window statistics of binomial and Poisson models (``statistic`` label of
#: ``segstream_monitor_window_statistic`` and ``_test_statistic``).
FAMILY_STATISTIC_NAMES = ("log_loss", "brier", "auroc", "auroc_error_bound", "deviance", "mae")
#: The finding that carries each statistic's test figure.
_FINDING_OF = {
    "log_loss_ratio": "log_loss",
    "brier_ratio": "brier",
    "auroc_drop": "auroc",
    "deviance_ratio": "deviance",
}


@dataclasses.dataclass
class MonitorMetrics:
    """Every metric of the monitor. Build with :meth:`create`; it is the core's observer."""

    psi: Gauge
    js_distance: Gauge
    alerts: Counter
    windows_closed: Counter
    records: Counter
    join: Counter
    window_mae: Gauge
    window_mae_ratio: Gauge
    window_coverage: Gauge
    window_outcomes: Gauge
    pending: Gauge
    watermark: Gauge
    features: frozenset[str]
    bundle_reload_failures: Counter
    state_overflow: Counter
    changelog_records: Counter
    changelog_skipped: Counter
    restored_records: Counter
    restored_records_malformed: Counter
    restore_seconds: Gauge
    window_statistic: Gauge
    test_statistic: Gauge

    @classmethod
    def create(
        cls, registry: CollectorRegistry, features: Sequence[str], namespace: str = "segstream"
    ) -> MonitorMetrics:
        """Register the monitor's metrics in ``registry`` (tests pass a fresh one).

        Parameters
        ----------
        features : sequence of str
            The schema's feature names: the only values of the ``feature`` label (plus
            ``prediction``).
        """
        ns = namespace + "_monitor"
        m = cls(
            psi=Gauge(
                f"{ns}_psi",
                "PSI of the last closed window, whole model, per feature.",
                ["feature"],
                registry=registry,
            ),
            js_distance=Gauge(
                f"{ns}_js_distance",
                "Jensen-Shannon distance (base 2) of the "
                "last closed window, whole model, per feature.",
                ["feature"],
                registry=registry,
            ),
            alerts=Counter(
                f"{ns}_alerts",
                "Alerts produced, by type and severity.",
                ["type", "severity"],
                registry=registry,
            ),
            windows_closed=Counter(
                f"{ns}_windows_closed",
                "Windows closed, by kind (new_segment: unknown-key entries forgotten after "
                "the lookback).",
                ["kind"],
                registry=registry,
            ),
            records=Counter(
                f"{ns}_records",
                "Input records by source topic and result.",
                ["source", "result"],
                registry=registry,
            ),
            join=Counter(
                f"{ns}_outcome_join",
                "Outcome/prediction join results: joined, "
                "joined_nan (null outcome), expired_prediction (no outcome in time), "
                "unmatched_outcome (no prediction), late, duplicate.",
                ["result"],
                registry=registry,
            ),
            window_mae=Gauge(
                f"{ns}_window_mae",
                "MAE of the last closed performance window, whole model (target units).",
                registry=registry,
            ),
            window_mae_ratio=Gauge(
                f"{ns}_window_mae_ratio",
                "Window MAE / the bundle's test MAE, last closed window.",
                registry=registry,
            ),
            window_coverage=Gauge(
                f"{ns}_window_interval_coverage",
                "Share of outcomes inside the prediction interval, last closed window.",
                registry=registry,
            ),
            window_outcomes=Gauge(
                f"{ns}_window_outcomes",
                "Outcomes with a value in the last closed performance window.",
                registry=registry,
            ),
            pending=Gauge(
                f"{ns}_pending_entries",
                "Entries waiting for the join, by kind.",
                ["kind"],
                registry=registry,
            ),
            watermark=Gauge(
                f"{ns}_watermark_seconds",
                "Event-time clocks (Unix seconds).",
                ["clock"],
                registry=registry,
            ),
            features=frozenset([*features, "prediction"]),
            bundle_reload_failures=Counter(
                f"{namespace}_bundle_reload_failures",
                "Failed bundle reloads (worker and "
                "monitor) by reason; each cause also alerts once.",
                ["reason"],
                registry=registry,
            ),
            state_overflow=Counter(
                f"{ns}_state_overflow",
                "Bounded monitor state: pending join entries evicted (oldest first) and "
                "unknown-key events not tracked, by state.",
                ["state"],
                registry=registry,
            ),
            changelog_records=Counter(
                f"{ns}_changelog_records",
                "Changelog records sent (one per changed key per micro-batch), by table.",
                ["table"],
                registry=registry,
            ),
            changelog_skipped=Counter(
                f"{ns}_changelog_skipped",
                "Keys created and deleted within one micro-batch (a pending join entry "
                "joined in its own batch): no changelog record needed, by table.",
                ["table"],
                registry=registry,
            ),
            restored_records=Counter(
                f"{ns}_restored_records",
                "State changelog records read back on partition assignments.",
                registry=registry,
            ),
            restored_records_malformed=Counter(
                f"{ns}_restored_records_malformed",
                "State changelog records skipped on restore (undecodable or wrong shape).",
                registry=registry,
            ),
            restore_seconds=Gauge(
                f"{ns}_restore_seconds",
                "Duration of the last state restore (partition assignment).",
                registry=registry,
            ),
            window_statistic=Gauge(
                f"{ns}_window_statistic",
                "Binomial and Poisson models, last closed performance window, whole model: "
                "log_loss, brier, auroc (binned), auroc_error_bound (bound of the binning's "
                "error), deviance (mean unit Poisson deviance), mae.",
                ["statistic"],
                registry=registry,
            ),
            test_statistic=Gauge(
                f"{ns}_test_statistic",
                "The serving bundles' test figure of the same statistic (log_loss, brier, "
                "auroc, deviance), weighted by the window's outcomes per bundle.",
                ["statistic"],
                registry=registry,
            ),
        )
        for st in OVERFLOW_STATES:
            m.state_overflow.labels(state=st)
        for tb in STATE_TABLES:
            m.changelog_records.labels(table=tb)
            m.changelog_skipped.labels(table=tb)
        for r in RELOAD_FAILURE_REASONS:
            m.bundle_reload_failures.labels(reason=r)
        for t in MONITOR_ALERT_TYPES:
            for s in SEVERITIES:
                m.alerts.labels(type=t, severity=s)
        for k in WINDOW_KINDS:
            m.windows_closed.labels(kind=k)
        for src in RECORD_SOURCES:
            for r in RECORD_RESULTS:
                m.records.labels(source=src, result=r)
        for r in JOIN_RESULTS:
            m.join.labels(result=r)
        return m

    # ------------------------------------------------------------- observer API of the core
    def on_alert(self, alert: Alert) -> None:
        self.alerts.labels(type=alert.type, severity=alert.severity).inc()

    def on_drift(self, findings: Sequence[Any], window_start_ms: int) -> None:
        for f in findings:
            if f.segment is None and f.feature in self.features:
                self.psi.labels(feature=f.feature).set(f.psi)
                self.js_distance.labels(feature=f.feature).set(f.js_distance)

    def on_performance(
        self, findings: Sequence[Any], state: dict[str, Any], window_start_ms: int
    ) -> None:
        if state["n"]:
            self.window_mae.set(state["sum_abs"] / state["n"])
        self.window_outcomes.set(state["n"])
        for f in findings:
            if f.segment is None and f.statistic == "mae_ratio":
                self.window_mae_ratio.set(f.value)
            elif f.statistic == "interval_coverage":
                self.window_coverage.set(f.value)
            elif f.statistic in _FINDING_OF and f.baseline is not None:
                self.test_statistic.labels(statistic=_FINDING_OF[f.statistic]).set(f.baseline)
        for name, value in window_statistics(state).items():
            self.window_statistic.labels(statistic=name).set(value)

    def record(self, source: str, result: str, n: int = 1) -> None:
        self.records.labels(source=source, result=result).inc(n)

    def joined(self, result: str, n: int = 1) -> None:
        self.join.labels(result=result).inc(n)

    def closed(self, kind: str, n: int = 1) -> None:
        self.windows_closed.labels(kind=kind).inc(n)

    def overflow(self, state: str, n: int = 1) -> None:
        self.state_overflow.labels(state=state).inc(n)
