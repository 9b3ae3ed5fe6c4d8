"""Engines (training/engines.py): the chunked engine and Dask on a two-worker LocalCluster give
identical merged statistics over the files of a Parquet data set; bad input and an
unreachable scheduler give one-line errors naming the file or the address."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from segstream.shared.data import dataset_parts, iter_part_batches
from segstream.shared.errors import DataError, SchedulerError, SchemaError
from segstream.shared.settings import SchemaSettings
from segstream.training.engines import ChunkedEngine, DaskEngine, tree_merge
from segstream.training.passes import (
    EvaluationSums,
    MomentStats,
    OLSSuffStats,
    OutcomeHistograms,
    fold,
)

pytest.importorskip("distributed")

SCHEMA = SchemaSettings.model_validate(
    {
        "fields": [
            {"name": "id", "type": "string", "role": "id"},
            {"name": "t", "type": "datetime", "role": "time"},
            {"name": "g", "type": "int", "role": "numeric"},
            {"name": "x1", "type": "float", "role": "numeric"},
            {"name": "x2", "type": "float", "role": "numeric"},
            {"name": "pred", "type": "float", "role": "numeric"},
            {"name": "y", "type": "float", "role": "target"},
        ]
    }
)
COLS = ["g", "x1", "x2", "pred", "y"]


def group(chunk: pd.DataFrame) -> np.ndarray:
    return chunk["g"].to_numpy().astype(np.int64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    rng = np.random.default_rng(0)
    frames = []
    for day in range(1, 7):
        n = int(rng.integers(300, 900))
        g = rng.integers(0, 5, n)
        x1, x2 = rng.normal(size=n), rng.uniform(0, 10, n)
        f = pd.DataFrame(
            {
                "id": [f"{day}-{i}" for i in range(n)],
                "t": pd.Timestamp(f"2024-01-{day:02d}", tz="UTC")
                + pd.to_timedelta(rng.integers(0, 86400, n), unit="s"),
                "g": g,
                "x1": x1,
                "x2": x2,
                "pred": 1.0 + x1,
                "y": 1.0 + g + x1 - 0.3 * x2 + rng.normal(size=n),
            }
        )
        d = root / f"day={day}"
        d.mkdir()
        f.to_parquet(d / "part-0.parquet")
        frames.append(f)
    return root, pd.concat(frames, ignore_index=True)


def stats():
    return {
        "moments": MomentStats(["x1", "x2", "y"]),
        "ols": OLSSuffStats(["x1", "x2"], "y", group, 5),
        "hist": OutcomeHistograms("y", np.linspace(-5, 10, 16), group, 5),
        "eval": EvaluationSums("y", "pred", group=group, n_groups=5),
    }


def reader():
    return functools.partial(
        iter_part_batches, schema=SCHEMA, timezone="UTC", columns=COLS, batch_rows=128
    )


def as_arrays(state):
    if isinstance(state, np.ndarray):
        return [state]
    return [np.asarray(v) for v in vars(state).values()]


def test_chunked_and_dask_give_identical_states(dataset, capsys, tmp_path):
    root, whole = dataset
    parts = dataset_parts(root, SCHEMA, columns=COLS)
    assert len(parts) == 6
    chunked = ChunkedEngine(progress=False)
    with DaskEngine(n_workers=2, processes=False, progress=False) as dask:
        assert "dashboard http" in capsys.readouterr().out
        for name, st in stats().items():
            a = chunked.run(parts, st, reader(), desc=name)
            b = dask.run(parts, st, reader(), desc=name)
            assert a.rows == b.rows == len(whole)
            for x, y in zip(as_arrays(a.state), as_arrays(b.state), strict=True):
                np.testing.assert_array_equal(x, y)  # same merge tree: bit-identical
            ref = fold(st, [whole])
            for x, y in zip(as_arrays(a.state), as_arrays(ref), strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-9)
        # a value that cannot be coerced fails inside a task: re-raised naming the file
        bad = whole.iloc[:50].astype({"x1": str})
        bad.loc[bad.index[7], "x1"] = "twelve"
        bad.to_parquet(tmp_path / "bad.parquet")
        good = whole.iloc[50:100]
        good.to_parquet(tmp_path / "good.parquet")
        bad_parts = dataset_parts(tmp_path, SCHEMA, columns=COLS)
        for engine in (chunked, dask):
            with pytest.raises(SchemaError, match=r"bad\.parquet: column 'x1' cannot be read"):
                engine.run(bad_parts, stats()["moments"], reader())


def test_task_errors_name_the_file(dataset, tmp_path):
    root, _ = dataset
    import shutil

    bad = tmp_path / "copy"
    shutil.copytree(root, bad)
    (bad / "day=3" / "part-0.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    with pytest.raises(DataError, match=r"day=3/part-0\.parquet"):
        dataset_parts(bad, SCHEMA, columns=COLS)


def test_unreachable_scheduler_is_one_line_naming_the_address():
    from segstream.shared.broker import free_port

    addr = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(SchedulerError) as e:
        DaskEngine(scheduler=addr, connect_timeout=1).start()
    assert addr in str(e.value) and "\n" not in str(e.value)


def test_tree_merge_order_and_empty_pass():
    assert tree_merge(list("abcde"), lambda x, y: f"({x}{y})") == "(((ab)(cd))e)"
    with pytest.raises(ValueError):
        tree_merge([], lambda x, y: x)
    r = ChunkedEngine(progress=False).run([], MomentStats(["x"]), reader())
    assert r.rows == 0 and r.parts == 0
