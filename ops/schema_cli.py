"""`sqlfleet group ...` and `sqlfleet migrate GROUP`: schema groups, migrations and rollouts on a
running server (the admin API under /v1/admin/groups).

Alembic revisions are rendered here, on the operator's machine, against the group's newest
schema (GET .../schema), and uploaded as SQL: the server never runs uploaded Python.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ops.admin_cli import _admin_command
from ops.client import AdminClient, ClientError
from schema_sync.alembic_render import render as render_alembic

POLL_SECONDS = 0.1


def _api(client: AdminClient, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One admin API call through the admin client's transport (its errors, its timeouts)."""
    return client._json(method, path, **kwargs)


def _group_path(name: str, suffix: str = "") -> str:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ClientError(f"invalid group name {name!r}")
    return f"/v1/admin/groups/{name}{suffix}"


def _console() -> Console:
    # piped output would be cut to 80 columns; a table is only as wide as its cells anyway
    return Console(width=None if sys.stdout.isatty() else 1000, highlight=False, soft_wrap=False)


def _print(body: object, as_json: bool, table: Table | str | None = None) -> None:
    if as_json or table is None:
        click.echo(json.dumps(body, indent=2))
    else:
        _console().print(table)


def _group_table(groups: list[dict[str, Any]]) -> Table:
    table = Table("group", "migrations", "released", "pending")
    for g in groups:
        table.add_row(Text(g["name"]), str(len(g["migrations"])), str(g["released"]), str(g["pending"]))
    return table


def _migration_table(group: dict[str, Any]) -> Table:
    table = Table("migration", "kind", "released", "checksum", title=f"group {group['name']}")
    for m in group["migrations"]:
        table.add_row(Text(m["name"]), m["kind"], "yes" if m["released"] else "no", m["checksum"][:12])
    return table


@click.group()
def group() -> None:
    """Schema groups: a template database and ordered migrations, rolled out to every tenant."""


