"""Helpers for backup tests that drive the real app: logical dumps, restores, moments."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

from tenants.rfc3339 import format_time
from tests.support.app import ADMIN, Client, InProcess, Reply


def query(client: Client, tenant: str, sql: str, params: Any = None, headers: dict[str, str] = ADMIN) -> Any:
    body: dict[str, Any] = {"sql": sql} if params is None else {"sql": sql, "params": params}
    r = client.post(f"/v1/tenants/{tenant}/query", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def values(app: InProcess, tenant: str, headers: dict[str, str] = ADMIN) -> list[Any]:
    """Column v of the tenant's table t, in insertion order."""
    return [r[0] for r in query(app.client, tenant, "SELECT v FROM t ORDER BY rowid", None, headers)["rows"]]


def write(app: InProcess, tenant: str, *vs: Any) -> float:
    """Insert each value into t(v) in its own commit; returns the moment right after the last
    (and lets the clock move on past it)."""
    for v in vs:
        query(app.client, tenant, "INSERT INTO t(v) VALUES (?)", [v])
    moment = time.time()
    time.sleep(0.01)
    return moment


def make(app: InProcess, tenant: str, *vs: Any) -> float:
    """A new tenant with a table t(v) holding `vs` (see `write`)."""
    app.create(tenant)
    query(app.client, tenant, "CREATE TABLE t(v)")
    return write(app, tenant, *vs)


def _digest(value: Any) -> Any:
    # big blobs are compared by digest: the dumps of every step stay small
    if isinstance(value, dict) and "base64" in value:
        return "sha256:" + hashlib.sha256(value["base64"].encode()).hexdigest()
    return value


def dump(client: Client, tenant: str, headers: dict[str, str] = ADMIN) -> dict[str, Any]:
    """The tenant's logical content: its schema and every table's rows in order of its first column."""
    schema = query(
        client, tenant, "SELECT type, name, sql FROM sqlite_schema ORDER BY type, name", None, headers
    )
    content: dict[str, Any] = {"schema": schema["rows"]}
    for kind, name, _ in schema["rows"]:
        if kind == "table" and not name.startswith("sqlite_"):
            rows = query(client, tenant, f'SELECT * FROM "{name}" ORDER BY 1', None, headers)["rows"]
            content[name] = [[_digest(v) for v in row] for row in rows]
    return content


def restore(client: Client, tenant: str, moment: str | float, as_tenant: str | None = None) -> Reply:
    stamp = moment if isinstance(moment, str) else format_time(moment)
    return client.post(
        f"/v1/admin/tenants/{tenant}/restore", json={"timestamp": stamp, "as": as_tenant}, headers=ADMIN
    )


def restore_ok(
    client: Client, tenant: str, moment: str | float, as_tenant: str | None = None
) -> dict[str, Any]:
    r = restore(client, tenant, moment, as_tenant)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def integrity_check_cli(path: Path) -> str:
    """PRAGMA integrity_check by the real sqlite3 command-line shell (Debian's package)."""
    done = subprocess.run(
        ["/usr/bin/sqlite3", str(path), "PRAGMA integrity_check;"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return (done.stdout + done.stderr).strip()


def metric(client: Client, name: str) -> float:
    """The value of an unlabelled metric in /metrics (0 if absent)."""
    text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
