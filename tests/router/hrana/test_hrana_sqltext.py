"""Splitting SQL into statements for `sequence`, and libSQL's BEGIN READONLY."""

from __future__ import annotations

import pytest

from router.hrana.sqltext import is_begin_readonly, split_statements


def test_split_respects_strings_names_comments_and_triggers() -> None:
    sql = """
        INSERT INTO t VALUES ('a;b', "c;d", `e;f`, [g;h]);  -- one; still a comment
        /* two; */ INSERT INTO t VALUES ('it''s; fine');
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 1; DELETE FROM u; END;
        SELECT 1
    """
    pieces = [p.strip() for p in split_statements(sql)]
    assert len(pieces) == 4, pieces
    assert pieces[0].startswith("INSERT") and pieces[0].endswith("[g;h]);")
    assert pieces[1].endswith("'it''s; fine');")
    assert pieces[2].endswith("END;")
    assert pieces[3] == "SELECT 1"


@pytest.mark.parametrize("sql", ["", ";;", "  -- only a comment", "/* unterminated", "; /* x */ ;"])
def test_nothing_but_trivia_is_no_statement(sql: str) -> None:
    assert split_statements(sql) == []


def test_unterminated_string_is_one_statement() -> None:
    assert split_statements("SELECT 'oops; SELECT 2") == ["SELECT 'oops; SELECT 2"]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("BEGIN TRANSACTION READONLY", True),
        ("  begin readonly;", True),
        ("BEGIN READONLY; SELECT 1", False),
        ("BEGIN IMMEDIATE", False),
        ("SELECT 'BEGIN READONLY'", False),
    ],
)
def test_begin_readonly(sql: str, expected: bool) -> None:
    assert is_begin_readonly(sql) is expected
