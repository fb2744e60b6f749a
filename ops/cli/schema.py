"""`sqlfleet group ...` and `sqlfleet migrate GROUP`: schema groups, migrations and rollouts on a
running server (the admin API under /v1/admin/groups).

Alembic revisions are rendered here, on the operator's machine, against the group's newest
schema (GET .../schema), and uploaded as SQL: the server never runs uploaded Python.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import click
from rich.console import Group as Stack
from rich.console import RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ops.api_types import GroupInfo, Migration, Rollout
from ops.cli.common import admin_command, console, output, print_json, progress, read_file, read_text
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


def _group_view(group: GroupInfo) -> Stack:
    """The group as an operator reads it: tables, head, migrations, what to do next."""
    name = group["name"]
    tables = group.get("tables")
    lines: list[RenderableType] = [Text(f"group {name}")]
    if tables is not None:
        lines.append(
            Text("  template tables: " + (", ".join(tables) if tables else "none (an empty database)"))
        )
    head = group.get("head")
    lines.append(
        Text(
            f"  released head: {head or 'none'} "
            f"({group['released']} of {len(group['migrations'])} migrations)"
        )
    )
    if group["migrations"]:
        lines.append(_migration_table(group))
    rollout = group.get("rollout")
    if rollout is not None and rollout["state"] in ("running", "stopped", "interrupted"):
        lines.append(_rollout_line(rollout))
        if rollout["state"] != "running":
            lines.append(Text(f"  nothing is released meanwhile: {_NEXT_STEPS.format(group=name)}"))
    elif group["pending"]:
        lines.append(Text(f"  {group['pending']} pending: roll them out with `sqlfleet migrate {name}`"))
    else:
        lines.append(
            Text(
                f"  add a migration: `sqlfleet group add-migration {name} FILE.sql` (or `group sync "
                f"{name} SCHEMA.sql`, `group add-alembic {name} DIR`), then `sqlfleet migrate {name}`"
            )
        )
    return Stack(*lines)


_NEXT_STEPS = (
    "`sqlfleet migrate {group} --resume` goes on (retrying the failed tenants), "
    "`sqlfleet migrate {group} --abort` ends it"
)


def _kind(rollout: Rollout) -> str:
    """What kind of run it is: a dry run, a canary, or a rollout (resumed how often)."""
    options = rollout["options"]
    kind = "rollout"
    if options.get("dry_run"):
        kind = "dry run"
    elif options.get("canary"):
        kind = f"canary {options['canary']}"
    resumed = rollout.get("resumed", 0)
    return kind + (f", resumed {resumed}x" if resumed else "")


def _rollout_line(rollout: Rollout) -> Text:
    reason = f" ({rollout['reason']})" if rollout.get("reason") else ""
    return Text(f"  {_kind(rollout)} {rollout['id']} {rollout['state']}{reason}")


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
    schema = read_text(schema_file) if schema_file else None
    template = read_file(template_file) if template_file else None
    created = client.create_group(name, schema, template)
    output(created, as_json, _group_view(created))


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
    """Show group NAME: its template's tables, its migrations, how far they are released, and
    its newest rollout if it has not finished."""
    body = client.group(name)
    output(body, as_json, _group_view(body))


@group.command("schema")
@click.argument("name")
@click.option("--released", is_flag=True, help="The template's schema, not the newest registered one.")
@admin_command
def schema(client: AdminClient, as_json: bool, name: str, released: bool) -> None:
    """Print group NAME's schema as SQL."""
    sql = client.group_schema(name, released)
    if as_json:
        print_json({"group": name, "sql": sql})
    else:
        click.echo(sql, nl=False)


