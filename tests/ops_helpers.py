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

    @property
    def needs_classifier(self) -> bool:
        """The query has data only while a binomial bundle is served (and judged)."""
        return "segstream_monitor_window_statistic" in self.expr or (
            "segstream_monitor_test_statistic" in self.expr
        )


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


def render_alert_test_config(
    dest_dir: Path,
    sd_files: dict[str, Path],
    *,
    interval: str = "1s",
    for_: str = "3s",
    subquery: tuple[str, str] = ("[1h:1m]", "[10m:1s]"),
) -> Path:
    """A test copy of the shipped Prometheus config and rules, for alerts to fire in seconds.

    Service discovery becomes file-based (``sd_files``: job name -> targets JSON file, which
    the test rewrites as Docker's DNS would: a stopped container drops out); scrape and rule
    evaluation every ``interval``; every rule's ``for`` becomes ``for_`` and the replica
    subquery's window and step ``subquery[1]``. The shipped files are not changed.

    Returns the rendered ``prometheus.yml`` (its rules beside it in ``rules/``).
    """
    cfg = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    cfg["global"].update(
        scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval
    )
    rules_dir = dest_dir / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    for path in RULES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = for_
                rule["expr"] = rule["expr"].replace(*subquery)
        (rules_dir / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg["rule_files"] = [str(rules_dir / "*.yml")]
    jobs = []
    for job in cfg["scrape_configs"]:
        if job["job_name"] not in sd_files:
            continue
        job = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
        job["file_sd_configs"] = [
            {"files": [str(sd_files[job["job_name"]])], "refresh_interval": interval}
        ]
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    out = dest_dir / "prometheus.yml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def write_sd_targets(path: Path, targets: list[str]) -> None:
    """A file_sd targets file, replaced atomically (Prometheus watches it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": targets}] if targets else []))
    tmp.replace(path)
