"""Decoding and validation of event values (no broker)."""

from __future__ import annotations

import json
import math

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segstream.services.simulator.replay import MALFORMED_KINDS, malformed_event
from segstream.services.worker.decode import DLQ_REASONS, EventDecoder, _parse_times
from segstream.services.worker.records import (
    _element_seps,
    _encode_structs,
    _json_array_seps,
    _write_records,
    encode_predictions,
    warm_up_records,
)
from segstream.shared.settings import load_settings
from tests.conftest import FLIGHTS_CONFIG
from tests.fakes import load_fake_bundle, write_fake_bundle

SCHEMA = load_settings(FLIGHTS_CONFIG).event_schema
GOOD = {
    "event_id": "20130901-UA1-EWR-0600",
    "event_time": "2013-09-01T06:00:00-04:00",
    "carrier": "UA",
    "origin": "EWR",
    "dest": "IAH",
    "distance": 1400.0,
    "sched_dep_hour": 6.0,
    "day_of_week": 6,
    "dep_delay": None,
    "temp": 60.1,
    "dewp": 50.0,
    "humid": 70.0,
    "wind_speed": 10.0,
    "precip": 0.0,
    "pressure": 1012.0,
    "visib": 10.0,
}


def _event(**changes: object) -> bytes:
    d = dict(GOOD)
    for k, v in changes.items():
        if v is KeyError:
            d.pop(k)
        else:
            d[k] = v
    return orjson.dumps(d)


@pytest.fixture(scope="module")
def decoder() -> EventDecoder:
    return EventDecoder(SCHEMA, max_event_bytes=4096)


