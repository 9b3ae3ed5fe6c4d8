from __future__ import annotations

import orjson
import pytest

from segstream.shared.settings import load_settings
from tests.kafka_helpers import consume_all
from tests.train_helpers import january_parquet, small_config
from segstream.training.pipeline import train

pytestmark = pytest.mark.integration


def test_publish_sends_model_update_event(kafka, topic_prefix, flights_df, tmp_path):
    cfg = small_config(tmp_path, tmp_path / "store",
                       broker={"bootstrap": kafka.bootstrap},
                       topics={"model_updates": f"{topic_prefix}.model-updates"})
    s = load_settings(cfg)
    r = train(s, data_path=str(january_parquet(flights_df, tmp_path)), progress=False,
              work_dir=str(tmp_path / "w"), report_dir=str(tmp_path / "r"))
    assert r.update_sent
    msgs = consume_all(kafka.bootstrap, s.topics.model_updates, 1)
    assert len(msgs) == 1
    doc = orjson.loads(msgs[0].value())
    assert doc["bundle_id"] == r.manifest.bundle_id and doc["model"] == "flights"
    assert doc["uri"] == r.uri and doc["created_at"].startswith("20")
