"""Schema SQL compared and taken apart on the shared lexer's tokens."""

from __future__ import annotations

import pytest

from schema_sync.errors import SqlSyntaxError
from schema_sync.sqltext import normalize, parse_table, rename_table_sql, tokenize


def test_normalize_erases_case_quoting_spacing_and_comments() -> None:
    a = 'CREATE TABLE "Users" (id INTEGER PRIMARY KEY, [Name] TEXT) -- who'
    b = "create table users(\n  ID integer primary key , /* pk */ `name` text )"
    assert normalize(a) == normalize(b)
    assert normalize("CREATE TABLE t (x DEFAULT 'A')") != normalize("CREATE TABLE t (x DEFAULT 'a')")


@pytest.mark.parametrize("sql", ["SELECT 'open", 'SELECT "open', "SELECT [open", "x'00", "SELECT 1 /* x"])
def test_unclosed_text_is_a_syntax_error(sql: str) -> None:
    with pytest.raises(SqlSyntaxError, match="unclosed"):
        tokenize(sql)


def test_parse_table_splits_columns_and_constraints() -> None:
    sql = 'CREATE TABLE main."T" (a INT NOT NULL, "b" TEXT DEFAULT (\'x,y\'), PRIMARY KEY (a, b)) STRICT'
    table = parse_table(sql)
    assert table.name == "t"
    assert [c.name for c in table.columns] == ["a", "b"]
    assert table.columns[1].text == "\"b\" TEXT DEFAULT ('x,y')"
    assert table.constraints == ("primary key ( a , b )",)
    assert table.options == "strict"
    assert rename_table_sql(sql, table, "new") == sql.replace('main."T"', '"new"')
