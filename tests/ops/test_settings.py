from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from ops.settings import Settings, settings_markdown
from tenants.errors import BadRequest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented() -> None:
    for f in fields(Settings):
        assert len(f.metadata.get("help", "")) > 10, f"setting {f.name} has no help text"


def test_readme_settings_table_is_current() -> None:
    text = README.read_text()
    block = re.search(r"<!-- settings -->\n(.*?)\n?<!-- /settings -->", text, re.S)
    assert block is not None
    assert block.group(1).strip() == settings_markdown(), (
        "regenerate with: python -c 'from ops.settings import settings_markdown; print(settings_markdown())'"
    )


def test_env_then_flags() -> None:
    env = {"SQLFLEET_POOL_CAPACITY": "7", "SQLFLEET_STATEMENT_TIMEOUT": "0.5", "SQLFLEET_ADMIN_KEY": "k"}
    s = Settings.load(env)
    assert (s.pool_capacity, s.statement_timeout, s.admin_key) == (7, 0.5, "k")
    assert Settings.load(env, pool_capacity=9).pool_capacity == 9


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SQLFLEET_POOL_CAPACITY", "many"),
        ("SQLFLEET_POOL_CAPACITY", "0"),
        ("SQLFLEET_SYNCHRONOUS", "OFF"),
        ("SQLFLEET_STATEMENT_TIMEOUT", "-1"),
        ("SQLFLEET_MAX_QUEUED_PER_TENANT", "0"),
        ("SQLFLEET_PREEMPT_WAIT", "0"),
        ("SQLFLEET_BODY_TIMEOUT", "-1"),
        ("SQLFLEET_MAX_TOKEN_TTL", "0"),
        ("SQLFLEET_BACKUP_CHECKPOINT_FRAMES", "0"),
        ("SQLFLEET_BACKUP_SNAPSHOT_BYTES", "-1"),
        ("SQLFLEET_BACKUP_SEGMENT_MAX_BYTES", "0"),
        ("SQLFLEET_BACKUP_MAX_BACKLOG_BYTES", "0"),
        ("SQLFLEET_CACHE_SIZE_KIB", "-5"),
        ("SQLFLEET_EXPORT_MAX_RESTARTS", "-1"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(name: str, value: str) -> None:
    with pytest.raises(BadRequest, match=name.removeprefix("SQLFLEET_").lower()):
        Settings.load({name: value})


@pytest.mark.parametrize("method", ["db_config", "pool_config", "router_config", "shipper_config"])
def test_sub_configs_have_no_defaults_of_their_own(method: str) -> None:
    """Defaults live once, in Settings: a sub-config that had its own would drift from them."""
    config = getattr(Settings.load(environ={}), method)()
    for f in fields(config):
        assert f.default is MISSING and f.default_factory is MISSING, f"{type(config).__name__}.{f.name}"


def test_sub_configs_carry_the_settings() -> None:
    env = {
        "SQLFLEET_MAX_QUEUED_PER_TENANT": "3",
        "SQLFLEET_BUSY_TIMEOUT": "0.5",
        "SQLFLEET_PREEMPT_WAIT": "0.25",
        "SQLFLEET_BODY_TIMEOUT": "9",
        "SQLFLEET_BACKUP_SNAPSHOT_BYTES": "1000",
        "SQLFLEET_BACKUP_RETENTION": "60",
    }
    settings = Settings.load(env)
    assert settings.router_config().max_queued_per_tenant == 3
    assert settings.pool_config().busy_timeout == 0.5
    assert settings.pool_config().preempt_wait == 0.25
    assert settings.router_config().body_timeout == 9.0
    shipper = settings.shipper_config()
    assert (shipper.snapshot_bytes, shipper.retention) == (1000, 60.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ack_window", "inf"),
        ("max_unshipped_age", "nan"),
        ("cluster_takeover_grace", "nan"),
        ("statement_timeout", "nan"),
        ("backup_retention", "1e400"),
        ("request_timeout", "-inf"),
    ],
)
def test_seconds_must_be_finite(name: str, value: str) -> None:
    with pytest.raises(BadRequest, match=f"{name} must be a finite number of seconds"):
        Settings.load({f"SQLFLEET_{name.upper()}": value})
    with pytest.raises(BadRequest, match=f"{name} must be a finite number of seconds"):
        Settings.load({}, **{name: float(value)})


def test_ack_window_is_bounded() -> None:
    for refused in (
        {"ack_window": "100"},
        {"ack_window": "1.5"},
        {"ack_window": "0.5", "request_timeout": "0.5"},
    ):
        with pytest.raises(BadRequest, match="ack_window must be at most 1 s and less than request_timeout"):
            Settings.load({}, **refused)
    assert Settings.load({}, ack_window="1").ack_window == 1.0


def test_a_bad_number_says_what_is_expected() -> None:
    with pytest.raises(BadRequest) as refused:
        Settings.load({"SQLFLEET_MAX_UNSHIPPED_AGE": "abc"})
    assert (
        refused.value.message == "setting max_unshipped_age: cannot parse 'abc': expected a number of seconds"
    )
    with pytest.raises(BadRequest) as refused:
        Settings.load({"SQLFLEET_PORT": "80a"})
    assert refused.value.message == "setting port: cannot parse '80a': expected a whole number"


def test_cluster_settings_are_checked_at_load() -> None:
    cluster = {"SQLFLEET_CLUSTER_ETCD": "http://127.0.0.1:2379"}
    with pytest.raises(BadRequest, match="node_id must be"):
        Settings.load(cluster, node_id="BAD/ID")
    with pytest.raises(BadRequest, match="node_url must be set"):
        Settings.load(cluster, node_id="n1", host="0.0.0.0")
    with pytest.raises(BadRequest, match="port must be from 0 to 65535"):
        Settings.load({}, port="70000")


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        ({"pool_capacity": "99999999999999999999"}, "pool_capacity must be at most 1048576"),
        ({"max_db_bytes": "99999999999999999999999"}, "max_db_bytes must be at most 1125899906842624"),
        ({"worker_threads": "100000"}, "worker_threads must be at most 1024"),
        ({"runnable_workers": "100000"}, "runnable_workers must be at most 1024"),
        ({"runnable_workers": "-1"}, "runnable_workers must not be negative (0: no limit)"),
        ({"max_sql_length": str(1 << 40)}, "max_sql_length must be at most 2147483647"),
        ({"cluster_lease_ttl": "99999999999"}, "cluster_lease_ttl must be at most 3600"),
        ({"backup_flush_interval": "1e-9"}, "backup_flush_interval must be at least 0.01 s"),
        ({"ack_window": "1e-300"}, "ack_window must be 0 or at least 0.001 s"),
        ({"statement_timeout": "1e-12"}, "statement_timeout must be at least 0.001 s"),
        # the setting that is wrong is named, not ack_window (which ack=local does not use)
        ({"request_timeout": "0.001"}, "request_timeout must be at least 0.1 s"),
    ],
)
def test_every_number_has_a_sane_bound(given: dict[str, str], refusal: str) -> None:
    with pytest.raises(BadRequest) as refused:
        Settings.load({f"SQLFLEET_{k.upper()}": v for k, v in given.items()})
    assert refused.value.message == refusal


def test_the_bounds_keep_zero_ack_window_and_the_largest_sane_values() -> None:
    s = Settings.load(
        {}, ack_window="0", worker_threads="1024", cluster_lease_ttl="3600", request_timeout="0.1"
    )
    assert (s.ack_window, s.worker_threads, s.cluster_lease_ttl, s.request_timeout) == (0.0, 1024, 3600, 0.1)
