"""`sqlfleet group ...` and `sqlfleet migrate GROUP`: schema groups, migrations and rollouts on a
running server (the admin API under /v1/admin/groups).

Alembic revisions are rendered here, on the operator's machine, against the group's newest
schema (GET .../schema), and uploaded as SQL: the server never runs uploaded Python.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ops.api_types import GroupInfo, Migration, Rollout
from ops.cli.common import admin_command, console, output, print_json
from ops.client import AdminClient
from ops.errors import ClientError
from schema_sync.alembic_render import render as render_alembic

POLL_SECONDS = 0.1


def _group_table(groups: Sequence[GroupInfo]) -> Table:
    table = Table("group", "migrations", "released", "pending")
    for g in groups:
        table.add_row(Text(g["name"]), str(len(g["migrations"])), str(g["released"]), str(g["pending"]))
    return table


def _migration_table(group: GroupInfo) -> Table:
    table = Table("migration", "kind", "released", "checksum", title=f"group {group['name']}")
    for m in group["migrations"]:
        released = "yes" if m.get("released") else "no"
        table.add_row(Text(m["name"]), m["kind"], released, m["checksum"][:12])
    return table


def _added_table(added: Sequence[Migration]) -> Table:
    table = Table("registered", "kind", "checksum")
    for m in added:
        table.add_row(Text(m["name"]), m["kind"], m["checksum"][:12])
    return table


@click.group()
def group() -> None:
    """Schema groups: a template database and ordered migrations, rolled out to every tenant."""


@group.command("create")
@click.argument("name")
@click.option(
    "--schema",
    "schema_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SQL script that builds the template.",
)
@click.option(
    "--template",
    "template_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A SQLite database file to use as the template.",
)
@admin_command
def create(
    client: AdminClient, as_json: bool, name: str, schema_file: Path | None, template_file: Path | None
) -> None:
    """Create group NAME from a schema script or a template database (or empty)."""
    if schema_file and template_file:
        raise ClientError("give --schema or --template, not both")
    schema = schema_file.read_text() if schema_file else None
    template = template_file.read_bytes() if template_file else None
    created = client.create_group(name, schema, template)
    output(created, as_json, _migration_table(created))


@group.command("list")
@admin_command
def list_(client: AdminClient, as_json: bool) -> None:
    """List schema groups."""
    groups = client.list_groups()
    output({"groups": groups}, as_json, _group_table(groups) if groups else "no groups")


@group.command("show")
@click.argument("name")
@admin_command
def show(client: AdminClient, as_json: bool, name: str) -> None:
    """Show group NAME's migrations and how far they are released."""
    body = client.group(name)
    output(body, as_json, _migration_table(body))


@group.command("schema")
@click.argument("name")
@click.option("--released", is_flag=True, help="The template's schema, not the newest registered one.")
@admin_command
def schema(client: AdminClient, as_json: bool, name: str, released: bool) -> None:
    """Print group NAME's schema as SQL."""
    sql = client.group_schema(name, released)
    click.echo(json.dumps({"group": name, "sql": sql}, indent=2) if as_json else sql, nl=False)


@group.command("add-migration")
@click.argument("name")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@admin_command
def add_migration(client: AdminClient, as_json: bool, name: str, files: tuple[Path, ...]) -> None:
    """Register SQL migration FILES (0001_slug.sql, or slug.sql to number them next) in order."""
    added = [client.add_migration(name, path.name.removesuffix(".sql"), path.read_text()) for path in files]
    output({"added": added}, as_json, _added_table(added))


