from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from segstream.services.simulator.replay import MALFORMED_KINDS, Pacer, build_replay
from segstream.shared.events import encode_events, encode_outcomes
from segstream.shared.settings import load_settings


@pytest.fixture(scope="module")
def schema(flights_config):
    return load_settings(flights_config).event_schema


@pytest.fixture(scope="module")
def day(flights_df):
    d = flights_df[flights_df["event_time"].dt.strftime("%Y-%m-%d") == "2013-01-01"]
    return d.reset_index(drop=True)


def test_event_encoding_roundtrip(day, schema):
    pairs = encode_events(day, schema)
    assert len(pairs) == len(day)
    key, value = pairs[0]
    rec = orjson.loads(value)
    assert key.decode() == rec["event_id"] == day["event_id"].iloc[0]
    assert set(rec) == {f.name for f in schema.event_fields}
    assert "arr_delay" not in rec
    assert pd.Timestamp(rec["event_time"]) == day["event_time"].iloc[0]
    assert rec["day_of_week"] == 1 and isinstance(rec["day_of_week"], int)
    # cancelled flight: missing dep_delay encodes as null, not NaN
    i = int(np.flatnonzero(day["dep_delay"].isna())[0])
    assert orjson.loads(pairs[i][1])["dep_delay"] is None


def test_outcome_encoding(day, schema):
    pairs = encode_outcomes(day, schema)
    rec = orjson.loads(pairs[0][1])
    assert rec["arr_delay"] == 11.0 and rec["event_id"] == day["event_id"].iloc[0]
    assert pd.Timestamp(rec["outcome_time"]) > pd.Timestamp(rec["event_time"])


def test_replay_orders_outcomes_after_their_events(day, schema):
    recs = build_replay(day, schema, outcomes=True)
    n_events = sum(r.topic_role == "events" for r in recs)
    n_out = sum(r.topic_role == "outcomes" for r in recs)
    assert n_events == len(day)
    assert n_out == int((~day["outcome_missing"]).sum())
    seen: set[bytes] = set()
    last = -1.0
    for r in recs:
        assert r.sim_time_s >= last - 1e-9 or r.topic_role == "outcomes"
        if r.topic_role == "events":
            seen.add(r.key)
            last = r.sim_time_s
        else:
            assert r.key in seen, "outcome sent before its event"


def test_malformed_fraction_and_kinds(day, schema):
    recs = build_replay(day, schema, outcomes=False, bad_fraction=0.3, seed=1, huge_bytes=5000)
    bad = [r for r in recs if r.kind.startswith("malformed:")]
    assert 0.2 < len(bad) / len(recs) < 0.4
    assert {r.kind.split(":")[1] for r in bad} == set(MALFORMED_KINDS)
    for r in bad:
        kind = r.kind.split(":")[1]
        if kind in ("invalid_json", "garbage", "empty"):
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(r.value)
        elif kind == "not_object":
            assert isinstance(orjson.loads(r.value), list)
        elif kind == "huge_payload":
            assert len(r.value) > 5000
        elif kind == "missing_field":
            rec = orjson.loads(r.value)
            required = {f.name for f in schema.event_fields if f.required}
            assert not required <= set(rec)
        elif kind == "wrong_type":
            rec = orjson.loads(r.value)
            assert any(isinstance(rec.get(f), dict) for f in schema.numeric_features)
    # same seed, same replay
    again = build_replay(day, schema, outcomes=False, bad_fraction=0.3, seed=1, huge_bytes=5000)
    assert [r.value for r in again] == [r.value for r in recs]


def test_pacer_rate_and_speedup(day, schema):
    recs = build_replay(day.iloc[:10], schema, outcomes=False)
    p = Pacer(rate=5.0)
    assert [round(p.due_s(r), 6) for r in recs[:3]] == [0.0, 0.2, 0.4]
    p = Pacer(speedup=60.0)
    assert p.due_s(recs[-1]) == pytest.approx(recs[-1].sim_time_s / 60.0)
    with pytest.raises(ValueError):
        Pacer()


def test_iso_times_with_offsets_and_missing():
    from segstream.shared.events import _iso

    s = pd.Series(pd.to_datetime(["2013-01-01 05:15", "2013-07-04 17:00", None]))
    ny = s.dt.tz_localize("America/New_York")
    assert _iso(ny) == ["2013-01-01T05:15:00-05:00", "2013-07-04T17:00:00-04:00", None]
    assert _iso(ny.dt.tz_convert("Asia/Kolkata"))[0] == "2013-01-01T15:45:00+05:30"
    assert [pd.Timestamp(v) for v in _iso(ny)[:2]] == ny.iloc[:2].tolist()