def _finite(v):
    """``v`` with non-finite floats as None (JSON has no NaN; orjson writes null too)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _json_bytes(v) -> bytes:
    """JSON text of ``v`` for any value the strategies draw, integers beyond 64 bits included
    (orjson refuses to encode those, the standard library writes their digits), so that no
    drawn case is replaced by a stand-in."""
    return json.dumps(_finite(v), ensure_ascii=False, separators=(",", ":")).encode()


def _check_total(out, n: int) -> None:
    """Every input is exactly one of: a valid row, a DLQ reason."""
    rejected = [i for i, _, _ in out.rejected]
    assert sorted(rejected + out.valid.tolist()) == list(range(n))
    assert all(r in DLQ_REASONS for _, r, _ in out.rejected)
    for col in out.columns.values():
        assert len(col) == out.n_valid
    assert len(out.event_time_text) == out.n_valid


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=300)), max_size=20))
def test_arbitrary_bytes_never_raise(decoder: EventDecoder, values: list) -> None:
    out = decoder.decode(values)
    _check_total(out, len(values))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=4,
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.fixed_dictionaries({}, optional={k: json_values for k in GOOD}), max_size=6),
    st.data(),
)
def test_arbitrary_objects_never_raise(decoder: EventDecoder, docs: list, data) -> None:
    merged = []
    for d in docs:
        base = dict(GOOD) if data.draw(st.booleans()) else {}
        base.update(d)
        merged.append(_json_bytes(base))  # integers beyond 64 bits reach the decoder
    out = decoder.decode(merged)
    _check_total(out, len(merged))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"x" * 5000, "too_large"),
        (b'{"event_id": "a", ', "invalid_json"),
        (b"\xff\xfe garbage \x00", "invalid_json"),
        (b'{"distance": NaN}', "invalid_json"),
        (b'{"distance": Infinity}', "invalid_json"),
        (b"[" * 2000, "invalid_json"),
        (b"[1, 2]", "not_object"),
        (b'"just a string"', "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
        (_event(carrier=KeyError), "missing_field"),
        (_event(event_id=None), "missing_field"),
        (_event(distance="NaN"), "wrong_type"),
        (_event(distance="inf"), "wrong_type"),
        (_event(distance=True), "wrong_type"),
        (_event(distance={"not": "a number"}), "wrong_type"),
        (_event(carrier=7), "wrong_type"),
        (_event(event_time=1378000000), "wrong_type"),
        (_event(event_time="yesterday"), "bad_time"),
        (_event(event_time="2013-02-30T00:00:00+00:00"), "bad_time"),
        (_event(event_time="9999-01-01T00:00:00+00:00"), "bad_time"),
    ],
)
def test_bad_inputs_get_their_reason(
    decoder: EventDecoder, value: bytes | None, reason: str
) -> None:
    out = decoder.decode([_event(), value, _event(event_id="other")])
    assert out.n_valid == 2
    assert [(i, r) for i, r, _ in out.rejected] == [(1, reason)]
    assert out.columns["event_id"].tolist() == [GOOD["event_id"], "other"]


def test_simulator_malformed_kinds_all_go_to_the_dlq(decoder: EventDecoder) -> None:
    rng = np.random.default_rng(0)
    good = _event()
    expected = {
        "invalid_json": "invalid_json",
        "wrong_type": "wrong_type",
        "missing_field": "missing_field",
        "huge_payload": "too_large",
        "not_object": "not_object",
        "empty": "empty",
        "garbage": "invalid_json",
    }
    for kind in MALFORMED_KINDS:
        _, v = malformed_event(good, b"k", kind, rng, SCHEMA, huge_bytes=10_000)
        out = decoder.decode([v])
        assert [r for _, r, _ in out.rejected] == [expected[kind]], kind


def test_valid_columns_have_the_scorer_dtypes(decoder: EventDecoder) -> None:
    out = decoder.decode(
        [
            _event(),
            _event(temp=None, dep_delay=KeyError, extra="ignored"),
            _event(event_time="2013-09-01T10:00:00Z"),
        ]
    )
    assert out.rejected == []
    assert out.columns["distance"].dtype == np.float64
    assert out.columns["carrier"].dtype == object
    assert out.columns["event_time"].dtype == np.dtype("datetime64[ns]")
    assert np.isnan(out.columns["temp"][1]) and np.isnan(out.columns["dep_delay"][1])
    assert (out.columns["event_time"] == np.datetime64("2013-09-01T10:00:00", "ns")).all()
    assert out.event_time_text[0] == GOOD["event_time"]


def test_duplicated_event_ids_are_each_scored(decoder: EventDecoder) -> None:
    out = decoder.decode([_event(), _event()])
    assert out.n_valid == 2 and out.rejected == []


def test_10mb_value_is_rejected_without_parsing(decoder: EventDecoder) -> None:
    out = decoder.decode([b"{" * 10_000_000])
    assert [r for _, r, _ in out.rejected] == ["too_large"]


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=__import__("datetime").datetime(1700, 1, 1),
        max_value=__import__("datetime").datetime(2200, 1, 1),
    ),
    st.integers(-14 * 60, 14 * 60),
)
def test_fast_time_parser_matches_pandas(t, offset_min: int) -> None:
    import datetime as dt

    import pandas as pd

    tz = dt.timezone(dt.timedelta(minutes=offset_min))
    s = t.replace(microsecond=0, tzinfo=tz).isoformat()
    got = _parse_times([s, s[:19], s[:19] + "Z"])
    want = pd.to_datetime([s, s[:19], s[:19] + "Z"], utc=True, format="ISO8601")
    assert got.tolist() == want.tz_convert(None).as_unit("ns").to_numpy().tolist()


def test_scoring_the_decoded_batch_equals_the_scorers_score(tmp_path, decoder) -> None:
    scorer = load_fake_bundle(write_fake_bundle(tmp_path, SCHEMA))
    values = [
        _event(event_id=f"e{i}", distance=100.0 + i, carrier=c)
        for i, c in enumerate(["UA", "AA", "ZZ", "DL"])
    ]
    out = decoder.decode(values)
    got = scorer.score(out.columns)
    direct = scorer.score(
        {
            "distance": np.array([100.0, 101.0, 102.0, 103.0]),
            "sched_dep_hour": np.full(4, 6.0),
            "carrier": np.array(["UA", "AA", "ZZ", "DL"], dtype=object),
            "origin": np.array(["EWR"] * 4, dtype=object),
            "dest": np.array(["IAH"] * 4, dtype=object),
        }
    )
    for k in ("prediction", "segment", "fallback_level", "interval_low"):
        np.testing.assert_array_equal(got[k], direct[k])
    recs = [
        orjson.loads(b)
        for b in encode_predictions(
            out.columns["event_id"].tolist(),
            got,
            out.event_time_text,
            model="flights",
            bundle_id=scorer.bundle_id,
            interval_mass=0.8,
            scored_at="2024-01-01T00:00:00Z",
            contribution_names=scorer.contribution_names,
        )
    ]
    assert [r["event_id"] for r in recs] == ["e0", "e1", "e2", "e3"]
    assert [r["prediction"] for r in recs] == got["prediction"].tolist()
    assert recs[2]["fallback_level"] == 1
    assert set(recs[0]) == {
        "event_id",
        "model",
        "bundle_id",
        "segment",
        "fallback_level",
        "prediction",
        "interval",
        "interval_mass",
        "pattern",
        "pattern_proba",
        "event_time",
        "scored_at",
        "contributions",
    }
    assert sum(recs[0]["contributions"].values()) == pytest.approx(recs[0]["prediction"])


def _dump(d: dict) -> bytes:
    return _json_bytes(d)


def _same(a, b) -> None:
    assert a.valid.tolist() == b.valid.tolist()
    assert a.rejected == b.rejected
    assert a.event_time_text == b.event_time_text
    for k in a.columns:
        x, y = a.columns[k], b.columns[k]
        assert x.dtype == y.dtype, k
        if x.dtype.kind in "fM":
            np.testing.assert_array_equal(x, y)
        else:
            assert x.tolist() == y.tolist(), k


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.just(_event()),
            st.fixed_dictionaries({}, optional={k: json_values for k in GOOD}).map(
                lambda d: _dump({**GOOD, **d})
            ),
            st.binary(max_size=60),
            st.none(),
        ),
        max_size=12,
    )
)
def test_fast_path_equals_slow_path(decoder: EventDecoder, values: list) -> None:
    """The msgspec fast path changes speed, never outcomes: same rows, reasons, values."""
    _same(decoder.decode(values), decoder._decode_slow(values))


def test_fast_path_mixed_batch_keeps_input_order(decoder: EventDecoder) -> None:
    values = [
        _event(event_id="a"),
        b"[1]",
        _event(event_id="b", distance="far"),
        _event(event_id="c"),
        None,
        _event(event_id="d", event_time="yesterday"),
    ]
    out = decoder.decode(values)
    assert out.columns["event_id"].tolist() == ["a", "c"]
    assert out.valid.tolist() == [0, 3]
    assert [(i, r) for i, r, _ in out.rejected] == [
        (1, "not_object"),
        (2, "wrong_type"),
        (4, "empty"),
        (5, "bad_time"),
    ]
    _same(out, decoder._decode_slow(values))


# --------------------------------------------------------------------- prediction records
#: Strings that stress the encoders and the tokeniser: quotes, backslashes (also right before
#: a closing quote and across 8-byte words), newlines, control characters, multi-byte UTF-8.
NASTY_TEXT = [
    "",
    '"',
    "\\",
    '\\"',
    '"\\',
    "\\\\",
    "a\nb",
    "\r\n\t",
    "\x00\x01\x1f\x7f",
    "\u2028\u2029",
    "é",
    "ü" * 9,
    "日本語",
    "\U0001f600x",
    "\ufeff",
    ',"]}[{',
    "null",
    "1e16",
    "x" * 7 + '"',
    "x" * 8 + "\\",
    "y" * 15 + '\\"' + "z" * 9,
    "20130901-UA1545-EWR-0516",
    "2013-09-01T05:16:00-04:00",
]
#: Floats whose spelling differs between encoders or that JSON cannot hold (null).
NASTY_FLOATS = [
    0.0,
    -0.0,
    1e16,
    -1e16,
    1e22,
    5e-324,
    -5e-324,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    2.2250738585072014e-308,
    1e-7,
    0.1,
    123456.789,
    9007199254740993.0,
    float("nan"),
    float("inf"),
    float("-inf"),
]
texts = st.one_of(st.text(), st.sampled_from(NASTY_TEXT))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([f for f in NASTY_FLOATS if np.isfinite(f)]),
    texts,
)


def _scores(x: np.ndarray, seg: np.ndarray) -> dict[str, np.ndarray]:
    n = len(x)
    return {
        "segment": seg,
        "fallback_level": (seg % 4).astype(np.int8),
        "prediction": x,
        "interval_low": x - 1,
        "interval_high": x + 1,
        "pattern": seg % 3,
        "pattern_proba": np.full(n, 0.25),
        "contributions": np.stack([x, -x], axis=1),
    }


def _contracts(ids, scores, times, **consts) -> list[dict]:
    """The DESIGN.md prediction records, as the dicts ``orjson.dumps`` takes."""
    cols = {k: v.tolist() for k, v in scores.items()}
    return [
        {
            "event_id": ids[i],
            "model": consts["model"],
            "bundle_id": consts["bundle_id"],
            "segment": cols["segment"][i],
            "fallback_level": cols["fallback_level"][i],
            "prediction": cols["prediction"][i],
            "interval": [cols["interval_low"][i], cols["interval_high"][i]],
            "interval_mass": consts["interval_mass"],
            "pattern": cols["pattern"][i],
            "pattern_proba": cols["pattern_proba"][i],
            "event_time": times[i],
            "scored_at": consts["scored_at"],
        }
        for i in range(len(ids))
    ]


CONSTS = {"model": 'm\n"q"', "bundle_id": "b\\", "interval_mass": 0.8, "scored_at": "now"}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            texts,
            st.one_of(st.none(), texts),
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NASTY_FLOATS)
            ),
            st.integers(-(2**31), 2**31 - 1),
        ),
        max_size=20,
    ),
    st.booleans(),
)
def test_prediction_records_equal_one_orjson_dump_each(rows, with_contributions) -> None:
    """Record for record, the bytes of ``orjson.dumps`` of the contract's dict (field order,
    NaN/±inf as null, float spelling): ids and times with quotes, backslashes, newlines,
    control characters and any unicode, None times, extreme floats and ints.

    With contributions (msgspec Structs, one per record) the bytes are the same except that
    msgspec spells floats of magnitude >= 1e16 without the exponent's ``+`` (``1e16`` where
    orjson writes ``1e+16``): there the parsed records are compared.
    """
    n = len(rows)
    ids = [r[0] for r in rows]
    times = [r[1] for r in rows]
    x = np.array([r[2] for r in rows], dtype=np.float64)
    seg = np.array([r[3] for r in rows], dtype=np.int32)
    scores = _scores(x, seg)
    names = ["intercept", "distance"] if with_contributions else None
    got = encode_predictions(ids, scores, times, contribution_names=names, **CONSTS)
    assert len(got) == n
    for i, (rec, want) in enumerate(
        zip(got, _contracts(ids, scores, times, **CONSTS), strict=True)
    ):
        if names:
            want["contributions"] = {"intercept": float(x[i]), "distance": float(-x[i])}
            assert list(orjson.loads(rec).items()) == list(orjson.loads(orjson.dumps(want)).items())
            assert rec.replace(b"e+", b"e") == orjson.dumps(want).replace(b"e+", b"e")
        else:
            assert rec == orjson.dumps(want)
    if not names:  # the same values as the per-record (Struct) encoding used before
        old = _encode_structs(ids, scores, times, contribution_names=None, **CONSTS)
        assert [orjson.loads(r) for r in got] == [orjson.loads(r) for r in old]


@pytest.mark.parametrize("n", [0, 1, 50_000])
def test_prediction_records_batch_sizes(n: int) -> None:
    rng = np.random.default_rng(n)
    ids = [f"20130901-UA{i}-EWR-0516" for i in range(n)]
    times = [None if i % 7 == 0 else "2013-09-01T05:16:00-04:00" for i in range(n)]
    x = rng.normal(size=n) * 20
    x[::11] = np.nan
    scores = _scores(x, rng.integers(0, 2000, n).astype(np.int32))
    got = encode_predictions(ids, scores, times, **CONSTS)
    assert got == [orjson.dumps(d) for d in _contracts(ids, scores, times, **CONSTS)]


@pytest.mark.parametrize(
    "dtypes",
    [
        (np.int32, np.int8, np.float64, np.int32, np.float64),  # Scorer.score's dtypes
        (np.int64, np.int16, np.float32, np.uint8, np.float32),
        (np.uint64, np.uint32, np.float16, np.bool_, np.float64),
        (np.int8, np.bool_, np.int64, np.uint16, np.uint64),  # ints where floats belong
        (object, np.int8, np.float64, np.int32, np.float64),  # object: per-record path
        (np.int32, np.int8, np.complex128, np.int32, np.float64),  # complex: per-record path
    ],
)
def test_prediction_records_of_other_dtypes_spell_tolist(dtypes) -> None:
    """Whatever the score dtypes, a record holds the values of ``.tolist()``: float32 as
    its exact float64 value (not its shortest float32 spelling), extreme ints exactly."""
    seg_t, lvl_t, pred_t, pat_t, proba_t = dtypes
    big = {np.int64: [-(2**63), 2**63 - 1], np.uint64: [0, 2**64 - 1]}
    seg = np.array([*big.get(seg_t, [1, 0]), 7], dtype=seg_t)
    pred = (
        np.array([0.1, -2.5, 3], dtype=pred_t)
        if pred_t is not np.complex128
        else np.array([0.1, -2.5, 3], dtype=np.float64)
    )
    low = pred.astype(np.complex128) if pred_t is np.complex128 else pred
    scores = {
        "segment": seg,
        "fallback_level": np.array([0, 1, 1]).astype(lvl_t),
        "prediction": pred,
        "interval_low": low,
        "interval_high": pred,
        "pattern": np.array([2, 0, 1]).astype(pat_t),
        "pattern_proba": np.array([1, 0, 1]).astype(proba_t),
    }
    ids, times = ["a", "b", "c"], ["t", None, "t"]
    if pred_t is np.complex128:  # not JSON: the per-record path raises as before
        with pytest.raises(TypeError):
            encode_predictions(ids, scores, times, **CONSTS)
        return
    got = encode_predictions(ids, scores, times, **CONSTS)
    assert got == [orjson.dumps(d) for d in _contracts(ids, scores, times, **CONSTS)]
    if pred_t is np.float32:
        assert b'"prediction":0.10000000149011612,' in got[0]


def test_prediction_records_contributions_path_unchanged() -> None:
    """With contribution names each record is a msgspec Struct ending in ``contributions``
    (the encoding used before for every record): same bytes as ``orjson.dumps``."""
    x = np.array([1.5, -0.0, np.nan, 2e-7])
    scores = _scores(x, np.arange(4, dtype=np.int32))
    ids, times = ["a", 'b"\n', "c", "d"], ["t", None, "t\\", "t"]
    got = encode_predictions(ids, scores, times, contribution_names=["intercept", "dist"], **CONSTS)
    for i, (rec, want) in enumerate(
        zip(got, _contracts(ids, scores, times, **CONSTS), strict=True)
    ):
        want["contributions"] = {"intercept": x.tolist()[i], "dist": (-x).tolist()[i]}
        assert rec == orjson.dumps(want)
    assert list(orjson.loads(got[0]))[-1] == "contributions"
    assert (
        encode_predictions(
            [],
            _scores(np.empty(0), np.empty(0, np.int32)),
            [],
            contribution_names=["intercept", "dist"],
            **CONSTS,
        )
        == []
    )


@pytest.mark.parametrize("family", ["gaussian", "binomial", "poisson"])
@pytest.mark.parametrize("n", [1, 1000])
def test_family_prediction_records_equal_one_orjson_dump_each(family: str, n: int) -> None:
    """The family fields follow ``scored_at`` (binomial: family, probability, label,
    threshold; Poisson: family; Gaussian: none): each record is ``orjson.dumps`` of the
    contract's dict, and the per-record path writes the same bytes."""
    rng = np.random.default_rng(n)
    p = rng.random(n)
    p[::13] = np.nan
    scores = _scores(p, rng.integers(0, 50, n).astype(np.int32))
    scores["probability"] = p
    scores["label"] = np.where(np.isnan(p), -1, p >= 0.25).astype(np.int8)
    ids = [f"e{i}" for i in range(n)]
    times = [None if i % 5 == 0 else "2013-09-01T05:16:00Z" for i in range(n)]
    thr = 0.25 if family == "binomial" else None
    got = encode_predictions(ids, scores, times, family=family, threshold=thr, **CONSTS)
    want = _contracts(ids, scores, times, **CONSTS)
    for i, w in enumerate(want):
        if family == "binomial":
            w |= {"family": family, "probability": scores["probability"].tolist()[i]}
            w |= {"label": int(scores["label"][i]), "threshold": thr}
        elif family == "poisson":
            w["family"] = family
    assert got == [orjson.dumps(w) for w in want]
    structs = _encode_structs(
        ids, scores, times, contribution_names=None, family=family, threshold=thr, **CONSTS
    )
    assert structs == got


