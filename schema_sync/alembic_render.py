"""Alembic as the authoring tool: render revision scripts to the SQL SQLite runs.

SQLAlchemy cannot drive an APSW connection, so revisions never run against tenants. Each
revision's `upgrade()` runs once, here, against an in-memory SQLite database holding the
group's schema; every statement it sends (batch-mode table moves included: batch mode needs a
live database to reflect the table it copies, which offline `--sql` mode lacks) is recorded with
its parameters inlined. The result is an ordinary SQL migration, applied through APSW like any
other. Data migrations must therefore be SQL (`op.execute`, `op.bulk_insert`): Python that reads
rows and decides would only ever see the empty scratch database.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schema_sync.errors import InvalidMigration
from schema_sync.migrations import ALEMBIC_HEADER
from schema_sync.sqltext import tokenize
from tenants.sqllex import TRANSACTION_CONTROL, leading_keyword

_SKIP = TRANSACTION_CONTROL | {"SELECT", "PRAGMA"}  # reads and the scratch run's own transactions


@dataclass(frozen=True)
class Revision:
    revision: str
    slug: str  # for the migration name
    source_sha256: str
    sql: str  # header line + statements


def revisions(script_dir: Path) -> list[Any]:
    """The revision scripts of an alembic script directory, oldest first. Raises
    InvalidMigration unless the history is one straight line."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        scripts = list(ScriptDirectory(str(script_dir)).walk_revisions())
    except CommandError as exc:
        raise InvalidMigration(f"alembic scripts in {script_dir}: {exc}") from None
    scripts.reverse()
    for script in scripts:
        if isinstance(script.down_revision, tuple | list):
            raise InvalidMigration(f"alembic revision {script.revision} is a merge: history must be linear")
    if len({s.down_revision for s in scripts}) != len(scripts):
        raise InvalidMigration("alembic history branches: it must be one straight line")
    return scripts


def render(script_dir: Path, base_schema: str, known: dict[str, str] | None = None) -> list[Revision]:
    """Render the revisions after the last one in `known` (revision id -> source sha256 of those
    the group already holds, whose effect `base_schema` already includes). Raises
    InvalidMigration if a known revision's source changed or an unknown one precedes a known."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import StaticPool

    known = known or {}
    scripts = revisions(script_dir)
    todo = _unknown_tail(scripts, known)
    engine = create_engine("sqlite://", poolclass=StaticPool)
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            raw.executescript(base_schema)
            captured: list[str] = []

            def record(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
                captured.extend(_inline(statement, p) for p in (params if many else [params]))

            event.listen(engine, "before_cursor_execute", record)
            return [_render_one(conn, script, captured) for script in todo]
    finally:
        engine.dispose()


def _unknown_tail(scripts: Sequence[Any], known: dict[str, str]) -> list[Any]:
    seen_unknown = False
    todo: list[Any] = []
    for script in scripts:
        digest = _sha256(Path(script.path))
        if script.revision in known:
            if seen_unknown:
                raise InvalidMigration(f"alembic revision {script.revision} follows one the group lacks")
            if known[script.revision] != digest:
                raise InvalidMigration(
                    f"alembic revision {script.revision} ({Path(script.path).name}) was edited after it "
                    "was added to the group: write a new revision instead"
                )
        else:
            seen_unknown = True
            todo.append(script)
    return todo


def _render_one(conn: Any, script: Any, captured: list[str]) -> Revision:
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    captured.clear()
    with conn.begin():
        context = MigrationContext.configure(conn)
        with Operations.context(context):
            try:
                script.module.upgrade()
            except Exception as exc:
                raise InvalidMigration(
                    f"alembic revision {script.revision} failed to render: {exc}"
                ) from None
    statements = [s for s in captured if leading_keyword(s) not in _SKIP]
    path = Path(script.path)
    header = f"{ALEMBIC_HEADER}{script.revision} source sha256 {_sha256(path)}\n-- from {path.name}\n"
    body = "".join(f"{s.strip()};\n" for s in statements)
    slug = re.sub(r"[^a-z0-9]+", "_", (script.doc or path.stem).lower()).strip("_")[:40] or "revision"
    return Revision(script.revision, slug, _sha256(path), header + body)


def _inline(statement: str, params: Any) -> str:
    """`statement` with its `?` parameters replaced by SQL literals."""
    if not params:
        return statement
    values = list(params.values()) if isinstance(params, dict) else list(params)
    out: list[str] = []
    last = 0
    for token in tokenize(statement):
        if token.kind == "param":
            out.append(statement[last : token.start])
            out.append(_literal(values.pop(0)))
            last = token.end
    out.append(statement[last:])
    return "".join(out)


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "NULL"
        return repr(value) if abs(value) != float("inf") else ("9e999" if value > 0 else "-9e999")
    if isinstance(value, bytes | bytearray | memoryview):
        return "X'" + bytes(value).hex() + "'"
    return "'" + str(value).replace("'", "''") + "'"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
