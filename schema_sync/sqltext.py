"""Just enough of SQLite's lexer to compare schema SQL and take CREATE TABLE apart.

SQLite stores each object's CREATE statement as written (minus `IF NOT EXISTS`), so two equal
schemas can differ in case, quoting and whitespace; `normalize` erases exactly those. A CREATE
TABLE body splits at its top-level commas into column definitions and table constraints.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenants.errors import BadRequest

_CONSTRAINT_WORDS = frozenset({"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"})
_QUOTES = {'"': '"', "`": "`", "[": "]"}


@dataclass(frozen=True)
class Token:
    kind: str  # word, ident (quoted identifier), string, blob, number, param, op
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def canonical(self) -> str:
        if self.kind == "word":
            return self.text.lower()
        if self.kind == "ident":
            return self.text[1:-1].replace(self.text[0] * 2, self.text[0]).lower()
        return self.text


class SqlSyntaxError(BadRequest):
    code = "sql_syntax"


def tokenize(sql: str) -> list[Token]:
    """Tokens of `sql` without whitespace and comments. Raises SqlSyntaxError for an unclosed
    string, identifier or comment."""
    tokens: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise SqlSyntaxError("unclosed /* comment")
            i = end + 2
        elif c in "'\"`[" or (c in "xX" and sql.startswith("'", i + 1)):
            start = i + 1 if c in "xX" else i
            close = _QUOTES.get(sql[start], "'")
            j = _closing(sql, start, close)
            kind = "blob" if start != i else "string" if c == "'" else "ident"
            tokens.append(Token(kind, sql[i:j], i, j))
            i = j
        elif c.isalpha() or c == "_" or ord(c) > 127:
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] in "_$" or ord(sql[j]) > 127):
                j += 1
            tokens.append(Token("word", sql[i:j], i, j))
            i = j
        elif c.isdigit() or (c == "." and i + 1 < n and sql[i + 1].isdigit()):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "." or (sql[j] in "+-" and sql[j - 1] in "eE")):
                j += 1
            tokens.append(Token("number", sql[i:j], i, j))
            i = j
        elif c in "?:@$" and i + 1 <= n:
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            tokens.append(Token("param", sql[i:j], i, j))
            i = j
        else:
            width = 2 if sql[i : i + 2] in ("||", "<=", ">=", "==", "!=", "<>", "<<", ">>", "->") else 1
            tokens.append(Token("op", sql[i : i + width], i, i + width))
            i += width
    return tokens


def _closing(sql: str, start: int, close: str) -> int:
    """Index just past the quote closing the one at `start` (a doubled quote is an escape)."""
    j = start + 1
    while True:
        k = sql.find(close, j)
        if k < 0:
            raise SqlSyntaxError(f"unclosed {sql[start]} at offset {start}")
        if close != "]" and sql.startswith(close * 2, k):
            j = k + 2
            continue
        return k + 1


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
