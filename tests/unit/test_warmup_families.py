"""Warm-up of the binomial and Poisson scoring path (no broker, no training)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from segstream.services.warmup import synthetic_events, warm_up_family_scoring
from segstream.shared import scoring
from segstream.shared.settings import load_settings


def test_family_scoring_warm_up_compiles_the_signature_of_a_real_batch() -> None:
    """After the warm-up, scoring a Poisson batch compiles nothing more (the first batch of
    a Poisson bundle pays no compile time)."""
    warm_up_family_scoring()
    kernel = scoring._poisson_quantiles
    before = len(kernel.signatures)
    assert before >= 1
    mu = np.random.default_rng(0).gamma(2.0, 2.0, 1000)
    low, high = scoring.poisson_interval(mu, 0.9)
    assert len(kernel.signatures) == before
    np.testing.assert_array_equal(low, stats.poisson.ppf(0.05, mu))
    np.testing.assert_array_equal(high, stats.poisson.ppf(0.95, mu))


@pytest.mark.parametrize("family", ["gaussian", "binomial", "poisson"])
def test_synthetic_targets_follow_the_family(family: str) -> None:
    schema = load_settings(None).event_schema
    y = synthetic_events(schema, n=2000, family=family)[schema.target].to_numpy()
    assert np.isfinite(y).all()
    if family == "binomial":
        assert set(np.unique(y)) == {0.0, 1.0} and 0.1 < y.mean() < 0.9
    elif family == "poisson":
        assert (y >= 0).all() and (y == np.round(y)).all() and len(np.unique(y)) > 3
    else:
        assert len(np.unique(y)) == 2000
    with pytest.raises(ValueError, match="family"):
        synthetic_events(schema, n=10, family="gamma")
