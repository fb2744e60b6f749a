from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backups.local_replica import LocalReplica
from backups.replica import ReplicaClient
from tests.support.s3 import BUCKET, REGION, MotoServer, aws_env, unique_prefix


@pytest.fixture
def s3(moto_server: MotoServer) -> Iterator[MotoServer]:
    """The shared moto server, listening; whatever outage a test stages (stop, freeze, kill),
    the server is listening again afterwards."""
    moto_server.start()
    yield moto_server
    moto_server.start()


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Dummy AWS credentials in os.environ for this test only, for code that uses boto3's
    default credential chain."""
    env = aws_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(params=["local", "s3"])
def replica(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReplicaClient]:
    """Each backend in turn: a local directory, and S3 over HTTP (moto) under a fresh prefix."""
    client: ReplicaClient
    if request.param == "local":
        client = LocalReplica(tmp_path / "replica")
    else:
        server: MotoServer = request.getfixturevalue("s3")
        client = server.replica(unique_prefix())
    try:
        yield client
    finally:
        client.close()


# -- backups through the real app (test_pitr.py, test_backups_*.py) ------------------------------


@pytest.fixture(params=["local", "s3"])
def replica_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings overrides that point a server at each backend in turn: a local directory, and
    the moto S3 server under a fresh prefix (with dummy AWS credentials in the environment)."""
    if request.param == "local":
        return {"replica_url": str(tmp_path / "replica")}
    server: MotoServer = request.getfixturevalue("s3")
    request.getfixturevalue("aws_environment")
    return {
        "replica_url": f"s3://{BUCKET}/{unique_prefix('app')}",
        "s3_endpoint_url": server.url,
        "s3_region": REGION,
        "s3_force_path_style": True,
    }
