"""@libsql/hrana-client (npm) at protocol version 3 against a real server, over HTTP: it probes
`GET v3-protobuf` and then speaks protobuf to `v3-protobuf/pipeline` and `v3-protobuf/cursor`
(node/protobuf.mjs asserts the results; this checks what it observed on the wire)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.hrana import Served


def _run(node_client: Path, url: str, token: str) -> dict[str, Any]:
    proc = subprocess.run(
        ["node", "protobuf.mjs", url, token], cwd=node_client, capture_output=True, timeout=90, check=False
    )
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    assert lines, proc.stderr.decode()
    observed: dict[str, Any] = lines[-1]
    assert observed["ok"], observed.get("error")
    return observed


@pytest.mark.parametrize("form", ["path", "root"])
def test_hrana_client_speaks_protobuf_over_http(served: Served, node_client: Path, form: str) -> None:
    tenant = served.tenant(f"pb-{form}")
    base = f"/v1/tenants/{tenant.id}" if form == "path" else ""
    observed = _run(node_client, f"{served.server.url}{base}/", tenant.rw)
    assert observed["error_code"] == "SQLITE_ERROR"
    requests = observed["requests"]
    probe = requests[0]
    assert (probe["method"], probe["path"], probe["status"]) == ("GET", f"{base}/v3-protobuf", 200)
    posts = requests[1:]
    paths = {r["path"] for r in posts}
    assert paths == {f"{base}/v3-protobuf/pipeline", f"{base}/v3-protobuf/cursor"}
    for r in posts:
        assert r["status"] == 200, r
        assert r["request_type"] == "application/x-protobuf", r
        cursor = r["path"].endswith("/cursor")
        assert r["response_type"] == ("application/octet-stream" if cursor else "application/x-protobuf"), r
