from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from segstream.shared.errors import ConfigError
from segstream.shared.settings import load_settings, settings_rows, settings_table_markdown

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "flights.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


MINIMAL_SCHEMA = """
schema:
  fields:
    - {name: id, type: string, role: id, required: true}
    - {name: t, type: datetime, role: time, required: true}
    - {name: x, type: float, role: numeric}
    - {name: c, type: string, role: categorical}
    - {name: y, type: float, role: target}
"""


def test_flights_config_loads_with_roles(flights_config):
    s = load_settings(flights_config)
    sc = s.event_schema
    assert (sc.id_field, sc.time_field, sc.target) == ("event_id", "event_time", "arr_delay")
    assert sc.categorical_features == ["carrier", "origin", "dest"]
    assert "dep_delay" in sc.numeric_features and "arr_delay" not in sc.features
    assert "arr_delay" not in [f.name for f in sc.event_fields]
    assert s.topics.events == "segstream.events"


def test_settings_are_frozen(flights_config):
    s = load_settings(flights_config)
    with pytest.raises(ValidationError, match="frozen"):
        s.broker.bootstrap = "x:1"  # type: ignore[misc]


def test_env_override_nested(tmp_path, monkeypatch):
    p = write(tmp_path, MINIMAL_SCHEMA)
    monkeypatch.setenv("SEGSTREAM_BROKER__BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("SEGSTREAM_SIMULATOR__RATE", "123.5")
    monkeypatch.setenv("SEGSTREAM_TOPICS__PARTITIONS", "3")
    s = load_settings(p)
    assert s.broker.bootstrap == "kafka:9092"
    assert s.simulator.rate == 123.5
    assert s.topics.partitions == 3


def test_explicit_overrides_beat_env_and_none_is_ignored(tmp_path, monkeypatch):
    p = write(tmp_path, MINIMAL_SCHEMA + "broker: {bootstrap: file:1}\n")
    monkeypatch.setenv("SEGSTREAM_BROKER__BOOTSTRAP", "env:2")
    assert load_settings(p).broker.bootstrap == "env:2"
    assert load_settings(p, {"broker": {"bootstrap": "cli:3"}}).broker.bootstrap == "cli:3"
    assert load_settings(p, {"broker": {"bootstrap": None}}).broker.bootstrap == "env:2"


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, MINIMAL_SCHEMA + "broker:\n  bootstrapp: x\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'broker\.bootstrapp': unknown key"):
        load_settings(p)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, MINIMAL_SCHEMA + "topics: {partitions: many}\n")
    with pytest.raises(ConfigError, match=r"key 'topics\.partitions'"):
        load_settings(p)


def test_wrong_type_from_env_names_variable(tmp_path, monkeypatch):
    p = write(tmp_path, MINIMAL_SCHEMA)
    monkeypatch.setenv("SEGSTREAM_SIMULATOR__BAD_FRACTION", "2.0")
    with pytest.raises(ConfigError, match="SEGSTREAM_SIMULATOR__BAD_FRACTION"):
        load_settings(p)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    p = write(tmp_path, "schema: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(p)


@pytest.mark.parametrize(
    "fields, message",
    [
        ("[{name: a, type: string, role: id}]", "role 'time'"),
        (
            """[{name: id, type: string, role: id}, {name: t, type: float, role: time},
             {name: y, type: float, role: target}]""",
            "must have type 'datetime'",
        ),
        (
            """[{name: id, type: string, role: id}, {name: id, type: string, role: other},
             {name: t, type: datetime, role: time}, {name: y, type: float, role: target}]""",
            "duplicate",
        ),
        (
            """[{name: id, type: string, role: id}, {name: t, type: datetime, role: time},
             {name: y, type: float, role: target}, {name: z, type: decimal, role: numeric}]""",
            r"schema\.fields\.3\.type",
        ),
    ],
)
def test_schema_validation(tmp_path, fields, message):
    p = write(tmp_path, f"schema:\n  fields: {fields}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(p)


def test_docs_configuration_table_matches_settings_model():
    page = (REPO / "docs" / "configuration.md").read_text()
    m = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", page, re.S)
    assert m, "docs/configuration.md lacks the generated configuration table markers"
    assert m.group(1).strip() == settings_table_markdown().strip(), (
        "docs/configuration.md table is stale: regenerate with `segstream config --table`"
    )


def test_settings_rows_cover_every_section():
    keys = {r[0] for r in settings_rows()}
    assert {"broker.bootstrap", "store.url", "simulator.rate", "topics.dlq", "schema"} <= keys
    env = {r[1] for r in settings_rows()}
    assert "SEGSTREAM_BROKER__BOOTSTRAP" in env


def test_worker_fetch_settings_reach_the_events_consumer_and_client_config_wins() -> None:
    """fetch_min_bytes / fetch_wait_max_ms / fetch_backoff_ms set librdkafka's
    fetch.min.bytes / fetch.wait.max.ms / queued.min.messages + fetch.queue.backoff.ms (0: no
    pacing); an operator's broker.client entry overrides them."""
    from segstream.services.worker.kafka_io import consumer_config

    s = load_settings(
        CONFIG,
        {"worker": {"fetch_min_bytes": 4096, "fetch_wait_max_ms": 25, "fetch_backoff_ms": 40}},
    )
    conf = consumer_config(s)
    assert (conf["fetch.min.bytes"], conf["fetch.wait.max.ms"]) == (4096, 25)
    assert (conf["queued.min.messages"], conf["fetch.queue.backoff.ms"]) == (1, 40)
    conf = consumer_config(load_settings(CONFIG, {"worker": {"fetch_backoff_ms": 0}}))
    assert "queued.min.messages" not in conf and "fetch.queue.backoff.ms" not in conf
    s = load_settings(CONFIG, {"broker": {"client": {"fetch.queue.backoff.ms": 5}}})
    assert consumer_config(s)["fetch.queue.backoff.ms"] == 5
    s = load_settings(
        CONFIG, {"worker": {"fetch_min_bytes": 4096}, "broker": {"client": {"fetch.min.bytes": 1}}}
    )
    assert consumer_config(s)["fetch.min.bytes"] == 1
    with pytest.raises(ConfigError, match=r"worker\.fetch_min_bytes"):
        load_settings(CONFIG, {"worker": {"fetch_min_bytes": 0}})


def test_worker_output_producer_compresses_as_configured() -> None:
    from segstream.services.worker.kafka_io import producer_config

    assert (
        producer_config(load_settings(CONFIG, {}), transactional_id=None)["compression.type"]
        == "lz4"
    )
    s = load_settings(CONFIG, {"worker": {"producer_compression": "none"}})
    assert producer_config(s, transactional_id=None)["compression.type"] == "none"
    with pytest.raises(ConfigError, match=r"worker\.producer_compression"):
        load_settings(CONFIG, {"worker": {"producer_compression": "brotli"}})


@pytest.mark.parametrize("example", ["flights", "flights_late"])
def test_dumped_settings_validate_again(example: str) -> None:
    """Worker subprocesses get their settings as a dumped YAML (write_config): every default
    is written out, and the dump must load as the same settings."""
    from segstream.shared.settings import Settings

    s = load_settings(example)
    again = Settings.model_validate(s.model_dump(mode="json", by_alias=True))
    assert again == s
