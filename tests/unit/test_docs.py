"""The generated docs pages stay in sync with what they are generated from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _gen_benchmarks():
    spec = importlib.util.spec_from_file_location(
        "gen_benchmarks", REPO / "docs" / "gen_benchmarks.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmarks_page_matches_results_json():
    committed = (REPO / "docs" / "benchmarks.md").read_text()
    assert committed == _gen_benchmarks().render(), (
        "docs/benchmarks.md differs from benchmarks/results/*.json: "
        "regenerate with `python docs/gen_benchmarks.py`"
    )


def test_benchmarks_page_cites_every_figure_source():
    mod = _gen_benchmarks()
    page = mod.render()
    for path in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        assert f"`benchmarks/results/{path.name}`" in page, path.name
