"""Readers of the ops files (compose, Prometheus rules, Grafana dashboards) for the tests."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS_DIR = REPO / "config" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GRAFANA_DIR = REPO / "config" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))

#: Environment variables the CLI reads itself (shared/cli.py), not settings.
CLI_ENV_VARS = frozenset({"SEGSTREAM_CONFIG", "SEGSTREAM_LOG_LEVEL"})

#: Panel types that carry no query.
NO_QUERY_PANELS = frozenset({"row", "text", "news", "dashlist"})

_GRAFANA_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


@dataclasses.dataclass(frozen=True)
class PanelQuery:
    """One query (target) of one dashboard panel."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    @property
    def id(self) -> str:
        return f"{Path(self.dashboard).stem}/{self.panel}/{self.ref_id}"

    @property
    def needs_monitor(self) -> bool:
        return "segstream_monitor_" in self.expr

    @property
    def needs_process_metrics(self) -> bool:
        return "process_" in self.expr


@dataclasses.dataclass(frozen=True)
class RuleExpr:
    """One alerting or recording rule."""

    group: str
    name: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def iter_panels(panels: list[dict[str, Any]]):
    """Every panel, including those nested in (collapsed) rows."""
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels", []))


def panel_queries() -> list[PanelQuery]:
    out = []
    for path in DASHBOARDS:
        d = load_dashboard(path)
        for p in iter_panels(d["panels"]):
            for t in p.get("targets", []):
                out.append(
                    PanelQuery(path.name, p["title"], t.get("refId", "?"), t.get("expr", ""))
                )
    return out


def rule_exprs() -> list[RuleExpr]:
    out = []
    for path in RULES:
        for g in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for r in g["rules"]:
                out.append(RuleExpr(g["name"], r.get("alert") or r.get("record"), r["expr"]))
    return out


def render_grafana_expr(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's ``$__rate_interval``-style variables; unknown ones raise KeyError."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"Grafana variable ${name} has no test value")
        return variables[name]

    return _GRAFANA_VAR.sub(sub, expr)


def metric_names(expr: str, prefix: str) -> set[str]:
    """Names starting with ``prefix`` in a PromQL expression (no parser: a regex is enough
    for the metric names of this repository, which never appear in strings)."""
    return set(re.findall(rf"\b({re.escape(prefix)}\w+)", expr))


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


_INTERP = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def resolve_compose_value(value: Any) -> str:
    """A compose environment value with ``${VAR:-default}`` replaced by its default."""
    return _INTERP.sub(lambda m: m.group(2) or "", str(value))


def compose_segstream_env() -> dict[str, dict[str, str]]:
    """Per service, the ``SEGSTREAM_*`` variables of its environment (defaults resolved)."""
    out: dict[str, dict[str, str]] = {}
    for name, svc in compose()["services"].items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        out[name] = {
            k: resolve_compose_value(v) for k, v in env.items() if k.startswith("SEGSTREAM_")
        }
    return out


def compose_text_segstream_vars() -> set[str]:
    """Every ``SEGSTREAM_*`` name anywhere in the compose file (keys and interpolations)."""
    return set(re.findall(r"\b(SEGSTREAM_\w+)", COMPOSE.read_text(encoding="utf-8")))
