"""The official `@libsql/client` (npm) against a real server, over both transports at both URL
forms: `http://host:port/v1/tenants/{tenant}/`, `http://host:port` (tenant from the token),
`ws://host:port/v1/tenants/{tenant}` and `ws://host:port` (the client speaks hrana2 over WebSocket).

The assertions about values and results live in node/scenarios.mjs, next to the client calls;
these tests run it and check what it observed (error codes, timings)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.hrana import IDLE_TIMEOUT, Served, url_of

SCENARIOS = ("args", "values", "batch", "transaction", "multiple", "readonly", "expiry")
FORMS = ("http-path", "http-root", "ws-path", "ws-root")


@pytest.fixture(scope="module")
def observed(served: Served, node_client: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Every scenario, per URL form: the forms run concurrently, one node process each."""
    procs = {}
    for form in FORMS:
        tenant = served.tenant(f"node-{form}")
        args = [",".join(SCENARIOS), url_of(served, tenant, form), tenant.rw, tenant.ro, str(IDLE_TIMEOUT)]
        procs[form] = subprocess.Popen(
            ["node", "scenarios.mjs", *args], cwd=node_client, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for form, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        results[form] = {line["scenario"]: line for line in lines}
        assert set(results[form]) == set(SCENARIOS), f"{form}: {out.decode()}\n{err.decode()}"
    return results


def _ok(observed: dict[str, dict[str, dict[str, Any]]], form: str, scenario: str) -> dict[str, Any]:
    result = observed[form][scenario]
    assert result["ok"], result["error"]
    return result


@pytest.mark.parametrize("form", FORMS)
def test_execute_with_positional_and_named_args(observed: Any, form: str) -> None:
    assert _ok(observed, form, "args")["missing_named_arg"] == "ARGS_INVALID"


@pytest.mark.parametrize("form", FORMS)
def test_every_value_type_round_trips(observed: Any, form: str) -> None:
    _ok(observed, form, "values")  # 64-bit ints as bigint, floats, text, blobs, null, infinities


@pytest.mark.parametrize("form", FORMS)
def test_batch_write_is_atomic_and_read_refuses_writes(observed: Any, form: str) -> None:
    result = _ok(observed, form, "batch")
    assert (result["failed_code"], result["failed_index"]) == ("SQLITE_CONSTRAINT", 1)
    assert result["read_write_code"] == "SQLITE_READONLY"


@pytest.mark.parametrize("form", FORMS)
def test_interactive_transaction_commits_and_rolls_back(observed: Any, form: str) -> None:
    assert _ok(observed, form, "transaction")["read_tx_write_code"] == "SQLITE_READONLY"


@pytest.mark.parametrize("form", FORMS)
def test_execute_multiple_runs_a_script(observed: Any, form: str) -> None:
    assert _ok(observed, form, "multiple")["failed_code"] == "SQLITE_ERROR"


@pytest.mark.parametrize("form", FORMS)
def test_read_only_token_is_refused_writes(observed: Any, form: str) -> None:
    result = _ok(observed, form, "readonly")
    assert result["code"] == result["batch_code"] == result["tx_code"] == "SQLITE_READONLY"


@pytest.mark.parametrize("form", FORMS)
def test_idle_stream_expires_and_is_reported(observed: Any, form: str) -> None:
    result = _ok(observed, form, "expiry")
    assert result["code"] == "STREAM_EXPIRED", result
    assert "rolled back" in result["message"]
    assert result["waited_ms"] < 1000  # the expired transaction no longer holds the tenant