@group.command("add-alembic")
@click.argument("name")
@click.argument("script_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@admin_command
def add_alembic(client: AdminClient, as_json: bool, name: str, script_dir: Path) -> None:
    """Render the alembic revisions in SCRIPT_DIR the group lacks to SQL and register them."""
    known = {
        m["alembic_revision"]: m["alembic_source_sha256"]
        for m in client.group(name)["migrations"]
        if "alembic_revision" in m and "alembic_source_sha256" in m
    }
    base = client.group_schema(name)
    added = [
        client.add_migration(name, revision.slug, revision.sql)
        for revision in render_alembic(script_dir, base, known)
    ]
    output({"added": added}, as_json, _added_table(added) if added else "nothing new")


@group.command("sync")
@click.argument("name")
@click.argument("schema_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--slug", default="sync", show_default=True, help="Name of the step.")
@click.option("--allow-drop", is_flag=True, help="Drop tables, columns and other objects the schema lacks.")
@admin_command
def sync(
    client: AdminClient, as_json: bool, name: str, schema_file: Path, slug: str, allow_drop: bool
) -> None:
    """Register a declarative step: every tenant's schema becomes SCHEMA_FILE's."""
    added = [client.add_sync(name, slug, schema_file.read_text(), allow_drop)]
    output({"added": added}, as_json, _added_table(added))


@group.command("plan")
@click.argument("name")
@click.argument("schema_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default=None, help="Plan for this tenant instead of the group's newest schema.")
@click.option("--allow-drop", is_flag=True, help="Plan drops of what the schema lacks.")
@admin_command
def plan(
    client: AdminClient, as_json: bool, name: str, schema_file: Path, tenant: str | None, allow_drop: bool
) -> None:
    """Print the SQL that would turn the group's schema (or a tenant's) into SCHEMA_FILE's."""
    result = client.plan(name, schema_file.read_text(), allow_drop, tenant)
    click.echo(json.dumps(result, indent=2) if as_json else result["sql"], nl=False)


@group.command("status")
@click.argument("name")
@click.argument("tenant")
@admin_command
def status(client: AdminClient, as_json: bool, name: str, tenant: str) -> None:
    """Show which of group NAME's migrations TENANT has applied."""
    body = client.tenant_migrations(name, tenant)
    table = Table("migration", "applied at", title=f"tenant {tenant} (group {name})")
    for a in body["applied"]:
        table.add_row(Text(a["name"]), a["applied_at"])
    for pending in body["pending"] or []:
        table.add_row(Text(pending), "pending")
    output(body, as_json, table if not body["error"] else f"[red]{body['error']}")


@group.command("rollouts")
@click.argument("name")
@admin_command
def rollouts(client: AdminClient, as_json: bool, name: str) -> None:
    """List group NAME's rollouts, newest first."""
    history = client.rollouts(name)
    table = Table("rollout", "state", "migrated", "current", "failed", "remaining", "started")
    for r in history:
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
    output({"rollouts": history}, as_json, table)


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
@admin_command
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
    started = client.start_rollout(name, dry_run, canary, max_failures, concurrency)
    if detach:
        output(started, as_json, f"rollout {started['id']} started")
        return
    final = _watch(client, name, started["id"], quiet=as_json)
    if as_json:
        print_json(final)
    else:
        _summary(final)
    canary_done = final["state"] == "stopped" and str(final.get("reason", "")).startswith("canary")
    if final["failed"] or (final["state"] != "completed" and not canary_done):
        raise ClientError(
            f"rollout {final['id']} {final['state']}: {final['failed']} failed"
            + (f" ({final['reason']})" if final.get("reason") else "")
        )


def _watch(client: AdminClient, name: str, rollout_id: str, quiet: bool) -> Rollout:
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
                snap = client.rollout(name, rollout_id)
                progress.update(
                    task,
                    total=snap["total"] or None,
                    completed=snap["done"] + snap["failed"],
                    failed=snap["failed"],
                    rate=snap["rate_per_s"],
                )
                if snap["state"] != "running":
                    return snap
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            client.stop_rollout(name, rollout_id)
            while (snap := client.rollout(name, rollout_id))["state"] == "running":
                time.sleep(POLL_SECONDS)
            return snap


def _summary(snap: Rollout) -> None:
    out = console()
    table = Table("rollout", "state", "migrated", "current", "failed", "remaining", "rate", "elapsed")
    counts = (str(snap["migrated"]), str(snap["current"]), str(snap["failed"]), str(snap["remaining"]))
    table.add_row(
        snap["id"], snap["state"], *counts, f"{snap['rate_per_s']:,.0f}/s", f"{snap['elapsed_s']:.1f}s"
    )
    out.print(table)
    if snap.get("reason"):
        out.print(f"reason: {snap['reason']}")
    if snap["template"].get("error"):
        out.print(f"[red]template: {snap['template']['error']}")
    failures = snap.get("failures", [])
    for failure in failures[:20]:
        out.print(Text(f"failed {failure['tenant']}: {failure['error']}"))
    if snap["failed"] > 20:
        out.print(f"... and {snap['failed'] - 20} more (--json for all kept)")
    for step in snap.get("plans", [])[:3]:
        out.print(Text(f"-- plan for {step['tenants']} tenant(s):\n{step['sql']}"))
