"""`sqlfleet restore ...` and `sqlfleet backups ...`: point-in-time restore, restore points,
verification, catalog rebuild and rekey, as clients of a running server's admin API (issue 3).

Same options and error handling as every admin command (`ops.cli.common`: --url, --admin-key,
--timeout, --json; a failure is one `Error:` line on stderr and exit status 1). `backups verify`
exits 1 when the backup does not match the live database, and `restore --all` when any schema
group or tenant failed to restore.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ops.api_types import RestoreResult
from ops.cli.common import admin_command, console, output, print_json, progress, size
from ops.client import AdminClient
from ops.errors import ApiError, ClientError, ServerUnreachable
from tenants.errors import BadRequest
from tenants.rfc3339 import parse_time


class _Moment(click.ParamType[str]):
    """RFC 3339 with a time zone, or `latest`; passed to the server as typed."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if text == "latest":
            return text
        try:
            parse_time(text)
        except BadRequest as exc:
            self.fail(f"{exc.message}, or 'latest'", param, ctx)
        return text


MOMENT = _Moment()
# a tenant of `restore --all` whose slot has no serving owner right now (moving) is tried again
RESTORE_TRIES = 10
RESTORE_RETRY = 1.0  # seconds between tries


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"- {self.unit}/s" if speed is None else f"{speed:.1f} {self.unit}/s")


def _progress(unit: str = "tenants") -> Progress:
    return progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


def _restore_table(results: Sequence[RestoreResult], failed: dict[str, str]) -> Table:
    table = Table("tenant", "restored to", "generation", "commits applied")
    table.columns[3].justify = "right"
    for r in results:
        cells = (r["tenant"], r["restored_to"], r["generation"], str(r["commits_applied"]))
        table.add_row(*(Text(c) for c in cells))
    for tenant, error in failed.items():
        table.add_row(Text(tenant), Text(f"FAILED: {error}", style="red"), Text("-"), Text("-"))
    return table


def _failure(exc: ClientError) -> str:
    code = getattr(exc, "error_code", None)
    return f"{exc.message} ({code})" if code else exc.message


# -- restore -------------------------------------------------------------------------------------


@click.command("restore")
@click.argument("tenant_id", metavar="[TENANT]", required=False)
@click.option(
    "--to",
    "moment",
    type=MOMENT,
    default=None,
    help="The moment: RFC 3339 (e.g. 2026-11-24T10:00:00Z) or 'latest'. The tenant gets the "
    "state after its last commit at or before it. Required with TENANT; --all defaults to latest.",
)
@click.option(
    "--as",
    "as_tenant",
    metavar="NEW",
    default=None,
    help="Restore into a new tenant NEW (a fork) instead of in place.",
)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Restore every tenant the bucket holds and this server lacks (disaster recovery), after "
    "the schema groups it lacks; warns when old tenant tokens will not work on this server.",
)
@click.option(
    "--rebuild",
    is_flag=True,
    help="With --all: first rebuild the server's backup catalog from the bucket (a server rebuilds "
    "an empty catalog when it starts; this is for one that could not reach the bucket then). It "
    "reads every segment's index: a large bucket may need a longer --timeout.",
)
@admin_command
def restore(
    client: AdminClient,
    as_json: bool,
    tenant_id: str | None,
    moment: str | None,
    as_tenant: str | None,
    everything: bool,
    rebuild: bool,
) -> None:
    """Restore TENANT to a moment (in place, or --as a new tenant), or --all missing tenants.

    An in-place restore starts a new backup generation and keeps the old one restorable, so it
    can itself be undone by restoring to a moment before it.
    """
    if everything:
        if tenant_id is not None or as_tenant is not None:
            raise click.UsageError("--all restores every missing tenant as itself: no TENANT, no --as")
        _restore_all(client, as_json, moment or "latest", rebuild)
        return
    if tenant_id is None:
        raise click.UsageError("name a TENANT (with --to TIME), or pass --all")
    if moment is None:
        raise click.UsageError("--to TIME is required: an RFC 3339 time or 'latest'")
    if rebuild:
        raise click.UsageError("--rebuild goes with --all (or run `sqlfleet backups rebuild`)")
    try:
        result = client.restore(tenant_id, moment, as_tenant)
    except ServerUnreachable as exc:
        raise ServerUnreachable(
            f"{exc.message}; the restore may still be running on the server (a large one may need "
            "a longer --timeout)"
        ) from None
    output(result, as_json, _restore_table([result], {}))


