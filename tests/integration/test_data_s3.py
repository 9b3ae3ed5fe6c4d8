"""A hive-partitioned Parquet data set on s3:// (s3fs) against moto's S3 server on loopback
(MinIO stands in for it in docker compose): read with the credentials of dataset.storage,
which never reach the logs."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from segstream.shared.data import (
    dataset_parts,
    iter_batches,
    load_dataset,
    open_parquet_dataset,
    storage_options,
)
from segstream.shared.errors import DataError
from segstream.shared.settings import Settings
from tests.unit.test_data_parquet_dataset import frame, schema

pytestmark = pytest.mark.integration

SECRET = "Sup3rS3cretDataValue"


@pytest.fixture(scope="module")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server")
    from segstream.shared.broker import free_port

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="k",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    ).create_bucket(Bucket="segdata")
    yield endpoint
    server.stop()


def test_hive_dataset_on_s3(s3_endpoint, caplog):
    import s3fs

    caplog.set_level(logging.DEBUG)
    s = Settings.model_validate(
        {
            "schema": schema().model_dump(),
            "dataset": {
                "source": "file",
                "path": "s3://segdata/flights/",
                "timezone": "UTC",
                "storage": {"s3_endpoint_url": s3_endpoint, "s3_key": "k", "s3_secret": SECRET},
            },
        }
    )
    fs = s3fs.S3FileSystem(**storage_options(s))
    frames = []
    for m in (1, 2, 3):
        f = frame(400, m, seed=m)
        with fs.open(f"segdata/flights/month={m}/part-0.parquet", "wb") as fh:
            f.to_parquet(fh)
        frames.append(f)
    whole = pd.concat(frames, ignore_index=True)

    df = load_dataset(s)
    assert len(df) == 1200 and sorted(df["month"].unique()) == [1, 2, 3]
    assert df["t"].is_monotonic_increasing

    opts = storage_options(s)
    parts = dataset_parts(
        "s3://segdata/flights/month=[23]/*.parquet", schema(), storage_options=opts
    )
    assert len(parts) == 2
    got = pd.concat(
        iter_batches(parts, schema(), "UTC", columns=["x"], start="2024-02-10", batch_rows=100)
    )
    lo = pd.Timestamp("2024-02-10", tz="UTC")
    assert len(got) == int((whole["t"] >= lo).sum())
    np.testing.assert_array_equal(
        np.sort(got["x"].to_numpy()), np.sort(whole.loc[whole["t"] >= lo, "x"].to_numpy())
    )
    with pytest.raises(DataError, match="s3://segdata/nothing/: no Parquet file matches"):
        open_parquet_dataset("s3://segdata/nothing/", schema(), storage_options=opts)
    assert SECRET not in caplog.text
