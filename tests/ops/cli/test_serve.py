"""`sqlfleet serve`'s flags: passed on as typed, parsed and checked once, by Settings."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import httpx
import pytest

from ops import process
from ops.settings import Settings
from tenants.errors import BadRequest
from tests.support.cli import cli, ok
from tests.support.server import run_command
from tests.support.waiting import wait_until


def _serve(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str]:
    result = cli(None, "serve", *args, env={"SQLFLEET_POOL_CAPACITY": None, **(env or {})})
    return result.exit_code, result.stderr


def test_a_bad_flag_is_refused_as_settings_refuse_its_variable() -> None:
    with pytest.raises(BadRequest) as refused:
        Settings.load({"SQLFLEET_POOL_CAPACITY": "many"})
    expected = refused.value.message
    code, err = _serve("--pool-capacity", "many")
    assert code == 2 and f"Error: {expected}" in err, err
    assert "setting pool_capacity: cannot parse 'many'" in err
    code, err = _serve(env={"SQLFLEET_POOL_CAPACITY": "many"})
    assert code == 2 and f"Error: {expected}" in err, err


def test_flags_are_checked_like_variables() -> None:
    for flag, value, message in [
        ("--pool-capacity", "0", "pool_capacity must be at least 1"),
        ("--statement-timeout", "-1", "statement_timeout must be positive"),
        ("--s3-force-path-style", "maybe", "setting s3_force_path_style: cannot parse 'maybe'"),
        ("--max-unshipped-age", "abc", "cannot parse 'abc': expected a number of seconds"),
        ("--ack-window", "inf", "ack_window must be a finite number of seconds"),
        ("--ack-window", "100", "ack_window must be at most 1 s"),
    ]:
        code, err = _serve(flag, value)
        assert code == 2 and message in err, (flag, err)


def test_a_bad_cluster_setting_is_a_usage_error() -> None:
    code, err = _serve("--cluster-etcd", "http://127.0.0.1:1", "--node-id", "BAD/ID")
    assert code == 2 and "node_id must be" in err and "Try '" in err, err


def test_help_names_each_flags_kind() -> None:
    shown = ok(cli(None, "serve", "--help"))
    for kind in ("--pool-capacity INTEGER", "--statement-timeout FLOAT", "--data-dir TEXT"):
        assert kind in shown


def test_help_shows_each_settings_default_as_settings_has_it() -> None:
    shown = " ".join(ok(cli(None, "serve", "--help")).split())  # unwrapped
    defaults = Settings.load(environ={})
    for flag, value in [
        ("--pool-capacity", defaults.pool_capacity),
        ("--statement-timeout", defaults.statement_timeout),
        ("--port", defaults.port),
        ("--synchronous", defaults.synchronous),
        ("--lazy-catch-up", defaults.lazy_catch_up),
    ]:
        env = f"SQLFLEET_{flag[2:].replace('-', '_').upper()}"
        assert f"[env {env}; default: {value}]" in shown, flag
    assert "[env SQLFLEET_REPLICA_URL; default: unset]" in shown
    assert "default: $XDG_DATA_HOME/sqlfleet, else ~/.local/share/sqlfleet]" in shown


def _command(data: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ops", "serve", "--host", "127.0.0.1", "--data-dir", str(data), *args]


def _env() -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SQLFLEET_")}
    return {**environment, "SQLFLEET_ADMIN_KEY": "k" * 32}


def test_a_port_in_use_exits_2_with_one_line_before_anything_is_created(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        refused = run_command(_command(data, "--port", str(port)), cwd=tmp_path, timeout=60, env=_env())
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert lines == [
        f"Error: cannot listen on 127.0.0.1:{port}: the address is already in use (another process "
        "listens there): stop it, or choose another --port"
    ], lines
    assert not data.exists()  # nothing created, nothing locked


def test_port_0_serves_on_the_port_it_got_and_says_which(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = process.spawn(_command(tmp_path / "data", "--port", "0"), stdout=out, stderr=out, env=_env())
    try:

        def said() -> str:
            for line in log.read_text().splitlines():
                if "sqlfleet: serving" in line:
                    return line.split("export SQLFLEET_URL=")[1].rstrip(")")
            assert proc.poll() is None, log.read_text()
            return ""

        url = wait_until(said, timeout=60)
        assert not url.endswith(":0"), url
        r = httpx.get(f"{url}/readyz", timeout=30)  # queued in the backlog until uvicorn serves
        assert r.status_code == 200, r.text
    finally:
        assert process.stop(proc, 20) == 0, log.read_text()
