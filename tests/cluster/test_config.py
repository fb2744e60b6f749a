from __future__ import annotations

import pytest

from cluster.config import ClusterConfig
from ops.settings import Settings
from tenants.errors import BadRequest


def test_no_cluster_without_etcd_endpoints() -> None:
    assert Settings.load(environ={}).cluster_config() is None
    assert Settings.load(environ={"SQLFLEET_CLUSTER_ETCD": " , "}).cluster_config() is None


def test_the_settings_make_the_cluster_config() -> None:
    env = {
        "SQLFLEET_CLUSTER_ETCD": "http://10.0.0.1:2379, http://10.0.0.2:2379",
        "SQLFLEET_NODE_ID": "node-1",
        "SQLFLEET_CLUSTER_LEASE_TTL": "6",
    }
    config = Settings.load(env, host="10.0.0.9", port=8081).cluster_config()
    assert config == ClusterConfig(
        endpoints=("http://10.0.0.1:2379", "http://10.0.0.2:2379"),
        name="sqlfleet",
        node_id="node-1",
        node_url="http://10.0.0.9:8081",
        lease_ttl=6,
        takeover_grace=30.0,
    )
    assert (config.keepalive_interval, config.call_timeout, config.margin) == (1.5, 1.0, 1.0)
    assert config.keys.owner(7) == b"/sqlfleet/sqlfleet/owner/00007"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SQLFLEET_NODE_ID": "a/b"}, "node_id"),
        ({"SQLFLEET_CLUSTER_NAME": ""}, "cluster_name"),
        ({"SQLFLEET_HOST": "0.0.0.0"}, "node_url"),
        ({"SQLFLEET_CLUSTER_LEASE_TTL": "0"}, "cluster_lease_ttl"),
    ],
)
def test_bad_cluster_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        Settings.load({"SQLFLEET_CLUSTER_ETCD": "127.0.0.1:2379", **env}).cluster_config()