def test_prediction_records_lengths_must_match() -> None:
    scores = _scores(np.zeros(3), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="event_time_text"):
        encode_predictions(["a", "b", "c"], scores, ["t", "t"], **CONSTS)
    with pytest.raises(ValueError, match="segment"):
        encode_predictions(["a", "b"], scores, ["t", "t"], **CONSTS)


def test_prediction_records_accept_tuples_and_arrays_of_ids() -> None:
    scores = _scores(np.zeros(2), np.zeros(2, np.int32))
    ids = np.array(["a", "b"], dtype=object)
    want = encode_predictions(["a", "b"], scores, ["t", None], **CONSTS)
    assert encode_predictions(ids, scores, ("t", None), **CONSTS) == want
    assert encode_predictions(np.array(["a", "b"]), scores, ["t", None], **CONSTS) == want


def test_warm_up_records_compiles_the_signature_of_a_real_batch() -> None:
    warm_up_records()
    before = (len(_element_seps.signatures), len(_write_records.signatures))
    rng = np.random.default_rng(0)
    x = rng.normal(size=100)
    encode_predictions(
        [f"e{i}" for i in range(100)], _scores(x, np.zeros(100, np.int32)), ["t"] * 100, **CONSTS
    )
    assert (len(_element_seps.signatures), len(_write_records.signatures)) == before


def _spans(text: bytes, pad: bytes = b"") -> tuple[int, list[bytes]]:
    """Run the tokeniser on ``text`` placed between junk bytes (it must stay inside)."""
    src = np.frombuffer(pad + text + pad, dtype=np.uint8)
    seps = np.full(len(text) + 1, -7, dtype=np.int64)
    k = _json_array_seps(src, len(pad), len(pad) + len(text), seps)
    return k, [bytes(src[seps[j] + 1 : seps[j + 1]]) for j in range(max(k, 0))]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            json_scalars,
            st.lists(json_scalars, max_size=3),
            st.dictionaries(texts, json_scalars, max_size=3),
        ),
        max_size=30,
    ),
    st.booleans(),
    st.sampled_from([b"", b'"\\,]', b"[1,2]" * 3]),
)
def test_json_array_tokeniser_matches_orjson_loads(values, use_msgspec, pad) -> None:
    """Reference test of the tokeniser kernel: the spans of a compact JSON array (orjson's
    or msgspec's) are its elements, as ``orjson.loads`` of the whole array sees them."""
    text = msgspec.json.encode(values) if use_msgspec else orjson.dumps(values)
    k, elements = _spans(text, pad)
    assert k == len(values)
    assert [orjson.loads(e) for e in elements] == orjson.loads(text)
    assert b",".join(elements) == text[1:-1]


def test_json_array_tokeniser_escapes_at_every_word_offset() -> None:
    """Quotes and backslashes at each position of the 8-byte words the scan reads."""
    values = [
        a * i + c + a * j
        for i in range(20)
        for j in range(3)
        for c in ['"', "\\", '\\"', '"\\', "\n", "é"]
        for a in ("x", "\\")
    ]
    text = orjson.dumps(values)
    k, elements = _spans(text)
    assert k == len(values)
    assert [orjson.loads(e) for e in elements] == values


@pytest.mark.parametrize(
    "text", [b"", b"[", b"]", b"{}", b'["a]', b'["a\\"]', b'["a\\', b"[[1]", b'["a"x]', b"[[1],{]"]
)
def test_json_array_tokeniser_rejects_what_it_cannot_split(text: bytes) -> None:
    assert _spans(text, b'"]')[0] == -1


def test_json_array_tokeniser_respects_the_capacity() -> None:
    src = np.frombuffer(b"[1,2,3]", dtype=np.uint8)
    assert _json_array_seps(src, 0, 7, np.empty(4, np.int64)) == 3
    assert _json_array_seps(src, 0, 7, np.empty(3, np.int64)) == -1
    assert _json_array_seps(np.frombuffer(b"[]", dtype=np.uint8), 0, 2, np.empty(1, np.int64)) == 0


# ---------------------------------------------------------------------- flat path (numba)
def _flat_status(decoder: EventDecoder, values: list[bytes]) -> np.ndarray:
    """Per value, 0 when the flat kernel parsed it itself, 1 when it left it to msgspec."""
    from segstream.services.worker._decode_kernels import parse_flat_objects
    from segstream.services.worker.decode import _NAT_INT

    lay = decoder._flat
    n = len(values)
    buf = np.frombuffer(b"".join(values), np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int64)
    status = np.empty(n, np.uint8)
    parse_flat_objects(
        buf,
        offsets,
        lay.names,
        lay.name_off,
        lay.kinds,
        lay.slots,
        lay.required,
        np.full((lay.n_num, n), np.nan),
        np.full((lay.n_str, n), -1, np.int64),
        np.full((lay.n_str, n), -1, np.int64),
        np.full(n, _NAT_INT, np.int64),
        np.empty((n * lay.n_num, 4), np.int64),
        status,
    )
    return status


