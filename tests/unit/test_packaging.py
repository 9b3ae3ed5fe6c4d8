"""One import package: the layout, the packaged example configs, and the import direction."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import segstream
import segstream.shared
from segstream.shared.errors import ConfigError
from segstream.shared.settings import example_names, example_text, load_settings, resolve_config

REPO = Path(__file__).resolve().parents[2]


def test_parts_import_under_segstream():
    import segstream.services.worker.loop as loop
    import segstream.training.partitioner as part

    assert loop.__name__ == "segstream.services.worker.loop"
    assert part.__name__ == "segstream.training.partitioner"
    assert segstream.__version__


def test_packaged_flights_example_is_the_default():
    assert "flights" in example_names()
    s = load_settings(None)
    assert s.model == "flights"
    assert load_settings("flights") == s
    # The packaged example is the repository's config/flights.yaml (package data, not a copy).
    assert example_text("flights") == (REPO / "config" / "flights.yaml").read_text()


def test_config_that_is_neither_file_nor_example_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        resolve_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no example config 'nope'"):
        example_text("nope")


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("path", sorted((REPO / "shared").glob("*.py")), ids=lambda p: p.name)
def test_shared_imports_neither_training_nor_services(path):
    bad = {
        m
        for m in _imports(path)
        if m.split(".")[:2] in (["segstream", "training"], ["segstream", "services"])
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("folder", ["shared", "training", "services", "tests", "benchmarks"])
def test_no_import_of_the_old_top_level_names(folder):
    old = {"shared", "training", "services"}
    for path in (REPO / folder).rglob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in old}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