def _restore_all(client: AdminClient, as_json: bool, moment: str, rebuild: bool) -> None:
    """Put back the fleet's schema groups the server lacks, then restore each tenant the
    server's catalog can restore and the data dir lacks, one by one, on to the end even when
    some fail; warns (stderr, and `warning` in JSON) when old tenant tokens will not work here;
    raises ClickException (exit 1) if any group or tenant failed."""
    err = Console(stderr=True)
    if rebuild:
        with err.status("rebuilding the backup catalog from the bucket"):
            segments = client.rebuild_backup_catalog()
        err.print(f"rebuilt the backup catalog from {segments} segments")
    fleet = client.restore_fleet()  # groups before tenants: a tenant comes back into its group
    groups = fleet["groups"]
    if groups["restored"] or groups["present"]:
        err.print(
            f"restored {len(groups['restored'])} schema groups"
            + (f" ({', '.join(groups['restored'])})" if groups["restored"] else "")
            + f", {len(groups['present'])} already present",
            markup=False,
        )
    for name, error in groups["failed"].items():
        err.print(Text.assemble((f"group {name} not restored: ", "red"), error))
    listing = [t for t in client.restorable_tenants() if not t.get("deleted")]  # never undelete
    listed = [t["id"] for t in listing if not t["exists"]]
    results, failed, found = _restore_each(client, listed, moment)
    missing = [t for t in listed if t not in found]
    present = len(listing) - len(missing)
    # the server's token check covers every tenant its own catalog lacks (deleted ones, another
    # node's): said only when something was restored
    warning = fleet["warning"] if results else None
    if as_json:
        failures = [{"tenant": t, "error": e} for t, e in failed.items()]
        print_json(
            {
                "restored": results,
                "failed": failures,
                "already_present": present,
                "groups": groups,
                "tokens": fleet["tokens"],
                "warning": warning,
            }
        )
    elif missing:
        console().print(_restore_table(results, failed))
    if not as_json:
        click.echo(f"restored {len(results)} of {len(missing)} missing tenants ({present} already present)")
    if warning:
        err.print(Text.assemble(("Warning: ", "yellow"), warning))
    if failed or groups["failed"]:
        what = [*(f"group {g}" for g in groups["failed"]), *failed]
        raise click.ClickException(
            f"{len(failed)} of {len(missing)} restores failed"
            + (f", {len(groups['failed'])} groups failed" if groups["failed"] else "")
            + f": {', '.join(what)}"
        )


def _restore_each(
    client: AdminClient, tenants: Sequence[str], moment: str
) -> tuple[list[RestoreResult], dict[str, str], set[str]]:
    """Restore each of `tenants` as itself under a progress bar; a failure is noted, not raised.
    In a cluster a tenant listed as missing may be on its way to another node (its slot moving):
    one that turns out to exist (409 `tenant_exists`) was present after all, and one whose slot
    has no serving owner right now (503) is tried again, up to RESTORE_TRIES times a second
    apart. Returns the results, the failures and the tenants found present."""
    results: list[RestoreResult] = []
    failed: dict[str, str] = {}
    found: set[str] = set()
    if not tenants:
        return results, failed, found
    with _progress() as bar:
        task = bar.add_task("restoring", total=len(tenants))
        for tenant in tenants:
            for attempt in range(1, RESTORE_TRIES + 1):
                try:
                    results.append(client.restore(tenant, moment, as_tenant=tenant))
                except ApiError as exc:
                    if exc.error_code == "tenant_exists":
                        found.add(tenant)
                    elif exc.http_status == 503 and attempt < RESTORE_TRIES:
                        time.sleep(RESTORE_RETRY)
                        continue
                    else:
                        failed[tenant] = _failure(exc)
                except ClientError as exc:
                    failed[tenant] = _failure(exc)
                break
            if tenant in failed:
                bar.console.print(f"[red]restore of {tenant} failed:[/] {failed[tenant]}", markup=True)
            bar.advance(task)
    return results, failed, found


# -- backups -------------------------------------------------------------------------------------


@click.group()
def backups() -> None:
    """Inspect, verify, rebuild and re-encrypt the backups of a running server."""


