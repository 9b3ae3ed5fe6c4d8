"""Deterministic join sampling and the confidence intervals of performance alerts."""

from __future__ import annotations

import numpy as np
import pytest

from segstream.services.monitor.performance import in_sample, mean_ci, wilson_ci
from tests.unit.test_monitor_performance import DAY, T0, core, outcome, pred


def test_sample_is_deterministic_and_close_to_the_rate() -> None:
    ids = [f"2013090{i % 9}-XX{i}" for i in range(20_000)]
    a = [in_sample(e, 0.25) for e in ids]
    assert a == [in_sample(e, 0.25) for e in ids]  # same on every instance / restart
    assert 0.23 < np.mean(a) < 0.27
    # nested: an event sampled at 10 % is sampled at 25 %
    assert all(in_sample(e, 0.25) for e in ids if in_sample(e, 0.1))
    assert all(in_sample(e, 1.0) for e in ids[:100])


def test_prediction_and_outcome_are_sampled_together() -> None:
    c = core(join_sample_rate=0.5)
    t = T0 + 3_600_000
    for i in range(400):
        c.on_prediction(pred(f"e{i}", t + i, 0.0), 0, i, 0.0)
        c.on_outcome(outcome(f"e{i}", t + i, 20.0), 0, i, 0.0)
    joined = c.counters.join["joined"]
    assert joined == sum(in_sample(f"e{i}", 0.5) for i in range(400))
    assert 150 < joined < 250
    assert c.counters.records[("predictions", "unsampled")] == 400 - joined
    assert c.t["pending_p"] == {} and c.t["pending_o"] == {}  # none waits for a partner


def test_performance_alert_carries_its_confidence_interval_and_sample_rate() -> None:
    c = core(join_sample_rate=0.5, performance_min_count=20)
    t = T0 + 3_600_000
    rng = np.random.default_rng(0)
    for i in range(400):
        y = float(20.0 + rng.normal(0, 5))
        c.on_prediction(pred(f"e{i}", t + i, 0.0, half=5.0), 0, i, 0.0)
        c.on_outcome(outcome(f"e{i}", t + i, y), 0, i, 0.0)
    # both clocks move past the window's end + expiry (ids in the sample)
    p_id, o_id = [e for e in (f"x{i}" for i in range(100)) if in_sample(e, 0.5)][:2]
    c.on_prediction(pred(p_id, t + 3 * DAY, 0.0), 0, 999, 1.0)
    c.on_outcome(outcome(o_id, t + 3 * DAY, 0.0), 0, 999, 1.0)
    alerts = c.on_tick(0, 10.0)
    (mae,) = [a for a in alerts if a.statistic == "mae_ratio" and a.segment is None]
    assert mae.sample_rate == 0.5
    lo, hi = mae.ci
    assert lo < mae.value < hi and hi - lo < 0.3  # 2.0 +- ~0.07 with ~200 samples
    (cov,) = [a for a in alerts if a.statistic == "interval_coverage"]
    assert cov.ci[0] <= cov.value <= cov.ci[1]


def test_mean_ci_matches_the_t_free_normal_interval() -> None:
    rng = np.random.default_rng(1)
    e = np.abs(rng.normal(0, 3, 500))
    lo, hi = mean_ci(float(e.mean()), float((e * e).sum()), len(e))
    se = e.std(ddof=1) / np.sqrt(len(e))
    assert lo == pytest.approx(e.mean() - 1.959964 * se, rel=1e-6)
    assert hi == pytest.approx(e.mean() + 1.959964 * se, rel=1e-6)
    assert mean_ci(1.0, None, 10) is None and mean_ci(1.0, 1.0, 1) is None


def test_wilson_interval_reference_values() -> None:
    # statsmodels proportion_confint(80, 100, method="wilson")
    lo, hi = wilson_ci(80, 100)
    assert lo == pytest.approx(0.711170, abs=1e-5) and hi == pytest.approx(0.866633, abs=1e-5)
    assert wilson_ci(0, 10)[0] == 0.0 and wilson_ci(10, 10)[1] == pytest.approx(1.0)
    assert wilson_ci(0, 0) is None


def test_performance_statistics_are_chosen_per_model_family() -> None:
    from segstream.services.monitor.performance import (
        FAMILY_STATISTICS,
        Baseline,
        performance_findings,
    )

    state = {
        "n": 100,
        "n_nan": 0,
        "sum_abs": 2000.0,
        "sum_sq": 50_000.0,
        "covered": 50,
        "n_interval": 100,
        "mass_sum": 80.0,
        "bundles": {"b": 100},
        "segments": {},
    }
    base = {"b": Baseline(mae=10.0, coverage=0.8, mass=0.8, segment_mae={})}
    kw = dict(ratio_warning=1.5, ratio_critical=2.0, min_count=10, coverage_band=0.1)
    stats = {f.statistic for f in performance_findings(state, base, **kw)}
    assert stats == set(FAMILY_STATISTICS["gaussian"]) == {"mae_ratio", "interval_coverage"}
    assert performance_findings(state, base, family="binomial", **kw) == []  # the GLM hook
