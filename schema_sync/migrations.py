"""Recorded migrations: an ordered list a database applies once each, and remembers.

A migration is a SQL file `NNNN_name.sql` (an alembic revision arrives already rendered to SQL,
see `alembic_render`), or a declarative sync step `NNNN_name.sync.sql` holding a target schema.
Each database records what it applied in its own `_sqlfleet_migrations` table (name, checksum,
applied_at), in the same transaction as the change, so a failure leaves no trace and a rerun
resumes. A record that disagrees with the list (an edited file, an unknown name, another order)
raises HistoryMismatch: reported, never skipped. Tenant SQL may read the record but not change it
(tenants.sandbox); the server reads it only as `main._sqlfleet_migrations` and only once it has
checked that is the table it made (a file from before that rule may hold anything there).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from pathlib import Path

from schema_sync.errors import HistoryMismatch, InvalidMigration, RecordBroken
from schema_sync.plan import Plan
from schema_sync.schema import literal
from schema_sync.session import SchemaSession
from schema_sync.sqltext import tokenize
from schema_sync.sync import plan_against, run_plan
from tenants.rfc3339 import format_time

RECORD_TABLE = "_sqlfleet_migrations"
SLUG = re.compile(r"[a-z0-9][a-z0-9_]{0,58}")  # a migration's name after its number
NAME = re.compile(rf"(\d{{4}})_({SLUG.pattern})")
SQL, ALEMBIC, SYNC = "sql", "alembic", "sync"
ALEMBIC_HEADER = "-- sqlfleet: alembic revision "
SYNC_HEADER = "-- sqlfleet: sync"
_ALEMBIC_SOURCE = re.compile(re.escape(ALEMBIC_HEADER) + r"(\S+) source sha256 ([0-9a-f]{64})")
_RECORD_BODY = "(name TEXT PRIMARY KEY, checksum TEXT NOT NULL, applied_at TEXT NOT NULL) WITHOUT ROWID"
_CREATE_RECORDS = f"CREATE TABLE IF NOT EXISTS main.{RECORD_TABLE} {_RECORD_BODY}"
# What `_CREATE_RECORDS` leaves in sqlite_schema, and the query that finds it with whatever sits
# on it (indexes, triggers, in main or temp): one statement for the common case of `has_record`,
# run on every open of a group's tenant (catch-up) and for every tenant of a rollout.
_RECORD_ROWS = [("main", "table", RECORD_TABLE, f"CREATE TABLE {RECORD_TABLE} {_RECORD_BODY}")]
_RECORD_OBJECTS = " UNION ALL ".join(
    f"SELECT '{schema}', type, name, sql FROM {schema}.sqlite_schema WHERE tbl_name = ?1 COLLATE NOCASE"
    for schema in ("main", "temp")
)
_RECORD_COLUMNS = [("name", "TEXT", 1), ("checksum", "TEXT", 0), ("applied_at", "TEXT", 0)]  # name, type, pk


@dataclass(frozen=True)
class Migration:
    name: str  # NNNN_slug
    kind: str  # sql, alembic, sync
    sql: str  # the file's text: statements to run, or (sync) the target schema
    checksum: str  # sha256 of the text
    template: Path | None = None  # sync: a database holding the target schema
    allow_drop: bool = False  # sync: may drop objects and columns the target lacks

    @property
    def number(self) -> int:
        return int(self.name[:4])

    @cached_property
    def rebuilds(self) -> bool:
        """Whether it may drop (and so rebuild) a table: then foreign keys must be off while it
        runs, or a DROP TABLE would delete (or cascade into) the rows that refer to it."""
        if self.kind == SYNC:
            return True
        words = [t.upper for t in tokenize(self.sql)]
        return any(a == "DROP" and b == "TABLE" for a, b in pairwise(words))

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "name": self.name,
            "kind": self.kind,
            "checksum": self.checksum,
            "allow_drop": self.allow_drop,
        }
        source = alembic_source(self.sql) if self.kind == ALEMBIC else None
        if source is not None:
            body["alembic_revision"], body["alembic_source_sha256"] = source
        return body


@dataclass(frozen=True)
class Applied:
    name: str
    checksum: str
    applied_at: str


@dataclass
class Outcome:
    """What one `apply` did (or, dry run, would do)."""

    applied: list[str] = field(default_factory=list)
    plans: dict[str, Plan] = field(default_factory=dict)  # sync steps: the plan that ran


def alembic_source(text: str) -> tuple[str, str] | None:
    """(revision id, sha256 of the revision script) from a rendered alembic migration's header."""
    match = _ALEMBIC_SOURCE.match(text)
    return (match.group(1), match.group(2)) if match else None


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_name(filename: str) -> tuple[str, str]:
    """(migration name, kind) of a file name. Raises InvalidMigration."""
    stem, kind = filename, SQL
    if filename.endswith(".sync.sql"):
        stem, kind = filename[: -len(".sync.sql")], SYNC
    elif filename.endswith(".sql"):
        stem = filename[: -len(".sql")]
    else:
        raise InvalidMigration(f"{filename}: migration files end in .sql")
    if not NAME.fullmatch(stem):
        raise InvalidMigration(f"{filename}: names look like 0001_add_users (4 digits, then a-z, 0-9, _)")
    return stem, kind


def from_text(filename: str, text: str, template: Path | None = None) -> Migration:
    name, kind = parse_name(filename)
    if kind == SQL and text.startswith(ALEMBIC_HEADER):
        kind = ALEMBIC
    allow_drop = kind == SYNC and "allow_drop=1" in text.partition("\n")[0]
    return Migration(name, kind, text, checksum(text), template, allow_drop)