@backups.command("ls")
@click.argument("tenant_id", metavar="TENANT")
@admin_command
def ls(client: AdminClient, as_json: bool, tenant_id: str) -> None:
    """Restore points of TENANT: earliest and latest moment, generations, snapshots."""
    info = client.backups(tenant_id)
    if as_json:
        print_json(info)
        return
    summary = Table("field", "value", show_header=False)
    rows = (
        ("tenant", info["tenant"]),
        ("earliest", info["earliest"] or "-"),
        ("latest", info["latest"]),
        ("deleted", "yes" if info["deleted"] else "no"),
        ("not yet shipped", size(info["backlog_bytes"])),
    )
    for key, value in rows:
        summary.add_row(Text(key), Text(str(value)))
    generations = Table("generation", "started", title="generations")
    for g in info["generations"]:
        generations.add_row(Text(g["id"]), Text(g["started"]))
    snapshots = Table("generation", "lsn", "taken", "size", title="snapshots")
    snapshots.columns[1].justify = snapshots.columns[3].justify = "right"
    for s in info["snapshots"]:
        snapshots.add_row(
            Text(s["generation"]), Text(str(s["lsn"])), Text(s["taken"]), Text(size(s["bytes"]))
        )
    out = console()
    for table in (summary, generations, snapshots):
        out.print(table)


@backups.command("verify")
@click.argument("tenant_id", metavar="TENANT")
@admin_command
def verify(client: AdminClient, as_json: bool, tenant_id: str) -> None:
    """Restore TENANT's latest state aside and compare it page by page with the live database;
    exit status 1 if they differ."""
    result = client.verify_backup(tenant_id)
    if as_json:
        print_json(result)
    elif result["ok"]:
        click.echo(
            f"backup of {tenant_id} matches the live database "
            f"({result['pages']} pages, restored to {result['restored_to']})"
        )
    if not result["ok"]:
        pages = result["differing_pages"]
        shown = ", ".join(map(str, pages[:10])) + (", ..." if len(pages) > 10 else "")
        raise click.ClickException(
            f"backup of {tenant_id} differs from the live database "
            f"({result['pages']} live pages; differing: {shown or 'the page count'})"
        )


@backups.command("rebuild")
@admin_command
def rebuild(client: AdminClient, as_json: bool) -> None:
    """Rebuild the server's backup catalog from the segments in the bucket alone."""
    segments = client.rebuild_backup_catalog()
    output({"segments": segments}, as_json, f"rebuilt the backup catalog from {segments} segments")


@backups.command("rekey")
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Segments the server looks at per request (each request also stops after a few seconds).",
)
@admin_command
def rekey(client: AdminClient, as_json: bool, batch: int) -> None:
    """Re-encrypt every backup that retention still needs with the server's current key (the
    first line of its backup_encryption_key_file), so older keys can then be removed from the
    file; backups made before encryption was turned on get encrypted. Safe to interrupt and run
    again. Exit status 1 if the catalog names segments the bucket no longer holds."""
    answer = client.rekey_backups(None, batch)  # a refusal (no keys) comes alone, before any bar
    key_id, checked, rewritten, missing = answer["key_id"], 0, 0, 0
    with _progress("segments") as bar:
        task = bar.add_task("re-encrypting", total=answer["total"])
        while True:
            checked += answer["checked"]
            rewritten += answer["rewritten"]
            missing += answer["missing"]
            bar.update(task, total=max(answer["total"], checked), completed=checked)
            if answer["next"] is None:
                break
            answer = client.rekey_backups(answer["next"], batch)
    result = {"key_id": key_id, "segments": checked, "rewritten": rewritten, "missing": missing}
    output(
        result,
        as_json,
        f"every backup retention needs is sealed with key {key_id}: {checked} segments, "
        f"{rewritten} objects re-encrypted now",
    )
    if missing:
        raise click.ClickException(
            f"{missing} segments named by the server's backup catalog are missing from the bucket"
        )


@backups.command("tenants")
@admin_command
def tenants(client: AdminClient, as_json: bool) -> None:
    """Tenants the bucket can restore, whether each exists (on the server; in a cluster, on the
    node that owns it), and when the deleted ones were deleted: `sqlfleet restore TENANT --to
    latest` undeletes one (until the deletion is older than the retention window); `restore
    --all` never does."""
    listing = client.restorable_tenants(deleted=True)
    table = Table("tenant", "exists", "deleted")  # in a cluster: on its owner, whichever node answered
    for t in listing:
        deleted = t.get("deleted")
        how = "restore TENANT --to latest" if deleted else "restore --all"
        here = "yes" if t["exists"] else f"no ({how})"
        table.add_row(Text(t["id"]), Text(here), Text(deleted or "-"))
    output({"tenants": listing}, as_json, table if listing else "no restorable tenants")
