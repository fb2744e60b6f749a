"""A database's schema as data: the user objects of `sqlite_schema` and each table's columns.

SQLite's own objects (`sqlite_*`), sqlfleet's bookkeeping (`_sqlfleet_*`) and the shadow tables
of virtual tables are not part of a schema: they are never diffed, created or dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schema_sync.sqltext import TableDef, normalize, parse_table
from tenants.sandbox import BOOKKEEPING_PREFIX, is_bookkeeping

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
INTERNAL_PREFIX = BOOKKEEPING_PREFIX


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    notnull: bool
    default: str | None
    pk: int
    hidden: int  # 0 plain, 1 hidden (virtual tables), 2 generated virtual, 3 generated stored

    @property
    def generated(self) -> bool:
        return self.hidden in (2, 3)


@dataclass(frozen=True)
class SchemaObject:
    type: str  # table, index, view, trigger
    name: str
    tbl_name: str
    sql: str
    columns: tuple[Column, ...] = ()
    without_rowid: bool = False
    virtual: bool = False

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def normalized(self) -> str:
        return normalize(self.sql)

    def table_def(self) -> TableDef:
        return parse_table(self.sql)


@dataclass
class Schema:
    """Objects in creation order (sqlite_schema rowid order), keyed by lower-cased name."""

    objects: dict[str, SchemaObject] = field(default_factory=dict)

    def of_type(self, kind: str) -> list[SchemaObject]:
        return [o for o in self.objects.values() if o.type == kind]

    def on_table(self, table: str, kind: str) -> list[SchemaObject]:
        return [o for o in self.of_type(kind) if o.tbl_name.lower() == table.lower()]

    def to_sql(self) -> str:
        """The schema as a script that recreates it in an empty database."""
        return "".join(f"{o.sql};\n" for o in self.objects.values())


def _is_internal(name: str) -> bool:
    return name.lower().startswith("sqlite_") or is_bookkeeping(name)


def literal(text: str) -> str:
    """`text` as an SQL string literal (PRAGMA arguments cannot be bound)."""
    return "'" + text.replace("'", "''") + "'"


def read_schema(query: Query, schema: str = "main") -> Schema:
    """Read the user schema of database `schema` through `query(sql, bindings) -> rows`.
    PRAGMA statements, not their table-valued forms: a table the tenant named `pragma_table_list`
    would stand in for those."""
    listing = query(f'PRAGMA "{schema}".table_list', ())  # schema, name, type, ncol, wr, strict
    kinds = {str(row[1]).lower(): (str(row[2]), bool(row[4])) for row in listing}
    rows = query(
        f'SELECT type, name, tbl_name, sql FROM "{schema}".sqlite_schema '
        "WHERE sql IS NOT NULL ORDER BY rowid",
        (),
    )
    result = Schema()
    for kind, name, tbl_name, sql in rows:
        name, tbl_name = str(name), str(tbl_name)
        if _is_internal(name) or _is_internal(tbl_name):
            continue
        table_kind, without_rowid = kinds.get(name.lower(), ("", False))
        if table_kind == "shadow" or kinds.get(tbl_name.lower(), ("", False))[0] == "shadow":
            continue
        columns: tuple[Column, ...] = ()
        if kind == "table":
            info = query(f'PRAGMA "{schema}".table_xinfo({literal(name)})', ())
            columns = tuple(
                Column(str(n), str(t), bool(nn), d, int(pk), int(h)) for _cid, n, t, nn, d, pk, h in info
            )
        result.objects[name.lower()] = SchemaObject(
            type=str(kind),
            name=name,
            tbl_name=tbl_name,
            sql=str(sql),
            columns=columns,
            without_rowid=without_rowid,
            virtual=table_kind == "virtual",
        )
    return result
