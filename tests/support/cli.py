"""The `sqlfleet` CLI run in-process (click's CliRunner) against a test server, and what a test
asserts of its result."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from click.testing import CliRunner, Result

from ops.cli import main
from ops.process import ServerProcess


def cli(server: ServerProcess | None, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """Run `sqlfleet ARGS` in-process, with SQLFLEET_* taken only from `server` and `env`."""
    environment: dict[str, str | None] = {
        "SQLFLEET_URL": server.url if server else None,
        "SQLFLEET_ADMIN_KEY": server.admin_key if server else None,
        "SQLFLEET_DATA_DIR": None,
        **(env or {}),
    }
    return CliRunner(env=environment).invoke(main, list(args))


def at(url: str, key: str) -> dict[str, str | None]:
    """The `env` of `cli` for a server that is not a ServerProcess (a stand-in, an address)."""
    return {"SQLFLEET_URL": url, "SQLFLEET_ADMIN_KEY": key}


def ok(result: Result) -> str:
    """The stdout of a command that succeeded."""
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def as_json(result: Result) -> Any:
    return json.loads(ok(result))


def fails(result: Result, *fragments: str, alone: bool = True) -> str:
    """The `Error: ...` line that ends a clean failure (exit 1, no escaped exception) and holds
    every fragment. With `alone` it is all the command printed; a command that reported
    progress or results before it failed is checked with `alone=False`."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    if alone:
        assert len(lines) == 1, result.stderr
        assert result.stdout == "", result.stdout
    return lines[-1]


def usage_error(result: Result, fragment: str) -> None:
    """click's refusal of a command line (exit 2), naming `fragment`."""
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr, result.stderr
