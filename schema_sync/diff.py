"""Diff two schemas: what it takes to turn the `current` one (a tenant) into the `target` one
(the template). Pure: it reads `Schema` values and never touches a database.

A table whose definition differs gets `ALTER TABLE ... ADD COLUMN` when the only difference is
columns appended at the end that SQLite can add in place (lang_altertable.html: no PRIMARY KEY
or UNIQUE, not NOT NULL without a non-NULL default, no CURRENT_* or parenthesized default, not a
STORED generated column, a REFERENCES column defaults to NULL); otherwise it is rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schema_sync.errors import SqlSyntaxError
from schema_sync.schema import Schema, SchemaObject
from schema_sync.sqltext import ColumnDef, TableDef


@dataclass(frozen=True)
class Rebuild:
    current: SchemaObject
    target: SchemaObject
    reason: str
    dropped_columns: tuple[str, ...] = ()


@dataclass
class SchemaDiff:
    """Changes in the order they are listed in the target (creation order)."""

    create: list[SchemaObject] = field(default_factory=list)
    replace: list[tuple[SchemaObject, SchemaObject]] = field(default_factory=list)  # index, view, trigger
    add_columns: list[tuple[SchemaObject, list[ColumnDef]]] = field(default_factory=list)
    rebuild: list[Rebuild] = field(default_factory=list)
    extra: list[SchemaObject] = field(default_factory=list)  # only in current: dropped when allowed
    blocked: list[str] = field(default_factory=list)  # changes no plan can make

    @property
    def empty(self) -> bool:
        return not (
            self.create or self.replace or self.add_columns or self.rebuild or self.extra or self.blocked
        )


def diff_schemas(current: Schema, target: Schema) -> SchemaDiff:
    result = SchemaDiff()
    for key, want in target.objects.items():
        have = current.objects.get(key)
        if have is None:
            result.create.append(want)
        elif have.type != want.type:
            result.extra.append(have)
            result.create.append(want)
        elif want.type == "table":
            _diff_table(have, want, result)
        elif have.normalized != want.normalized:
            result.replace.append((have, want))
    result.extra.extend(o for k, o in current.objects.items() if k not in target.objects)
    return result


def _diff_table(have: SchemaObject, want: SchemaObject, result: SchemaDiff) -> None:
    if have.virtual or want.virtual:
        if have.normalized != want.normalized:
            result.blocked.append(
                f"virtual table {want.name} differs: a virtual table cannot be altered or rebuilt"
            )
        return
    try:
        old, new = have.table_def(), want.table_def()
    except SqlSyntaxError as exc:
        result.blocked.append(f"table {want.name}: {exc.message}")
        return
    if old.same_as(new):
        return
    added = appended_columns(old, new)
    if added is not None and all(can_add_column(c) for c in added):
        result.add_columns.append((want, added))
        return
    kept = {c.name.lower() for c in want.columns}
    dropped = tuple(c.name for c in have.columns if c.name.lower() not in kept)
    reason = "columns removed" if dropped else "definition changed"
    result.rebuild.append(Rebuild(have, want, reason, dropped))


def appended_columns(old: TableDef, new: TableDef) -> list[ColumnDef] | None:
    """The columns `new` adds at the end of `old`, or None if they differ otherwise."""
    n = len(old.columns)
    if old.constraints != new.constraints or old.options != new.options or len(new.columns) <= n:
        return None
    if [c.canonical for c in old.columns] != [c.canonical for c in new.columns[:n]]:
        return None
    return list(new.columns[n:])


def can_add_column(column: ColumnDef) -> bool:
    """Whether `ALTER TABLE ADD COLUMN` accepts this definition on a table holding rows."""
    words = column.words
    if {"PRIMARY", "UNIQUE", "STORED"} & set(words):
        return False
    default = _default_token(column)
    if default is not None and (default in ("(", "CURRENT_TIME", "CURRENT_DATE", "CURRENT_TIMESTAMP")):
        return False
    has_value = default is not None and default != "NULL"
    not_null = any(w == "NOT" and words[i + 1 : i + 2] == ["NULL"] for i, w in enumerate(words))
    if not_null and not has_value:
        return False
    return not ("REFERENCES" in words and has_value)


def _default_token(column: ColumnDef) -> str | None:
    tokens = column.tokens
    for i, token in enumerate(tokens):
        if token.upper == "DEFAULT" and i + 1 < len(tokens):
            nxt = tokens[i + 1]
            if nxt.text in ("+", "-") and i + 2 < len(tokens):
                return tokens[i + 2].text
            return nxt.upper or nxt.text
    return None