def load_dir(folder: Path) -> list[Migration]:
    """The migrations of a folder, ordered. Raises InvalidMigration for a bad name or a number
    used twice. A sync step's target database sits next to it as NNNN_name.sync.db."""
    result: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        template = path.with_suffix(".db") if path.name.endswith(".sync.sql") else None
        result.append(from_text(path.name, path.read_text(), template))
    result.sort(key=lambda m: m.name)
    check_order(result)
    return result


def check_order(migrations: Sequence[Migration]) -> None:
    numbers = [m.number for m in migrations]
    if len(set(numbers)) != len(numbers):
        dup = next(n for n in numbers if numbers.count(n) > 1)
        raise InvalidMigration(f"two migrations are numbered {dup:04d}")


def create_record(session: SchemaSession) -> None:
    """Create the database's (empty) record if it has none."""
    session.internal(_CREATE_RECORDS)


def has_record(session: SchemaSession) -> bool:
    """Whether the database has a record: False if it has none. Raises RecordBroken if
    `main._sqlfleet_migrations` is not the table `create_record` makes: a view, a virtual table,
    other columns, or with triggers or indexes of its own."""
    found = session.internal(_RECORD_OBJECTS, (RECORD_TABLE,))
    if not found:
        return False  # no table or view of that name (each is its own tbl_name)
    if found == _RECORD_ROWS:
        return True  # the very table `create_record` makes (same text: same columns), bare
    return _checked_record(session)


def _checked_record(session: SchemaSession) -> bool:
    """`has_record` the long way: what is there instead of the plain record, and is it one."""
    listed = session.internal(f"PRAGMA main.table_list({literal(RECORD_TABLE)})")
    if not listed:
        return False
    kind = str(listed[0][2])
    if kind != "table":
        raise RecordBroken(f"{RECORD_TABLE} is a {kind}, not the table the server made: not trusted")
    columns = session.internal(f"PRAGMA main.table_xinfo({literal(RECORD_TABLE)})")
    shape = [(str(name).lower(), str(type_).upper(), int(pk)) for _, name, type_, _, _, pk, _ in columns]
    if shape != _RECORD_COLUMNS:
        raise RecordBroken(f"{RECORD_TABLE} does not have the columns the server made: not trusted")
    attached = session.internal(
        " UNION ALL ".join(
            f"SELECT type, name FROM {schema}.sqlite_schema WHERE tbl_name = ?1 COLLATE NOCASE"
            " AND type IN ('index', 'trigger') AND sql IS NOT NULL"
            for schema in ("main", "temp")  # a TEMP trigger may sit on a main table
        ),
        (RECORD_TABLE,),
    )
    if attached:
        kind, name = attached[0]
        raise RecordBroken(f"{RECORD_TABLE} has a {kind} ({name}) the server did not make: not trusted")
    return True


def applied(session: SchemaSession) -> list[Applied]:
    """The database's record, oldest first; empty if it has none. Raises RecordBroken (see
    `has_record`)."""
    if not has_record(session):
        return []
    records = session.internal(f"SELECT name, checksum, applied_at FROM main.{RECORD_TABLE} ORDER BY name")
    return [Applied(str(n), str(c), str(a)) for n, c, a in records]


def pending(history: Sequence[Applied], migrations: Sequence[Migration], where: str) -> list[Migration]:
    """What `migrations` holds beyond `history`. Raises HistoryMismatch unless `history` is
    exactly a prefix of `migrations` (same names, same checksums)."""
    for i, record in enumerate(history):
        if i >= len(migrations):
            raise HistoryMismatch(f"{where}: applied {record.name}, which the group does not have")
        m = migrations[i]
        if record.name != m.name:
            raise HistoryMismatch(f"{where}: applied {record.name} where the group has {m.name}")
        if record.checksum != m.checksum:
            raise HistoryMismatch(
                f"{where}: {m.name} was edited after it was applied "
                f"(applied sha256 {record.checksum[:12]}, now {m.checksum[:12]})"
            )
    return list(migrations[len(history) :])


def apply(
    session: SchemaSession,
    migrations: Sequence[Migration],
    *,
    where: str = "database",
    dry_run: bool = False,
    upto: int | None = None,
    history: Sequence[Applied] | None = None,
) -> Outcome:
    """Bring the database up to the end of `migrations` (or only to the first `upto` of them;
    a database already past that is left alone), all pending ones in one transaction with their
    records (rolled back entirely on any failure, and when `dry_run`).
    `history` saves re-reading the record when the caller just did.
    Raises HistoryMismatch, MigrationFailed (PlanBlocked), TenantBusy."""
    if history is None:
        history = applied(session)
    todo = pending(history, migrations, where)
    if upto is not None:
        todo = todo[: max(0, upto - len(history))]
    outcome = Outcome()
    if not todo:
        return outcome
    stamp = format_time(time.time())
    with ExitStack() as stack:
        aliases: dict[str, str] = {}
        for i, m in enumerate(x for x in todo if x.kind == SYNC):
            if m.template is None or not m.template.exists():
                raise InvalidMigration(f"{m.name}: its target schema database is missing")
            # attached before the transaction: a database it has read cannot be detached inside
            aliases[m.name] = stack.enter_context(session.attached(m.template, f"sqlfleet_target{i}"))
        with session.schema_transaction(dry_run, rebuilds=any(m.rebuilds for m in todo)):
            if not history:
                create_record(session)
            for m in todo:
                label = f"{where}: {m.name}"
                if m.kind == SYNC:
                    plan = plan_against(session, aliases[m.name], m.allow_drop)
                    outcome.plans[m.name] = plan
                    run_plan(session, plan, label)
                else:
                    session.script(m.sql, label)
                session.internal(
                    f"INSERT INTO main.{RECORD_TABLE} VALUES (?, ?, ?)", (m.name, m.checksum, stamp)
                )
                outcome.applied.append(m.name)
    return outcome
