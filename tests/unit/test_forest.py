"""The compiled forest (shared._forest) against XGBoost's own predictions.

Reference: ``booster.inplace_predict`` of XGBoost itself (one thread), on random inputs and on
adversarial ones built from the model's split values as XGBoost reports them
(``Booster.trees_to_dataframe``, independent of the forest's JSON reader). Tolerance:
**bit-identical** probabilities and margins (``np.array_equal``); the looser contract of the
scorer (max |difference| <= 1e-6 and the same most probable class wherever the top two
probabilities are more than 1e-6 apart) is asserted as well.
"""

from __future__ import annotations

import json
import logging
import threading
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from segstream.shared import _forest
from segstream.shared._forest import BLOCK_ROWS, Forest

FEATURE_TYPES = ["q", "q", "c", "c", "c"]
N_CATEGORIES = (12, 3, 40)


def _features(n: int, rng: np.random.Generator, nan_share: float = 0.1) -> np.ndarray:
    x = np.empty((n, 5), dtype=np.float32)
    x[:, 0] = rng.normal(size=n)
    x[:, 1] = rng.uniform(0.0, 10.0, n)
    for j, levels in enumerate(N_CATEGORIES):
        x[:, 2 + j] = rng.integers(0, levels, n)
    x[rng.random(x.shape) < nan_share] = np.nan
    return x


