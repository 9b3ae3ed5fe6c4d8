"""Offline checks of the ops files: docker-compose.yml, Dockerfile, Prometheus config and
rules (promtool), Grafana provisioning and dashboards.

The tools come from Debian (``.ci/run`` installs ``docker-compose`` and ``prometheus``); a test
that needs a missing tool skips and says which package provides it.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.ops_helpers import (
    CLI_ENV_VARS,
    COMPOSE,
    DASHBOARDS,
    GRAFANA_DIR,
    NO_QUERY_PANELS,
    PROMETHEUS_CONFIG,
    REPO,
    RULE_TESTS,
    RULES,
    compose,
    compose_segstream_env,
    compose_text_segstream_vars,
    iter_panels,
    load_dashboard,
    metric_names,
    panel_queries,
    render_grafana_expr,
    rule_exprs,
)

GRAFANA_TEST_VARS = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package '{package}'; .ci/run installs it)")
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


# --------------------------------------------------------------------------- compose
@pytest.mark.parametrize("profiles", [[], ["demo"], ["train"], ["replay"]], ids=str)
def test_docker_compose_config_accepts_the_compose_file(profiles) -> None:
    tool = _tool("docker-compose", "docker-compose")
    flags = [f for p in profiles for f in ("--profile", p)]
    r = _run([tool, "-f", str(COMPOSE), *flags, "config", "--quiet"])
    assert r.returncode == 0, r.stderr
    services = _run([tool, "-f", str(COMPOSE), *flags, "config", "--services"]).stdout.split()
    assert set(services) >= {
        "kafka",
        "topic-init",
        "minio",
        "bucket-init",
        "worker",
        "monitor",
        "prometheus",
        "grafana",
    }


def test_compose_file_has_no_keys_docker_compose_1_29_rejects() -> None:
    assert not {"name", "include", "develop"} & set(compose())


def _deps(s: dict, name: str) -> dict[str, str]:
    return {k: v["condition"] for k, v in s[name].get("depends_on", {}).items()}


def test_compose_one_shot_jobs_run_only_when_asked() -> None:
    """A plain `up` (or `up --scale worker=N`) neither retrains nor replays: the trainer and
    the simulator are behind profiles, and no default service depends on them (compose
    refuses to start a service whose dependency is in an inactive profile)."""
    s = compose()["services"]
    assert s["trainer"]["profiles"] == ["train", "demo"]
    assert s["simulator"]["profiles"] == ["replay", "demo"]
    default = {n for n, svc in s.items() if not svc.get("profiles")}
    assert default >= {"kafka", "worker", "monitor", "prometheus", "grafana"}
    for name in default:
        gated = set(_deps(s, name)) - default
        assert not gated, f"{name} depends on profile-only services {gated}"
    for one_shot in ("topic-init", "bucket-init", "trainer", "simulator"):
        assert s[one_shot]["restart"] == "no"
    # The jobs on every `up` are idempotent.
    assert "--if-not-exists" in str(s["topic-init"]["command"])
    assert "--ignore-existing" in str(s["bucket-init"]["command"])


def test_compose_start_order_and_health_checks() -> None:
    s = compose()["services"]
    assert _deps(s, "topic-init") == {"kafka": "service_healthy"}
    assert _deps(s, "bucket-init") == {"minio": "service_healthy"}
    done = "service_completed_successfully"
    for svc in ("trainer", "worker", "monitor"):
        assert _deps(s, svc) == {"topic-init": done, "bucket-init": done}
    assert _deps(s, "simulator") == {"worker": "service_healthy", "monitor": "service_healthy"}
    assert _deps(s, "grafana") == {"prometheus": "service_healthy"}
    for svc in ("kafka", "minio", "worker", "monitor", "prometheus", "grafana"):
        assert "healthcheck" in s[svc], f"{svc} has no health check"
    assert "kafka-broker-api-versions" in str(s["kafka"]["healthcheck"]["test"])
    # Liveness, so that replicas beyond the partition count (never ready) are healthy.
    for svc in ("worker", "monitor"):
        test = str(s[svc]["healthcheck"]["test"])
        assert "/healthz" in test and "/readyz" not in test, svc
    assert s["worker"]["deploy"]["replicas"] == 2


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert m and value, value
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


def test_compose_stop_grace_period_covers_the_drain() -> None:
    """The worker's shutdown (services/worker/app.py and committers.py): the open batch's
    transaction (send offsets, commit: worker.transaction_timeout_s each), the output
    producer's flush (10 s), the alert producer's (5 s) and the reload thread's join (5 s).
    The monitor (services/monitor/loop.py): a flush inside the last micro-batch, the flush of
    the revoke on close (FLUSH_TIMEOUT_S each) and the producer's last flush (5 s)."""
    from segstream.services.monitor.loop import FLUSH_TIMEOUT_S
    from segstream.shared.settings import WorkerSettings

    s = compose()["services"]
    worker_drain = 2 * WorkerSettings().transaction_timeout_s + 10 + 5 + 5
    assert _seconds(s["worker"]["stop_grace_period"]) >= worker_drain
    assert _seconds(s["monitor"]["stop_grace_period"]) >= 2 * FLUSH_TIMEOUT_S + 5
    assert s["worker"]["init"] and s["monitor"]["init"]  # tini forwards SIGTERM


