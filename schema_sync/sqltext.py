"""Comparing schema SQL and taking CREATE TABLE apart, on the tokens of tenants.sqllex.

SQLite stores each object's CREATE statement as written (minus `IF NOT EXISTS`), so two equal
schemas can differ in case, quoting and whitespace; `normalize` erases exactly those. A CREATE
TABLE body splits at its top-level commas into column definitions and table constraints.
"""

from __future__ import annotations

from dataclasses import dataclass

from schema_sync.errors import SqlSyntaxError
from tenants import sqllex
from tenants.sqllex import Token

_CONSTRAINT_WORDS = frozenset({"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"})


def tokenize(sql: str) -> list[Token]:
    """Tokens of `sql` without whitespace and comments. Raises SqlSyntaxError for an unclosed
    string, identifier or comment."""
    found = list(sqllex.tokens(sql))
    if found and found[-1].kind == "unterminated":
        raise SqlSyntaxError(f"unclosed {found[-1].text[0]} at offset {found[-1].start}")
    if sqllex.unclosed_comment(sql):
        raise SqlSyntaxError("unclosed /* comment")
    return found


def canonical(tokens: list[Token]) -> str:
    return " ".join(t.canonical for t in tokens)


def normalize(sql: str) -> str:
    """Equal for two statements that differ only in case, quoting, spacing or comments."""
    return canonical(tokenize(sql))


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class ColumnDef:
    name: str  # lower-cased
    text: str  # as written, for ALTER TABLE ... ADD COLUMN
    tokens: tuple[Token, ...]

    @property
    def canonical(self) -> str:
        return canonical(list(self.tokens))

    @property
    def words(self) -> list[str]:
        return [t.upper for t in self.tokens]


@dataclass(frozen=True)
class TableDef:
    """A parsed `CREATE TABLE name (...) options`."""

    name: str
    columns: tuple[ColumnDef, ...]
    constraints: tuple[str, ...]  # canonical text, sorted
    options: str  # canonical text after the closing parenthesis: WITHOUT ROWID, STRICT
    name_span: tuple[int, int]  # where the name sits in the original SQL

    def same_as(self, other: TableDef) -> bool:
        return (
            [c.canonical for c in self.columns] == [c.canonical for c in other.columns]
            and self.constraints == other.constraints
            and self.options == other.options
        )


def parse_table(sql: str) -> TableDef:
    """Take apart a stored CREATE TABLE statement. Raises SqlSyntaxError if it is not one."""
    tokens = tokenize(sql)
    words = [t.upper for t in tokens[:2]]
    if words != ["CREATE", "TABLE"] or len(tokens) < 5:
        raise SqlSyntaxError(f"not a CREATE TABLE statement: {sql[:60]!r}")
    i = 2
    while i + 1 < len(tokens) and tokens[i + 1].text == ".":  # schema-qualified name
        i += 2
    name_token = tokens[i]
    if tokens[i + 1].text != "(":
        raise SqlSyntaxError(f"CREATE TABLE without a column list: {sql[:60]!r}")
    parts, close = _split_parts(tokens, i + 1)
    columns: list[ColumnDef] = []
    constraints: list[str] = []
    for part in parts:
        if part[0].upper in _CONSTRAINT_WORDS:
            constraints.append(canonical(part))
        else:
            text = sql[part[0].start : part[-1].end]
            columns.append(ColumnDef(part[0].canonical, text, tuple(part)))
    return TableDef(
        name=name_token.canonical,
        columns=tuple(columns),
        constraints=tuple(sorted(constraints)),
        options=canonical(tokens[close + 1 :]),
        name_span=(tokens[2].start, name_token.end),
    )


def _split_parts(tokens: list[Token], open_index: int) -> tuple[list[list[Token]], int]:
    """The comma-separated parts inside the parenthesis at `open_index`, and its closing index."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for j in range(open_index, len(tokens)):
        text = tokens[j].text if tokens[j].kind == "op" else ""
        if text == "(":
            depth += 1
            if depth == 1:
                continue
        elif text == ")":
            depth -= 1
            if depth == 0:
                return [p for p in parts if p], j
        elif text == "," and depth == 1:
            parts.append([])
            continue
        parts[-1].append(tokens[j])
    raise SqlSyntaxError("unbalanced parentheses in CREATE TABLE")


def rename_table_sql(sql: str, table: TableDef, new_name: str) -> str:
    """The same CREATE TABLE statement for a table called `new_name`."""
    start, end = table.name_span
    return f"{sql[:start]}{quote(new_name)}{sql[end:]}"
