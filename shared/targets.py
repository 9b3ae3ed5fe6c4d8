"""Derived targets: a 0/1 outcome computed from a column of the data (``dataset.target_from``).

The US DOT on-time rule is the example: a flight is *late* when it arrives 15 minutes or more
after its scheduled time, ``late = arr_delay >= 15``; a flight without an ``arr_delay``
(cancelled or diverted) has no outcome, so its ``late`` is missing (NaN), not 0.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import pandas as pd

from segstream.shared.errors import SchemaError
from segstream.shared.settings import TargetRule

_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


def derive_target(
    df: pd.DataFrame, rule: TargetRule | None, target: str, source: str = "data"
) -> pd.DataFrame:
    """``df`` with ``target`` set to ``rule`` applied to ``rule.column`` (a copy); ``df``
    itself when ``rule`` is None.

    Parameters
    ----------
    df : pandas.DataFrame
        Raw data (before it is coerced to the schema).
    rule : TargetRule or None
        ``column``, ``op`` and ``value``.
    target : str
        Name of the schema's target column (written; an existing column is replaced).
    source : str
        Where ``df`` came from, for messages.

    Returns
    -------
    pandas.DataFrame
        ``target`` float64: 1.0 where ``column op value``, 0.0 where not, NaN where
        ``column`` is missing.

    Raises
    ------
    SchemaError
        ``rule.column`` is absent or not numeric (names it and ``source``).

    Examples
    --------
    >>> import pandas as pd
    >>> from segstream.shared.settings import TargetRule
    >>> df = pd.DataFrame({"arr_delay": [3.0, 15.0, None, 40.0]})
    >>> rule = TargetRule(column="arr_delay", op=">=", value=15)
    >>> derive_target(df, rule, "late")["late"].tolist()
    [0.0, 1.0, nan, 1.0]
    """
    if rule is None:
        return df
    if rule.column not in df.columns:
        raise SchemaError(
            f"{source}: dataset.target_from.column '{rule.column}' is not a column of the data"
        )
    try:
        x = pd.to_numeric(df[rule.column], errors="raise").to_numpy(np.float64)
    except (ValueError, TypeError) as exc:
        raise SchemaError(
            f"{source}: dataset.target_from.column '{rule.column}' is not numeric: {exc}"
        ) from None
    with np.errstate(invalid="ignore"):
        y = _OPS[rule.op](x, float(rule.value)).astype(np.float64)
    y[np.isnan(x)] = np.nan
    out = df.copy()
    out[target] = y
    return out