@group.command("create")
@click.argument("name")
@click.option("--schema", "schema_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="SQL script that builds the template.")  # fmt: skip
@click.option("--template", "template_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A SQLite database file to use as the template.")  # fmt: skip
@_admin_command
def create(
    client: AdminClient, as_json: bool, name: str, schema_file: Path | None, template_file: Path | None
) -> None:
    """Create group NAME from a schema script or a template database (or empty)."""
    if schema_file and template_file:
        raise ClientError("give --schema or --template, not both")
    body: dict[str, Any] = {"name": name}
    if schema_file:
        body["schema"] = schema_file.read_text()
    if template_file:
        body["template"] = base64.b64encode(template_file.read_bytes()).decode()
    created = _api(client, "POST", "/v1/admin/groups", json=body)
    _print(created, as_json, _migration_table(created))


@group.command("list")
@_admin_command
def list_(client: AdminClient, as_json: bool) -> None:
    """List schema groups."""
    body = _api(client, "GET", "/v1/admin/groups")
    _print(body, as_json, _group_table(body["groups"]) if body["groups"] else "no groups")


@group.command("show")
@click.argument("name")
@_admin_command
def show(client: AdminClient, as_json: bool, name: str) -> None:
    """Show group NAME's migrations and how far they are released."""
    body = _api(client, "GET", _group_path(name))
    _print(body, as_json, _migration_table(body))


@group.command("schema")
@click.argument("name")
@click.option("--released", is_flag=True, help="The template's schema, not the newest registered one.")
@_admin_command
def schema(client: AdminClient, as_json: bool, name: str, released: bool) -> None:
    """Print group NAME's schema as SQL."""
    body = _api(client, "GET", _group_path(name, "/schema"), params={"released": int(released)})
    click.echo(json.dumps(body, indent=2) if as_json else body["sql"], nl=False)


@group.command("add-migration")
@click.argument("name")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@_admin_command
def add_migration(client: AdminClient, as_json: bool, name: str, files: tuple[Path, ...]) -> None:
    """Register SQL migration FILES (0001_slug.sql, or slug.sql to number them next) in order."""
    added = []
    for path in files:
        body = {"name": path.name.removesuffix(".sql"), "sql": path.read_text()}
        added.append(_api(client, "POST", _group_path(name, "/migrations"), json=body))
    _print({"added": added}, as_json, _added_table(added))


@group.command("add-alembic")
@click.argument("name")
@click.argument("script_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_admin_command
def add_alembic(client: AdminClient, as_json: bool, name: str, script_dir: Path) -> None:
    """Render the alembic revisions in SCRIPT_DIR the group lacks to SQL and register them."""
    current = _api(client, "GET", _group_path(name))
    known = {
        m["alembic_revision"]: m["alembic_source_sha256"]
        for m in current["migrations"]
        if "alembic_revision" in m
    }
    base = _api(client, "GET", _group_path(name, "/schema"))["sql"]
    added = []
    for revision in render_alembic(script_dir, base, known):
        body = {"name": revision.slug, "sql": revision.sql}
        added.append(_api(client, "POST", _group_path(name, "/migrations"), json=body))
    _print({"added": added}, as_json, _added_table(added) if added else "nothing new")


@group.command("sync")
@click.argument("name")
@click.argument("schema_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--slug", default="sync", show_default=True, help="Name of the step.")
@click.option("--allow-drop", is_flag=True, help="Drop tables, columns and other objects the schema lacks.")
@_admin_command
def sync(
    client: AdminClient, as_json: bool, name: str, schema_file: Path, slug: str, allow_drop: bool
) -> None:
    """Register a declarative step: every tenant's schema becomes SCHEMA_FILE's."""
    body = {"name": slug, "sql": schema_file.read_text(), "kind": "sync", "allow_drop": allow_drop}
    added = [_api(client, "POST", _group_path(name, "/migrations"), json=body)]
    _print({"added": added}, as_json, _added_table(added))


@group.command("plan")
@click.argument("name")
@click.argument("schema_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default=None, help="Plan for this tenant instead of the group's newest schema.")
@click.option("--allow-drop", is_flag=True, help="Plan drops of what the schema lacks.")
@_admin_command
def plan(
    client: AdminClient, as_json: bool, name: str, schema_file: Path, tenant: str | None, allow_drop: bool
) -> None:
    """Print the SQL that would turn the group's schema (or a tenant's) into SCHEMA_FILE's."""
    body: dict[str, Any] = {"schema": schema_file.read_text(), "allow_drop": allow_drop}
    if tenant:
        body["tenant"] = tenant
    result = _api(client, "POST", _group_path(name, "/plan"), json=body)
    click.echo(json.dumps(result, indent=2) if as_json else result["sql"], nl=False)


@group.command("status")
@click.argument("name")
@click.argument("tenant")
@_admin_command
def status(client: AdminClient, as_json: bool, name: str, tenant: str) -> None:
    """Show which of group NAME's migrations TENANT has applied."""
    body = _api(client, "GET", _group_path(name, f"/tenants/{tenant}"))
    table = Table("migration", "applied at", title=f"tenant {tenant} (group {name})")
    for a in body["applied"]:
        table.add_row(Text(a["name"]), a["applied_at"])
    for pending in body["pending"] or []:
        table.add_row(Text(pending), "pending")
    _print(body, as_json, table if not body["error"] else f"[red]{body['error']}")


@group.command("rollouts")
@click.argument("name")
@_admin_command
def rollouts(client: AdminClient, as_json: bool, name: str) -> None:
    """List group NAME's rollouts, newest first."""
    body = _api(client, "GET", _group_path(name, "/rollouts"))
    table = Table("rollout", "state", "migrated", "current", "failed", "remaining", "started")
    for r in body["rollouts"]:
        cells = (
            r["id"],
            r["state"],
            r["migrated"],
            r["current"],
            r["failed"],
            r["remaining"],
            r["started_at"],
        )
        table.add_row(*(Text(str(c)) for c in cells))
    _print(body, as_json, table)


def _added_table(added: list[dict[str, Any]]) -> Table:
    table = Table("registered", "kind", "checksum")
    for m in added:
        table.add_row(Text(m["name"]), m["kind"], m["checksum"][:12])
    return table


@click.command()
@click.argument("name", metavar="GROUP")
@click.option("--dry-run", is_flag=True, help="Try everything, change nothing, report what would fail.")
@click.option(
    "--canary", type=click.IntRange(1), default=None, metavar="N", help="Migrate N tenants, then stop."
)
@click.option(
    "--max-failures", type=click.IntRange(1), default=None, metavar="K", help="Stop after K failures."
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=None, help="Tenants migrated at once.")
@click.option("--detach", is_flag=True, help="Start the rollout and return; watch with `group rollouts`.")
@_admin_command
def migrate(
    client: AdminClient,
    as_json: bool,
    name: str,
    dry_run: bool,
    canary: int | None,
    max_failures: int | None,
    concurrency: int | None,
    detach: bool,
) -> None:
    """Roll GROUP's migrations out: template first, then every tenant, with a live progress bar.
    Ctrl-C stops the rollout (tenants done stay done; a rerun resumes). Exit status 1 when a
    tenant failed or the rollout did not finish."""
    options = {"dry_run": dry_run, "canary": canary, "max_failures": max_failures, "concurrency": concurrency}
    body = {k: v for k, v in options.items() if v not in (None, False)}
    started = _api(client, "POST", _group_path(name, "/rollouts"), json=body)
    if detach:
        _print(started, as_json, f"rollout {started['id']} started")
        return
    final = _watch(client, name, started["id"], quiet=as_json)
    if as_json:
        _print(final, True)
    else:
        _summary(final)
    canary_done = final["state"] == "stopped" and str(final.get("reason", "")).startswith("canary")
    if final["failed"] or (final["state"] != "completed" and not canary_done):
        raise ClientError(
            f"rollout {final['id']} {final['state']}: {final['failed']} failed"
            + (f" ({final['reason']})" if final.get("reason") else "")
        )


def _watch(client: AdminClient, name: str, rollout_id: str, quiet: bool) -> dict[str, Any]:
    path = _group_path(name, f"/rollouts/{rollout_id}")
    stats = TextColumn("failed {task.fields[failed]}  {task.fields[rate]:,.0f}/s")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        stats,
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task(f"migrate {name}", total=None, failed=0, rate=0.0)
        try:
            while True:
                snap = _api(client, "GET", path)
                progress.update(task, total=snap["total"] or None, completed=snap["done"] + snap["failed"],
                                failed=snap["failed"], rate=snap["rate_per_s"])  # fmt: skip
                if snap["state"] != "running":
                    return snap
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            _api(client, "POST", path + "/stop")
            while (snap := _api(client, "GET", path))["state"] == "running":
                time.sleep(POLL_SECONDS)
            return snap


def _summary(snap: dict[str, Any]) -> None:
    console = _console()
    table = Table("rollout", "state", "migrated", "current", "failed", "remaining", "rate", "elapsed")
    counts = (str(snap[k]) for k in ("migrated", "current", "failed", "remaining"))
    table.add_row(
        snap["id"], snap["state"], *counts, f"{snap['rate_per_s']:,.0f}/s", f"{snap['elapsed_s']:.1f}s"
    )
    console.print(table)
    if snap.get("reason"):
        console.print(f"reason: {snap['reason']}")
    if snap["template"].get("error"):
        console.print(f"[red]template: {snap['template']['error']}")
    for failure in snap["failures"][:20]:
        console.print(Text(f"failed {failure['tenant']}: {failure['error']}"))
    if snap["failed"] > 20:
        console.print(f"... and {snap['failed'] - 20} more (--json for all kept)")
    for plan in snap.get("plans", [])[:3]:
        console.print(Text(f"-- plan for {plan['tenants']} tenant(s):\n{plan['sql']}"))
