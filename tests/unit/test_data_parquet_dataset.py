"""Parquet data sets larger than one file (issue 19, item 1): directories, globs, hive
partitioning, fsspec URLs, bounded record batches with projection and time pushdown, and
one-line errors naming the file and column for hostile input."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segstream.shared.data import (
    dataset_parts,
    is_parquet_dataset,
    iter_batches,
    load_file,
    open_parquet_dataset,
    storage_options,
)
from segstream.shared.errors import DataError, SchemaError
from segstream.shared.settings import SchemaSettings, Settings

TZ = "UTC"


def schema() -> SchemaSettings:
    return SchemaSettings.model_validate(
        {
            "fields": [
                {"name": "id", "type": "string", "role": "id"},
                {"name": "t", "type": "datetime", "role": "time"},
                {"name": "x", "type": "float", "role": "numeric"},
                {"name": "c", "type": "string", "role": "categorical"},
                {"name": "y", "type": "float", "role": "target"},
            ]
        }
    )


def frame(n: int, month: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(f"2024-{month:02d}-01", tz="UTC")
    return pd.DataFrame(
        {
            "id": [f"m{month}-{i}" for i in range(n)],
            "t": t0 + pd.to_timedelta(np.sort(rng.integers(0, 27 * 86400, n)), unit="s"),
            "x": rng.normal(size=n),
            "c": rng.choice(["a", "b"], n),
            "y": rng.normal(size=n),
        }
    )


def split(df: pd.DataFrame, k: int) -> list[pd.DataFrame]:
    cuts = np.linspace(0, len(df), k + 1).astype(int)
    return [df.iloc[a:b] for a, b in itertools.pairwise(cuts)]


def write_hive(root, months=(1, 2, 3), n=500, files_per_month=2, row_group_size=None):
    frames = []
    for m in months:
        d = root / f"month={m}"
        d.mkdir(parents=True)
        f = frame(n, m, seed=m)
        for k, chunk in enumerate(split(f, files_per_month)):
            pq.write_table(
                pa.Table.from_pandas(chunk, preserve_index=False),
                d / f"part-{k}.parquet",
                row_group_size=row_group_size,
            )
        frames.append(f.assign(month=m))
    (root / "_SUCCESS").write_text("")  # as Spark writes it: skipped
    return pd.concat(frames, ignore_index=True)


def test_hive_directory_loads_every_file_with_partition_column(tmp_path):
    whole = write_hive(tmp_path / "d")
    data = open_parquet_dataset(tmp_path / "d", schema())
    assert len(data.parts) == 6 and data.partition_columns == ("month",)
    df = load_file(tmp_path / "d", schema(), TZ)
    assert len(df) == len(whole)
    assert df["t"].is_monotonic_increasing
    got = df.set_index("id").sort_index()
    exp = whole.set_index("id").sort_index()
    np.testing.assert_array_equal(got["x"].to_numpy(), exp["x"].to_numpy())
    np.testing.assert_array_equal(got["month"].to_numpy(), exp["month"].to_numpy())


def test_glob_selects_files_and_keeps_hive_keys(tmp_path):
    whole = write_hive(tmp_path / "d")
    df = load_file(str(tmp_path / "d" / "month=[12]" / "*.parquet"), schema(), TZ)
    assert sorted(df["month"].unique()) == [1, 2]
    assert len(df) == int((whole["month"] <= 2).sum())
    assert is_parquet_dataset(str(tmp_path / "d" / "*.parquet"))
    assert not is_parquet_dataset(tmp_path / "x.csv")


def test_single_parquet_file_unchanged(tmp_path):
    f = frame(100, 1)
    f.to_parquet(tmp_path / "one.parquet")
    df = load_file(tmp_path / "one.parquet", schema(), TZ)
    assert len(df) == 100 and df["x"].dtype == np.float64


def test_batches_are_bounded_projected_and_time_filtered(tmp_path):
    whole = write_hive(tmp_path / "d", row_group_size=64)
    data = open_parquet_dataset(tmp_path / "d", schema(), columns=["x", "y"])
    batches = list(
        iter_batches(
            data,
            schema(),
            TZ,
            columns=["x", "y"],
            start="2024-02-03",
            end="2024-02-20",
            batch_rows=37,
        )
    )
    assert batches and all(0 < len(b) <= 37 for b in batches)
    got = pd.concat(batches)
    assert set(got.columns) == {"t", "x", "y", "outcome_missing", "outcome_time"}
    lo, hi = pd.Timestamp("2024-02-03", tz="UTC"), pd.Timestamp("2024-02-21", tz="UTC")
    exp = whole[(whole["t"] >= lo) & (whole["t"] < hi)]
    assert len(got) == len(exp) > 0
    np.testing.assert_array_equal(np.sort(got["x"].to_numpy()), np.sort(exp["x"].to_numpy()))


def test_time_pushdown_skips_rows_outside_the_slice_before_coercion(tmp_path):
    # rows of January hold an unparsable x; a February slice never coerces them
    jan = frame(50, 1).astype({"x": str})
    jan["x"] = "not a number"
    feb = frame(50, 2).astype({"x": str})
    pq.write_table(pa.Table.from_pandas(jan, preserve_index=False), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pandas(feb, preserve_index=False), tmp_path / "b.parquet")
    data = open_parquet_dataset(tmp_path, schema())
    got = pd.concat(iter_batches(data, schema(), TZ, start="2024-02-01"))
    assert len(got) == 50 and got["x"].dtype == np.float64
    with pytest.raises(SchemaError, match=r"a\.parquet: column 'x' cannot be read as float"):
        list(iter_batches(data, schema(), TZ))


def test_naive_timestamps_are_filtered_in_the_dataset_zone(tmp_path):
    f = frame(200, 3)
    f["t"] = f["t"].dt.tz_localize(None)
    f.to_parquet(tmp_path / "n.parquet")
    tz = "America/New_York"
    data = open_parquet_dataset(tmp_path / "n.parquet", schema())
    got = pd.concat(iter_batches(data, schema(), tz, start="2024-03-10", end="2024-03-12"))
    local = f["t"].dt.tz_localize(tz, nonexistent="shift_forward")
    lo, hi = pd.Timestamp("2024-03-10", tz=tz), pd.Timestamp("2024-03-13", tz=tz)
    assert len(got) == int(((local >= lo) & (local < hi)).sum()) > 0


def test_memory_url_goes_through_fsspec(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    whole = frame(300, 4)
    for k, chunk in enumerate(split(whole, 3)):
        with fs.open(f"/segtest/month=4/part-{k}.parquet", "wb") as fh:
            chunk.to_parquet(fh)
    try:
        parts = dataset_parts("memory://segtest", schema())
        assert len(parts) == 3
        df = load_file("memory://segtest", schema(), TZ)
        assert len(df) == 300 and set(df["month"]) == {4}
        with pytest.raises(DataError, match="memory://nothing-here: no Parquet file matches"):
            open_parquet_dataset("memory://nothing-here")
    finally:
        fs.rm("/segtest", recursive=True)


# --------------------------------------------------------------------------- hostile input


def test_path_matching_no_file_names_it(tmp_path):
    with pytest.raises(DataError, match=r"nothing/\*\.parquet: no Parquet file matches"):
        load_file(str(tmp_path / "nothing" / "*.parquet"), schema(), TZ)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no Parquet file matches"):
        open_parquet_dataset(tmp_path / "empty", schema())


def test_file_lacking_a_column_is_named(tmp_path):
    frame(10, 1).to_parquet(tmp_path / "good.parquet")
    frame(10, 2).drop(columns=["c"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(SchemaError) as e:
        open_parquet_dataset(tmp_path, schema())
    msg = str(e.value)
    assert "bad.parquet" in msg and "'c'" in msg and "\n" not in msg
    # projecting away the missing column is fine
    assert len(open_parquet_dataset(tmp_path, schema(), columns=["x"]).parts) == 2


def test_uncoercible_type_is_named(tmp_path):
    f = frame(10, 1)
    tab = pa.Table.from_pandas(f, preserve_index=False)
    tab = tab.set_column(2, "x", pa.array([[1.0]] * 10, type=pa.list_(pa.float64())))
    pq.write_table(tab, tmp_path / "lists.parquet")
    with pytest.raises(SchemaError, match=r"lists\.parquet: column 'x' of type list<.*> cannot"):
        open_parquet_dataset(tmp_path, schema())


def test_corrupt_parquet_names_the_file(tmp_path):
    frame(10, 1).to_parquet(tmp_path / "a.parquet")
    good = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "b.parquet").write_bytes(good[: len(good) // 2] + b"garbage" * 10)
    with pytest.raises(DataError) as e:
        load_file(tmp_path, schema(), TZ)
    assert "b.parquet" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "c.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="parquet"):
        open_parquet_dataset(tmp_path / "c.parquet")


def test_storage_options_from_secret_settings_never_in_dumps():
    base = Settings.model_validate({"schema": schema().model_dump()})
    s = Settings.model_validate(
        {
            "schema": schema().model_dump(),
            "dataset": {
                "source": "file",
                "path": "s3://bucket/flights/",
                "storage": {
                    "s3_endpoint_url": "http://127.0.0.1:9000",
                    "s3_key": "AKIAEXAMPLE",
                    "s3_secret": "Sup3rS3cret",
                },
            },
        }
    )
    opts = storage_options(s)
    assert opts == {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
        "key": "AKIAEXAMPLE",
        "secret": "Sup3rS3cret",
    }
    assert "Sup3rS3cret" not in repr(s) and "Sup3rS3cret" not in str(s.model_dump())
    assert storage_options(base) == {}


def test_files_disagreeing_on_the_time_type_name_the_file(tmp_path):
    a = frame(40, 1)
    b = frame(40, 2)
    b["t"] = b["t"].astype(str)  # the second file stores times as strings
    a.to_parquet(tmp_path / "a.parquet")
    b.to_parquet(tmp_path / "b.parquet")
    data = open_parquet_dataset(tmp_path, schema())
    # the data set's schema (first file) has a timestamp: the pushed-down filter cannot apply
    # to the second file's strings, which is a one-line error naming that file
    with pytest.raises(DataError) as e:
        list(iter_batches(data, schema(), TZ, start="2024-01-15"))
    assert "b.parquet: cannot read" in str(e.value) and "\n" not in str(e.value)


def test_directory_without_the_target_column_derives_it_by_target_from(tmp_path):
    """``dataset.target_from`` (late = x >= 0.5) on a Parquet directory whose files have no
    target column: the footer check does not ask for it, and the derived 0/1 target matches
    the rule row by row (missing where the source column is missing)."""
    from segstream.shared.settings import TargetRule

    whole = write_hive(tmp_path / "d")
    for f in (tmp_path / "d").rglob("*.parquet"):
        t = pq.read_table(f).drop_columns(["y"])
        x = t.column("x").to_numpy().copy()
        x[::7] = np.nan
        pq.write_table(t.set_column(t.schema.get_field_index("x"), "x", pa.array(x)), f)
    rule = TargetRule(column="x", op=">=", value=0.5)
    df = load_file(tmp_path / "d", schema(), TZ, rule)
    assert len(df) == len(whole)
    has_x = df["x"].notna()
    assert (df.loc[has_x, "y"] == (df.loc[has_x, "x"] >= 0.5).astype(float)).all()
    assert df.loc[~has_x, "y"].isna().all() and (~has_x).sum() > 0
    with pytest.raises(SchemaError, match="y"):
        load_file(tmp_path / "d", schema(), TZ)  # without the rule the target is required
