"""Schema groups: a template database and an ordered list of migrations, in the data dir.

DATA/groups/<name>/template.db                 the template: journal_mode=DELETE, never written
                                               in place (a new version is built beside it and
                                               renamed over it), so a plain file copy is a
                                               consistent snapshot and ATTACH can be immutable
DATA/groups/<name>/migrations/0001_x.sql       recorded migrations (alembic ones rendered)
DATA/groups/<name>/migrations/0002_y.sync.sql  declarative steps: a target schema, and beside it
DATA/groups/<name>/migrations/0002_y.sync.db   the same schema as a database to ATTACH
DATA/groups/<name>/rollouts/<id>.json          finished rollouts

The template's own `_sqlfleet_migrations` says how far the group is *released*: tenants are
created from it and lazily caught up to it. Migrations beyond that are registered but not yet
rolled out (a canary runs them on a few tenants without releasing them).
Thread-safe: changes to one group are serialized by its lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import apsw

from schema_sync import archive
from schema_sync.errors import GroupExists, GroupNotFound, InvalidMigration, MigrationFailed
from schema_sync.migrations import (
    RECORD_TABLE,
    SLUG,
    SQL,
    SYNC_HEADER,
    Applied,
    Migration,
    applied,
    apply,
    check_order,
    create_record,
    from_text,
    load_dir,
    parse_name,
    pending,
)
from schema_sync.plan import Plan
from schema_sync.schema import read_schema
from schema_sync.session import SchemaSession
from schema_sync.sqltext import tokenize
from schema_sync.sync import plan_against
from tenants.errors import BadRequest, SqlfleetError
from tenants.files import fsync_dir, fsync_file, replace_durably
from tenants.ids import NAME_RULE, is_name
from tenants.sandbox import Sandbox

_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLES = (
    "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    " AND name != ?1 ORDER BY name"
)


@dataclass(frozen=True)
class GroupState:
    migrations: list[Migration]
    released: list[Applied]  # the template's record
    tables: list[str]  # the template's tables, bookkeeping left out

    @property
    def head(self) -> int:
        return len(self.released)

    def to_json(self) -> dict[str, object]:
        return {
            "migrations": [{**m.to_json(), "released": i < self.head} for i, m in enumerate(self.migrations)],
            "released": self.head,
            "head": self.released[-1].name if self.released else None,
            "pending": len(self.migrations) - self.head,
            "tables": self.tables,
        }


class Group:
    def __init__(self, root: Path, timeout: float) -> None:
        self.root = root
        self.name = root.name
        self.timeout = timeout
        self.template_path = root / "template.db"
        self.migrations_dir = root / "migrations"
        self.rollouts_dir = root / "rollouts"
        self.lock = threading.RLock()
        self._cache: tuple[tuple[int, int, int], GroupState] | None = None

    def state(self, fresh: bool = False) -> GroupState:
        """Migrations and released head; cached until the folder or the template changes
        (`fresh` rereads the files: an edit in place does not change the folder)."""
        template = self.template_path.stat()
        key = (self.migrations_dir.stat().st_mtime_ns, template.st_ino, template.st_mtime_ns)
        cached = self._cache
        if cached is not None and cached[0] == key and not fresh:
            return cached[1]
        migrations = load_dir(self.migrations_dir)
        with open_template(self.template_path, self.timeout, readonly=True) as session:
            released = applied(session)
            tables = [str(name) for (name,) in session.internal(_TABLES, (RECORD_TABLE,))]
        pending(released, migrations, f"group {self.name}: template")
        state = GroupState(migrations, released, tables)
        self._cache = (key, state)
        return state

    @contextlib.contextmanager
    def scratch(self, upto: int | None = None) -> Iterator[SchemaSession]:
        """A throwaway copy of the template, brought to `upto` migrations (all by default)."""
        with tempfile.TemporaryDirectory(dir=self.root, prefix="scratch-") as folder:
            path = Path(folder) / "template.db"
            shutil.copyfile(self.template_path, path)
            with open_template(path, self.timeout) as session:
                apply(session, self.state().migrations, where=f"group {self.name}: template", upto=upto)
                yield session

    def schema_sql(self, upto: int | None = None) -> str:
        """The schema after the first `upto` migrations (all by default), as CREATE statements."""
        with self.scratch(upto) as session:
            return read_schema(session.query).to_sql()


class GroupStore:
    def __init__(self, data_dir: Path, timeout: float) -> None:
        self.root = data_dir / "groups"
        self.timeout = timeout
        self._lock = threading.Lock()
        self._groups: dict[str, Group] = {}
        self._changed: set[str] = set()  # since the last take_changed
        # Bumped whenever a released head may have moved (release, restore): catch-up compares
        # it per request, so a head that did not move costs one integer comparison.
        self.epoch = 0

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if is_name(p.name) and (p / "template.db").exists())

    def get(self, name: str) -> Group:
        """Raises GroupNotFound."""
        if not is_name(name):
            raise GroupNotFound(f"no group {name!r}")
        with self._lock:
            group = self._groups.get(name)
            if group is None:
                root = self.root / name
                if not (root / "template.db").exists():
                    raise GroupNotFound(f"no group {name!r}")
                group = self._groups[name] = Group(root, self.timeout)
            return group

    def sync(self, name: str | None = None) -> None:
        """Bring this store up to date with the fleet's definitions of group `name` (every
        group: None) before a read that must see them. Here, on one server, nothing to do;
        ops.fleetwork's cluster store waits for what etcd holds."""

    def template_for(self, name: str) -> Path:
        """The file a new tenant of the group starts as a copy of. Raises GroupNotFound."""
        return self.get(name).template_path

    def create(self, name: str, schema_sql: str | None = None, template: bytes | None = None) -> Group:
        """A new group from a schema script or a template database file. Raises GroupExists,
        BadRequest (bad name, bad file), MigrationFailed (the script fails)."""
        if not is_name(name):
            raise BadRequest(f"group names are {NAME_RULE}")
        root = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}-"))
        try:
            (staging / "migrations").mkdir()
            (staging / "rollouts").mkdir()
            _build_template(staging / "template.db", schema_sql, template, self.timeout)
            with self._lock:
                if root.exists():
                    raise GroupExists(f"group {name!r} already exists")
                os.rename(staging, root)
            fsync_dir(self.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.note_changed(name)
        return self.get(name)

    def add_migration(self, name: str, migration_name: str, text: str) -> Migration:
        """Register a SQL migration after the group's last one. `migration_name` is a slug
        (numbered next) or `NNNN_slug` (numbered above the last). It is first tried on a scratch
        copy of the template at the group's newest schema. Raises InvalidMigration,
        MigrationFailed."""
        return self._add(self.get(name), migration_name, ".sql", text)

    def add_sync(
        self, name: str, migration_name: str, schema_sql: str, allow_drop: bool = False
    ) -> Migration:
        """Register a declarative step: make every database's schema equal `schema_sql`."""
        return self._add(self.get(name), migration_name, ".sync.sql", self.sync_text(schema_sql, allow_drop))

    def sync_text(self, schema_sql: str, allow_drop: bool = False) -> str:
        """The file text of a declarative step to `schema_sql` (what `add_sync` registers)."""
        return f"{SYNC_HEADER} allow_drop={int(allow_drop)}\n" + schema_sql

    def try_migration(self, name: str, migration_name: str, suffix: str, text: str) -> Migration:
        """What `add_migration` (suffix `.sql`) or `add_sync` (`.sync.sql`, `text` from
        `sync_text`) would register, numbered and tried on a scratch template; writes nothing.
        Raises as they do."""
        return self._add(self.get(name), migration_name, suffix, text, commit=False)

    def put_migration(self, name: str, filename: str, text: str) -> Migration:
        """Register migration file `filename` (`NNNN_slug.sql` or `.sync.sql`) as it is, as
        `try_migration` named it (elsewhere). Idempotent: the same file already there is kept.
        Raises InvalidMigration (another file of that number), MigrationFailed."""
        stem, _ = parse_name(filename)
        group = self.get(name)
        with group.lock:
            for migration in group.state(fresh=True).migrations:
                if migration.name == stem and migration.sql == text:
                    return migration
            return self._add(group, stem, filename[len(stem) :], text, new=False)

    def check_new(self, name: str, schema_sql: str | None = None, template: bytes | None = None) -> None:
        """Whether `create` would take these (a sound template, a script that runs); changes
        nothing. Raises BadRequest, MigrationFailed."""
        if not is_name(name):
            raise BadRequest(f"group names are {NAME_RULE}")
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".check-") as folder:
            _build_template(Path(folder) / "template.db", schema_sql, template, self.timeout)

    def _add(
        self, group: Group, migration_name: str, suffix: str, text: str, commit: bool = True, new: bool = True
    ) -> Migration:
        """`new` False: a file another node registered (ops.fleet_groups), taken as it is."""
        with group.lock:
            existing = group.state(fresh=True).migrations
            filename = _numbered(migration_name, existing) + suffix
            parse_name(filename)
            if new:
                _refuse(existing, filename, text)
            path = group.migrations_dir / filename
            target = path.with_suffix(".db") if suffix == ".sync.sql" else None
            with tempfile.TemporaryDirectory(dir=group.root, prefix="add-") as folder:
                staged = Path(folder) / filename
                staged.write_text(text)
                staged_db = None
                if target is not None:
                    staged_db = Path(folder) / target.name
                    _build_template(staged_db, text, None, self.timeout, record=False)
                migration = from_text(filename, text, staged_db)
                check_order([*existing, migration])
                with group.scratch() as session:
                    apply(session, [*existing, migration], where=f"group {group.name}: template (trial)")
                if not commit:
                    return from_text(filename, text, None)
                if staged_db is not None and target is not None:
                    replace_durably(staged_db, target)
                replace_durably(staged, path)
            self.note_changed(group.name)
            return from_text(filename, text, target)

    @contextlib.contextmanager
    def target(self, schema_sql: str) -> Iterator[Path]:
        """A throwaway database holding `schema_sql`, to ATTACH and diff against."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".target-") as folder:
            path = Path(folder) / "target.db"
            _build_template(path, schema_sql, None, self.timeout, record=False)
            yield path

    def plan_sync(self, name: str, schema_sql: str, allow_drop: bool = False) -> Plan:
        """What a sync to `schema_sql` would do to the group's newest schema. Changes nothing."""
        group = self.get(name)
        with (
            self.target(schema_sql) as target,
            group.scratch() as session,
            session.attached(target, "sqlfleet_target") as alias,
        ):
            return plan_against(session, alias, allow_drop)

    def release(self, name: str, dry_run: bool = False, upto: int | None = None) -> list[str]:
        """Apply the registered migrations (the first `upto`, or all) to the template (a new file
        renamed over the old): new tenants start there and lazy catch-up leads there. Returns
        the names applied. Raises MigrationFailed (the template is unchanged)."""
        group = self.get(name)
        with group.lock:
            state = group.state(fresh=True)
            if state.head >= (len(state.migrations) if upto is None else upto):
                return []
            with tempfile.TemporaryDirectory(dir=group.root, prefix="release-") as folder:
                path = Path(folder) / "template.db"
                shutil.copyfile(group.template_path, path)
                with open_template(path, self.timeout) as session:
                    where = f"group {name}: template"
                    done = apply(session, state.migrations, where=where, dry_run=dry_run, upto=upto)
                if not dry_run:
                    replace_durably(path, group.template_path)
                    with self._lock:
                        self.epoch += 1
                    self.note_changed(name)
            return done.applied

    # -- the fleet metadata in the replica: a port that ops wires to backups' FleetMeta, which
    # publishes what changed and puts groups back after a disaster (schema_sync imports no backups)

    def note_changed(self, name: str) -> None:
        """Group `name` changed (created, restored, a migration registered or released, a
        rollout started or ended): the next `take_changed` names it."""
        with self._lock:
            self._changed.add(name)

    def take_changed(self) -> set[str]:
        """The groups changed since the last call (one consumer: the publisher)."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def export(self, name: str) -> bytes:
        """The group as one archive (schema_sync.archive): its template, migrations and
        rollout history. Raises GroupNotFound."""
        group = self.get(name)
        with group.lock:
            return archive.pack(name, group.root)

    def restore(self, name: str, data: bytes) -> Group:
        """Put back group `name` from `export`'s archive, as it was: its template (released
        head), registered migrations and rollout history. Checked whole before it appears (the
        template sound, its record agreeing with the migrations). Raises GroupExists, BadRequest."""
        if not is_name(name):
            raise BadRequest(f"group names are {NAME_RULE}")
        root = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}-"))
        try:
            archive.unpack(data, name, staging)
            _check_restored(Group(staging, self.timeout), name)
            with self._lock:
                if root.exists():
                    raise GroupExists(f"group {name!r} already exists")
                os.rename(staging, root)
            fsync_dir(self.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with self._lock:
            self.epoch += 1
        self.note_changed(name)
        return self.get(name)


def _check_restored(group: Group, name: str) -> None:
    with open_template(group.template_path, group.timeout, readonly=True) as session:
        try:
            check = session.internal("PRAGMA integrity_check")
        except apsw.Error as exc:
            raise BadRequest(f"archive of group {name!r}: the template does not open: {exc}") from None
    if check != [("ok",)]:
        raise BadRequest(f"archive of group {name!r}: the template fails integrity_check: {check[0][0]}")
    try:
        group.state(fresh=True)
    except SqlfleetError as exc:
        raise BadRequest(f"archive of group {name!r} is not a consistent group: {exc.message}") from None


@contextlib.contextmanager
def open_template(
    path: Path, timeout: float, readonly: bool = False, create: bool = False
) -> Iterator[SchemaSession]:
    """A session on a template file: rollback journal (so the file alone is the database), the
    same sandbox as tenants, foreign keys on."""
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE
    flags |= apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_EXRESCODE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    conn = apsw.Connection(str(path), flags=flags)
    try:
        conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
        conn.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0)
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0)
        conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
        sandbox = Sandbox(timeout)
        sandbox.install(conn)
        session = SchemaSession(conn, sandbox, timeout)
        if not readonly:
            session.internal("PRAGMA journal_mode=DELETE")
            session.internal("PRAGMA synchronous=FULL")
        session.internal("PRAGMA foreign_keys=ON")
        yield session
    finally:
        conn.close()


def _build_template(
    path: Path, schema_sql: str | None, template: bytes | None, timeout: float, record: bool = True
) -> None:
    if template is not None:
        if not template.startswith(_SQLITE_MAGIC):
            raise BadRequest("the template is not a SQLite database file")
        path.write_bytes(template)
    with open_template(path, timeout, create=True) as session:
        try:
            check = session.internal("PRAGMA integrity_check")
        except apsw.Error as exc:
            raise BadRequest(f"the template is not a sound SQLite database: {exc}") from None
        if check != [("ok",)]:
            raise BadRequest(f"the template fails integrity_check: {check[0][0]}")
        if template is not None and applied(session):
            raise BadRequest("the template already records applied migrations: start from a clean database")
        if schema_sql:
            try:
                with session.schema_transaction():
                    session.script(schema_sql, "schema")
            except MigrationFailed as exc:
                raise MigrationFailed(f"the schema script fails: {exc.message}") from None
        if record:
            create_record(session)
    fsync_file(path)


def _refuse(existing: list[Migration], filename: str, text: str) -> None:
    """Raise InvalidMigration for a new migration whose name (after its number) the group
    already has, or one without a statement (only whitespace, comments or `;`): a blank SQL
    migration does nothing, a blank sync step would drop every table."""
    stem, kind = parse_name(filename)
    slug = stem[5:]
    same = next((m.name for m in existing if m.name[5:] == slug), None)
    if same is not None:
        raise InvalidMigration(
            f"{stem}: the group already has a migration named {slug!r} ({same}); pick another name"
        )
    if all(token.kind == "semi" for token in tokenize(text)):
        if kind == SQL:
            raise InvalidMigration(
                f"{stem}: the migration has no SQL statement (only whitespace or comments)"
            )
        raise InvalidMigration(
            f"{stem}: the sync step's schema has no SQL statement (only whitespace or comments);"
            " a sync to an empty schema would drop every table"
        )


def _numbered(migration_name: str, existing: list[Migration]) -> str:
    last = max((m.number for m in existing), default=0)
    if re.fullmatch(r"\d{4}_.+", migration_name):
        if int(migration_name[:4]) <= last:
            raise InvalidMigration(f"{migration_name}: numbers must grow; the last is {last:04d}")
        return migration_name
    if not SLUG.fullmatch(migration_name):
        raise InvalidMigration(f"{migration_name!r}: a migration name is a-z, 0-9 and _ (or NNNN_name)")
    if last >= 9999:
        raise InvalidMigration("the group has run out of migration numbers")
    return f"{last + 1:04d}_{migration_name}"
