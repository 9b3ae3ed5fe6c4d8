"""The exchange format between a fitted training component and its scoring twin in ``shared``.

A fitted component (partitioner, segment models, outcome profiles) exports an
:class:`ExportedComponent`; the bundle writes ``arrays`` to one ``.npz`` (loaded with
``allow_pickle=False``, so only numeric/bool/fixed-width-string dtypes are allowed), ``meta``
to JSON, and each ``blobs`` entry to its own file (e.g. an XGBoost model in UBJSON). The scoring
side rebuilds itself from the same three parts without scikit-learn and without pickle.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ExportedComponent:
    """Plain data of a fitted component.

    Attributes
    ----------
    kind : str
        Component kind, e.g. ``"partitioner"``, ``"segment_models"``, ``"profiles"``.
    arrays : dict of str to numpy.ndarray
        Numeric arrays (no ``object`` dtype).
    meta : dict
        JSON-serialisable parameters and tables (str keys; lists, numbers, strings, None).
    blobs : dict of str to bytes
        Opaque files in another library's own format (file name -> content).
    """

    kind: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    blobs: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, a in self.arrays.items():
            if not isinstance(a, np.ndarray) or a.dtype == object:
                raise TypeError(f"{self.kind}: array {name!r} must be a non-object ndarray")
