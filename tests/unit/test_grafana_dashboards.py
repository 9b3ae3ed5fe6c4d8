"""The Grafana dashboards parsed by Grafana's own types: ``grafana-foundation-sdk``, the
build for Grafana 12.4 (the version docker-compose.yml runs; pinned in pyproject's test
extra).

Every panel must be a panel plugin Grafana 12.4 has (its options parse into that plugin's
typed model: AngularJS panels such as ``graph``, removed in Grafana 12, would not), every
query a typed Prometheus query, and the dashboard must survive the SDK's round trip with
its panels, queries and layout unchanged.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel

from tests.ops_helpers import DASHBOARDS, load_dashboard

register_default_plugins()


def _panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def _problems(doc: dict[str, Any]) -> list[str]:
    """What Grafana 12.4's types do not accept in a dashboard (empty: all of it)."""
    problems = []
    model = Dashboard.from_json(doc)
    if doc.get("schemaVersion", 0) > Dashboard().schema_version:
        problems.append(f"schemaVersion {doc['schemaVersion']} is newer than the SDK's")
    parsed = [p for top in model.panels or [] for p in [top, *(getattr(top, "panels", None) or [])]]
    for p in parsed:
        if isinstance(p, RowPanel):
            continue
        assert isinstance(p, Panel)
        title = p.title
        plugin = p.type_val
        if p.options is None or not type(p.options).__module__.endswith(f".{plugin}"):
            problems.append(f"panel {title!r}: type {plugin!r} is not a Grafana 12.4 panel plugin")
        for t in p.targets or []:
            if not isinstance(t, prometheus.Dataquery) or not (t.expr or "").strip():
                problems.append(f"panel {title!r}: a query that is not a Prometheus query")
    return problems


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_parses_with_grafana_12_4_types(path) -> None:
    doc = load_dashboard(path)
    assert _problems(doc) == []


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_survives_the_sdk_round_trip(path) -> None:
    doc = load_dashboard(path)
    again = json.loads(json.dumps(Dashboard.from_json(doc), cls=JSONEncoder))
    assert (again["uid"], again["title"]) == (doc["uid"], doc["title"])

    def summary(d: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (
                p["title"],
                p["type"],
                tuple(sorted(p["gridPos"].items())),
                tuple(t.get("expr") for t in p.get("targets", [])),
            )
            for p in _panels(d)
        ]

    assert summary(again) == summary(doc)


def test_a_removed_panel_type_is_refused() -> None:
    """The check can fail: Grafana 12 removed the AngularJS ``graph`` panel."""
    doc = copy.deepcopy(load_dashboard(DASHBOARDS[0]))
    panel = next(p for p in _panels(doc) if p["type"] == "timeseries")
    panel["type"] = "graph"
    assert any("'graph' is not a Grafana 12.4 panel plugin" in p for p in _problems(doc))
