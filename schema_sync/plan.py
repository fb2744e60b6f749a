"""A plan: the SQL that turns one schema into another, built from a `SchemaDiff`.

Statement order follows lang_altertable.html's 12-step procedure, for all tables at once:
triggers and views that could be touched are dropped first (a rename checks every view and
trigger in the schema), then tables are created, extended or rebuilt (new table, copy the common
columns, drop, rename), then indexes, views and triggers are created again. The caller runs the
statements in one transaction with `foreign_keys` off and then `PRAGMA foreign_key_check` on
`check_tables`; `render` prints the whole procedure, pragmas included.

Objects only the current schema has are kept unless `allow_drop`; a rebuild that would lose
columns is blocked unless `allow_drop`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schema_sync.diff import Rebuild, SchemaDiff
from schema_sync.schema import INTERNAL_PREFIX, Schema, SchemaObject
from schema_sync.sqltext import quote, rename_table_sql

_ROWID_ALIASES = ("rowid", "_rowid_", "oid")
# A rebuild's new table is built under this prefix, then renamed: a bookkeeping name, so no tenant
# table can take it (run_plan lets the plan's own statements use it).
SCRATCH_PREFIX = f"{INTERNAL_PREFIX}new_"


@dataclass(frozen=True)
class Step:
    sql: str
    comment: str = ""


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    check_tables: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # extra objects left in place

    @property
    def empty(self) -> bool:
        return not self.steps and not self.blocked

    def add(self, sql: str, comment: str = "") -> None:
        self.steps.append(Step(sql, comment))

    def render(self) -> str:
        """The plan as a script an operator can read (and run in the sqlite3 shell)."""
        lines = [f"-- BLOCKED: {reason}" for reason in self.blocked]
        lines += [f"-- kept (drops not allowed): {name}" for name in self.kept]
        if not self.steps:
            return "\n".join([*lines, "-- nothing to do"]) + "\n"
        lines += ["PRAGMA foreign_keys=OFF;", "BEGIN;"]
        for step in self.steps:
            if step.comment:
                lines.append(f"-- {step.comment}")
            lines.append(f"{step.sql};")
        lines += [f"PRAGMA foreign_key_check({quote(t)});" for t in self.check_tables]
        lines += ["COMMIT;", "PRAGMA foreign_keys=ON;"]
        return "\n".join(lines) + "\n"


def make_plan(diff: SchemaDiff, current: Schema, target: Schema, allow_drop: bool = False) -> Plan:
    plan = Plan(blocked=list(diff.blocked))
    for rebuild in diff.rebuild:
        if rebuild.dropped_columns and not allow_drop:
            cols = ", ".join(rebuild.dropped_columns)
            plan.blocked.append(f"table {rebuild.target.name}: columns {cols} would be dropped")
    # an extra object whose name the target reuses for another kind of object must go
    retyped = [o for o in diff.extra if o.key in target.objects]
    optional = [o for o in diff.extra if o.key not in target.objects]
    if not allow_drop:
        plan.blocked += [
            f"table {o.name} would be dropped (the template has a {o.name} {target.objects[o.key].type})"
            for o in retyped
            if o.type == "table"
        ]
        plan.kept = [f"{o.type} {o.name}" for o in optional]
    if plan.blocked:
        return plan
    drops = retyped + (optional if allow_drop else [])
    _add_steps(plan, diff, current, target, drops)
    plan.check_tables = _check_tables(diff, target, drops)
    return plan


def _add_steps(
    plan: Plan, diff: SchemaDiff, current: Schema, target: Schema, drops: list[SchemaObject]
) -> None:
    rebuilt = {r.target.key for r in diff.rebuild}
    dropped_tables = {o.key for o in drops if o.type == "table"}
    # A rebuild renames a table, and a rename re-checks every view and trigger: drop them all
    # first and create them again at the end, as step 9 of the documented procedure advises.
    structural = bool(rebuilt or dropped_tables)
    gone: set[str] = set()  # dropped explicitly or with their table
    for obj in current.objects.values():
        if obj.type == "table":
            continue
        with_table = obj.tbl_name.lower() in rebuilt | dropped_tables
        if with_table or (structural and obj.type != "index"):
            if not with_table:
                plan.add(f"DROP {obj.type.upper()} IF EXISTS {quote(obj.name)}", "created again below")
            gone.add(obj.key)
    replaced = {have.key for have, _ in diff.replace}
    for have, want in diff.replace:
        if have.key not in gone:
            plan.add(
                f"DROP {have.type.upper()} IF EXISTS {quote(have.name)}", f"{want.type} {want.name} changed"
            )
            gone.add(have.key)
    for obj in drops:
        if obj.key not in gone:
            plan.add(f"DROP {obj.type.upper()} IF EXISTS {quote(obj.name)}", "not in the template")
            gone.add(obj.key)
    for obj in diff.create:
        if obj.type == "table":
            plan.add(obj.sql, f"new table {obj.name}")
    for table, columns in diff.add_columns:
        for column in columns:
            plan.add(
                f"ALTER TABLE {quote(table.name)} ADD COLUMN {column.text}", f"new column in {table.name}"
            )
    for rebuild in diff.rebuild:
        _rebuild(plan, rebuild)
    created = {o.key for o in diff.create if o.type != "table"}
    dropped = {o.key for o in drops}
    for kind in ("index", "view", "trigger"):
        for obj in target.of_type(kind):
            if obj.key in created or obj.key in replaced or obj.key in gone:
                plan.add(obj.sql, f"{kind} {obj.name}")
        for obj in current.of_type(kind):
            # kept extras that went with a rebuild come back as they were
            if obj.key in gone and obj.key not in target.objects and obj.key not in dropped:
                plan.add(obj.sql, f"kept {kind} {obj.name}")


def _rebuild(plan: Plan, rebuild: Rebuild) -> None:
    have, want = rebuild.current, rebuild.target
    temp = f"{SCRATCH_PREFIX}{want.name}"
    plan.add(rename_table_sql(want.sql, want.table_def(), temp), f"rebuild {want.name}: {rebuild.reason}")
    old_names = {c.name.lower() for c in have.columns}
    common = [quote(c.name) for c in want.columns if not c.generated and c.name.lower() in old_names]
    taken = old_names | {c.name.lower() for c in want.columns}
    alias = next((a for a in _ROWID_ALIASES if a not in taken), None)
    # keep rowids (other data may refer to them) unless a column of the new table is the rowid
    if alias is not None and not have.without_rowid and not want.without_rowid and not _aliases_rowid(want):
        common.insert(0, alias)
    cols = ", ".join(common)
    plan.add(f"INSERT INTO {quote(temp)} ({cols}) SELECT {cols} FROM {quote(have.name)}")
    if "autoincrement" in want.normalized.split():
        # keep the old high-water mark: ids of deleted rows must stay unused
        plan.add(
            "UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence"
            f" WHERE name = '{have.name.replace(chr(39), chr(39) * 2)}'), 0)) WHERE name = '{temp}'"
        )
    plan.add(f"DROP TABLE {quote(have.name)}")
    plan.add(f"ALTER TABLE {quote(temp)} RENAME TO {quote(want.name)}")


def _aliases_rowid(table: SchemaObject) -> bool:
    """Whether one column is an INTEGER PRIMARY KEY, i.e. the rowid under another name."""
    keys = [c for c in table.columns if c.pk]
    return len(keys) == 1 and keys[0].type.upper() == "INTEGER"


def _check_tables(diff: SchemaDiff, target: Schema, drops: list[SchemaObject]) -> list[str]:
    """Tables whose foreign keys may have broken: the changed ones and those referring to them
    (or to a dropped table)."""
    touched = {r.target.key for r in diff.rebuild} | {t.key for t, _ in diff.add_columns}
    touched |= {o.key for o in drops if o.type == "table"}
    tables: list[str] = []
    for obj in target.of_type("table"):
        words = set(obj.normalized.split())
        refers = "references" in words and bool(touched & words)
        if obj.key in touched or refers:
            tables.append(obj.name)
    return tables