def _labels(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    z = np.nan_to_num(x)
    s = (
        z[:, 0]
        + 0.3 * z[:, 1]
        + (z[:, 2] % 3 == 0)
        - 0.7 * (z[:, 3] == 1)
        + 0.8 * (z[:, 4] % 5 == 1)
        + 0.3 * rng.normal(size=len(x))
    )
    return np.digitize(s, np.quantile(s, np.linspace(0, 1, k + 1)[1:-1]))


def _train(
    objective: str = "binary:logistic",
    k: int = 2,
    depth: int = 4,
    onehot: int = 4,
    rounds: int = 25,
    n: int = 400,
    seed: int = 0,
    **params,
) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    x = _features(n, rng)
    d = xgb.DMatrix(
        x, label=_labels(x, k, rng), feature_types=FEATURE_TYPES, enable_categorical=True
    )
    p = {
        "objective": objective,
        "max_depth": depth,
        "max_cat_to_onehot": onehot,
        "nthread": 1,
        "seed": seed,
        **params,
    }
    if objective.startswith("multi:"):
        p["num_class"] = k
    return xgb.train(p, d, rounds)


def _adversarial(booster: xgb.Booster, n: int, seed: int) -> np.ndarray:
    """Cells drawn from each feature's split values (and the float32 just below them),
    category codes in, beside and far outside the sets, fractional and invalid codes, NaN,
    +-inf and +-0."""
    rng = np.random.default_rng(seed)
    trees = booster.trees_to_dataframe()
    splits = trees[trees["Feature"] != "Leaf"]
    names = booster.feature_names or [f"f{i}" for i in range(booster.num_features())]
    special = np.array(
        [
            np.nan,
            np.inf,
            -np.inf,
            -0.0,
            0.0,
            -1.0,
            -0.5,
            0.5,
            2.5,
            1e30,
            -1e30,
            2.0**24 - 1,
            2.0**24,
            2.0**24 + 2,
            2.0**31,
            3.0000002,
        ],
        dtype=np.float32,
    )
    x = np.empty((n, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        mine = splits[splits["Feature"] == name]
        pool = [special, rng.normal(size=8).astype(np.float32)]
        thr = mine["Split"].dropna().to_numpy(np.float32)
        if thr.size:
            pool += [
                thr,
                np.nextafter(thr, np.float32(-np.inf)),
                np.nextafter(thr, np.float32(np.inf)),
            ]
        cats = [int(c) for cs in mine["Category"].dropna() for c in cs]  # listed as str
        if cats:
            c = np.asarray(cats, dtype=np.float32)
            pool += [
                c,
                c - 1,
                c + 1,
                c + np.float32(0.999),
                np.array([max(cats) + 7], dtype=np.float32),
            ]
        if FEATURE_TYPES[j] == "c" and len(names) == len(FEATURE_TYPES):
            pool.append(np.arange(-2, N_CATEGORIES[j - 2] + 4, dtype=np.float32))
        pool_a = np.concatenate(pool)
        x[:, j] = pool_a[rng.integers(0, pool_a.size, n)]
    return x


def _assert_same(forest: Forest, booster: xgb.Booster, x: np.ndarray) -> None:
    want = booster.inplace_predict(x)
    got = forest.predict(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)  # bit-identical (NaN nowhere: probabilities)
    np.testing.assert_array_equal(
        forest.margin(x), booster.inplace_predict(x, predict_type="margin")
    )
    # the scorer's contract, implied by the above
    diff = np.abs(got.astype(np.float64) - want) if got.size else np.zeros(1)
    assert diff.max() <= 1e-6
    if want.ndim == 2 and want.shape[0]:
        top2 = np.sort(want, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-6
        np.testing.assert_array_equal(got.argmax(1)[clear], want.argmax(1)[clear])


def _split_sizes(booster: xgb.Booster) -> list[int]:
    model = json.loads(bytes(booster.save_raw(raw_format="json")))
    return [
        s
        for t in model["learner"]["gradient_booster"]["model"]["trees"]
        for s in t["categories_sizes"]
    ]


@pytest.mark.parametrize(
    "objective,k", [("binary:logistic", 2), ("multi:softprob", 3), ("multi:softprob", 4)]
)
@pytest.mark.parametrize("depth", [1, 2, 4, 6])
@pytest.mark.parametrize("onehot", [1, 64])
def test_forest_is_bit_identical_to_inplace_predict(objective, k, depth, onehot):
    booster = _train(objective, k, depth, onehot, seed=depth)
    forest = Forest.from_booster(booster)
    assert forest.fallback is None
    sizes = _split_sizes(booster)
    assert sizes, "the model should have categorical splits"
    if onehot == 64:  # fewer categories than max_cat_to_onehot: one-hot splits only
        assert set(sizes) == {1}
    else:  # partition splits (sets of several categories)
        assert max(sizes) > 1
    rng = np.random.default_rng(100 + depth)
    _assert_same(forest, booster, _features(1000, rng))
    _assert_same(forest, booster, _features(300, rng, nan_share=0.6))
    adv = _adversarial(booster, 2000, seed=depth)
    _assert_same(forest, booster, adv)
    for n in (0, 1, 2, 7, BLOCK_ROWS - 1, BLOCK_ROWS, BLOCK_ROWS + 1):  # block edges, tiny
        _assert_same(forest, booster, adv[:n])


def test_model_trained_on_pandas_categories():
    """Categories from pandas' category dtype: the model is fed the integer codes."""
    rng = np.random.default_rng(3)
    n = 600
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.uniform(0, 10, n),
            "c": pd.Categorical(rng.choice(list("pqrstuvwxyz"), n)),
            "d": pd.Categorical(rng.choice(["x", "y", "z"], n)),
        }
    )
    y = (frame["a"] > 0).astype(int) + frame["c"].isin(list("pqr")) + (frame["b"] > 7)
    booster = xgb.train(
        {
            "objective": "multi:softprob",
            "num_class": 4,
            "max_depth": 3,
            "max_cat_to_onehot": 1,
            "nthread": 1,
            "seed": 0,
        },
        xgb.DMatrix(frame, label=y.clip(0, 3), enable_categorical=True),
        20,
    )
    forest = Forest.from_booster(booster)
    assert forest.fallback is None
    codes = frame.assign(c=frame["c"].cat.codes, d=frame["d"].cat.codes).to_numpy(np.float32)
    codes[rng.random(codes.shape) < 0.1] = np.nan
    _assert_same(forest, booster, codes)
    _assert_same(forest, booster, _adversarial(booster, 1000, seed=3))


def test_all_trees_count_and_parallel_trees():
    """Early stopping without slicing (inplace_predict uses every tree, not best_iteration)
    and random-forest rounds (num_parallel_tree) both accumulate every tree."""
    rng = np.random.default_rng(5)
    x = _features(800, rng)
    y = _labels(x, 2, rng)
    dtrain = xgb.DMatrix(
        x[:600], label=y[:600], feature_types=FEATURE_TYPES, enable_categorical=True
    )
    dval = xgb.DMatrix(x[600:], label=y[600:], feature_types=FEATURE_TYPES, enable_categorical=True)
    stopped = xgb.train(
        {"objective": "binary:logistic", "eta": 0.9, "nthread": 1, "seed": 0},
        dtrain,
        200,
        evals=[(dval, "v")],
        early_stopping_rounds=3,
        verbose_eval=False,
    )
    assert stopped.best_iteration + 1 < stopped.num_boosted_rounds()
    forest = Forest.from_booster(stopped)
    assert forest.fallback is None
    _assert_same(forest, stopped, x)
    bagged = _train(
        "multi:softprob", 3, 3, rounds=6, num_parallel_tree=3, subsample=0.7, colsample_bynode=0.7
    )
    forest = Forest.from_booster(bagged)
    assert forest.fallback is None
    _assert_same(forest, bagged, _adversarial(bagged, 1000, seed=5))


@pytest.mark.parametrize(
    "params,reason",
    [
        ({"objective": "reg:squarederror"}, "objective"),
        ({"objective": "binary:logitraw"}, "objective"),
        ({"objective": "multi:softmax", "num_class": 3}, "objective"),
        ({"objective": "binary:logistic", "booster": "dart", "rate_drop": 0.3}, "booster 'dart'"),
        (
            {"objective": "multi:softprob", "num_class": 3, "multi_strategy": "multi_output_tree"},
            "vector leaves",
        ),
        (
            {
                "objective": "binary:logistic",
                "grow_policy": "lossguide",
                "max_depth": 0,
                "max_leaves": 200,
                "min_child_weight": 0,
            },
            "leaves",
        ),
    ],
)
def test_unsupported_models_are_predicted_by_xgboost(params, reason):
    rng = np.random.default_rng(7)
    x = _features(3000, rng)
    y = _labels(x, params.get("num_class", 2), rng)
    # XGBoost grows multi-target trees on numeric features only
    types = ["q"] * 5 if "multi_strategy" in params else FEATURE_TYPES
    booster = xgb.train(
        {**params, "max_cat_to_onehot": 1, "nthread": 1, "seed": 0},
        xgb.DMatrix(x, label=y, feature_types=types, enable_categorical=True),
        8,
    )
    forest = Forest.from_booster(booster)
    assert forest.fallback is not None and reason in forest.fallback
    odd = x.copy()
    where = rng.random(odd.shape) < 0.2
    odd[where] = rng.choice(
        np.array([np.inf, -np.inf, -1.0, 2.5, 1e30, 2.0**24], np.float32), where.sum()
    )
    np.testing.assert_array_equal(forest.predict(odd), booster.inplace_predict(odd))
    np.testing.assert_array_equal(forest.predict(x), booster.inplace_predict(x))


def test_a_failed_load_check_keeps_xgboost(monkeypatch, caplog):
    """If the kernel's answer differed from XGBoost's (here: a base margin 1e-3 off), the
    forest is not used."""
    booster = _train(rounds=10)
    real = _forest._base_margin

    def shifted(*args):
        return real(*args) + np.float32(1e-3)

    monkeypatch.setattr(_forest, "_base_margin", shifted)
    with caplog.at_level(logging.WARNING, logger="segstream.shared._forest"):
        forest = Forest.from_booster(booster)
    assert forest.fallback.startswith("load-time check failed: margins differ")
    assert "disagrees" in caplog.text
    x = _features(300, np.random.default_rng(9))
    np.testing.assert_array_equal(forest.predict(x), booster.inplace_predict(x))


def test_inputs_the_kernel_does_not_take_go_to_xgboost():
    booster = _train("multi:softprob", 3, 3, rounds=10)
    forest = Forest.from_booster(booster)
    x = _features(500, np.random.default_rng(11))
    x64 = x.astype(np.float64) + 1e-9  # rounded to float32, as XGBoost does
    np.testing.assert_array_equal(forest.predict(x64), booster.inplace_predict(x64))
    np.testing.assert_array_equal(forest.predict(x[::2]), booster.inplace_predict(x[::2]))
    np.testing.assert_array_equal(forest.predict(np.asfortranarray(x)), booster.inplace_predict(x))
    np.testing.assert_array_equal(forest.predict(x[:0]), booster.inplace_predict(x[:0]))
    with pytest.raises(ValueError, match="Feature shape mismatch"):  # XGBoost's own error
        forest.predict(x[:, :4])


def test_forest_predicts_concurrently():
    """The kernels keep no state: threads (the worker's pool) get the same answers."""
    booster = _train(rounds=30)
    forest = Forest.from_booster(booster)
    xs = [_adversarial(booster, 3000, seed=s) for s in range(4)]
    want = [booster.inplace_predict(x) for x in xs]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            got[i] = forest.predict(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_array_equal(got[i], want[i])


def _nearest_float32(text: str) -> np.float32:
    """Exact reference: the float32 nearest to a decimal (ties to even), by fractions."""
    exact = Fraction(text)
    f = np.float32(float(text))
    best = None
    with np.errstate(over="ignore"):
        candidates = (np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf)))
    for c in candidates:
        if not np.isfinite(c):
            continue
        d = abs(Fraction(float(c)) - exact)
        even = int(np.array(c).view(np.uint32)) % 2 == 0
        if best is None or d < best[0] or (d == best[0] and even):
            best = (d, c)
    return best[1]


def test_float32_parsing_is_correctly_rounded():
    """Decimals just beside float32 ties (where float64 rounding would tie) and random ones."""
    rng = np.random.default_rng(13)
    f = rng.normal(size=200).astype(np.float32) * np.float32(1000)
    g = np.nextafter(f, np.float32(np.inf))
    mids = [Fraction(float(a)) / 2 + Fraction(float(b)) / 2 for a, b in zip(f, g, strict=True)]
    texts = []
    for m in mids:
        for eps in (Fraction(1, 10**30), Fraction(0), -Fraction(1, 10**30)):
            v = m + eps
            texts.append(_decimal(v))
    texts += [repr(float(v)) for v in rng.normal(size=200)] + ["1e-45", "3.4028235e38", "0"]
    got = _forest._floats32(texts)
    want = np.array([_nearest_float32(t) for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def _decimal(v: Fraction, digits: int = 45) -> str:
    """A decimal string of ``v`` with enough digits to sit strictly beside a float32 tie."""
    sign = "-" if v < 0 else ""
    v = abs(v)
    whole = v.numerator // v.denominator
    frac = v - whole
    scaled = frac * 10**digits
    return f"{sign}{whole}.{int(scaled):0{digits}d}"