def _same_bits(a, b) -> None:
    _same(a, b)
    for k in a.columns:
        if a.columns[k].dtype.kind == "f":  # -0.0 and 0.0 are equal but not the same
            assert np.array_equal(np.signbit(a.columns[k]), np.signbit(b.columns[k])), k


def test_flat_path_takes_the_simulators_events(decoder: EventDecoder) -> None:
    """Events as the simulator writes them (orjson, shortest float spellings, 17-digit
    mantissas, nulls) are parsed by the kernel itself, not handed on."""
    rng = np.random.default_rng(1)
    values = [
        _event(
            event_id=f"e{i}",
            sched_dep_hour=float(h),
            temp=float(t),
            dep_delay=None if i % 7 == 0 else float(d),
            pressure=None,
        )
        for i, (h, t, d) in enumerate(
            zip(
                rng.uniform(0, 24, 500),
                rng.normal(50, 20, 500),
                rng.normal(0, 30, 500),
                strict=True,
            )
        )
    ]
    assert _flat_status(decoder, values).tolist() == [0] * len(values)
    _same_bits(decoder.decode(values), decoder._decode_slow(values))


_number_texts = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: orjson.dumps(x).decode()),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(2**64), 2**64).map(str),
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.sampled_from(
        [
            "-0",
            "-0.0",
            "0e5",
            "1E400",
            "-1e-400",
            "9007199254740993",
            "9007199254740992",
            "4.35",
            "1e22",
            "1e23",
            "123456789012345678",
            "0.1e-22",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "--1",
            "1.5e+",
            "NaN",
        ]
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_number_texts, min_size=1, max_size=8))
def test_flat_path_numbers_equal_msgspecs(decoder: EventDecoder, texts: list[str]) -> None:
    """Reference: every number the kernel converts itself (Clinger's fast path) or hands to
    msgspec is bit-identical to the struct path; a non-number goes to the DLQ as before."""
    values = [_event().replace(b'"distance":1400.0', f'"distance":{t}'.encode()) for t in texts]
    _same_bits(decoder.decode(values), decoder._decode_structs(values))


_ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=12)
_any_text = st.text(max_size=12)
_times = st.one_of(
    st.datetimes(min_value=__import__("datetime").datetime(1600, 1, 1)).map(
        lambda d: d.isoformat(timespec="seconds")
    ),
    st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}"
        r"(Z|[+-][0-9]{2}:[0-9]{2})?\Z"
    ),
    _any_text,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "event_id": st.one_of(_ascii_text, _any_text),
                "event_time": _times,
                "carrier": st.one_of(_ascii_text, st.none(), st.integers(0, 3)),
                "origin": st.sampled_from(["EWR", "JFK", "LGA", 'E"W', "E\\W", "\u00e9"]),
            },
            optional={
                "dep_delay": st.one_of(st.none(), st.floats(), st.booleans()),
                "extra": st.one_of(
                    st.none(),
                    st.booleans(),
                    st.text(max_size=5),
                    st.lists(st.integers(), max_size=2),
                ),
            },
        ),
        max_size=10,
    ),
    st.sampled_from(["", " ", "\n\t "]),
    st.booleans(),
)
def test_flat_path_equals_struct_path(
    decoder: EventDecoder, docs: list, ws: str, shuffle: bool
) -> None:
    """Keys in any order, whitespace, escapes, non-ASCII, odd times, nulls, wrong types,
    extra nested fields: the flat path gives what msgspec (and the slow path) give."""
    values = []
    for i, d in enumerate(docs):
        full = {**GOOD, **d}
        items = list(full.items())
        if shuffle:
            items = items[i % len(items) :] + items[: i % len(items)]
        body = ("," + ws).join(
            f"{ws}{orjson.dumps(k).decode()}{ws}:{ws}{_dump_value(v)}" for k, v in items
        )
        values.append(("{" + body + ws + "}" + ws).encode())
    _same_bits(decoder.decode(values), decoder._decode_slow(values))


def _dump_value(v) -> str:
    return _json_bytes(v).decode()


def test_flat_path_duplicated_key_and_bad_tokens_defer(decoder: EventDecoder) -> None:
    good = _event()
    dup = good[:-1] + b',"carrier":"AA"}'
    values = [
        good,
        dup,
        good[:-1] + b"} x",
        b" " + good,
        good.replace(b"null", b"nul"),
        good.replace(b'"UA"', b'"U\\u0041"'),
        good.replace(b"6.0", b"6.0e"),
    ]
    assert _flat_status(decoder, values).tolist() == [0, 1, 1, 0, 1, 1, 1]
    out = decoder.decode(values)
    _same_bits(out, decoder._decode_slow(values))
    assert out.columns["carrier"].tolist() == ["UA", "AA", "UA", "UA"]


def test_code_spans_matches_factorize() -> None:
    import pandas as pd

    from segstream.services.worker._decode_kernels import code_spans

    rng = np.random.default_rng(3)
    words = [f"w{i}" * (i % 4) for i in range(700)] + [""]
    picks = rng.integers(0, len(words), 5000)
    text = [words[i] for i in picks]
    raw = "".join(text).encode()
    ends = np.cumsum([len(t) for t in text]).astype(np.int64)
    starts = ends - [len(t) for t in text]
    starts[::11] = -1  # nulls
    rows = np.arange(len(text), dtype=np.int64)[::-1].copy()
    codes, fs, fe = code_spans(np.frombuffer(raw, np.uint8), starts, ends, rows)
    expect = [None if starts[r] < 0 else text[r] for r in rows]
    ref_codes, ref_uniques = pd.factorize(np.array(expect, dtype=object))
    assert codes.tolist() == ref_codes.tolist()
    assert [raw[s:e].decode() for s, e in zip(fs, fe, strict=True)] == ref_uniques.tolist()


def test_decoded_category_columns_skip_a_second_factorisation(decoder: EventDecoder) -> None:
    out = decoder.decode([_event(carrier=c) for c in ["UA", "AA", "UA", "DL"]])
    col = out.columns["carrier"]
    assert not col.flags.writeable
    codes, uniques = col.factorization()
    assert uniques == ["UA", "AA", "DL"] and codes.tolist() == [0, 1, 0, 2]


def test_flat_path_time_json_feeds_the_records(decoder: EventDecoder) -> None:
    """The flat path hands the record encoder the time values as one JSON array; the records
    equal those made from the Python strings, and ``event_time_text`` is built on demand."""
    values = [
        _event(event_id=f"e{i}", event_time=t)
        for i, t in enumerate(
            ["2013-09-01T06:00:00-04:00", "2013-09-01 07:00:00", "2013-09-01T08:00:00Z"]
        )
    ]
    out = decoder.decode(values)
    assert out.event_time_json == (
        b'["2013-09-01T06:00:00-04:00","2013-09-01 07:00:00","2013-09-01T08:00:00Z"]'
    )
    assert out.event_time_text == [
        "2013-09-01T06:00:00-04:00",
        "2013-09-01 07:00:00",
        "2013-09-01T08:00:00Z",
    ]
    x = np.array([1.5, np.nan, -2.0])
    scores = _scores(x, np.array([1, 2, 3], np.int32))
    ids = out.columns["event_id"].tolist()
    a = encode_predictions(ids, scores, None, event_time_json=out.event_time_json, **CONSTS)
    b = encode_predictions(ids, scores, out.event_time_text, **CONSTS)
    assert a == b
    with pytest.raises(ValueError, match="does not hold"):
        encode_predictions(ids, scores, None, event_time_json=b'["x"]', **CONSTS)
    with_c = encode_predictions(
        ids,
        {**scores, "contributions": np.zeros((3, 1))},
        None,
        event_time_json=out.event_time_json,
        contribution_names=["intercept"],
        **CONSTS,
    )
    assert [orjson.loads(r)["event_time"] for r in with_c] == out.event_time_text
    mixed = decoder.decode([*values, b"[1]"])  # merged with the struct path: lists only
    assert mixed.event_time_json is None and mixed.event_time_text == out.event_time_text


