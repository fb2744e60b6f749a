"""The SQL lexer against SQLite's own answers (sqlite3_complete, and what prepare finds), and
its running time on hostile input."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenants.sqllex import (
    TRANSACTION_CONTROL,
    is_trivia,
    leading_keyword,
    skip_trivia,
    split_statements,
    tokens,
    unclosed_comment,
)

# Pieces that matter to SQLite's lexers, so that random joins hit their corners often.
SPACES = [" ", "\n", "\t", "\f", "\r", "\v", "\xa0"]
QUOTES_AND_COMMENTS = ["'", "''", '"', "`", "[", "]", "x'", "X'0a'", "--", "/*", "*/", "*", "/", "-"]
KEYWORDS = ["create", "CREATE", "temp", "TEMPORARY", "trigger", "TRIGGER", "end", "END", "explain", "EXPLAIN"]
OTHERS = [";", ";", ";", "query", "begin", "1", "1.", ".", "a", "_", "$", "@", "#", ":", "?", "é", "\u0131"]
FRAGMENTS = SPACES + QUOTES_AND_COMMENTS + KEYWORDS + OTHERS
sql_texts = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join),
    st.text(alphabet=st.sampled_from("; '\"`[]-/*\nxXeEndcrtTagi1$é\v\t"), max_size=60),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
)
TESTS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def conn() -> Iterator[apsw.Connection]:
    connection = apsw.Connection(":memory:")
    yield connection
    connection.close()


def sqlite_split(sql: str, trivia: Callable[[str], bool]) -> list[str]:
    """The reference splitter (quadratic): a statement ends at each ';' where sqlite3_complete
    calls the text since the last end complete."""
    pieces: list[str] = []
    start = 0
    for i, ch in enumerate(sql):
        if ch == ";" and apsw.complete(sql[start : i + 1]):
            pieces.append(sql[start : i + 1])
            start = i + 1
    pieces.append(sql[start:])
    return [p for p in pieces if not trivia(p)]


def sqlite_trivia(conn: apsw.Connection, sql: str) -> bool:
    """Whether SQLite finds no statement in `sql` (a syntax error counts as one)."""
    cursor = conn.cursor()
    cursor.exec_trace = lambda cur, _sql, _bindings: not cur.has_vdbe
    try:
        for _ in cursor.execute(sql):
            pass
    except apsw.Error:  # ExecTraceAbort included: a statement that does something
        return False
    finally:
        cursor.close(force=True)
    return True


@TESTS
@given(sql_texts)
def test_split_agrees_with_sqlite_complete(conn: apsw.Connection, sql: str) -> None:
    assert split_statements(sql) == sqlite_split(sql, lambda piece: sqlite_trivia(conn, piece))


@TESTS
@given(sql_texts)
def test_trivia_agrees_with_sqlite_prepare(conn: apsw.Connection, sql: str) -> None:
    assert is_trivia(sql) == sqlite_trivia(conn, sql)


@TESTS
@given(sql_texts)
def test_a_whole_statement_splits_to_itself(sql: str) -> None:
    at = 0
    for piece in split_statements(sql):
        assert split_statements(piece) == [piece]
        at = sql.index(piece, at) + len(piece)  # the pieces are the text's, in order


def test_split_respects_strings_names_comments_and_triggers() -> None:
    sql = """
        INSERT INTO t VALUES ('a;b', "c;d", `e;f`, [g;h]);  -- one; still a comment
        /* two; */ INSERT INTO t VALUES ('it''s; fine');
        CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 1; DELETE FROM u; END;
        EXPLAIN QUERY PLAN CREATE TRIGGER tr2 AFTER INSERT ON t BEGIN SELECT 1; END;
        SELECT 1
    """
    pieces = [p.strip() for p in split_statements(sql)]
    assert len(pieces) == 5, pieces
    assert pieces[0].startswith("INSERT") and pieces[0].endswith("[g;h]);")
    assert pieces[1].endswith("'it''s; fine');")
    assert pieces[2].endswith("END;") and pieces[3].endswith("END;")
    assert pieces[4] == "SELECT 1"


@pytest.mark.parametrize("sql", ["", ";;", "  -- only a comment", "/* unterminated", "; /* x */ ;", " \v;"])
def test_nothing_but_trivia_is_no_statement(sql: str) -> None:
    assert split_statements(sql) == []
    assert is_trivia(sql) and skip_trivia(sql) == len(sql)


def test_unterminated_string_is_one_statement() -> None:
    assert split_statements("SELECT 'oops; SELECT 2") == ["SELECT 'oops; SELECT 2"]
    assert [t.kind for t in tokens("SELECT 'oops")] == ["word", "unterminated"]


def test_empty_statements_stay_out_of_the_pieces() -> None:
    assert split_statements(";; SELECT 1;;; SELECT 2 ;") == [" SELECT 1;", " SELECT 2 ;"]


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [
        ("  -- c\n /* d */ ;begin immediate", "BEGIN"),
        ("Savepoint a", "SAVEPOINT"),
        ("BEGIN_x", "BEGIN_X"),
        ("bEg\u0131n", "BEG\u0131N"),  # a dotless i is not an I to SQLite
        ("'BEGIN'", ""),
        ("", ""),
    ],
)
def test_leading_keyword(sql: str, keyword: str) -> None:
    assert leading_keyword(sql) == keyword


def test_transaction_control_is_what_sqlite_calls_it() -> None:
    conn = apsw.Connection(":memory:")
    try:
        for word in sorted(TRANSACTION_CONTROL):
            sql = {"SAVEPOINT": "SAVEPOINT a", "RELEASE": "RELEASE a"}.get(word, word)
            if word in ("COMMIT", "END", "ROLLBACK", "RELEASE"):
                conn.execute("BEGIN" if word != "RELEASE" else "SAVEPOINT a")
            autocommit = conn.get_autocommit()
            conn.execute(sql)
            assert conn.get_autocommit() != autocommit, word
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_tokens() -> None:
    sql = "select x'ab', 1.5e3, :a, ?2, 'it''s' \"q\"\"x\" [a]] -> ->> -- end\n/* c */ ;"
    found = [(t.kind, t.text) for t in tokens(sql)]
    assert found == [
        ("word", "select"),
        ("blob", "x'ab'"),
        ("op", ","),
        ("number", "1.5e3"),
        ("op", ","),
        ("param", ":a"),
        ("op", ","),
        ("param", "?2"),
        ("op", ","),
        ("string", "'it''s'"),
        ("ident", '"q""x"'),
        ("ident", "[a]"),
        ("op", "]"),
        ("op", "->"),
        ("op", "->>"),
        ("semi", ";"),
    ]
    assert all(sql[t.start : t.end] == t.text for t in tokens(sql))


def test_canonical_folds_ascii_case_and_quotes_only() -> None:
    words = list(tokens('Name "Na""me" [Na""me] `x``y` Ä'))
    assert [t.canonical for t in words] == ["name", 'na"me', 'na""me', "x`y", "Ä"]
    assert [t.upper for t in words] == ["NAME", "", "", "", "Ä"]


def test_unclosed_comment() -> None:
    assert unclosed_comment("SELECT 1 /* x") and unclosed_comment("/*/")
    assert not unclosed_comment("SELECT 1 /**/ -- /*") and not unclosed_comment("'/*'")


PATHOLOGICAL = {
    "trigger body of semicolons, a long comment, an unterminated string": (
        "CREATE TRIGGER t AFTER INSERT ON x BEGIN "
        + ";" * 200_000
        + " /* "
        + "c" * 1_800_000
        + " */ SELECT '"
        + "x;" * 1_000_000
    ),
    "trigger body of statements": "CREATE TRIGGER t AFTER INSERT ON x BEGIN " + "a;" * 2_000_000,
    "trigger body of near-ends": "CREATE TRIGGER t AFTER INSERT ON x BEGIN " + "; END x" * 600_000,
    "empty statements": ";" * 4_000_000,
    "explain and names": "EXPLAIN " + "a " * 2_000_000 + ";",
    "create and temps": "CREATE " + "TEMP " * 800_000 + ";",
    "unterminated comment": ";/*" + "x;" * 2_000_000,
    "unterminated quoted name": "SELECT 1; [" + ";" * 4_000_000,
}


@pytest.mark.parametrize("sql", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_hostile_input_lexes_in_linear_time(sql: str) -> None:
    # CPU time, not wall time: a busy machine must not fail this. Calling sqlite3_complete at
    # each ';' took 35 s for the first input's semicolons alone; this takes hundredths.
    started = time.process_time()
    pieces = split_statements(sql)
    is_trivia(sql)
    leading_keyword(sql)
    elapsed = time.process_time() - started
    assert len(pieces) <= 2
    assert elapsed < 1.0, f"{elapsed:.2f} s of CPU for {len(sql)} chars"


def test_tokens_of_hostile_input_take_time_per_token_not_per_char() -> None:
    sql = next(iter(PATHOLOGICAL.values()))
    started = time.process_time()
    count = sum(1 for _ in tokens(sql))
    elapsed = time.process_time() - started
    assert count == 8 + 200_000 + 2  # CREATE TRIGGER ... BEGIN, the semicolons, SELECT and the string
    assert elapsed < 1.0, f"{elapsed:.2f} s of CPU for {len(sql)} chars"
