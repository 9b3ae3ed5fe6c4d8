"""The wire contracts (segstream.shared.contracts) against the real producers' output and the
committed JSON Schemas (no broker).

The producers' encoders are decoded *strictly*: every field of the contract present with its
type (msgspec), and no field the contract does not name (``forbid_unknown_fields``), so a
field added, dropped, renamed or retyped on either side fails here.
"""

from __future__ import annotations

import datetime as dt
import shutil
import typing
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pandas as pd
import pytest

from segstream.shared import contracts
from segstream.shared.alerts import (
    alert_record,
    bundle_rejected_alert,
    bundle_reload_failed_alert,
    encode_alert,
)
from segstream.shared.contracts import (
    Alert,
    DlqHeaders,
    ModelUpdate,
    Prediction,
    StatsRecord,
    event_struct,
    outcome_struct,
)
from segstream.shared.drift import CategoricalReference, DriftReference
from segstream.shared.settings import SchemaSettings, load_settings
from tests.fakes import numeric_ref

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "docs" / "schemas"
BID = "0123456789abcdef" * 4  # a bundle id


def strict(t: type) -> type:
    """``t`` refusing unknown fields (the contracts ignore them: forward compatibility)."""
    return msgspec.defstruct(t.__name__, [], bases=(t,), forbid_unknown_fields=True)


def decode_strict(value: bytes, t: type) -> Any:
    return msgspec.json.decode(value, type=strict(t))


def as_json(rec: Any) -> Any:
    """What ``rec`` encodes to, as parsed JSON (the same if nothing was lost or coerced)."""
    return orjson.loads(msgspec.json.encode(rec))


# ------------------------------------------------------------------------ JSON Schemas
def test_committed_schemas_equal_the_generated_ones() -> None:
    """Regenerate with ``python -m segstream.shared.contracts --write docs/schemas``."""
    texts = contracts.schema_texts()
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(texts)
    for name, text in texts.items():
        assert (SCHEMAS / name).read_text(encoding="utf-8") == text, (
            f"docs/schemas/{name} is stale: python -m segstream.shared.contracts --write "
            "docs/schemas"
        )
    assert {
        "prediction.json",
        "dlq-headers.json",
        "stats.json",
        "alert.json",
        "model-update.json",
        "flights-event.json",
        "flights-outcome.json",
        "flights_late-event.json",
        "flights_late-outcome.json",
    } == set(texts)
    late = contracts.json_schemas()["flights_late-outcome"]["$defs"]["FlightsLateOutcome"]
    assert set(late["required"]) == {"event_id", "late", "event_time", "outcome_time"}


def test_schema_check_fails_on_a_changed_or_unknown_file(tmp_path: Path, capsys) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, copy)
    assert contracts._main([str(copy), "--check"]) == 0
    stats = orjson.loads((copy / "stats.json").read_bytes())
    stats["$defs"]["StatsRecord"]["required"].remove("imputed")
    (copy / "stats.json").write_bytes(orjson.dumps(stats))
    (copy / "old.json").write_text("{}")
    assert contracts._main([str(copy), "--check"]) == 1
    err = capsys.readouterr().err
    assert "stats.json: differs" in err and "old.json: no contract" in err
    assert contracts._main([str(copy), "--write"]) == 0
    assert (copy / "stats.json").read_text() == (SCHEMAS / "stats.json").read_text()