# ============================================================================================
# flat kernel, word at a time vs its byte-at-a-time original
# ============================================================================================
# ``parse_flat_objects`` reads 8-byte words where it can (keys, string ends, digits, ISO
# times). Below is the byte-at-a-time kernel it replaced (commit aacc45e), kept line for line
# (names prefixed with ``_orig``, the long docstring cut) as the reference: on any input, both
# must give the same status, numbers (bit for bit), spans, times and hard numbers.
from numba import njit  # noqa: E402

from segstream.services.worker._decode_kernels import (  # noqa: E402
    KIND_BOOL,
    KIND_NUMBER,
    KIND_STRING,
    KIND_TIME,
    parse_flat_objects,
)
from segstream.services.worker.decode import _FlatLayout  # noqa: E402
from segstream.shared.settings import FieldSpec, SchemaSettings  # noqa: E402

_ORIG_POW10 = np.array([10.0**k for k in range(23)], dtype=np.float64)
_ORIG_TWO53 = 1 << 53
_ORIG_NAT = np.iinfo(np.int64).min


@njit(cache=True, nogil=True, inline="always")
def _orig_ws(buf: np.ndarray, p: int, end: int) -> int:
    while p < end:
        c = buf[p]
        if c != 32 and c != 10 and c != 13 and c != 9:
            break
        p += 1
    return p


@njit(cache=True, nogil=True, inline="always")
def _orig_string_end(buf: np.ndarray, p: int, end: int) -> int:
    """Index of the closing quote of a plain string starting at ``p`` (after its opening
    quote), or -1 when it has an escape, a control or non-ASCII byte, or no end."""
    while p < end:
        c = buf[p]
        if c == 34:
            return p
        if c == 92 or c < 32 or c >= 128:
            return -1
        p += 1
    return -1


@njit(cache=True, nogil=True, inline="always")
def _orig_days_in_month(y: int, m: int) -> int:
    if m == 2:
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        return 29 if leap else 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


@njit(cache=True, nogil=True, inline="always")
def _orig_digits(buf: np.ndarray, s: int, k: int) -> int:
    """The value of the ``k`` ASCII digits at ``s``, or -1."""
    v = 0
    for j in range(s, s + k):
        d = buf[j] - 48
        if d < 0 or d > 9:
            return -1
        v = v * 10 + d
    return v


@njit(cache=True, nogil=True, inline="always")
def _orig_iso_ns(buf: np.ndarray, s: int, e: int) -> tuple[bool, int]:
    """``YYYY-MM-DD[T ]HH:MM:SS`` [``Z`` | ``±HH:MM``] at ``buf[s:e]`` to ns since the epoch
    (UTC; no offset means UTC), the forms and bounds of ``decode._fast_iso``."""
    w = e - s
    if w != 19 and w != 20 and w != 25:
        return False, 0
    if buf[s + 4] != 45 or buf[s + 7] != 45 or buf[s + 13] != 58 or buf[s + 16] != 58:
        return False, 0
    if buf[s + 10] != 84 and buf[s + 10] != 32:
        return False, 0
    year = _orig_digits(buf, s, 4)
    month = _orig_digits(buf, s + 5, 2)
    day = _orig_digits(buf, s + 8, 2)
    hh = _orig_digits(buf, s + 11, 2)
    mm = _orig_digits(buf, s + 14, 2)
    ss = _orig_digits(buf, s + 17, 2)
    if (
        year < 1678
        or year > 2261
        or month < 1
        or month > 12
        or day < 1
        or hh < 0
        or hh > 23
        or mm < 0
        or mm > 59
        or ss < 0
        or ss > 59
    ):
        return False, 0
    if day > _orig_days_in_month(year, month):
        return False, 0
    off = 0
    if w == 20:
        if buf[s + 19] != 90:
            return False, 0
    elif w == 25:
        sign = buf[s + 19]
        if (sign != 43 and sign != 45) or buf[s + 22] != 58:
            return False, 0
        oh = _orig_digits(buf, s + 20, 2)
        om = _orig_digits(buf, s + 23, 2)
        if oh < 0 or oh > 23 or om < 0 or om > 59:
            return False, 0
        off = oh * 60 + om
        if sign == 45:
            off = -off
    # days_from_civil (Hinnant); year >= 1678 here, so the era is never negative.
    y = year - (1 if month <= 2 else 0)
    era = y // 400
    yoe = y - era * 400
    mp = month - 3 if month > 2 else month + 9
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    secs = days * 86400 + hh * 3600 + mm * 60 + ss - off * 60
    return True, secs * 1_000_000_000


@njit(cache=True, nogil=True, inline="always")
def _orig_number(buf: np.ndarray, p: int, end: int, pow10: np.ndarray) -> tuple[int, int, float]:
    """Parse a JSON number at ``p``. Returns ``(state, next p, value)``: state 0 exact value,
    1 valid but hard (convert the text elsewhere), -1 not a JSON number."""
    neg = False
    if p < end and buf[p] == 45:
        neg = True
        p += 1
    if p >= end:
        return -1, p, 0.0
    c = buf[p]
    mant = 0
    nd = 0  # significant digits in mant
    exp10 = 0
    if c == 48:
        p += 1
        if p < end and 48 <= buf[p] <= 57:
            return -1, p, 0.0  # leading zero
    elif 49 <= c <= 57:
        while p < end and 48 <= buf[p] <= 57:
            if nd < 18:  # 18 digits fit in int64
                mant = mant * 10 + (buf[p] - 48)
                nd += 1
            else:
                nd += 1
                exp10 += 1
            p += 1
    else:
        return -1, p, 0.0
    is_int = True
    if p < end and buf[p] == 46:
        is_int = False
        p += 1
        if p >= end or not 48 <= buf[p] <= 57:
            return -1, p, 0.0
        while p < end and 48 <= buf[p] <= 57:
            d = buf[p] - 48
            if nd < 18:
                if mant != 0 or d != 0:
                    mant = mant * 10 + d
                    nd += 1
                exp10 -= 1
            else:
                nd += 1
            p += 1
    if p < end and (buf[p] == 101 or buf[p] == 69):
        is_int = False
        p += 1
        eneg = False
        if p < end and (buf[p] == 43 or buf[p] == 45):
            eneg = buf[p] == 45
            p += 1
        if p >= end or not 48 <= buf[p] <= 57:
            return -1, p, 0.0
        ev = 0
        while p < end and 48 <= buf[p] <= 57:
            if ev < 100_000:
                ev = ev * 10 + (buf[p] - 48)
            p += 1
        exp10 += -ev if eneg else ev
    if nd > 18 or mant >= _ORIG_TWO53 or (mant == 0 and neg):
        return 1, p, 0.0
    v = float(mant)
    if mant == 0:
        return 0, p, 0.0
    if is_int and exp10 == 0:
        return 0, p, -v if neg else v
    if exp10 > 22 or exp10 < -22:
        return 1, p, 0.0
    if exp10 >= 0:
        v = v * pow10[exp10]
    else:
        v = v / pow10[-exp10]
    return 0, p, -v if neg else v


@njit(cache=True, nogil=True, inline="always")
def _orig_match(
    buf: np.ndarray, ks: int, ke: int, names: np.ndarray, name_off: np.ndarray, guess: int
) -> int:
    """Index of the field named ``buf[ks:ke]`` (trying ``guess`` first), or -1."""
    nf = len(name_off) - 1
    klen = ke - ks
    for t in range(nf):
        f = guess + t
        if f >= nf:
            f -= nf
        a = name_off[f]
        if name_off[f + 1] - a != klen:
            continue
        same = True
        for j in range(klen):
            if names[a + j] != buf[ks + j]:
                same = False
                break
        if same:
            return f
    return -1


