"""Decoding and validation of event values (no broker)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.simulator.replay import MALFORMED_KINDS, malformed_event
from services.worker.decode import DLQ_REASONS, EventDecoder, _parse_times
from services.worker.records import encode_predictions
from shared.settings import load_settings
from tests.conftest import FLIGHTS_CONFIG
from tests.fakes import load_fake_bundle, write_fake_bundle

SCHEMA = load_settings(FLIGHTS_CONFIG).event_schema
GOOD = {
    "event_id": "20130901-UA1-EWR-0600", "event_time": "2013-09-01T06:00:00-04:00",
    "carrier": "UA", "origin": "EWR", "dest": "IAH", "distance": 1400.0,
    "sched_dep_hour": 6.0, "day_of_week": 6, "dep_delay": None, "temp": 60.1, "dewp": 50.0,
    "humid": 70.0, "wind_speed": 10.0, "precip": 0.0, "pressure": 1012.0, "visib": 10.0,
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
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=4),
    max_leaves=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {}, optional={k: json_values for k in GOOD}), max_size=6), st.data())
def test_arbitrary_objects_never_raise(decoder: EventDecoder, docs: list, data) -> None:
    merged = []
    for d in docs:
        base = dict(GOOD) if data.draw(st.booleans()) else {}
        base.update(d)
        try:
            merged.append(orjson.dumps(base))
        except (TypeError, orjson.JSONEncodeError):
            merged.append(b"{}")
    out = decoder.decode(merged)
    _check_total(out, len(merged))


@pytest.mark.parametrize(("value", "reason"), [
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
])
def test_bad_inputs_get_their_reason(decoder: EventDecoder, value: bytes | None,
                                     reason: str) -> None:
    out = decoder.decode([_event(), value, _event(event_id="other")])
    assert out.n_valid == 2
    assert [(i, r) for i, r, _ in out.rejected] == [(1, reason)]
    assert out.columns["event_id"].tolist() == [GOOD["event_id"], "other"]


def test_simulator_malformed_kinds_all_go_to_the_dlq(decoder: EventDecoder) -> None:
    rng = np.random.default_rng(0)
    good = _event()
    expected = {"invalid_json": "invalid_json", "wrong_type": "wrong_type",
                "missing_field": "missing_field", "huge_payload": "too_large",
                "not_object": "not_object", "empty": "empty", "garbage": "invalid_json"}
    for kind in MALFORMED_KINDS:
        _, v = malformed_event(good, b"k", kind, rng, SCHEMA, huge_bytes=10_000)
        out = decoder.decode([v])
        assert [r for _, r, _ in out.rejected] == [expected[kind]], kind


def test_valid_columns_have_the_scorer_dtypes(decoder: EventDecoder) -> None:
    out = decoder.decode([_event(), _event(temp=None, dep_delay=KeyError, extra="ignored"),
                          _event(event_time="2013-09-01T10:00:00Z")])
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
@given(st.datetimes(min_value=__import__("datetime").datetime(1700, 1, 1),
                    max_value=__import__("datetime").datetime(2200, 1, 1)),
       st.integers(-14 * 60, 14 * 60))
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
    values = [_event(event_id=f"e{i}", distance=100.0 + i, carrier=c)
              for i, c in enumerate(["UA", "AA", "ZZ", "DL"])]
    out = decoder.decode(values)
    got = scorer.score(out.columns)
    direct = scorer.score({
        "distance": np.array([100.0, 101.0, 102.0, 103.0]),
        "sched_dep_hour": np.full(4, 6.0),
        "carrier": np.array(["UA", "AA", "ZZ", "DL"], dtype=object),
        "origin": np.array(["EWR"] * 4, dtype=object),
        "dest": np.array(["IAH"] * 4, dtype=object)})
    for k in ("prediction", "segment", "fallback_level", "interval_low"):
        np.testing.assert_array_equal(got[k], direct[k])
    recs = [orjson.loads(b) for b in encode_predictions(
        out.columns["event_id"].tolist(), got, out.event_time_text, model="flights",
        bundle_id=scorer.bundle_id, interval_mass=0.8, scored_at="2024-01-01T00:00:00Z",
        contribution_names=scorer.contribution_names)]
    assert [r["event_id"] for r in recs] == ["e0", "e1", "e2", "e3"]
    assert [r["prediction"] for r in recs] == got["prediction"].tolist()
    assert recs[2]["fallback_level"] == 1
    assert set(recs[0]) == {"event_id", "model", "bundle_id", "segment", "fallback_level",
                            "prediction", "interval", "interval_mass", "pattern",
                            "pattern_proba", "event_time", "scored_at", "contributions"}
    assert sum(recs[0]["contributions"].values()) == pytest.approx(recs[0]["prediction"])


def _dump(d: dict) -> bytes:
    try:
        return orjson.dumps(d)
    except (TypeError, orjson.JSONEncodeError):
        return b"{}"


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
@given(st.lists(st.one_of(
    st.just(_event()),
    st.fixed_dictionaries({}, optional={k: json_values for k in GOOD}).map(
        lambda d: _dump({**GOOD, **d})),
    st.binary(max_size=60), st.none()), max_size=12))
def test_fast_path_equals_slow_path(decoder: EventDecoder, values: list) -> None:
    """The msgspec fast path changes speed, never outcomes: same rows, reasons, values."""
    _same(decoder.decode(values), decoder._decode_slow(values))


def test_fast_path_mixed_batch_keeps_input_order(decoder: EventDecoder) -> None:
    values = [_event(event_id="a"), b"[1]", _event(event_id="b", distance="far"),
              _event(event_id="c"), None, _event(event_id="d", event_time="yesterday")]
    out = decoder.decode(values)
    assert out.columns["event_id"].tolist() == ["a", "c"]
    assert out.valid.tolist() == [0, 3]
    assert [(i, r) for i, r, _ in out.rejected] == [
        (1, "not_object"), (2, "wrong_type"), (4, "empty"), (5, "bad_time")]
    _same(out, decoder._decode_slow(values))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(
    st.text(), st.one_of(st.none(), st.text(max_size=30)),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 2**31 - 1)), max_size=20),
    st.booleans())
def test_prediction_records_equal_one_orjson_dump_each(rows, with_contributions) -> None:
    """One JSON-lines encode split into records gives, record for record, the JSON of
    ``orjson.dumps`` of the contract's dict (same values and field order; float spelling may
    differ, e.g. ``1e16``): ids and times with newlines, quotes and any unicode; NaN/inf as
    null."""
    n = len(rows)
    ids = [r[0] for r in rows]
    times = [r[1] for r in rows]
    x = np.array([r[2] for r in rows], dtype=np.float64)
    seg = np.array([r[3] for r in rows], dtype=np.int32)
    scores = {"segment": seg, "fallback_level": np.zeros(n, np.int8), "prediction": x,
              "interval_low": x - 1, "interval_high": x + 1, "pattern": seg % 3,
              "pattern_proba": np.full(n, 0.25), "contributions": np.stack([x, -x], axis=1)}
    names = ["intercept", "distance"] if with_contributions else None
    got = encode_predictions(ids, scores, times, model="m\n", bundle_id="b", interval_mass=0.8,
                             scored_at="now", contribution_names=names)
    assert len(got) == n
    for i, rec in enumerate(got):
        want = {"event_id": ids[i], "model": "m\n", "bundle_id": "b", "segment": int(seg[i]),
                "fallback_level": 0, "prediction": float(x[i]),
                "interval": [float(x[i] - 1), float(x[i] + 1)], "interval_mass": 0.8,
                "pattern": int(seg[i] % 3), "pattern_proba": 0.25, "event_time": times[i],
                "scored_at": "now"}
        if names:
            want["contributions"] = {"intercept": float(x[i]), "distance": float(-x[i])}
        assert list(orjson.loads(rec).items()) == list(orjson.loads(orjson.dumps(want)).items())


# ---------------------------------------------------------------------- flat path (numba)
def _flat_status(decoder: EventDecoder, values: list[bytes]) -> np.ndarray:
    """Per value, 0 when the flat kernel parsed it itself, 1 when it left it to msgspec."""
    from services.worker._decode_kernels import parse_flat_objects
    from services.worker.decode import _NAT_INT

    lay = decoder._flat
    n = len(values)
    buf = np.frombuffer(b"".join(values), np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int64)
    status = np.empty(n, np.uint8)
    parse_flat_objects(buf, offsets, lay.names, lay.name_off, lay.kinds, lay.slots,
                       lay.required, np.full((lay.n_num, n), np.nan),
                       np.full((lay.n_str, n), -1, np.int64),
                       np.full((lay.n_str, n), -1, np.int64), np.full(n, _NAT_INT, np.int64),
                       np.empty((n * lay.n_num, 4), np.int64), status)
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
    values = [_event(event_id=f"e{i}", sched_dep_hour=float(h), temp=float(t),
                     dep_delay=None if i % 7 == 0 else float(d), pressure=None)
              for i, (h, t, d) in enumerate(zip(rng.uniform(0, 24, 500),
                                                rng.normal(50, 20, 500),
                                                rng.normal(0, 30, 500), strict=True))]
    assert _flat_status(decoder, values).tolist() == [0] * len(values)
    _same_bits(decoder.decode(values), decoder._decode_slow(values))


_number_texts = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: orjson.dumps(x).decode()),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-2**64, 2**64).map(str),
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.sampled_from(["-0", "-0.0", "0e5", "1E400", "-1e-400", "9007199254740993",
                     "9007199254740992", "4.35", "1e22", "1e23", "123456789012345678",
                     "0.1e-22", "01", "1.", ".5", "+1", "1e", "--1", "1.5e+", "NaN"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(_number_texts, min_size=1, max_size=8))
def test_flat_path_numbers_equal_msgspecs(decoder: EventDecoder, texts: list[str]) -> None:
    """Reference: every number the kernel converts itself (Clinger's fast path) or hands to
    msgspec is bit-identical to the struct path; a non-number goes to the DLQ as before."""
    values = [_event().replace(b'"distance":1400.0', f'"distance":{t}'.encode())
              for t in texts]
    _same_bits(decoder.decode(values), decoder._decode_structs(values))


_ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=12)
_any_text = st.text(max_size=12)
_times = st.one_of(
    st.datetimes(min_value=__import__("datetime").datetime(1600, 1, 1)).map(
        lambda d: d.isoformat(timespec="seconds")),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}"
                  r"(Z|[+-][0-9]{2}:[0-9]{2})?\Z"),
    _any_text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {"event_id": st.one_of(_ascii_text, _any_text), "event_time": _times,
     "carrier": st.one_of(_ascii_text, st.none(), st.integers(0, 3)),
     "origin": st.sampled_from(["EWR", "JFK", "LGA", 'E"W', "E\\W", "\u00e9"])},
    optional={"dep_delay": st.one_of(st.none(), st.floats(), st.booleans()),
              "extra": st.one_of(st.none(), st.booleans(), st.text(max_size=5),
                                 st.lists(st.integers(), max_size=2))}),
    max_size=10),
    st.sampled_from(["", " ", "\n\t "]), st.booleans())
def test_flat_path_equals_struct_path(decoder: EventDecoder, docs: list, ws: str,
                                      shuffle: bool) -> None:
    """Keys in any order, whitespace, escapes, non-ASCII, odd times, nulls, wrong types,
    extra nested fields: the flat path gives what msgspec (and the slow path) give."""
    values = []
    for i, d in enumerate(docs):
        full = {**GOOD, **d}
        items = list(full.items())
        if shuffle:
            items = items[i % len(items):] + items[:i % len(items)]
        body = ("," + ws).join(f"{ws}{orjson.dumps(k).decode()}{ws}:{ws}"
                                f"{_dump_value(v)}" for k, v in items)
        values.append(("{" + body + ws + "}" + ws).encode())
    _same_bits(decoder.decode(values), decoder._decode_slow(values))


def _dump_value(v) -> str:
    try:
        return orjson.dumps(v).decode()
    except orjson.JSONEncodeError:
        return "null"


def test_flat_path_duplicated_key_and_bad_tokens_defer(decoder: EventDecoder) -> None:
    good = _event()
    dup = good[:-1] + b',"carrier":"AA"}'
    values = [good, dup, good[:-1] + b"} x", b" " + good, good.replace(b"null", b"nul"),
              good.replace(b'"UA"', b'"U\\u0041"'), good.replace(b"6.0", b"6.0e")]
    assert _flat_status(decoder, values).tolist() == [0, 1, 1, 0, 1, 1, 1]
    out = decoder.decode(values)
    _same_bits(out, decoder._decode_slow(values))
    assert out.columns["carrier"].tolist() == ["UA", "AA", "UA", "UA"]


def test_code_spans_matches_factorize() -> None:
    import pandas as pd

    from services.worker._decode_kernels import code_spans

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
    from shared.routing import _factorized

    out = decoder.decode([_event(carrier=c) for c in ["UA", "AA", "UA", "DL"]])
    col = out.columns["carrier"]
    assert not col.flags.writeable
    codes, uniques = _factorized(col)
    assert uniques == ["UA", "AA", "DL"] and codes.tolist() == [0, 1, 0, 2]