def test_schemas_state_required_fields_and_types() -> None:
    s = contracts.json_schemas()
    stats = s["stats"]["$defs"]["StatsRecord"]
    # unknown_key_nodes is optional: stats records of workers from before it still decode
    assert set(stats["required"]) == set(StatsRecord.__struct_fields__) - {"unknown_key_nodes"}
    assert stats["properties"]["bundle_id"]["pattern"] == "^[0-9a-f]{64}$"
    pred = s["prediction"]["$defs"]["Prediction"]
    optional = {"contributions", "family", "probability", "label", "threshold"}
    assert set(pred["required"]) == set(Prediction.__struct_fields__) - optional
    assert pred["properties"]["family"]["default"] == "gaussian"
    event = s["flights-event"]["$defs"]["FlightsEvent"]
    assert "arr_delay" not in event["properties"]  # the target is not part of an event
    assert set(event["required"]) == {
        "event_id",
        "event_time",
        "carrier",
        "origin",
        "dest",
        "distance",
        "sched_dep_hour",
        "day_of_week",
    }
    assert event["properties"]["temp"]["anyOf"][1] == {"type": "null"}
    dlq = s["dlq-headers"]["$defs"]["DlqHeaders"]
    assert set(dlq["required"]) == {
        "segstream.dlq." + k for k in ("reason", "detail", "topic", "partition", "offset", "worker")
    }
    assert "``" not in orjson.dumps(s).decode()  # descriptions are plain text


# ------------------------------------------------------------------------ stats
def _reference() -> DriftReference:
    return DriftReference(
        numeric={"x": numeric_ref([0.0, 10.0])},
        categorical={"c": CategoricalReference(("a", "b"), np.full(4, 0.25))},
        prediction=numeric_ref([5.0]),
        segments={3: {"x": numeric_ref([0.0, 10.0]), "prediction": numeric_ref([5.0])}},
    )