@njit(cache=True, nogil=True)
def _orig_parse_flat_objects(
    buf: np.ndarray,
    offsets: np.ndarray,
    names: np.ndarray,
    name_off: np.ndarray,
    kinds: np.ndarray,
    slots: np.ndarray,
    required: np.ndarray,
    num_out: np.ndarray,
    str_start: np.ndarray,
    str_end: np.ndarray,
    time_ns: np.ndarray,
    hard: np.ndarray,
    status: np.ndarray,
) -> int:
    """The original (byte-at-a-time) kernel; see ``_orig_parse_flat_objects``."""
    n = len(offsets) - 1
    nf = len(kinds)
    seen = np.zeros(nf, np.uint8)
    n_hard = 0
    for i in range(n):
        p = offsets[i]
        end = offsets[i + 1]
        h0 = n_hard
        seen[:] = 0
        ok = False
        guess = 0
        p = _orig_ws(buf, p, end)
        if p < end and buf[p] == 123:
            p = _orig_ws(buf, p + 1, end)
            if p < end and buf[p] == 125:
                p += 1
                ok = True
            while not ok:
                # key
                if p >= end or buf[p] != 34:
                    break
                ks = p + 1
                # Producers write the fields in one order: try the field after the last one
                # first, comparing its name and closing quote in place (names are plain ASCII,
                # see the caller), before scanning the key.
                f = -1
                if guess < nf:
                    a = name_off[guess]
                    ke = ks + name_off[guess + 1] - a
                    if ke < end and buf[ke] == 34:
                        f = guess
                        for j in range(ke - ks):
                            if names[a + j] != buf[ks + j]:
                                f = -1
                                break
                if f < 0:
                    ke = _orig_string_end(buf, ks, end)
                    if ke < 0:
                        break
                    f = _orig_match(buf, ks, ke, names, name_off, guess)
                p = _orig_ws(buf, ke + 1, end)
                if p >= end or buf[p] != 58:
                    break
                p = _orig_ws(buf, p + 1, end)
                if p >= end:
                    break
                if f >= 0:
                    if seen[f]:
                        break  # duplicated key: the general decoder's rules
                    seen[f] = 1
                    guess = f + 1 if f + 1 < nf else 0
                    kind = kinds[f]
                    slot = slots[f]
                else:
                    kind = -1
                    slot = -1
                c = buf[p]
                if c == 34:  # string
                    vs = p + 1
                    ve = _orig_string_end(buf, vs, end)
                    if ve < 0:
                        break
                    p = ve + 1
                    if kind == KIND_STRING:
                        str_start[slot, i] = vs
                        str_end[slot, i] = ve
                    elif kind == KIND_TIME:
                        good, t = _orig_iso_ns(buf, vs, ve)
                        if not good:
                            break
                        str_start[slot, i] = vs
                        str_end[slot, i] = ve
                        time_ns[i] = t
                    elif kind >= 0:
                        break  # a string in a numeric or bool field
                elif c == 110:  # null
                    if end - p < 4 or buf[p + 1] != 117 or buf[p + 2] != 108 or buf[p + 3] != 108:
                        break
                    p += 4
                    if kind >= 0:
                        if required[f]:
                            break
                        if kind == KIND_TIME:
                            time_ns[i] = _ORIG_NAT
                elif c == 116 or c == 102:  # true / false
                    if c == 116:
                        if (
                            end - p < 4
                            or buf[p + 1] != 114
                            or buf[p + 2] != 117
                            or buf[p + 3] != 101
                        ):
                            break
                        p += 4
                        bv = 1.0
                    else:
                        if (
                            end - p < 5
                            or buf[p + 1] != 97
                            or buf[p + 2] != 108
                            or buf[p + 3] != 115
                            or buf[p + 4] != 101
                        ):
                            break
                        p += 5
                        bv = 0.0
                    if kind == KIND_BOOL:
                        num_out[slot, i] = bv
                    elif kind >= 0:
                        break
                elif c == 45 or 48 <= c <= 57:  # number
                    ns = p
                    state, p, v = _orig_number(buf, p, end, _ORIG_POW10)
                    if state < 0:
                        break
                    if kind == KIND_NUMBER:
                        if state == 0:
                            num_out[slot, i] = v
                        else:
                            hard[n_hard, 0] = i
                            hard[n_hard, 1] = slot
                            hard[n_hard, 2] = ns
                            hard[n_hard, 3] = p
                            n_hard += 1
                    elif kind >= 0:
                        break  # a number in a string, time or bool field
                else:
                    break  # an object or array (or not JSON)
                p = _orig_ws(buf, p, end)
                if p >= end:
                    break
                if buf[p] == 44:
                    p = _orig_ws(buf, p + 1, end)
                    continue
                if buf[p] == 125:
                    p += 1
                    ok = True
                    break
                break
        if ok:
            p = _orig_ws(buf, p, end)
            if p != end:
                ok = False
        if ok:
            for f in range(nf):
                if required[f] and not seen[f]:
                    ok = False
                    break
        if ok:
            status[i] = 0
        else:
            status[i] = 1
            n_hard = h0  # forget this row's hard numbers
    return n_hard


_KERNEL_OUTPUTS = ("status", "num_out (bits)", "str_start", "str_end", "time_ns")


def _run_flat_kernel(kernel, lay: _FlatLayout, values: list[bytes]) -> tuple:
    n = len(values)
    buf = np.frombuffer(b"".join(values), np.uint8)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    num = np.full((lay.n_num, n), np.nan)
    s_start = np.full((lay.n_str, n), -1, np.int64)
    s_end = np.full((lay.n_str, n), -1, np.int64)
    time_ns = np.full(n, _ORIG_NAT, np.int64)
    hard = np.full((max(n * lay.n_num, 1), 4), -7, np.int64)
    status = np.full(n, 9, np.uint8)
    n_hard = kernel(
        buf,
        offsets,
        lay.names,
        lay.name_off,
        lay.kinds,
        lay.slots,
        lay.required,
        num,
        s_start,
        s_end,
        time_ns,
        hard,
        status,
    )
    return (status, num.view(np.int64), s_start, s_end, time_ns), hard[:n_hard]


def _assert_same_as_original(lay: _FlatLayout, values: list[bytes]) -> None:
    """Both kernels on the batch ``values``; on a difference, name the array and the event."""
    new, new_hard = _run_flat_kernel(parse_flat_objects, lay, values)
    ref, ref_hard = _run_flat_kernel(_orig_parse_flat_objects, lay, values)
    for name, a, b in zip(_KERNEL_OUTPUTS, new, ref, strict=True):
        if not np.array_equal(a, b):
            cols = np.flatnonzero((a != b).reshape(-1, len(values)).any(axis=0))
            i = int(cols[0])
            raise AssertionError(
                f"{name} differs for event {i} of {len(values)}: "
                f"{values[i]!r}: {a[..., i]} != {b[..., i]}"
            )
    if not np.array_equal(new_hard, ref_hard):
        raise AssertionError(f"hard numbers differ: {new_hard.tolist()} != {ref_hard.tolist()}")


def _assert_same_as_msgspec(decoder: EventDecoder, values: list[bytes]) -> None:
    """The independent reference: the whole decoder (flat kernel first, for a batch of
    non-empty values) against the struct path (msgspec's typed C decoder, and orjson for
    what msgspec refuses), which shares no code with the kernel: same rows, reasons and
    values, bit for bit."""
    if values and min(map(len, values)) > 0:
        _same_bits(decoder.decode(values), decoder._decode_structs(values))


# A second schema: bools, a datetime kept as text, required fields of each kind, and names of
# 0..8 words (7 and 15 bytes fill whole words with the closing quote), one not ASCII.
_ODD_FIELDS = [
    FieldSpec(name="id", type="string", role="id", required=True),
    FieldSpec(name="t", type="datetime", role="time", required=True),
    FieldSpec(name="flag", type="bool", role="other"),
    FieldSpec(
        name="a_field_name_longer_than_sixteen_bytes", type="float", role="numeric", required=True
    ),
    FieldSpec(name="exactly", type="int", role="numeric"),
    FieldSpec(name="fifteen_bytes_x", type="float", role="numeric"),
    FieldSpec(name="température", type="float", role="numeric"),
    FieldSpec(name="when", type="datetime", role="other"),
    FieldSpec(name="ok", type="bool", role="other", required=True),
    FieldSpec(name="y", type="float", role="target"),
]
_ODD_LAYOUT = _FlatLayout(_ODD_FIELDS, "t")
_ODD_DECODER = EventDecoder(SchemaSettings(fields=tuple(_ODD_FIELDS)), max_event_bytes=10_000)

