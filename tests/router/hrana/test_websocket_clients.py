"""The official clients over `ws://` against a real `sqlfleet serve`, at both URL forms:
`ws://host:port` (tenant from the token) and `ws://host:port/v1/tenants/{tenant}`.

- `@libsql/client` 0.18 (npm) speaks hrana2 over WebSocket: node/scenarios.mjs runs over ws:// in
  test_node_client.py, beside http://; here node/websocket.mjs's `client` (more SQL texts than
  its cache holds, many requests at once, the "deferred" modes).
- `@libsql/hrana-client` at version 3 in both encodings, `hrana3` and `hrana3-protobuf`
  (node/websocket.mjs: cursors, get_autocommit, describe, stored SQL, is_autocommit).
- The Python `libsql-client` speaks hrana2 over WebSocket, the only way it does transactions.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libsql_client  # type: ignore[import-untyped]  # ships no type hints
import pytest

from tests.support.hrana import Served, url_of

FORMS = ("ws-path", "ws-root")
V3 = ("hrana3", "hrana3-protobuf", "client")
BIG = (1 << 63) - 1
VALUES = (BIG, -(1 << 63), 2.5, "héllo ✓", b"\x00\x01\xfe\xff", None)


@pytest.fixture(scope="module")
def observed(served: Served, node_client: Path) -> dict[str, dict[str, Any]]:
    """Each of websocket.mjs's scenarios (one after the other), by its name."""
    results = {}
    for scenario in V3:
        tenant = served.tenant(f"ws-{scenario}")
        form = "ws-root" if scenario == "client" else "ws-path"
        done = subprocess.run(
            ["node", "websocket.mjs", scenario, url_of(served, tenant, form), tenant.rw],
            cwd=node_client,
            capture_output=True,
            timeout=120,
        )
        lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")]
        assert lines, f"{scenario}: {done.stdout.decode()}\n{done.stderr.decode()}"
        results[scenario] = lines[0]
    return results


def _ok(observed: dict[str, dict[str, Any]], scenario: str) -> dict[str, Any]:
    result = observed[scenario]
    assert result["ok"], result["error"]
    return result


@pytest.mark.parametrize("subprotocol", ["hrana3", "hrana3-protobuf"])
def test_hrana_client_v3_cursors_describe_stored_sql_autocommit(observed: Any, subprotocol: str) -> None:
    result = _ok(observed, subprotocol)
    assert result["step_error_code"] == result["error_code"] == "SQLITE_ERROR"


def test_libsql_client_sql_cache_concurrency_and_deferred_modes(observed: Any) -> None:
    assert _ok(observed, "client")["error_code"] == "SQLITE_ERROR"


# -- the Python client ---------------------------------------------------------------------------


@pytest.fixture(params=FORMS)
def legacy(request: pytest.FixtureRequest, served: Served) -> Iterator[Any]:
    tenant = served.tenant(f"ws-py-{request.param}-{request.node.name.split('[')[0][-20:].replace('_', '-')}")
    with libsql_client.create_client_sync(
        url_of(served, tenant, request.param), auth_token=tenant.rw
    ) as client:
        yield client


def test_python_client_round_trips_values(legacy: Any) -> None:
    assert tuple(legacy.execute("SELECT ?, ?, ?, ?, ?, ?", list(VALUES)).rows[0]) == VALUES
    assert tuple(legacy.execute("SELECT :a", {"a": BIG}).rows[0]) == (BIG,)


def test_python_client_transactions_commit_and_roll_back(legacy: Any) -> None:
    legacy.execute("CREATE TABLE t (x INTEGER)")
    with legacy.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        assert tx.execute("SELECT count(*) FROM t").rows[0][0] == 1
        tx.rollback()
    assert legacy.execute("SELECT count(*) FROM t").rows[0][0] == 0
    with legacy.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (2)")
        tx.execute("INSERT INTO t VALUES (3)")
        tx.commit()
    assert [tuple(r) for r in legacy.execute("SELECT x FROM t ORDER BY x").rows] == [(2,), (3,)]


def test_python_client_batch_is_atomic(legacy: Any) -> None:
    legacy.execute("CREATE TABLE b (x INTEGER PRIMARY KEY)")
    legacy.batch(["INSERT INTO b VALUES (1)"])
    with pytest.raises(libsql_client.LibsqlError) as failed:
        legacy.batch(["INSERT INTO b VALUES (2)", "INSERT INTO b VALUES (1)"])
    assert failed.value.code == "SQLITE_CONSTRAINT"
    assert [tuple(r) for r in legacy.execute("SELECT x FROM b").rows] == [(1,)]


def test_python_client_read_only_token_is_refused_writes(served: Served) -> None:
    tenant = served.tenant("ws-py-readonly")
    with (
        libsql_client.create_client_sync(url_of(served, tenant, "ws-root"), auth_token=tenant.ro) as client,
        pytest.raises(libsql_client.LibsqlError) as refused,
    ):
        assert client.execute("SELECT 1").rows[0][0] == 1
        client.execute("CREATE TABLE refused (x)")
    assert refused.value.code == "SQLITE_READONLY"
