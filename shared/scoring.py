"""What a loaded bundle offers the worker: one vectorised ``score(columns)``.

:class:`Scorer` is the contract between the bundle (built by the trainer) and the worker. The
input is a batch in columnar form, one array per event field of the bundle's schema:

* numeric fields: ``float64`` arrays, NaN for missing;
* categorical/string and id fields: ``object`` arrays of ``str`` (None for missing);
* the time field: ``datetime64[ns]`` in UTC (NaT for missing).

The output is a dict of arrays of the same length ``n`` (see :data:`SCORE_COLUMNS`) plus
``contributions`` ``(n, p + 1)`` float64 (intercept first, then one per linear feature, in the
order of ``contribution_names``; they sum to ``prediction``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from shared.drift import DriftReference
from shared.settings import SchemaSettings

#: Output columns of :meth:`Scorer.score` and their dtypes.
SCORE_COLUMNS: dict[str, type | str] = {
    "segment": np.int32,          # the routed leaf segment id
    "fallback_level": np.int8,    # 0 = the segment's own model, 1 = its parent, ...
    "prediction": np.float64,     # point prediction, target units
    "interval_low": np.float64,   # prediction interval of mass `interval_mass`
    "interval_high": np.float64,
    "pattern": np.int32,          # most probable outcome pattern
    "pattern_proba": np.float64,  # its probability
    "imputed": np.bool_,          # routing followed a missing value
    "unknown_key": object,        # str naming a never-seen key combination, or None
}


class Scorer(Protocol):
    """A loaded, verified bundle as the worker uses it."""

    bundle_id: str
    model: str
    schema: SchemaSettings
    interval_mass: float
    contribution_names: list[str]
    drift_reference: DriftReference
    #: columns whose value combinations define known keys (for new-segment counting)
    key_columns: list[str]

    def score(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score a batch; never raises on values (NaN, unseen categories), only on a missing
        column (``SchemaError``)."""
        ...