_AIRPORTS = ["EWR", "JFK", "LGA", "IAH", "MIA", "ORD", "ATL", "LAX", "SFO", "BOS", "DFW"]
_CARRIERS = ["UA", "AA", "B6", "DL", "EV", "9E", "WN", "US", "MQ", "VX", "F9", "OO"]
_SPECIAL_NUMBERS = [
    "0",
    "-0",
    "0.0",
    "-0.0",
    "00",
    "01",
    "-01",
    "1.",
    ".5",
    "+1",
    "1e",
    "1e+",
    "1E-",
    "--1",
    "-",
    "1.5e-400",
    "1e400",
    "1e22",
    "1e23",
    "1e-22",
    "1e-23",
    "9007199254740991",
    "9007199254740992",
    "9007199254740993",
    "123456789012345678",
    "1234567890123456789",
    "0.000000000000000001",
    "0.0000000000000000001",
    "0.1e-22",
    "1E5",
    "1e05",
    "-1.5E-3",
    "1e100000",
    "1e-100000",
    "99999999",
    "100000000",
    "12345678.12345678",
    "Infinity",
    "NaN",
    "1.0.0",
    "1e5.5",
    "12a",
    "1-2",
    "0x10",
    "1_000",
    "٣",
]
_ODD_KEYS = [
    "x",
    "",
    "distanc",
    "distance_",
    "Distance",
    "distancé",
    "dist\\u0061nce",
    'dis\\"tance',
    "sched_dep_hour_and_then_some",
    "a_field_name_longer_than_sixteen_bytes_too",
    "é" * 9,
    "k" * 70,
]
_ODD_VALUES = [
    b"null",
    b"true",
    b"false",
    b"[]",
    b"{}",
    b'[1,"a"]',
    b'{"a":{"b":1}}',
    b'""',
    b'"x"',
    b"1",
    b"-2.5e3",
    b"tru",
    b"nul",
    b"falsey",
    b'"\\u00e9"',
    b"\xc3\xa9",
]
_BYTES = b'\x00\x01\x1f \t\n"\\,:{}[]0123456789-+.eE\x7f\x80\xc3\xff'


def _digits_text(rng: np.random.Generator, k: int, lead: bool = True) -> str:
    """``k`` random digits, the first not 0 unless ``lead`` is False."""
    d = "".join(str(x) for x in rng.integers(0, 10, k))
    return (str(rng.integers(1, 10)) + d[1:]) if lead and k else d


def _number_text(rng: np.random.Generator) -> str:
    """JSON numbers of every shape (and some that are not), weighted to digit counts around
    the word size: 1..20 integer and fraction digits, exponents, signs, leading zeros."""
    kind = int(rng.integers(0, 6))
    sign = "-" if rng.random() < 0.3 else ""
    if kind == 0:
        return sign + _digits_text(rng, int(rng.integers(1, 22)))
    if kind == 1:
        whole = "0" if rng.random() < 0.3 else _digits_text(rng, int(rng.integers(1, 20)))
        frac = _digits_text(rng, int(rng.integers(1, 21)), lead=False)
        if rng.random() < 0.2:
            frac = "0" * int(rng.integers(1, 12)) + frac
        return f"{sign}{whole}.{frac}"
    if kind == 2:
        mant = _digits_text(rng, int(rng.integers(1, 19)))
        if rng.random() < 0.5:
            mant = mant[:1] + "." + (mant[1:] or "0")
        e = rng.choice(["e", "E"]) + rng.choice(["", "+", "-"])
        return f"{sign}{mant}{e}{rng.integers(0, 30 if rng.random() < 0.8 else 400)}"
    if kind == 3:
        return repr(float(rng.normal(0, 10.0 ** rng.integers(-8, 20))))
    if kind == 4:
        return str(rng.choice(_SPECIAL_NUMBERS))
    return repr(round(float(rng.uniform(-100, 1500)), int(rng.integers(0, 6))))


def _string_text(rng: np.random.Generator) -> bytes:
    """String contents of 0..40 bytes, plain or with an escape, a control, DEL or non-ASCII
    byte at some place."""
    s = bytearray(rng.choice(list(b"abcXYZ019 -_:/.~"), int(rng.integers(0, 41))).tolist())
    r = rng.random()
    if r < 0.5 or not s:
        return bytes(s)
    at = int(rng.integers(0, len(s) + 1))
    bad = [
        b"\\n",
        b'\\"',
        b"\\\\",
        b"\\u0041",
        b"\x01",
        b"\x1f",
        b"\x7f",
        b"\xc3\xa9",
        b"\xff",
        b"\t",
    ][int(rng.integers(0, 10))]
    return bytes(s[:at] + bad + s[at:])


def _time_text(rng: np.random.Generator) -> bytes:
    """ISO 8601 times: the accepted forms, out-of-range fields, other separators, offsets,
    lengths 18..26, and a stray byte at any place."""
    y, mo, d = int(rng.integers(1600, 2300)), int(rng.integers(0, 14)), int(rng.integers(0, 33))
    h, mi, s = int(rng.integers(0, 26)), int(rng.integers(0, 62)), int(rng.integers(0, 62))
    if rng.random() < 0.6:  # mostly in range
        y, mo = int(rng.integers(1678, 2262)), int(rng.integers(1, 13))
        d = int(rng.integers(1, 29))
        h, mi, s = int(rng.integers(0, 24)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    sep = str(rng.choice(["T", "T", " ", "t", "_"]))
    tz = str(
        rng.choice(
            [
                "",
                "Z",
                "z",
                f"{rng.choice(['+', '-'])}{rng.integers(0, 26):02d}:{rng.integers(0, 62):02d}",
                "+0400",
                "-04:00:00",
            ]
        )
    )
    t = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{tz}".encode()
    if rng.random() < 0.2:
        at = int(rng.integers(0, len(t)))
        t = t[:at] + bytes([_BYTES[int(rng.integers(0, len(_BYTES)))]]) + t[at + 1 :]
    if rng.random() < 0.05:
        t = t[: int(rng.integers(0, len(t)))]
    return t


def _flights_items(rng: np.random.Generator) -> list[tuple[bytes, bytes]]:
    """A real-looking flights event (as the producers write it) as (key, value) texts."""
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hour, minute = int(rng.integers(5, 24)), int(rng.integers(0, 60))
    carrier, origin = str(rng.choice(_CARRIERS)), str(rng.choice(_AIRPORTS[:3]))
    doc = {
        "event_id": f"2013{month:02d}{day:02d}-{carrier}{rng.integers(1, 6200)}-{origin}-"
        f"{hour:02d}{minute:02d}",
        "event_time": f"2013-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00-0"
        f"{4 if 3 < month < 11 else 5}:00",
        "carrier": carrier,
        "origin": origin,
        "dest": str(rng.choice(_AIRPORTS[3:])),
        "distance": float(rng.integers(17, 4983)),
        "sched_dep_hour": hour + minute / 60,
        "day_of_week": int(rng.integers(0, 7)),
        "dep_delay": None if rng.random() < 0.05 else float(rng.integers(-20, 300)),
        "temp": round(float(rng.normal(55, 18)), 2),
        "dewp": round(float(rng.normal(40, 18)), 2),
        "humid": round(float(rng.uniform(10, 100)), 2),
        "wind_speed": round(float(rng.uniform(0, 30)), 5),
        "precip": round(float(rng.exponential(0.02)), 2),
        "pressure": None if rng.random() < 0.1 else round(float(rng.uniform(990, 1040)), 1),
        "visib": round(float(rng.uniform(0, 10)), 1),
    }
    if rng.random() < 0.1:
        doc["arr_delay"] = float(rng.integers(-60, 300))
    return [(orjson.dumps(k)[1:-1], orjson.dumps(v)) for k, v in doc.items()]


def _odd_items(rng: np.random.Generator) -> list[tuple[bytes, bytes]]:
    """An event of ``_ODD_FIELDS``, values of the right kind (mostly) or not."""
    doc = {
        "id": _string_text(rng).decode("latin-1")
        if rng.random() < 0.2
        else "e" + "7" * int(rng.integers(0, 30)),
        "t": _time_text(rng).decode("latin-1")
        if rng.random() < 0.3
        else f"2013-0{rng.integers(1, 10)}-1{rng.integers(0, 10)}T12:34:56"
        f"{rng.choice(['', 'Z', '+05:30'])}",
        "flag": bool(rng.random() < 0.5),
        "a_field_name_longer_than_sixteen_bytes": float(rng.normal()),
        "exactly": int(rng.integers(-5, 5)),
        "fifteen_bytes_x": float(rng.normal()),
        "température": round(float(rng.normal()), 3),
        "when": "2013-01-01 00:00:00",
        "ok": bool(rng.random() < 0.5),
        "y": 1.0,
    }
    return [(orjson.dumps(k)[1:-1], orjson.dumps(v)) for k, v in doc.items() if rng.random() < 0.97]


def _mutated(rng: np.random.Generator, items: list[tuple[bytes, bytes]]) -> bytes:
    """``items`` with 0..3 random changes, written as one JSON object (compact, or with
    whitespace around the tokens), then 0..2 byte-level changes."""
    items = list(items)
    for _ in range(int(rng.integers(0, 4))):
        op = int(rng.integers(0, 9))
        k = int(rng.integers(0, len(items))) if items else 0
        if op == 0 and items:  # a number of any shape
            items[k] = (items[k][0], _number_text(rng).encode())
        elif op == 1 and items:  # a string with an escape, control or non-ASCII byte
            items[k] = (items[k][0], b'"' + _string_text(rng) + b'"')
        elif op == 2 and items:  # a time in any form
            items[k] = (items[k][0], b'"' + _time_text(rng) + b'"')
        elif op == 3:  # keys in another order
            items = [items[j] for j in rng.permutation(len(items))]
        elif op == 4:  # an unknown key
            key = str(rng.choice(_ODD_KEYS)).encode()
            value = _ODD_VALUES[int(rng.integers(0, len(_ODD_VALUES)))]
            items.insert(int(rng.integers(0, len(items) + 1)), (key, value))
        elif op == 5 and items:  # a field dropped or duplicated
            if rng.random() < 0.5:
                items.pop(k)
            else:
                items.insert(int(rng.integers(0, len(items) + 1)), items[k])
        elif op == 6 and items:  # null, a bool, an array, an object, a bad token
            items[k] = (items[k][0], _ODD_VALUES[int(rng.integers(0, len(_ODD_VALUES)))])
        elif op == 7 and items:  # a key one byte off
            key = bytearray(items[k][0] or b"k")
            key[int(rng.integers(0, len(key)))] = _BYTES[int(rng.integers(0, len(_BYTES)))]
            items[k] = (bytes(key), items[k][1])
        elif op == 8 and items:  # a long number, digits across words
            items[k] = (
                items[k][0],
                (
                    _digits_text(rng, int(rng.integers(1, 24)))
                    + "."
                    + _digits_text(rng, int(rng.integers(1, 24)), False)
                ).encode(),
            )
    ws = [b"", b"", b"", b" ", b"\n", b"\t", b"\r\n  "][int(rng.integers(0, 7))]
    body = (b"," + ws).join(ws + b'"' + k + b'"' + ws + b":" + ws + v for k, v in items)
    value = ws + b"{" + body + ws + b"}" + ws
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):
        if not value:
            break
        op = int(rng.integers(0, 4))
        at = int(rng.integers(0, len(value)))
        if op == 0:  # truncated
            value = value[:at]
        elif op == 1:  # one byte changed
            value = (
                value[:at] + bytes([_BYTES[int(rng.integers(0, len(_BYTES)))]]) + value[at + 1 :]
            )
        elif op == 2:  # one byte removed
            value = value[:at] + value[at + 1 :]
        else:  # whitespace inserted
            value = value[:at] + b" \n\t\r"[int(rng.integers(0, 4)) :][:1] + value[at:]
    return value


