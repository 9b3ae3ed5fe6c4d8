"""The artifact store on s3:// (s3fs) against moto's S3 server on loopback (MinIO stands in
for it in docker compose)."""

from __future__ import annotations

import pytest

from segstream.shared.errors import BundleIntegrityError, StoreError
from segstream.shared.settings import StoreSettings
from segstream.shared.store import ArtifactStore
from tests.unit.test_bundle_store import make

pytestmark = pytest.mark.integration


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
        aws_secret_access_key="s",
        region_name="us-east-1",
    ).create_bucket(Bucket="segstream")
    yield endpoint
    server.stop()


def s3_store(endpoint: str, secret: str = "s") -> ArtifactStore:
    return ArtifactStore(
        StoreSettings(
            url="s3://segstream/prod", s3_endpoint_url=endpoint, s3_key="k", s3_secret=secret
        )
    )


def test_s3_publish_list_promote_fetch(s3_endpoint, tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    store = s3_store(s3_endpoint, secret="Sup3rS3cretValue")
    d1, d2 = make(tmp_path, seed=11), make(tmp_path, seed=12)
    uri = store.publish(d1)
    assert uri == f"s3://segstream/prod/bundles/m/{d1.name}"
    store.publish(d2)
    assert store.latest("m") == d2.name
    assert [b.bundle_id for b in store.list("m")] == [d1.name, d2.name]
    assert store.promote("m", d1.name[:8]) == d1.name
    assert store.latest("m") == d1.name
    got = store.fetch("m", d2.name, tmp_path / "cache")
    assert (got / "manifest.json").is_file()
    assert store.publish(d2, promote=False) == store.uri("m", d2.name)  # no-op
    assert "Sup3rS3cretValue" not in caplog.text  # secrets are never logged
    assert "Sup3rS3cretValue" not in repr(store.settings)


def test_s3_tampered_object_is_refused(s3_endpoint, tmp_path):
    import boto3

    store = s3_store(s3_endpoint)
    d = make(tmp_path, seed=13)
    store.publish(d)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
    )
    s3.put_object(Bucket="segstream", Key=f"prod/bundles/m/{d.name}/alpha.json", Body=b"{}")
    with pytest.raises(BundleIntegrityError, match=r"alpha\.json"):
        store.verify("m", d.name)


def test_s3_unreachable_endpoint_is_store_error(tmp_path):
    from segstream.shared.broker import free_port

    store = ArtifactStore(
        StoreSettings(
            url="s3://segstream/x",
            s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
            s3_key="k",
            s3_secret="s",
        )
    )
    with pytest.raises(StoreError, match="s3://segstream/x"):
        store.publish(make(tmp_path, seed=14))


def test_s3_control_plane_ids_latest_and_signatures(s3_endpoint, tmp_path):
    """The same checks on s3://: hostile ids build no key, a malformed LATEST is named, and
    trusted keys refuse an unsigned bundle before any component is read."""
    import boto3

    from segstream.shared.errors import BundleIdError, BundleSignatureError, LatestError
    from segstream.shared.signing import generate_key_pair, load_private_key, sign_bundle_dir

    store = s3_store(s3_endpoint)
    unsigned = make(tmp_path, seed=21)
    store.publish(unsigned)
    for bad in ("../../other", "/segstream/prod", "A" * 64, "s3://other-bucket/x"):
        with pytest.raises(BundleIdError):
            store.fetch("m", bad, tmp_path / "cache")
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
    )
    s3.put_object(
        Bucket="segstream", Key="prod/bundles/m/LATEST", Body=b'{"bundle_id": "../../../x"}'
    )
    with pytest.raises(LatestError, match="s3://segstream/prod/bundles/m/LATEST"):
        store.latest("m")
    generate_key_pair(tmp_path / "k.key", tmp_path / "k.pub")
    signed = make(tmp_path, seed=22)
    sign_bundle_dir(
        signed, load_private_key(StoreSettings(signing_key_file=str(tmp_path / "k.key")))
    )
    store.publish(signed)
    trusted = ArtifactStore(
        StoreSettings(
            url="s3://segstream/prod",
            s3_endpoint_url=s3_endpoint,
            s3_key="k",
            s3_secret="s",
            trusted_public_keys=(str(tmp_path / "k.pub"),),
        )
    )
    assert trusted.latest("m") == signed.name  # publish repaired LATEST
    assert (trusted.fetch("m", signed.name, tmp_path / "cache") / "manifest.sig").is_file()
    with pytest.raises(BundleSignatureError, match="not signed"):
        trusted.fetch("m", unsigned.name, tmp_path / "cache")
    assert not (tmp_path / "cache" / unsigned.name).exists()
