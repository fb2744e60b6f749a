"""An imported file joining a schema group: its schema made the group's released schema, and
its migration record the template's, before it goes live (router.transfer_api).

The file is synced to the group's template as `sqlfleet group` syncs do (schema_sync.sync:
created, altered or rebuilt where no data is lost, in one transaction); what cannot be done
that way refuses the import with PlanBlocked (400 `plan_blocked`) naming each difference:
a column or table the group lacks, a type change that would lose data, and rows that the
group's tables cannot hold (a rebuild that fails on the file's data, foreign keys broken by it),
which are only found by trying: the sync's transaction is then rolled back and the file thrown
away, so nothing changed. Its record then lists exactly the template's migrations, so catch-up
finds it at the group's head (and later releases migrate it like any member). Blocking; call
it from a worker thread.
"""

from __future__ import annotations

from pathlib import Path

import apsw

from schema_sync.diff import diff_schemas
from schema_sync.errors import MigrationFailed, PlanBlocked
from schema_sync.groups import GroupStore, open_template
from schema_sync.migrations import RECORD_TABLE, applied, create_record
from schema_sync.plan import Plan
from schema_sync.schema import read_schema
from schema_sync.session import SchemaSession
from schema_sync.sync import sync_to_template
from tenants.config import DbConfig
from tenants.connection import open_database


def join_group(groups: GroupStore, group: str, path: Path, config: DbConfig, timeout: float) -> Plan:
    """Bring the checked upload at `path` into `group`; the plan that was applied. Raises
    GroupNotFound (404), PlanBlocked (400, what stands in the way, the file unchanged)."""
    template = groups.template_for(group)
    with open_template(template, timeout, readonly=True) as source:
        records = applied(source)
    conn, sandbox = open_database(path, config)
    try:
        session = SchemaSession(conn, sandbox, timeout)
        try:
            plan = sync_to_template(session, template)
        except PlanBlocked:
            raise
        except MigrationFailed as exc:
            differences = "; ".join(_differences(session, template)) or "its schema"
            raise PlanBlocked(
                f"the file's data cannot be synced to group {group!r} ({differences}): {exc.message}"
            ) from None
        with session.schema_transaction(rebuilds=False):
            create_record(session)
            session.internal(f"DELETE FROM main.{RECORD_TABLE}")
            for record in records:
                session.internal(
                    f"INSERT INTO main.{RECORD_TABLE}(name, checksum, applied_at) VALUES (?, ?, ?)",
                    (record.name, record.checksum, record.applied_at),
                )
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    finally:
        conn.close()
    Path(f"{path}-wal").unlink(missing_ok=True)  # empty after the TRUNCATE checkpoint
    return plan


def _differences(session: SchemaSession, template: Path) -> list[str]:
    """Each table of the file the sync had to change, and how (the sync was rolled back)."""
    with session.attached(template, "sqlfleet_template") as alias:
        current = read_schema(session.query, "main")
        target = read_schema(session.query, alias)
    diff = diff_schemas(current, target)
    found = [
        f"table {r.target.name}: the file has {r.current.sql!r}, the group {r.target.sql!r}"
        for r in diff.rebuild
    ]
    found += [
        f"table {table.name}: the group adds {', '.join(c.name for c in columns)}"
        for table, columns in diff.add_columns
    ]
    return found
