from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segstream.shared.data import coerce_to_schema, load_dataset, load_file, time_slice
from segstream.shared.errors import DataError, SchemaError
from segstream.shared.settings import load_settings


def test_flights_rows_ids_and_order(flights_df):
    df = flights_df
    assert len(df) == 336_776
    assert df["event_id"].is_unique
    assert df["event_time"].is_monotonic_increasing
    assert str(df["event_time"].dt.tz) == "America/New_York"


def test_weather_join_hand_checked(flights_df):
    df = flights_df.set_index("event_id")
    # UA 1545, EWR, 2013-01-01 05:15 EST: EWR weather at 05:00 local (10:00 UTC).
    r = df.loc["20130101-UA1545-EWR-0515"]
    assert r["event_time"] == pd.Timestamp("2013-01-01 05:15", tz="America/New_York")
    assert (r["temp"], r["dewp"], r["humid"]) == (39.02, 28.04, 64.43)
    assert r["arr_delay"] == 11.0 and r["dep_delay"] == 2.0 and r["distance"] == 1400.0
    assert r["sched_dep_hour"] == 5.25 and r["day_of_week"] == 1  # a Tuesday
    # B6 1516, JFK, 2013-07-04 17:00 EDT (summer time): JFK weather at 17:00 local.
    r = df.loc["20130704-B61516-JFK-1700"]
    assert r["event_time"] == pd.Timestamp("2013-07-04 17:00", tz="America/New_York")
    assert r["temp"] == 78.98 and r["dewp"] == 69.98


def test_cancelled_flights_are_events_without_outcome(flights_df):
    df = flights_df
    assert int(df["cancelled"].sum()) == 8255
    assert int(df["outcome_missing"].sum()) == 9430  # cancelled + diverted
    r = df.set_index("event_id").loc["20130101-EV4308-EWR-1630"]
    assert bool(r["cancelled"]) and np.isnan(r["arr_delay"]) and pd.isna(r["outcome_time"])
    done = df[~df["outcome_missing"]]
    assert (done["outcome_time"] > done["event_time"]).all()


def test_load_dataset_flights_matches_schema(flights_config):
    s = load_settings(flights_config)
    df = load_dataset(s)
    for f in s.event_schema.fields:
        assert f.name in df.columns
    assert df["distance"].dtype == np.float64


def _schema(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("""
schema:
  fields:
    - {name: id, type: string, role: id}
    - {name: t, type: datetime, role: time}
    - {name: x, type: float, role: numeric}
    - {name: c, type: string, role: categorical}
    - {name: y, type: float, role: target}
""")
    return load_settings(p).event_schema


def test_generic_csv_and_parquet_loader(tmp_path):
    schema = _schema(tmp_path)
    df = pd.DataFrame(
        {
            "id": ["b", "a"],
            "t": ["2024-01-02 10:00", "2024-01-01 09:00"],
            "x": ["1.5", "2"],
            "c": ["u", None],
            "y": [1.0, None],
            "extra": [1, 2],
        }
    )
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        out = load_file(tmp_path / name, schema, "UTC")
        assert list(out["id"]) == ["a", "b"]  # sorted by time
        assert out["x"].tolist() == [2.0, 1.5]
        assert out["outcome_missing"].tolist() == [True, False]
        assert str(out["t"].dt.tz) == "UTC"
        assert "extra" in out.columns


def test_loader_errors_name_the_column(tmp_path):
    schema = _schema(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_file(tmp_path / "missing.csv", schema, "UTC")
    bad = pd.DataFrame({"id": ["a"], "t": ["2024-01-01"], "x": [1.0], "y": [1.0]})
    with pytest.raises(SchemaError, match=r"\['c'\]"):
        coerce_to_schema(bad, schema, "UTC")
    bad = pd.DataFrame({"id": ["a"], "t": ["2024-01-01"], "x": ["lots"], "c": ["u"], "y": [1.0]})
    with pytest.raises(SchemaError, match="column 'x'"):
        coerce_to_schema(bad, schema, "UTC")
    bad = pd.DataFrame({"id": ["a"], "t": ["not a time"], "x": [1], "c": ["u"], "y": [1.0]})
    with pytest.raises(SchemaError, match="column 't'"):
        coerce_to_schema(bad, schema, "UTC")
    with pytest.raises(DataError, match="no rows"):
        coerce_to_schema(bad.iloc[:0], schema, "UTC")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unknown data file type"):
        load_file(tmp_path / "d.txt", schema, "UTC")


def test_time_slice_inclusive_end(flights_df):
    sep = time_slice(flights_df, "event_time", "2013-09-01", "2013-09-30")
    assert sep["event_time"].dt.month.unique().tolist() == [9]
    assert len(sep) == int((flights_df["event_time"].dt.month == 9).sum())
