"""Building a replica client from the replica_url and s3_* settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from backups.local_replica import LocalReplica
from backups.replica_url import open_replica
from backups.s3_replica import S3Replica
from ops.settings import Settings
from tenants.errors import BadRequest
from tests.support.s3 import BUCKET, REGION, MotoServer, unique_prefix


def test_file_urls_and_plain_paths_open_a_local_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    spaced = tmp_path / "with space"

    cases = {
        spaced.as_uri(): spaced,
        f"file://localhost{tmp_path}/x": tmp_path / "x",
        str(tmp_path / "plain"): tmp_path / "plain",
        "~/backups": tmp_path / "backups",
    }
    for url, root in cases.items():
        replica = open_replica(url)
        assert isinstance(replica, LocalReplica) and replica.root == root, url


def test_s3_url_sets_bucket_prefix_and_endpoint() -> None:
    replica = open_replica("s3://bkt/some/prefix/", endpoint_url="http://127.0.0.1:1", region="auto")
    bare = open_replica("s3://bkt")

    assert isinstance(replica, S3Replica) and isinstance(bare, S3Replica)
    assert (replica.bucket, replica.prefix, replica.endpoint_url) == (
        "bkt",
        "some/prefix/",
        "http://127.0.0.1:1",
    )
    assert (bare.bucket, bare.prefix) == ("bkt", "")
    replica.close()
    bare.close()


@pytest.mark.parametrize(
    "url",
    ["", "ftp://host/x", "s3://", "s3:///prefix", "s3://b/p?region=x", "file://otherhost/x", "s3://b/../x"],
)
def test_unusable_urls_are_rejected(url: str) -> None:
    with pytest.raises(BadRequest):
        open_replica(url)


def test_s3_replica_takes_credentials_from_the_aws_environment(
    s3: MotoServer, aws_environment: dict[str, str]
) -> None:
    settings = Settings.load(
        environ={
            "SQLFLEET_REPLICA_URL": f"s3://{BUCKET}/{unique_prefix()}",
            "SQLFLEET_S3_ENDPOINT_URL": s3.url,
            "SQLFLEET_S3_REGION": REGION,
            "SQLFLEET_S3_FORCE_PATH_STYLE": "true",
        }
    )
    replica = open_replica(
        settings.replica_target(),
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        force_path_style=settings.s3_force_path_style,
    )

    replica.put("via/env", b"credentials from AWS_ACCESS_KEY_ID")

    assert replica.get("via/env") == b"credentials from AWS_ACCESS_KEY_ID"
    replica.close()


def test_default_replica_is_a_directory_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, data_dir=tmp_path / "data")

    replica = open_replica(settings.replica_target())

    assert settings.replica_target().startswith("file://")
    assert isinstance(replica, LocalReplica) and replica.root == tmp_path / "data" / "replica"


@pytest.mark.parametrize(
    ("raw", "value"), [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False)]
)
def test_force_path_style_parses_booleans(raw: str, value: bool) -> None:
    settings = Settings.load(environ={"SQLFLEET_S3_FORCE_PATH_STYLE": raw})

    assert settings.s3_force_path_style is value


def test_force_path_style_rejects_other_words() -> None:
    with pytest.raises(BadRequest, match="s3_force_path_style"):
        Settings.load(environ={"SQLFLEET_S3_FORCE_PATH_STYLE": "maybe"})
