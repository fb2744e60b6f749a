"""A benchmark's result: a table of metrics against their targets on stdout, and JSON on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

Row = tuple[str, str, str, bool | None]  # label, value, target, met (None: no target)


def emit(result: dict[str, Any], rows: list[Row], json_out: Path) -> None:
    """Print the table and write `result` (with each target's verdict) as JSON."""
    result["targets"] = {
        label: {"target": target, "met": met} for label, _, target, met in rows if met is not None
    }
    table = Table(title=f"sqlfleet bench {result['bench']}")
    for column in ("metric", "value", "target", ""):
        table.add_column(column)
    for label, value, target, met in rows:
        table.add_row(label, value, target, "" if met is None else "[green]ok" if met else "[red]MISSED")
    Console().print(table)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"wrote {json_out}")


def json_out(opts: dict[str, Any], name: str) -> Path:
    """--json-out, or bench-NAME.json in the current directory."""
    path: Path | None = opts["json_out"]
    return path or Path.cwd() / f"bench-{name}.json"