def _batch(n: int, seed: int, *, days: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2013-09-01T00:00", "ns")
    t = t0 + (rng.integers(0, days * 86_400, n) * 1_000_000_000).astype("timedelta64[ns]")
    t[rng.random(n) < 0.1] = np.datetime64("NaT")
    cols = {
        "x": rng.normal(5, 8, n),
        "c": rng.choice(np.array(["a", "b", "z", None], dtype=object), n),
        "t": t,
    }
    cols["x"][rng.random(n) < 0.1] = np.nan
    scores = {
        "prediction": rng.normal(5, 3, n),
        "fallback_level": rng.integers(0, 3, n).astype(np.int8),
        "unknown_key": rng.choice(np.array([None, "JFK|XXX", "LGA|YYY"], dtype=object), n),
        "imputed": rng.random(n) < 0.2,
        "segment": rng.choice(np.array([1, 3], np.int32), n),
    }
    return cols, scores


@pytest.mark.parametrize(
    "n, days, slice_s",
    [(200, 1, 86_400), (500, 5, 86_400), (300, 2, None), (0, 1, 86_400), (0, 1, None)],
)
def test_worker_stats_records_decode_strictly(n: int, days: int, slice_s: int | None) -> None:
    from segstream.services.worker.stats import batch_stats_records

    cols, scores = _batch(n, seed=n + days, days=days)
    recs = batch_stats_records(
        cols,
        scores,
        _reference(),
        time_field="t",
        slice_s=slice_s,
        model="m",
        bundle_id=BID,
        worker="w-1",
        batch=7,
        n_events=n + 3,
        dlq_counts={"empty": 2, "bad_time": 1, "wrong_type": 0},
        created_at="2024-01-01T00:00:00.000Z",
        max_unknown_keys=1,
        partitions=np.arange(n, dtype=np.int32) % 3,
    )
    assert recs
    for raw in recs:
        rec = decode_strict(raw, StatsRecord)
        assert as_json(rec) == orjson.loads(raw)  # nothing lost or coerced
        assert rec.bundle_id == BID and rec.n_events == rec.n_scored + rec.n_dlq
    assert sum(decode_strict(r, StatsRecord).n_dlq for r in recs) == 3
    if n:
        assert any(decode_strict(r, StatsRecord).segments for r in recs)


def test_a_stats_record_that_drifts_from_the_contract_fails() -> None:
    from segstream.services.worker.stats import batch_stats_records

    cols, scores = _batch(50, seed=1)
    (raw, *_) = batch_stats_records(
        cols,
        scores,
        _reference(),
        time_field="t",
        slice_s=None,
        model="m",
        bundle_id=BID,
        worker="w",
        batch=0,
        n_events=50,
        dlq_counts={},
        created_at="now",
    )
    good = orjson.loads(raw)
    decode_strict(raw, StatsRecord)
    for bad in (
        {k: v for k, v in good.items() if k != "imputed"},  # a field dropped
        good | {"renamed_counts": {}},  # a field added
        good | {"n_scored": float(good["n_scored"])},  # retyped
        good | {"numeric": {"x": [1.0, 2.0, 3.0, 4.0]}},
    ):
        with pytest.raises(msgspec.ValidationError):
            decode_strict(orjson.dumps(bad), StatsRecord)
    # the contract itself ignores an unknown field (forward compatibility) but not a missing one
    msgspec.json.decode(orjson.dumps(good | {"added_later": 1}), type=StatsRecord)
    with pytest.raises(msgspec.ValidationError, match="missing required field `imputed`"):
        msgspec.json.decode(
            orjson.dumps({k: v for k, v in good.items() if k != "imputed"}), type=StatsRecord
        )


# ------------------------------------------------------------------------ predictions
def _scores(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.normal(size=n) * 20
    p[::5] = np.nan
    hi = p + 10
    hi[::3] = np.inf
    return {
        "segment": rng.integers(0, 2000, n).astype(np.int32),
        "fallback_level": rng.integers(0, 3, n).astype(np.int8),
        "prediction": p,
        "interval_low": p - 10,
        "interval_high": hi,
        "pattern": rng.integers(-1, 4, n).astype(np.int32),
        "pattern_proba": rng.random(n),
        "contributions": rng.normal(size=(n, 2)),
    }


@pytest.mark.parametrize("contributions", [False, True])
def test_worker_prediction_records_decode_strictly(contributions: bool) -> None:
    from segstream.services.worker.records import encode_predictions

    n = 40
    ids = [f"2013-09-01_UA_{i}_EWR_0516" for i in range(n)]
    times = [None if i % 7 == 0 else "2013-09-01T05:16:00-04:00" for i in range(n)]
    recs = encode_predictions(
        ids,
        _scores(n, 0),
        times,
        model="flights",
        bundle_id=BID,
        interval_mass=0.8,
        scored_at="2024-01-01T00:00:00.000Z",
        contribution_names=["intercept", "dep_delay"] if contributions else None,
    )
    for raw in recs:
        rec = decode_strict(raw, Prediction)
        assert as_json(rec) == orjson.loads(raw)
        assert (rec.contributions is msgspec.UNSET) is not contributions
    decoded = [decode_strict(r, Prediction) for r in recs]
    assert decoded[0].event_time is None and decoded[0].prediction is None  # NaN -> null
    assert decoded[0].interval[1] is None  # +inf -> null


def _family_scores(n: int, family: str, seed: int) -> dict[str, np.ndarray]:
    """Scores as a binomial or Poisson bundle returns them (``Bundle.score``'s contract)."""
    rng = np.random.default_rng(seed)
    s = _scores(n, seed)
    s["pattern"] = np.full(n, -1, np.int32)
    s["pattern_proba"] = np.full(n, np.nan)
    if family == "binomial":
        p = rng.random(n)
        p[::9] = np.nan
        s["prediction"] = s["probability"] = p
        s["label"] = np.where(np.isnan(p), -1, p >= 0.3).astype(np.int8)
        s["interval_low"] = s["interval_high"] = np.full(n, np.nan)
    else:
        mu = rng.gamma(2.0, 2.0, n)
        s["prediction"] = mu
        s["interval_low"], s["interval_high"] = np.floor(mu / 3), np.ceil(mu * 2)
        s["probability"] = np.full(n, np.nan)
        s["label"] = np.full(n, -1, np.int8)
    return s


@pytest.mark.parametrize("family", ["binomial", "poisson"])
@pytest.mark.parametrize("contributions", [False, True])
def test_family_prediction_records_decode_strictly(family: str, contributions: bool) -> None:
    """Binomial records carry family, probability, label and threshold; Poisson records
    the family; both decode into the contract with nothing lost, on both encoder paths."""
    from segstream.services.worker.records import encode_predictions

    n = 45
    scores = _family_scores(n, family, 1)
    recs = encode_predictions(
        [f"e{i}" for i in range(n)],
        scores,
        [None if i % 7 == 0 else "2013-09-01T05:16:00-04:00" for i in range(n)],
        model="flights_late",
        bundle_id=BID,
        interval_mass=0.8,
        scored_at="2024-01-01T00:00:00.000Z",
        contribution_names=["intercept", "dep_delay"] if contributions else None,
        family=family,
        threshold=0.3 if family == "binomial" else None,
    )
    for i, raw in enumerate(recs):
        rec = decode_strict(raw, Prediction)
        assert as_json(rec) == orjson.loads(raw)
        assert rec.family == family
        assert rec.pattern == -1 and rec.pattern_proba is None
        if family == "binomial":
            p = scores["probability"][i]
            assert rec.probability == rec.prediction == (None if np.isnan(p) else p)
            assert rec.label == scores["label"][i] and rec.threshold == 0.3
            assert rec.interval == (None, None)
        else:
            assert rec.prediction == scores["prediction"][i]
            assert rec.interval == (scores["interval_low"][i], scores["interval_high"][i])
            for absent in ("probability", "label", "threshold"):
                assert getattr(rec, absent) is msgspec.UNSET
                assert f'"{absent}"'.encode() not in raw
    # a gaussian record has no family field and decodes as gaussian
    plain = encode_predictions(
        ["e"],
        _scores(1, 0),
        [None],
        model="m",
        bundle_id=BID,
        interval_mass=0.8,
        scored_at="2024-01-01T00:00:00.000Z",
    )[0]
    assert b'"family"' not in plain
    assert decode_strict(plain, Prediction).family == "gaussian"


def test_a_prediction_of_an_unknown_family_or_label_is_rejected() -> None:
    from segstream.services.worker.records import encode_predictions

    good = orjson.loads(
        encode_predictions(
            ["e"],
            _family_scores(1, "binomial", 2) | {"probability": np.array([0.5])},
            [None],
            model="m",
            bundle_id=BID,
            interval_mass=0.8,
            scored_at="t",
            family="binomial",
            threshold=0.5,
        )[0]
    )
    decode_strict(orjson.dumps(good), Prediction)
    for bad in (good | {"family": "gamma"}, good | {"label": 2}, good | {"probability": "0.5"}):
        with pytest.raises(msgspec.ValidationError):
            decode_strict(orjson.dumps(bad), Prediction)
    with pytest.raises(ValueError, match="family"):
        encode_predictions(
            ["e"],
            _scores(1, 0),
            [None],
            model="m",
            bundle_id=BID,
            interval_mass=0.8,
            scored_at="t",
            family="gamma",
        )


def test_a_prediction_missing_a_field_is_rejected() -> None:
    rec = {
        "event_id": "e",
        "model": "m",
        "bundle_id": BID,
        "segment": 1,
        "fallback_level": 0,
        "prediction": 1.0,
        "interval": [0.0, 2.0],
        "interval_mass": 0.8,
        "pattern": 0,
        "pattern_proba": 0.5,
        "event_time": None,
        "scored_at": "t",
    }
    msgspec.json.decode(orjson.dumps(rec), type=Prediction)
    for k in rec:
        with pytest.raises(msgspec.ValidationError, match=f"missing required field `{k}`"):
            msgspec.json.decode(
                orjson.dumps({f: v for f, v in rec.items() if f != k}), type=Prediction
            )


# ------------------------------------------------------------------------ DLQ headers
def test_dlq_reasons_and_header_names_match_the_worker() -> None:
    from segstream.services.worker import records
    from segstream.services.worker.event_time import WORKER_DLQ_REASONS

    assert contracts.DLQ_REASONS == WORKER_DLQ_REASONS
    assert typing.get_args(contracts.DlqReason) == contracts.DLQ_REASONS
    worker_names = {v for k, v in vars(records).items() if k.startswith("DLQ_HEADER_")}
    contract_names = {f.encode_name for f in msgspec.inspect.type_info(DlqHeaders).fields}
    assert worker_names == contract_names


def _dlq(value: bytes, key: bytes | None, headers, **kw):
    from segstream.services.worker.records import dlq_record

    args = dict(
        reason="invalid_json",
        detail="bad",
        topic="segstream.events",
        partition=4,
        offset=123_456,
        worker="worker-1",
        max_value_bytes=1000,
        max_record_bytes=1_000_000,
    )
    args.update(kw)
    return dlq_record(value, key, headers, **args)


@pytest.mark.parametrize("reason", contracts.DLQ_REASONS)
@pytest.mark.parametrize("size", [0, 10, 5000])
def test_worker_dlq_headers_parse_strictly(reason: str, size: int) -> None:
    value = b"x" * size
    own = [("traceparent", b"00-abc"), ("segstream.dlq.reason", b"stale")]  # the event's own
    exception = "ZeroDivisionError" if reason == "scoring_error" else None
    out, key, headers = _dlq(
        value, b"k", own, reason=reason, detail=f"{reason}: field 'temp'", exception=exception
    )
    assert key == b"k"
    assert headers[:2] == own  # the event's own headers come first, then ours (last wins)
    ours = list(headers[2:])
    strict_headers = msgspec.convert(
        {k: v.decode() for k, v in ours}, strict(DlqHeaders), strict=False
    )
    h = DlqHeaders.from_headers(headers)
    assert h == DlqHeaders.from_headers(ours)
    assert msgspec.to_builtins(strict_headers) == msgspec.to_builtins(h)
    assert (h.reason, h.topic, h.partition, h.offset, h.worker) == (
        reason,
        "segstream.events",
        4,
        123_456,
        "worker-1",
    )
    assert h.exception == (exception if exception else msgspec.UNSET)
    if size > 1000:
        assert h.truncated_from_bytes == size and len(out) == 1000
    else:
        assert h.truncated_from_bytes is msgspec.UNSET and out == value
    assert DlqHeaders.from_headers(h.to_headers()) == h
    assert sorted(h.to_headers()) == sorted(ours)  # the worker's bytes, exactly


def test_dlq_headers_of_a_copy_cut_to_the_record_limit_parse() -> None:
    own = [(f"h{i}", b"v" * 300) for i in range(20)]
    out, key, headers = _dlq(
        b"x" * 50_000, b"k" * 5000, own, max_value_bytes=40_000, max_record_bytes=8000
    )
    h = DlqHeaders.from_headers(headers)
    assert h.truncated_from_bytes == 50_000 and len(out) < 8000
    assert h.key_truncated_from_bytes == 5000 and len(key) < 5000
    assert isinstance(h.headers_dropped, int) and h.headers_dropped > 0


def test_dlq_headers_missing_or_mistyped_are_rejected() -> None:
    good = DlqHeaders(
        reason="empty", detail="d", topic="t", partition=0, offset=1, worker="w"
    ).to_headers()
    DlqHeaders.from_headers(good)
    for i in range(len(good)):
        with pytest.raises(msgspec.ValidationError, match="missing required field"):
            DlqHeaders.from_headers(good[:i] + good[i + 1 :])
    with pytest.raises(msgspec.ValidationError, match=r"segstream\.dlq\.offset"):
        DlqHeaders.from_headers([*good, ("segstream.dlq.offset", b"12x")])
    with pytest.raises(msgspec.ValidationError, match=r"segstream\.dlq\.reason"):
        DlqHeaders.from_headers([*good, ("segstream.dlq.reason", b"other")])


def test_a_long_non_ascii_dlq_detail_stays_utf8() -> None:
    # 1 + 2 * 400 bytes: the 500-byte cut falls inside an "é"; the header keeps whole characters
    _, _, headers = _dlq(b"{}", None, None, reason="wrong_type", detail="x" + "é" * 400)
    h = DlqHeaders.from_headers(headers)
    assert h.detail == "x" + "é" * 249 and len(h.detail.encode()) == 499


# ------------------------------------------------------------------------ events, outcomes
@pytest.fixture(scope="module")
def flights_schema() -> SchemaSettings:
    return load_settings("flights").event_schema


def _flights_rows() -> pd.DataFrame:
    t = pd.to_datetime(["2013-09-01 05:15", "2013-09-01 06:00", "2013-11-03 01:30"]).tz_localize(
        "America/New_York", ambiguous=[True, True, False]
    )
    return pd.DataFrame(
        {
            "event_id": ["a", "b", "c"],
            "event_time": t,
            "carrier": ["UA", "AA", "B6"],
            "origin": ["EWR", "JFK", "LGA"],
            "dest": ["IAH", "MIA", "BOS"],
            "distance": [1400.0, 1089.0, 184.0],
            "sched_dep_hour": [5.25, 6.0, 1.5],
            "day_of_week": [6, 6, 6],
            "dep_delay": [2.0, np.nan, -3.0],
            "temp": [70.0, np.nan, 40.0],
            "dewp": [60.0, 61.0, np.nan],
            "humid": [70.0] * 3,
            "wind_speed": [3.0, 4.0, np.nan],
            "precip": [0.0] * 3,
            "pressure": [1012.0] * 3,
            "visib": [10.0] * 3,
            "arr_delay": [11.0, np.nan, -7.0],
            "outcome_time": [t[0] + pd.Timedelta(hours=4), pd.NaT, t[2] + pd.Timedelta(hours=1)],
        }
    )


def test_simulator_events_and_outcomes_decode_strictly(flights_schema) -> None:
    from segstream.shared.events import encode_events, encode_outcomes

    df = _flights_rows()
    event = event_struct(flights_schema)
    outcome = outcome_struct(
        flights_schema.id_field, flights_schema.time_field, flights_schema.target
    )
    for key, raw in encode_events(df, flights_schema):
        rec = decode_strict(raw, event)
        assert key.decode() == rec.event_id
        assert as_json(rec) == orjson.loads(raw)
    for key, raw in encode_outcomes(df, flights_schema):
        rec = decode_strict(raw, outcome)
        assert key.decode() == rec.event_id
    got = [decode_strict(v, outcome) for _, v in encode_outcomes(df, flights_schema)]
    assert got[1].arr_delay is None and got[1].outcome_time is None
    assert got[0].arr_delay == 11.0


def test_event_struct_follows_the_schema(flights_schema) -> None:
    event = event_struct(flights_schema)
    assert "arr_delay" not in event.__struct_fields__
    good = {
        "event_id": "a",
        "event_time": "2013-09-01T05:15:00-04:00",
        "carrier": "UA",
        "origin": "EWR",
        "dest": "IAH",
        "distance": 1400,
        "sched_dep_hour": 5.25,
        "day_of_week": 6,
    }
    rec = msgspec.convert(good, event)
    assert rec.temp is None and rec.distance == 1400.0
    for k in good:  # every required field
        with pytest.raises(msgspec.ValidationError, match=f"`{k}`"):
            msgspec.convert({f: v for f, v in good.items() if f != k}, event)
        with pytest.raises(msgspec.ValidationError, match=f"`{k}`|\\$.{k}"):
            msgspec.convert(good | {k: None}, event)
    with pytest.raises(msgspec.ValidationError, match=r"\$.temp"):
        msgspec.convert(good | {"temp": "NaN"}, event)
    odd = SchemaSettings(
        fields=[
            {"name": "id", "type": "string", "role": "id", "required": True},
            {"name": "event time", "type": "datetime", "role": "time", "required": True},
            {"name": "class", "type": "bool", "role": "numeric"},
            {"name": "y", "type": "float", "role": "target"},
        ]
    )
    rec = msgspec.json.decode(
        b'{"id":"a","event time":"2020-01-01","class":true}', type=event_struct(odd)
    )
    assert msgspec.to_builtins(rec) == {"id": "a", "event time": "2020-01-01", "class": True}


# Values of each JSON kind, for the agreement of the contract with the worker's decoder.
VALUES = [0, 3, -2.5, 1e300, True, False, None, "x", "NaN", "2013-09-01T05:15:00Z", [1], {"a": 1}]


def test_event_struct_accepts_what_the_worker_accepts() -> None:
    """For every field type and JSON kind: the contract decodes the event exactly when the
    worker's decoder scores it. The worker's two extra rules, which the contract's types do
    not express: the time field's ISO check (``bad_time``), and an ``int`` field's number
    must be an integer of magnitude below 2**53 (``wrong_type``; the contract types int
    fields as any number, ``docs/dlq.md``, *Numbers*)."""
    from segstream.services.worker.decode import EventDecoder

    schema = SchemaSettings(
        fields=[
            {"name": "id", "type": "string", "role": "id", "required": True},
            {"name": "t", "type": "datetime", "role": "time", "required": True},
            {"name": "f", "type": "float", "role": "numeric", "required": True},
            {"name": "i", "type": "int", "role": "numeric"},
            {"name": "b", "type": "bool", "role": "numeric"},
            {"name": "s", "type": "string", "role": "categorical"},
            {"name": "d", "type": "datetime", "role": "other"},
            {"name": "y", "type": "float", "role": "target"},
        ]
    )
    base = {
        "id": "e",
        "t": "2013-09-01T05:15:00Z",
        "f": 1.5,
        "i": 2,
        "b": True,
        "s": "a",
        "d": "2013-09-01T05:15:00Z",
    }
    docs = [base]
    for name in base:
        docs.append({k: v for k, v in base.items() if k != name})
        docs += [base | {name: v} for v in VALUES]
    values = [orjson.dumps(d) for d in docs]
    out = EventDecoder(schema, 10_000).decode(values)
    rejected = {i: reason for i, reason, _ in out.rejected}
    assert set(rejected.values()) == {"missing_field", "wrong_type", "bad_time"}
    assert 0 in out.valid.tolist() and len(out.valid) >= 20  # both outcomes exercised
    event = msgspec.json.Decoder(event_struct(schema))
    for i, v in enumerate(values):
        try:
            event.decode(v)
            ok = True
        except msgspec.ValidationError:
            ok = False
        iv = docs[i].get("i")
        not_integer = (
            type(iv) in (int, float) and (iv != int(iv) or abs(iv) >= 2**53)
            if type(iv) is not bool
            else False
        )
        if rejected.get(i) == "bad_time":
            assert ok, v  # a string, but not a time
        elif rejected.get(i) == "wrong_type" and not_integer:
            assert ok, v  # a number, but not an integer below 2**53 in the int field
        else:
            assert ok is (i not in rejected), (v, rejected.get(i))


# ------------------------------------------------------------------------ alerts
def _alerts() -> list[Alert]:
    w = dict(window_start="2013-09-01T00:00:00.000Z", window_end="2013-09-02T00:00:00.000Z")
    return [
        alert_record(
            type_="drift",
            severity="critical",
            model="m",
            bundle_id=BID,
            feature="temp",
            segment=None,
            statistic="psi",
            value=0.31,
            threshold=0.25,
            count=900,
            js_distance=0.2,
            **w,
        ),
        alert_record(
            type_="drift",
            severity="warning",
            model="m",
            bundle_id=BID,
            feature="x",
            segment=17,
            statistic="psi",
            value=0.11,
            threshold=0.1,
            count=90,
            js_distance=0.05,
            **w,
        ),
        alert_record(
            type_="new_segment",
            severity="warning",
            model="m",
            bundle_id=BID,
            feature=None,
            segment="JFK|XXX",
            statistic="count",
            value=60.0,
            threshold=50.0,
            count=60,
            first_seen="2013-09-01T12:00:00.000Z",
            **w,
        ),
        alert_record(
            type_="performance",
            severity="critical",
            model="m",
            bundle_id=BID,
            feature=None,
            segment=None,
            statistic="mae_ratio",
            value=2.0,
            threshold=2.0,
            count=4,
            n_nan=1,
            mae=20.0,
            baseline_mae=10.0,
            **w,
        ),
        alert_record(
            type_="performance",
            severity="warning",
            model="m",
            bundle_id=None,
            feature=None,
            segment=None,
            statistic="interval_coverage",
            value=None,
            threshold=0.7,
            count=4,
            n_nan=0,
            band=(0.7, 0.9),
            **w,
        ),
        bundle_rejected_alert(
            model="m", bundle_id=BID, current_bundle_id=None, reason="not signed"
        ),
        bundle_reload_failed_alert(
            model="m",
            bundle_id=None,
            current_bundle_id=BID,
            reason="store_unavailable",
            detail="timeout",
        ),
    ]


def test_alerts_encode_to_their_contract_and_back() -> None:
    for a in _alerts():
        raw = encode_alert(a)
        assert as_json(decode_strict(raw, Alert)) == as_json(a)
        assert msgspec.json.decode(raw, type=Alert) == a
        doc = orjson.loads(raw)
        assert {
            "alert_id",
            "type",
            "severity",
            "bundle_id",
            "feature",
            "segment",
            "value",
            "window_start",
            "detected_at",
        } <= set(doc)  # always present, null or not
    kinds = {a.type: set(orjson.loads(encode_alert(a))) for a in _alerts()}
    assert "js_distance" in kinds["drift"] and "first_seen" in kinds["new_segment"]
    assert "js_distance" not in kinds["performance"]  # fields of other types are left out
    assert {"reason", "current_bundle_id", "failure"} <= kinds["bundle_reload_failed"]


def test_an_alert_field_outside_the_contract_is_refused() -> None:
    with pytest.raises(TypeError, match="psi_value"):
        alert_record(
            type_="drift",
            severity="warning",
            model="m",
            bundle_id=BID,
            feature="x",
            segment=None,
            statistic="psi",
            value=0.2,
            threshold=0.1,
            window_start=None,
            window_end=None,
            count=1,
            psi_value=0.2,
        )
    with pytest.raises(ValueError, match="severity"):
        alert_record(
            type_="drift",
            severity="info",
            model="m",
            bundle_id=BID,
            feature="x",
            segment=None,
            statistic="psi",
            value=0.2,
            threshold=0.1,
            window_start=None,
            window_end=None,
            count=1,
        )
    bad = orjson.loads(encode_alert(_alerts()[0])) | {"type": "other"}
    with pytest.raises(msgspec.ValidationError, match=r"\$.type"):
        msgspec.json.decode(orjson.dumps(bad), type=Alert)


# ------------------------------------------------------------------------ model updates
def test_model_update_is_the_contract_type_and_round_trips() -> None:
    from segstream.shared import store

    assert store.ModelUpdate is ModelUpdate
    u = ModelUpdate(
        model="flights",
        bundle_id=BID,
        uri="file:///a",
        created_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC).isoformat(),
    )
    assert as_json(decode_strict(store.encode_model_update(u), ModelUpdate)) == as_json(u)
    assert store.decode_model_update(store.encode_model_update(u), "t") == u
    with pytest.raises(msgspec.ValidationError, match=r"\$.bundle_id"):
        msgspec.json.decode(b'{"model": "m", "bundle_id": "../x"}', type=ModelUpdate)


def test_docstring_examples() -> None:
    import doctest

    assert doctest.testmod(contracts).failed == 0
