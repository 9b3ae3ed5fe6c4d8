"""The monitor's binomial and Poisson performance checks (no broker).

The window statistics are checked against scikit-learn's metrics on random data (log loss,
Brier score, AUROC within the binning's stated bound, mean Poisson deviance, MAE); partial
states of a window (partitions, monitor instances) merge into exactly the state of one
instance (counts and histograms exactly, float sums to rounding); a degraded classifier
raises log-loss, Brier and AUROC alerts through :class:`MonitorCore` with the test figures
of the bundle, and a calibrated one none.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest
from sklearn.metrics import (
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    mean_poisson_deviance,
    roc_auc_score,
)

from segstream.services.monitor.core import MonitorCore
from segstream.services.monitor.drift import MalformedRecord
from segstream.services.monitor.metrics import MonitorMetrics
from segstream.services.monitor.performance import (
    AUROC_BINS,
    Baseline,
    FamilyLimits,
    add_family_pairs,
    add_pair,
    auroc_ci,
    auroc_from_histogram,
    decode_prediction,
    empty_state,
    merge,
    pending_prediction,
    performance_findings,
    window_family,
    window_statistics,
)
from segstream.shared.contracts import Alert
from segstream.shared.drift import DriftReference
from segstream.shared.settings import MonitorSettings

DAY = 86_400_000
T0 = int(dt.datetime(2013, 9, 1, tzinfo=dt.UTC).timestamp() * 1000)
B1, B2 = "b1" * 32, "b2" * 32


def entry(p: float, family: str, *, bundle: str = B1, seg: int = 1) -> list[Any]:
    """A pending prediction entry of a binomial/poisson record (see pending_prediction)."""
    lo, hi = (None, None) if family == "binomial" else (np.floor(p / 2), np.ceil(2 * p))
    return [0, T0, float(p), lo, hi, seg, bundle, 0.8, family]


def out(y: float | None) -> list[Any]:
    return [0, T0, y, T0]


def state_of(p: np.ndarray, y: np.ndarray, family: str, bundles: Any = None) -> dict[str, Any]:
    st = empty_state()
    for i, (pi, yi) in enumerate(zip(p.tolist(), y.tolist(), strict=True)):
        b = bundles[i] if bundles is not None else B1
        st = add_pair(st, entry(pi, family, bundle=b), out(yi))
    return st


def classifier_data(n: int, seed: int, skill: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    p = 1 / (1 + np.exp(-(skill * z - 1.0)))
    y = (rng.random(n) < p).astype(np.float64)
    return p, y


# ----------------------------------------------------------------- statistics vs scikit-learn
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binomial_window_statistics_equal_sklearn(seed: int) -> None:
    p, y = classifier_data(3000, seed)
    st = state_of(p, y, "binomial")
    got = window_statistics(st)
    assert got["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-12)
    assert got["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-12)
    exact = roc_auc_score(y, p)
    # the binned AUROC is within its stated bound of the exact one, and the bound is small
    assert abs(got["auroc"] - exact) <= got["auroc_error_bound"] + 1e-15
    assert got["auroc_error_bound"] < 0.003
    assert abs(got["auroc"] - exact) < 2e-4
    b = st["binomial"]
    assert b["n"] == 3000 and b["n_pos"] == int(y.sum()) and b["n_invalid"] == 0
    assert sum(c[0] + c[1] for c in b["hist"].values()) == 3000
    assert window_family(st) == "binomial"
    # the common sums are kept too (MAE of the probability)
    assert st["n"] == 3000 and st["sum_abs"] / 3000 == pytest.approx(np.mean(np.abs(y - p)))
    assert st["n_interval"] == 0  # no interval for a classifier


def test_auroc_bound_holds_when_every_pair_ties_in_a_bin() -> None:
    """Adversarial: all probabilities in one bin, perfectly ordered inside it. The exact
    AUROC is 1, the binned 0.5, and the bound says so (0.5)."""
    y = np.array([0.0] * 50 + [1.0] * 50)
    p = 0.3 + np.linspace(0, 0.9, 100) / AUROC_BINS  # inside bin 300
    st = state_of(p, y, "binomial")
    auc, bound = auroc_from_histogram(st["binomial"]["hist"])
    assert roc_auc_score(y, p) == 1.0
    assert auc == 0.5 and bound == 0.5
    assert abs(auc - 1.0) <= bound
    # one class only: no AUROC
    assert auroc_from_histogram(state_of(p[:50], y[:50], "binomial")["binomial"]["hist"]) is None


def test_binned_auroc_is_exact_when_no_two_classes_share_a_bin() -> None:
    rng = np.random.default_rng(5)
    bins = rng.permutation(AUROC_BINS)[:400]
    p = (bins + 0.5) / AUROC_BINS
    y = (rng.random(400) < p).astype(float)
    auc, bound = auroc_from_histogram(state_of(p, y, "binomial")["binomial"]["hist"])
    assert bound == 0.0 and auc == pytest.approx(roc_auc_score(y, p), abs=1e-15)


def test_auroc_ci_covers_the_population_value_in_most_windows() -> None:
    """Hanley-McNeil's 95 % interval: of 200 windows of 400 events from one classifier, the
    interval holds the AUROC of a million events from it in about 95 % of them."""
    p, y = classifier_data(1_000_000, 99)
    truth = roc_auc_score(y, p)
    hits = 0
    for seed in range(200):
        q, z = classifier_data(400, 1000 + seed)
        a = roc_auc_score(z, q)
        lo, hi = auroc_ci(a, int(z.sum()), int(400 - z.sum()))
        hits += lo <= truth <= hi
    assert 180 <= hits <= 200  # 95 % of 200 = 190; binomial sd about 3


@pytest.mark.parametrize("seed", [0, 1])
def test_poisson_window_statistics_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mu = rng.gamma(2.0, 1.5, 2000)
    y = rng.poisson(mu).astype(np.float64)
    st = state_of(mu, y, "poisson")
    got = window_statistics(st)
    assert got["deviance"] == pytest.approx(mean_poisson_deviance(y, mu), rel=1e-10)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, mu), rel=1e-12)
    assert window_family(st) == "poisson" and st["poisson"]["n"] == 2000
    assert st["n_interval"] == 2000  # the Poisson interval is kept as for regression


def test_outcomes_not_of_the_family_are_counted_not_used() -> None:
    st = state_of(np.array([0.2, 0.7, 0.4]), np.array([1.0, 0.5, 3.0]), "binomial")
    assert st["binomial"]["n"] == 1 and st["binomial"]["n_invalid"] == 2 and st["n"] == 1
    st = state_of(np.array([2.0, 2.0, 2.0]), np.array([1.0, -1.0, 2.5]), "poisson")
    assert st["poisson"]["n"] == 1 and st["poisson"]["n_invalid"] == 2 and st["n"] == 1
    st = add_pair(empty_state(), entry(0.3, "binomial"), out(None))  # no outcome: n_nan
    assert st["n_nan"] == 1 and "binomial" not in st


# ------------------------------------------------------------------------------ merging
@pytest.mark.parametrize("family", ["binomial", "poisson"])
@pytest.mark.parametrize("parts", [2, 5])
def test_partial_states_merge_into_the_state_of_one_instance(family: str, parts: int) -> None:
    rng = np.random.default_rng(parts)
    if family == "binomial":
        p, y = classifier_data(2000, parts)
    else:
        p = rng.gamma(2.0, 2.0, 2000)
        y = rng.poisson(p).astype(float)
    y[::17] = np.nan  # some outcomes without a value
    bundles = rng.choice([B1, B2], 2000)
    yy = [None if np.isnan(v) else v for v in y.tolist()]
    one = empty_state()
    partial = [empty_state() for _ in range(parts)]
    owner = rng.integers(0, parts, 2000)
    for i in range(2000):
        e, o = entry(p[i], family, bundle=bundles[i]), out(yy[i])
        one = add_pair(one, e, o)
        partial[owner[i]] = add_pair(partial[owner[i]], e, o)
    merged = merge(partial)
    for k in ("n", "n_nan", "covered", "n_interval", "bundles"):
        assert merged[k] == one[k]
    assert merged["segments"]["1"][0] == one["segments"]["1"][0]
    assert merged["segments"]["1"][1] == pytest.approx(one["segments"]["1"][1], rel=1e-12)
    a, b = merged[family], one[family]
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-12)
        else:
            assert a[k] == b[k], k  # counts and the histogram: exactly
    assert window_statistics(merged) == pytest.approx(window_statistics(one), rel=1e-12)
    # merging is also what the merging owner does with states read back from JSON
    again = merge([orjson.loads(orjson.dumps(s)) for s in partial])
    assert again[family] == merged[family]


def test_batch_family_sums_equal_one_pair_at_a_time() -> None:
    """add_family_pairs (the hook for a batch join) gives the family sums of add_pair pair by
    pair, and flags the pairs the common sums must leave out."""
    p, y = classifier_data(500, 4)
    yy: list[float | None] = y.tolist()
    yy[3], yy[7] = None, 0.5  # no outcome; not a 0/1 outcome
    preds = [entry(v, "binomial") for v in p.tolist()]
    preds[10] = preds[10][:8]  # a gaussian entry in the batch (a hot reload mid-window)
    outs = [out(v) for v in yy]
    one = empty_state()
    for e, o in zip(preds, outs, strict=True):
        one = add_pair(one, e, o)
    batch, keep = add_family_pairs(empty_state(), preds, outs)
    assert batch["binomial"] == one["binomial"]
    assert keep.count(False) == 1 and not keep[7] and keep[3] and keep[10]


# ------------------------------------------------------------------------------ findings
def binomial_base(p: np.ndarray, y: np.ndarray) -> Baseline:
    return Baseline(
        mae=None,
        coverage=None,
        mass=None,
        segment_mae={},
        log_loss=log_loss(y, p),
        brier=brier_score_loss(y, p),
        auroc=roc_auc_score(y, p),
    )


def test_binomial_findings_against_the_test_figures() -> None:
    p, y = classifier_data(4000, 7)
    base = binomial_base(*classifier_data(20000, 8))
    kw = {"ratio_warning": 1.5, "ratio_critical": 2.0, "min_count": 200, "coverage_band": 0.1}
    good = performance_findings(state_of(p, y, "binomial"), {B1: base}, **kw)
    assert {f.statistic for f in good} == {"log_loss_ratio", "brier_ratio", "auroc_drop"}
    assert all(f.severity is None for f in good)
    for f in good:
        assert f.ci is not None and f.ci[0] <= f.value <= f.ci[1]
        assert f.count == 4000 and f.baseline is not None and f.observed is not None
    by = {f.statistic: f for f in good}
    assert by["log_loss_ratio"].value == pytest.approx(log_loss(y, p) / base.log_loss)
    assert by["auroc_drop"].observed == pytest.approx(roc_auc_score(y, p), abs=1e-3)
    assert by["auroc_drop"].error_bound < 0.003
    # a model that lost its skill (the probabilities of another sample): all three alert
    rng = np.random.default_rng(3)
    bad = performance_findings(state_of(rng.permutation(p), y, "binomial"), {B1: base}, **kw)
    sev = {f.statistic: f.severity for f in bad}
    assert sev == {
        "log_loss_ratio": "critical",
        "brier_ratio": "critical",
        "auroc_drop": "critical",
    }
    assert {f.statistic: f.threshold for f in bad} == {
        "log_loss_ratio": 1.3,
        "brier_ratio": 1.3,
        "auroc_drop": 0.1,
    }
    # the levels come from the limits: ratios near 1 are critical at (0.5, 0.9)
    low = FamilyLimits((0.5, 0.9), (0.5, 0.9), (-1.0, -0.5), (0.5, 0.9))
    strict = performance_findings(state_of(p, y, "binomial"), {B1: base}, **kw, limits=low)
    assert {f.severity for f in strict} == {"critical"}
    # no test figures (the bundle is unknown): nothing judged
    assert performance_findings(state_of(p, y, "binomial"), {}, **kw) == []
    # too few outcomes
    assert performance_findings(state_of(p[:100], y[:100], "binomial"), {B1: base}, **kw) == []


def test_poisson_findings_mae_and_deviance() -> None:
    rng = np.random.default_rng(4)
    mu = rng.gamma(2.0, 2.0, 3000)
    y = rng.poisson(mu).astype(float)
    base = Baseline(
        mae=mean_absolute_error(y, mu),
        coverage=None,
        mass=None,
        segment_mae={},
        deviance=mean_poisson_deviance(y, mu),
    )
    kw = {"ratio_warning": 1.5, "ratio_critical": 2.0, "min_count": 200, "coverage_band": 0.1}
    good = performance_findings(state_of(mu, y, "poisson"), {B1: base}, **kw)
    assert {f.statistic: f.severity for f in good} == {"mae_ratio": None, "deviance_ratio": None}
    worse = performance_findings(state_of(mu * 3, y, "poisson"), {B1: base}, **kw)
    assert {f.statistic: f.severity for f in worse} == {
        "mae_ratio": "critical",
        "deviance_ratio": "critical",
    }


def test_baseline_reads_the_family_figures_of_the_manifest() -> None:
    m = {"test": {"partitioned": {"log_loss": 0.45, "brier": 0.14, "auroc": 0.71, "n": 9}}}
    b = Baseline.from_metrics(m)
    assert (b.log_loss, b.brier, b.auroc, b.deviance, b.mae) == (0.45, 0.14, 0.71, None, None)
    b = Baseline.from_metrics({"test": {"partitioned": {"mae": 1.2, "deviance": 0.9}}})
    assert (b.mae, b.deviance, b.log_loss) == (1.2, 0.9, None)


def test_limits_default_to_the_documented_settings() -> None:
    lim = FamilyLimits.from_settings()
    assert lim == FamilyLimits((1.15, 1.3), (1.15, 1.3), (0.05, 0.1), (1.5, 2.0))
    s = MonitorSettings(log_loss_ratio_warning=1.05, auroc_drop_critical=0.2)
    assert FamilyLimits.from_settings(s).log_loss_ratio == (1.05, 1.3)
    assert FamilyLimits.from_settings(s).auroc_drop == (0.05, 0.2)


# ------------------------------------------------------------------------ records, core
def prediction_record(eid: str, t_ms: int, p: float, *, threshold: float = 0.3) -> dict[str, Any]:
    return {
        "event_id": eid,
        "model": "late",
        "bundle_id": B1,
        "segment": 1,
        "fallback_level": 0,
        "prediction": p,
        "interval": [None, None],
        "interval_mass": 0.8,
        "pattern": -1,
        "pattern_proba": None,
        "event_time": str(np.datetime64(int(t_ms), "ms")) + "Z",
        "scored_at": "now",
        "family": "binomial",
        "probability": p,
        "label": int(p >= threshold),
        "threshold": threshold,
    }


def test_pending_entry_of_a_binomial_record_names_its_family() -> None:
    eid, e = pending_prediction(decode_prediction(prediction_record("a", T0, 0.25)), 3)
    assert eid == "a" and e[2] == 0.25 and e[3] is None and e[-1] == "binomial" and len(e) == 9
    plain = {k: v for k, v in prediction_record("b", T0, 5.0).items()}
    for k in ("family", "probability", "label", "threshold"):
        del plain[k]
    assert len(pending_prediction(decode_prediction(plain), 0)[1]) == 8  # gaussian: unchanged
    with pytest.raises(MalformedRecord, match="outside"):
        pending_prediction(decode_prediction(prediction_record("c", T0, 1.5)), 0)


def test_a_degraded_classifier_alerts_through_the_core_with_its_test_figures() -> None:
    base = binomial_base(*classifier_data(20000, 8))
    s = MonitorSettings(
        performance_min_count=200, join_expiry_s=86_400, lateness_s=3600, max_future_s=30 * 86_400.0
    )
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = MonitorMetrics.create(registry, ["x"])
    c = MonitorCore(
        s,
        model="late",
        id_field="event_id",
        time_field="event_time",
        target="late",
        reference_for={B1: (DriftReference({}, {}), base)}.get,
        tables={k: {} for k in ("drift", "newkeys", "pending_p", "pending_o", "perf", "meta")},
        partitions=1,
        observer=metrics,
    )
    p, y = classifier_data(1000, 11)
    p = np.random.default_rng(0).permutation(p).tolist()  # no skill left
    t = T0 + 3_600_000
    preds = [(orjson.dumps(prediction_record(f"e{i}", t + i, p[i])), 0, i) for i in range(1000)]
    outs = [
        (
            orjson.dumps(
                {
                    "event_id": f"e{i}",
                    "late": float(y[i]),
                    "event_time": str(np.datetime64(t + i, "ms")) + "Z",
                    "outcome_time": str(np.datetime64(t + i + 3_600_000, "ms")) + "Z",
                }
            ),
            0,
            i,
        )
        for i in range(1000)
    ]
    c.on_predictions(preds, 0.0)
    c.on_outcomes(outs, 0.0)
    # both clocks past the window's end + expiry / lateness
    c.on_prediction(prediction_record("p2", T0 + 2 * DAY + 1, 0.5), 0, 2000, 2.0)
    c.on_outcome(
        {
            "event_id": "o2",
            "late": 0.0,
            "event_time": str(np.datetime64(T0 + 2 * DAY, "ms")) + "Z",
            "outcome_time": str(np.datetime64(T0 + 2 * DAY + 1, "ms")) + "Z",
        },
        0,
        2000,
        2.0,
    )
    alerts = c.on_tick(0, 3.0)
    by = {a.statistic: a for a in alerts}
    assert set(by) == {"log_loss_ratio", "brier_ratio", "auroc_drop"}
    auc = by["auroc_drop"]
    assert auc.severity == "critical" and auc.baseline == pytest.approx(base.auroc, abs=1e-6)
    assert auc.observed == pytest.approx(roc_auc_score(y, p), abs=2e-3)
    assert auc.value == pytest.approx(auc.baseline - auc.observed, abs=1e-5)
    assert 0 < auc.error_bound < 0.01 and auc.count == 1000
    ll = by["log_loss_ratio"]
    assert ll.observed == pytest.approx(log_loss(y, p), abs=1e-6)
    assert ll.value == pytest.approx(ll.observed / ll.baseline, rel=1e-5)
    for a in alerts:  # the contract round trip
        assert msgspec.json.decode(msgspec.json.encode(a), type=Alert) == a
    # the metrics the dashboard reads
    g = registry.get_sample_value
    assert g("segstream_monitor_window_statistic", {"statistic": "log_loss"}) == pytest.approx(
        log_loss(y, p)
    )
    assert g("segstream_monitor_test_statistic", {"statistic": "auroc"}) == pytest.approx(
        base.auroc
    )
    assert g("segstream_monitor_window_statistic", {"statistic": "auroc"}) == pytest.approx(
        auc.observed, abs=1e-6
    )


def test_demo_summary_reads_the_monitor_view_of_a_classifier() -> None:
    """``segstream demo``'s summary: the last closed window's statistics beside the test
    figures, scraped from a monitor's /metrics."""
    from prometheus_client import CollectorRegistry, start_http_server

    from segstream.services.demo import monitor_view
    from segstream.shared.broker import free_port

    registry = CollectorRegistry()
    m = MonitorMetrics.create(registry, ["x"])
    p, y = classifier_data(1000, 3)
    st = state_of(p, y, "binomial")
    base = binomial_base(p, y)
    kw = {"ratio_warning": 1.5, "ratio_critical": 2.0, "min_count": 200, "coverage_band": 0.1}
    m.on_performance(performance_findings(st, {B1: base}, **kw), st, T0)
    m.closed("performance")
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        view = monitor_view(port)
    finally:
        server.shutdown()
        thread.join(5)
    assert view["outcomes"] == 1000 and view["windows_closed"]["performance"] == 1
    assert view["window"]["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-6)
    assert view["test"] == pytest.approx(
        {"log_loss": base.log_loss, "brier": base.brier, "auroc": base.auroc}, abs=1e-6
    )
    assert set(view["window"]) == {"log_loss", "brier", "auroc", "auroc_error_bound"}
    assert monitor_view(None) == {}