def test_compose_store_url_is_the_bucket_and_reports_are_mounted() -> None:
    env = compose_segstream_env()
    # The store appends bundles/<model>/ itself: a prefix `bundles` gave bundles/bundles/.
    assert env["worker"]["SEGSTREAM_STORE__URL"] == "s3://segstream"
    t = compose()["services"]["trainer"]
    report_dir = t["command"][t["command"].index("--report-dir") + 1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in t["volumes"]}
    assert mounts[report_dir] == "./reports"


def test_compose_grafana_is_a_supported_release() -> None:
    """Grafana 10.4 is out of support; 12.4 is the last minor of 12.x (15 months of support
    from its release); the dashboards are parsed with the grafana-foundation-sdk release for
    it (tests/unit/test_grafana_dashboards.py)."""
    image = compose()["services"]["grafana"]["image"]
    name, _, tag = image.partition(":")
    assert name == "grafana/grafana"
    major, minor = (int(x) for x in tag.split(".")[:2])
    assert (major, minor) >= (12, 4), image


def test_compose_kafka_is_single_node_kraft_with_transactions() -> None:
    k = compose()["services"]["kafka"]
    assert k["image"].startswith("apache/kafka:")
    env = {key: str(v) for key, v in k["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key


def test_compose_topic_init_creates_the_configured_topics() -> None:
    from segstream.shared.settings import TopicSettings

    script = str(compose()["services"]["topic-init"]["command"])
    t = TopicSettings()
    for name in (t.events, t.predictions, t.alerts, t.dlq, t.stats, t.outcomes, t.model_updates):
        assert name in script, f"topic-init does not create {name}"


def test_every_segstream_variable_in_compose_is_a_setting() -> None:
    from segstream.shared.settings import settings_rows

    known = {env for _, env, _, _ in settings_rows()} | CLI_ENV_VARS
    unknown = sorted(compose_text_segstream_vars() - known)
    assert not unknown, f"not settings (see `segstream config --table`): {unknown}"
    for var in CLI_ENV_VARS:  # the CLI really reads them
        assert var in (REPO / "shared" / "cli.py").read_text()


@pytest.mark.parametrize("service", ["trainer", "worker", "monitor", "simulator"])
def test_compose_environment_validates_as_settings(service, monkeypatch) -> None:
    from segstream.shared.settings import load_settings

    env = compose_segstream_env()[service]
    assert env["SEGSTREAM_BROKER__BOOTSTRAP"] == "kafka:9092"
    assert env["SEGSTREAM_STORE__URL"].startswith("s3://")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings(REPO / "config" / "flights.yaml")
    assert s.broker.bootstrap == "kafka:9092"
    assert s.store.s3_endpoint_url == "http://minio:9000"


def test_compose_ports_match_the_scrape_config() -> None:
    s = compose()["services"]
    worker_port = int(compose_segstream_env()["worker"]["SEGSTREAM_WORKER__METRICS_PORT"])
    monitor_cmd = s["monitor"]["command"]
    monitor_port = int(monitor_cmd[monitor_cmd.index("--metrics-port") + 1])
    jobs = {
        j["job_name"]: j for j in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    }
    w = jobs["segstream-worker"]["dns_sd_configs"][0]
    m = jobs["segstream-monitor"]["dns_sd_configs"][0]
    assert (w["names"], w["port"]) == (["worker"], worker_port)
    assert (m["names"], m["port"]) == (["monitor"], monitor_port)
    assert f"localhost:{worker_port}/healthz" in str(s["worker"]["healthcheck"]["test"])
    assert f"localhost:{monitor_port}/healthz" in str(s["monitor"]["healthcheck"]["test"])


def test_dockerfile_slim_non_root_dependency_layer() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER segstream$", text, re.M)
    assert 'ENTRYPOINT ["segstream"]' in text
    lines = text.splitlines()
    first_copy = next(i for i, ln in enumerate(lines) if ln.startswith("COPY "))
    assert lines[first_copy] == "COPY requirements/image.txt ./requirements/image.txt"
    # The pinned closure, nothing resolved at build time.
    dep_install = next(
        i for i, ln in enumerate(lines) if "pip install --no-deps -r requirements/image.txt" in ln
    )
    source = next(i for i, ln in enumerate(lines) if ln.startswith("COPY shared"))
    assert first_copy < dep_install < source
    assert "pip install --no-deps ." in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "artifacts"} <= set(ignored)
    assert "requirements/image.txt" not in ignored
    # The kernels are compiled at build time, as the service user, into its own cache dir.
    user = next(i for i, ln in enumerate(lines) if ln == "USER segstream")
    warm = next(
        i
        for i, ln in enumerate(lines)
        if "segstream" in ln and "warmup" in ln and ln.startswith("RUN")
    )
    assert user < warm
    assert re.search(r"^ENV NUMBA_CACHE_DIR=/app/\.cache/numba$", text, re.M)
    assert "COPY segstream ./segstream" in text


def _pins(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def _dep_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_lock_files_pin_every_dependency_and_the_cpu_xgboost() -> None:
    """requirements/image.txt (the image) and requirements/ci.txt (make's installs, -c) are
    complete and agree: the image's xgboost-cpu is the version CI tests as xgboost, and it
    pulls in no CUDA library."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    image = _pins(REPO / "requirements" / "image.txt")
    ci = _pins(REPO / "requirements" / "ci.txt")
    runtime = {_dep_name(d) for d in project["dependencies"]}
    assert "xgboost" in runtime
    assert runtime - {"xgboost"} | {"xgboost-cpu"} <= set(image)
    assert "xgboost" not in image and not [n for n in image if n.startswith("nvidia-")]
    assert image["xgboost-cpu"] == ci["xgboost"]
    extras = project["optional-dependencies"]
    wanted = runtime | {_dep_name(d) for e in ("test", "lint", "docs") for d in extras[e]}
    assert wanted <= set(ci), sorted(wanted - set(ci))
    for name in image.keys() & ci.keys():  # one version of each package everywhere
        assert image[name] == ci[name], name
    makefile = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS := -c requirements/ci.txt" in makefile
    assert makefile.count("$(CONSTRAINTS) -e") >= 3


# --------------------------------------------------------------------------- prometheus
def test_promtool_check_config() -> None:
    promtool = _tool("promtool", "prometheus")
    r = _run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(rule_exprs())} rules found" in r.stdout


def test_promtool_check_rules() -> None:
    promtool = _tool("promtool", "prometheus")
    assert RULES
    r = _run([promtool, "check", "rules", *map(str, RULES)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules() -> None:
    promtool = _tool("promtool", "prometheus")
    assert RULE_TESTS
    r = _run([promtool, "test", "rules", *map(str, RULE_TESTS)])
    assert r.returncode == 0, r.stdout + r.stderr
    tested = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {
                t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")
            }
    assert len(tested) >= 3, f"firing cases for only {sorted(tested)}"


def test_alert_rules_cover_the_operations_issue() -> None:
    names = {r.name for r in rule_exprs()}
    assert names >= {
        "SegstreamWorkerDown",
        "SegstreamNoWorkerUp",
        "SegstreamWorkerReplicasMissing",
        "SegstreamWorkerCrashLooping",
        "SegstreamMonitorAbsent",
        "SegstreamMonitorCrashLooping",
        "SegstreamConsumerLagGrowing",
        "SegstreamDLQRateHigh",
        "SegstreamNoPredictions",
        "SegstreamDriftCritical",
        "SegstreamPerformanceDegraded",
    }


# --------------------------------------------------------------------------- grafana
def test_dashboards_parse_and_every_panel_has_a_query() -> None:
    assert DASHBOARDS
    uids = set()
    for path in DASHBOARDS:
        d = load_dashboard(path)
        assert d["uid"] not in uids, f"{path.name}: duplicate uid"
        uids.add(d["uid"])
        ids = [p["id"] for p in iter_panels(d["panels"])]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for p in iter_panels(d["panels"]):
            if p["type"] in NO_QUERY_PANELS:
                continue
            exprs = [t.get("expr", "").strip() for t in p.get("targets", [])]
            assert exprs and all(exprs), f"{path.name}: panel {p['title']!r} has no query"
            assert p["datasource"]["uid"] == "prometheus", p["title"]


def test_dashboard_queries_use_only_known_grafana_variables() -> None:
    for q in panel_queries():
        render_grafana_expr(q.expr, GRAFANA_TEST_VARS)  # KeyError names the variable


def test_dashboards_cover_the_operations_issue() -> None:
    exprs = " ".join(q.expr for q in panel_queries())
    for needle in (
        "events_consumed_total",
        "predictions_produced_total",
        "dlq_records_total",
        "consumer_lag_messages",
        "scoring_event_seconds_bucket",
        "end_to_end_latency_seconds_bucket",
        "batch_size_events",
        "predictions_by_fallback_level_total",
        "bundle_info",
        "bundle_reloads_total",
        "segstream_monitor_psi",
        "segstream_monitor_alerts_total",
        'type="new_segment"',
        "window_mae",
        "window_interval_coverage",
        'segstream_monitor_window_statistic{statistic="log_loss"}',
        'segstream_monitor_window_statistic{statistic="brier"}',
        'segstream_monitor_window_statistic{statistic="auroc"}',
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert needle in exprs, f"no dashboard panel queries {needle}"


def _sample_names(registry: CollectorRegistry) -> set[str]:
    return {s.name for fam in registry.collect() for s in fam.samples} | {
        fam.name for fam in registry.collect()
    }


def test_worker_metric_names_in_dashboards_and_rules_exist() -> None:
    from segstream.services.worker.metrics import WorkerMetrics

    registry = CollectorRegistry()
    m = WorkerMetrics.create(registry)
    m.bundle_info.info({"bundle_id": "x", "model": "m"})
    m.predictions_by_fallback.labels(level="0").inc()
    m.consumer_lag.labels(topic="t", partition="0").set(0)
    exposed = _sample_names(registry)
    used = set()
    for expr in [q.expr for q in panel_queries()] + [r.expr for r in rule_exprs()]:
        used |= metric_names(expr, "segstream_worker_")
    assert used
    assert not used - exposed, f"not exposed by the worker: {sorted(used - exposed)}"


def test_monitor_metric_names_in_dashboards_and_rules_exist() -> None:
    try:
        from segstream.services.monitor.metrics import MonitorMetrics
    except ModuleNotFoundError:
        pytest.skip("segstream.services.monitor.metrics is not in this build (monitor not merged)")
    registry = CollectorRegistry()
    m = MonitorMetrics.create(registry, ["distance"])
    m.psi.labels(feature="distance").set(0)
    m.js_distance.labels(feature="distance").set(0)
    m.pending.labels(kind="x").set(0)
    m.watermark.labels(clock="x").set(0)
    exposed = _sample_names(registry)
    used = set()
    for expr in [q.expr for q in panel_queries()] + [r.expr for r in rule_exprs()]:
        used |= metric_names(expr, "segstream_monitor_")
    assert used
    assert not used - exposed, f"not exposed by the monitor: {sorted(used - exposed)}"


def test_grafana_provisioning_matches_compose() -> None:
    ds = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert [d["uid"] for d in ds] == ["prometheus"]
    assert ds[0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "segstream.yml").read_text()
    )["providers"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose()["services"]["grafana"]["volumes"]}
    path = providers[0]["options"]["path"]
    assert mounts[path] == "./config/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./config/grafana/provisioning"
    home = compose()["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home.rsplit("/", 1)[1] in {p.name for p in DASHBOARDS}