def _batches(rng: np.random.Generator, values: list[bytes]) -> list[list[bytes]]:
    """``values`` cut into batches of 1..40, so that events meet the buffer's end (where the
    kernel reads bytes, not words) at every place."""
    out, i = [], 0
    while i < len(values):
        k = int(rng.integers(1, 41))
        out.append(values[i : i + k])
        i += k
    return out


@pytest.mark.parametrize("seed", range(4))
def test_flat_kernel_equals_the_original_on_mutated_flights_events(
    decoder: EventDecoder, seed: int
) -> None:
    """Real-looking events, most changed: truncations, whitespace, escapes, non-ASCII bytes,
    numbers of all shapes, times in any form, other key orders, unknown, long, near-miss and
    duplicated keys, dropped fields, wrong types; in batches of 1..40."""
    rng = np.random.default_rng(seed)
    values = [
        _mutated(rng, _flights_items(rng))
        if rng.random() < 0.8
        else orjson.dumps(dict((k.decode(), orjson.loads(v)) for k, v in _flights_items(rng)))
        for _ in range(6000)
    ]
    values += [b"{}", b" { } ", b"[]", b"null", b"1", b'"{}"', b"{", b'{"', b"\xff"]
    for batch in _batches(rng, values):
        _assert_same_as_original(decoder._flat, batch)
        _assert_same_as_msgspec(decoder, batch)


def test_flat_kernel_equals_the_original_on_another_schema() -> None:
    """Bool and datetime-text fields, names of 0..8 words (one not ASCII), required fields of
    each kind."""
    rng = np.random.default_rng(11)
    values = [
        _mutated(rng, _odd_items(rng))
        if rng.random() < 0.5
        else b"{" + b",".join(b'"' + k + b'":' + v for k, v in _odd_items(rng)) + b"}"
        for _ in range(8000)
    ]
    assert (_run_flat_kernel(parse_flat_objects, _ODD_LAYOUT, values)[0][0] == 0).sum() > 2000
    for batch in _batches(rng, values):
        _assert_same_as_original(_ODD_LAYOUT, batch)
        _assert_same_as_msgspec(_ODD_DECODER, batch)


def test_flat_kernel_equals_the_original_at_every_word_offset(decoder: EventDecoder) -> None:
    """Strings of 0..20 bytes with a quote, escape, control or non-ASCII byte at each place,
    and numbers of 1..20 integer and 0..20 fraction digits, at each of the 8 offsets in a
    word, inside the buffer and at its end."""
    base = _event()
    strings = [b"x" * n for n in range(21)]
    strings += [
        b"x" * j + bad + b"x" * (n - j)
        for n in range(21)
        for j in range(n + 1)
        for bad in (b"\\n", b"\x01", b"\x80", b"\xff", b'"')
    ]
    rng = np.random.default_rng(5)
    numbers = [
        ("-" if (a + b) % 3 == 0 else "")
        + _digits_text(rng, a)
        + (f".{'0' * (b % 4)}{_digits_text(rng, b, False)}" if b else "")
        for a in range(1, 21)
        for b in range(21)
    ]
    values = [base.replace(b'"EWR"', b'"' + s + b'"') for s in strings]
    values += [base.replace(b'"visib":10.0}', b'"visib":' + x.encode() + b"}") for x in numbers]
    values += [base.replace(b'"day_of_week":6', b'"day_of_week":' + x.encode()) for x in numbers]
    for pad in range(8):
        lead = [b" " * pad + base]  # shifts everything after it by ``pad`` bytes
        for i in range(0, len(values), 97):
            _assert_same_as_original(decoder._flat, lead + values[i : i + 97])
            _assert_same_as_msgspec(decoder, lead + values[i : i + 97])
        for v in values[::7]:
            _assert_same_as_original(decoder._flat, [*lead, v])  # the buffer ends with v


@pytest.mark.parametrize("odd", [False, True])
def test_flat_kernel_equals_the_original_for_every_byte_anywhere(
    decoder: EventDecoder, odd: bool
) -> None:
    """Each byte of a real event replaced by each of the 256 byte values (the event last in
    the buffer, after 0..255 others): keys, strings, digits, times and structure."""
    if odd:
        lay = _ODD_LAYOUT
        base = (
            b'{"id":"e1","t":"2000-02-29T23:59:59+05:30","flag":true,'
            b'"a_field_name_longer_than_sixteen_bytes":-1.5e-7,"exactly":12345678,'
            b'"fifteen_bytes_x":0.1,"temp\xc3\xa9rature":null,"when":"x","ok":false}'
        )
    else:
        lay = decoder._flat
        base = orjson.dumps(
            {
                **GOOD,
                "event_time": "2013-09-01T05:16:00-04:00",
                "sched_dep_hour": 5.266666666666667,
                "dep_delay": -8.0,
                "temp": 73.94,
                "wind_speed": 9.20624,
                "pressure": None,
            }
        )
    assert _run_flat_kernel(parse_flat_objects, lay, [base])[0][0].tolist() == [0]
    every = np.arange(256, dtype=np.uint8)
    for at in range(len(base)):
        values = [base[:at] + bytes([b]) + base[at + 1 :] for b in every.tolist()]
        _assert_same_as_original(lay, values)
        _assert_same_as_msgspec(_ODD_DECODER if odd else decoder, values)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=12),
    st.integers(0, 400),
    st.integers(0, 3),
    st.sampled_from([b"", b"{}", b'{"event_id":"a"}', b"7"]),
)
def test_flat_kernel_equals_the_original_on_spliced_bytes(
    decoder: EventDecoder, junk: bytes, at: int, cut: int, after: bytes
) -> None:
    """Arbitrary bytes spliced into a real event (replacing 0..3 bytes), alone in the buffer
    or followed by another value."""
    base = _event(sched_dep_hour=5.266666666666667, dep_delay=-8.0, temp=73.94)
    at = min(at, len(base))
    value = base[:at] + junk + base[at + cut :]
    _assert_same_as_original(decoder._flat, [value])
    _assert_same_as_original(decoder._flat, [value, after or base])
    _assert_same_as_msgspec(decoder, [value, after or base])