@group.command("add-migration")
@click.argument("name")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@admin_command
def add_migration(client: AdminClient, as_json: bool, name: str, files: tuple[Path, ...]) -> None:
    """Register SQL migration FILES (0001_slug.sql, or slug.sql to number them next) in order."""
    scripts = [(path.name.removesuffix(".sql"), read_text(path)) for path in files]  # all, first
    added = [client.add_migration(name, slug, sql) for slug, sql in scripts]
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
    added = [client.add_sync(name, slug, read_text(schema_file), allow_drop)]
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
    result = client.plan(name, read_text(schema_file), allow_drop, tenant)
    if as_json:
        print_json(result)
    else:
        click.echo(result["sql"], nl=False)


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
    shown: RenderableType = table
    if body["error"]:
        shown = Text(body["error"], style="red")
    elif not body["applied"] and not body["pending"]:
        shown = f"tenant {tenant} has no migrations to apply: group {name} has none yet"
    output(body, as_json, shown)


@group.command("rollouts")
@click.argument("name")
@admin_command
def rollouts(client: AdminClient, as_json: bool, name: str) -> None:
    """List group NAME's rollouts, newest first."""
    history = client.rollouts(name)
    table = Table("rollout", "kind", "state", "migrated", "current", "failed", "remaining", "started")
    for r in history:
        dry = r["options"].get("dry_run")
        cells = (
            r["id"],
            _kind(r),
            r["state"],
            f"{r['migrated']} (would)" if dry else r["migrated"],
            r["current"],
            f"{r['failed']} (would)" if dry else r["failed"],
            r["remaining"],
            r["started_at"],
        )
        table.add_row(*(Text(str(c)) for c in cells))
    output({"rollouts": history}, as_json, table if history else f"group {name} has no rollouts")


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
@click.option(
    "--resume",
    is_flag=True,
    help="Go on with GROUP's stopped or interrupted rollout (retrying its failed tenants), then release.",
)
@click.option("--abort", is_flag=True, help="End GROUP's unfinished rollout for good, releasing nothing.")
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
    resume: bool,
    abort: bool,
    detach: bool,
) -> None:
    """Roll GROUP's migrations out: tried on the template, run on every tenant (a live progress
    bar), then released: new tenants start at the new head and tenants still behind catch up
    before their next request.

    A rollout that stops (Ctrl-C, --max-failures) releases nothing, so the migration spreads no
    further: tenants it migrated keep it, the others stay as they are. Then --resume goes on
    (retrying the failed tenants, optionally with new --max-failures/--concurrency) and
    releases at the end; --abort ends it for good: the released head stays where it was, the
    tenants it migrated keep the migration (SQLite has no down migrations; they are listed)
    and count as current for the next rollout. A new rollout also supersedes a stopped one.
    Exit status 1 when a tenant failed or the rollout did not finish."""
    if resume and abort:
        raise ClientError("give --resume or --abort, not both")
    if (resume or abort) and (dry_run or canary is not None):
        raise ClientError("--dry-run and --canary start a new rollout: not with --resume or --abort")
    if abort and (max_failures is not None or concurrency is not None):
        raise ClientError("--abort takes no --max-failures or --concurrency")
    if abort:
        ended = client.abort_rollout(name, _unfinished(client, name)["id"])
        if as_json:
            print_json(ended)
        else:
            _summary(ended)
        return
    if resume:
        started = client.resume_rollout(name, _unfinished(client, name)["id"], max_failures, concurrency)
    else:
        started = client.start_rollout(name, dry_run, canary, max_failures, concurrency)
    if detach:
        output(started, as_json, f"{_kind(started)} {started['id']} started")
        return
    final = _watch(client, name, started, quiet=as_json)
    if as_json:
        print_json(final)
    else:
        _summary(final)
    canary_done = final["state"] == "stopped" and str(final.get("reason", "")).startswith("canary")
    if final["failed"] or (final["state"] != "completed" and not canary_done):
        raise ClientError(
            f"{_kind(final)} {final['id']} {final['state']}: {final['failed']} "
            + ("would fail" if final.get("dry_run") else "failed")
            + (f" ({final['reason']})" if final.get("reason") else "")
        )


def _unfinished(client: AdminClient, name: str) -> Rollout:
    """The group's newest rollout, if it can be resumed or aborted."""
    history = client.rollouts(name)
    if not history:
        raise ClientError(f"group {name} has no rollouts")
    newest = history[0]
    if newest["state"] not in ("running", "stopped", "interrupted"):
        raise ClientError(
            f"the newest rollout of group {name}, {newest['id']}, is {newest['state']}: "
            "nothing to resume or abort"
        )
    return newest


def _watch(client: AdminClient, name: str, started: Rollout, quiet: bool) -> Rollout:
    rollout_id = started["id"]
    stats = TextColumn("failed {task.fields[failed]}  {task.fields[rate]:,.0f}/s")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        stats,
        TimeRemainingColumn(),
    )
    with progress(*columns, quiet=quiet) as bar:
        label = "migrate" if _kind(started).startswith("rollout") else _kind(started)
        task = bar.add_task(f"{label} {name}", total=None, failed=0, rate=0.0)
        try:
            while True:
                snap = client.rollout(name, rollout_id)
                bar.update(
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
    dry = bool(snap.get("dry_run", snap["options"].get("dry_run")))
    if dry:
        table = Table(
            "dry run", "state", "would migrate", "current", "would fail", "remaining", "rate", "elapsed"
        )
    else:
        table = Table("rollout", "state", "migrated", "current", "failed", "remaining", "rate", "elapsed")
    counts = (str(snap["migrated"]), str(snap["current"]), str(snap["failed"]), str(snap["remaining"]))
    table.add_row(
        snap["id"], snap["state"], *counts, f"{snap['rate_per_s']:,.0f}/s", f"{snap['elapsed_s']:.1f}s"
    )
    out.print(table)
    nodes = snap.get("nodes")
    if nodes:  # a cluster's rollout: each node migrates the tenants it owns
        parts = Table("node", "state", "migrated", "current", "failed", "total")
        for node, part in nodes.items():
            numbers = [str(part.get(k, 0)) for k in ("migrated", "current", "failed", "total")]
            parts.add_row(node, str(part.get("state")), *numbers)
        out.print(parts)
    if snap.get("reason"):
        out.print(Text(f"reason: {snap['reason']}"))
    out.print(Text(_outcome(snap, dry)))
    if snap["template"].get("error"):
        out.print(Text(f"template: {snap['template']['error']}", style="red"))
    failures = snap.get("failures", [])
    for failure in failures[:20]:
        out.print(Text(f"{'would fail' if dry else 'failed'} {failure['tenant']}: {failure['error']}"))
    if snap["failed"] > 20:
        out.print(f"... and {snap['failed'] - 20} more (--json for all kept)")
    ahead = snap.get("migrated_tenants", [])
    if ahead and snap["state"] in ("stopped", "aborted", "interrupted"):
        shown = ", ".join(ahead[:20]) + (f" ... ({snap['migrated']} in all)" if snap["migrated"] > 20 else "")
        out.print(Text(f"migrated (kept, ahead of the released head): {shown}"))
    for step in snap.get("plans", [])[:3]:
        verb = "would run on" if dry else "ran on"
        out.print(Text(f"-- plan that {verb} {step['tenants']} tenant(s):\n{step['sql']}"))


def _outcome(snap: Rollout, dry: bool) -> str:
    """One line saying what the run did to the group, in words."""
    group, state = snap["group"], snap["state"]
    if dry:
        return (
            f"dry run: {snap['migrated']} would migrate, {snap['current']} already current, "
            f"{snap['failed']} would fail; nothing was changed"
        )
    if state == "completed":
        applied = snap["template"].get("applied") or []
        head = f"released up to {applied[-1]}" if applied else "nothing new to release"
        if snap["options"].get("canary"):
            return f"canary: nothing released; `sqlfleet migrate {group} --resume` runs the rest and releases"
        return f"{head}: new tenants start there, tenants still behind catch up before their next request"
    if state == "stopped" and str(snap.get("reason") or "").startswith("canary"):
        return f"canary: nothing released; `sqlfleet migrate {group} --resume` runs the rest and releases"
    if state in ("stopped", "interrupted", "running"):
        return "nothing released: " + _NEXT_STEPS.format(group=group)
    if state == "aborted":
        return (
            f"aborted: nothing released; the {snap['migrated']} tenant(s) it migrated keep the migration "
            "and count as current for the next rollout"
        )
    return "nothing released"
