"""SQLite's lexical rules, once: tokens, trivia, the leading keyword, statement boundaries.

Tokens and trivia follow SQLite's tokenizer (tokenize.c): whitespace, `--` and `/* */` comments
(an unclosed one runs to the end), strings '...' with '' escapes, identifiers "...", `...` and
[...], blobs x'..', numbers, parameters. Statement boundaries follow sqlite3_complete
(complete.c), which lexes more coarsely and knows that the semicolons inside a CREATE TRIGGER
body end nothing until `; END ;`. Trivia is whitespace, comments and empty statements (';').

Everything here is linear in the length of its input and safe on hostile text: each regex
below is possessive (no backtracking), and the splitter crosses the parts of a statement where
its state cannot change with one regex call, so Python-level work grows with the number of
statements, not of characters. Callers still check length limits before lexing.

Hand-written because no maintained Python library exposes SQLite's own tokenizer: apsw.complete
answers only "is this complete?" (calling it at every ';' is quadratic), and general SQL lexers
(sqlparse, sqlglot) follow other grammars.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from dataclasses import dataclass

TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})
"""Leading keywords of the statements that open, end or nest a transaction."""

_FLAGS = re.ASCII | re.DOTALL | re.VERBOSE
_ID = r"0-9A-Za-z_$\x80-\U0010ffff"  # IdChar: what continues a name; any non-ASCII char does
_UNQUOTED = r"[^;'\"`\[\-/ \t\n\f\r]++"  # a run that neither lexer splits further in a body

# -- the tokenizer's grammar ---------------------------------------------------------------------

_SPACE = r"[ \t\n\f\r][ \t\n\v\f\r]*+"  # \v continues whitespace but cannot start it
_COMMENT = r"--[^\n]*+|/\*(?=.).*?(?:\*/|\Z)"  # a bare '/*' at the very end is two operators
_TOKEN = re.compile(
    rf"""
    (?P<space>{_SPACE})
  | (?P<comment>{_COMMENT})
  | (?P<blob>[xX]'[^']*+')
  | (?P<word>[A-Za-z_\x80-\U0010ffff][{_ID}]*+)
  | (?P<string>'[^']*+(?:''[^']*+)*+')
  | (?P<ident>"[^"]*+(?:""[^"]*+)*+"|`[^`]*+(?:``[^`]*+)*+`|\[[^\]]*+\])
  | (?P<number>(?:0[xX][0-9A-Fa-f_]*+|[0-9][0-9_]*+(?:\.[0-9_]*+)?|\.[0-9][0-9_]*+)
                (?:[eE][+-]?[0-9_]*+)?[{_ID}]*+)
  | (?P<param>\?[0-9]*+|[:@$\#][{_ID}]++)
  | (?P<semi>;)
  | (?P<unterminated>['"`\[].*)
  | (?P<op>->>|\|\||->|<=|>=|==|!=|<>|<<|>>|.)
    """,
    _FLAGS,
)
_TRIVIA = re.compile(rf"(?:{_SPACE}|{_COMMENT}|;)*+", _FLAGS)
_WORD = re.compile(rf"[A-Za-z_\x80-\U0010ffff][{_ID}]*+", _FLAGS)
_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


@dataclass(frozen=True, slots=True)
class Token:
    """One token of SQL text. `kind` is word, ident (a quoted name), string, blob, number,
    param, semi, op, or unterminated (an unclosed quote: it runs to the end of the text)."""

    kind: str
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        """A word in upper case (ASCII only, as SQLite folds keywords); '' for other kinds."""
        return self.text.translate(_UPPER) if self.kind == "word" else ""

    @property
    def canonical(self) -> str:
        """The token as SQLite compares names: words and quoted identifiers unquoted and in
        lower case (ASCII only); any other token as written."""
        if self.kind == "word":
            return self.text.translate(_LOWER)
        if self.kind == "ident":
            quote = self.text[0]
            body = self.text[1:-1] if quote == "[" else self.text[1:-1].replace(quote * 2, quote)
            return body.translate(_LOWER)
        return self.text


def tokens(sql: str, start: int = 0) -> Iterator[Token]:
    """The tokens of `sql` from `start` (a token boundary), without whitespace and comments,
    lazily."""
    for m in _TOKEN.finditer(sql, start):
        kind = m.lastgroup
        assert kind is not None
        if kind != "space" and kind != "comment":
            yield Token(kind, m.group(), m.start(), m.end())


def unclosed_comment(sql: str) -> bool:
    """Whether `sql` ends in a /* comment that is never closed (SQLite accepts it)."""
    for m in _TOKEN.finditer(sql):
        if m.lastgroup == "comment":
            text = m.group()
            if text.startswith("/*") and (len(text) < 4 or not text.endswith("*/")):
                return True
    return False


def skip_trivia(sql: str, i: int = 0) -> int:
    """Index of the first char at or after `i` that is not whitespace, a comment or a ';'.
    `i` must be at a token boundary."""
    return _end(_TRIVIA, sql, i)


def is_trivia(sql: str) -> bool:
    """Whether `sql` holds no statement: only whitespace, comments and semicolons."""
    return skip_trivia(sql) == len(sql)


def leading_keyword(sql: str) -> str:
    """The first word of `sql` after trivia, in upper case; '' if it starts otherwise."""
    m = _WORD.match(sql, skip_trivia(sql))
    return m.group().translate(_UPPER) if m else ""


# -- sqlite3_complete's grammar and state machine --------------------------------------------

# Token classes and states as complete.c names them.
_SEMI, _WS, _OTHER, _EXPLAIN, _CREATE, _TEMP, _TRIGGER, _END = range(8)
_START = 1
_TRANSITIONS = (
    # SEMI WS  OTHER EXPLAIN CREATE TEMP TRIGGER END
    (1, 0, 2, 3, 4, 2, 2, 2),  # 0 invalid: nothing seen yet
    (1, 1, 2, 3, 4, 2, 2, 2),  # 1 start: a statement just ended
    (1, 2, 2, 2, 2, 2, 2, 2),  # 2 normal
    (1, 3, 3, 2, 4, 2, 2, 2),  # 3 explain (EXPLAIN QUERY PLAN CREATE TRIGGER is a trigger)
    (1, 4, 2, 2, 2, 4, 5, 2),  # 4 create
    (6, 5, 5, 5, 5, 5, 5, 5),  # 5 trigger body
    (6, 6, 5, 5, 5, 5, 5, 7),  # 6 a ';' in a trigger body
    (1, 7, 5, 5, 5, 5, 5, 5),  # 7 '; END' in a trigger body
)
_KEYWORDS = {
    "EXPLAIN": _EXPLAIN,
    "CREATE": _CREATE,
    "TEMP": _TEMP,
    "TEMPORARY": _TEMP,
    "TRIGGER": _TRIGGER,
    "END": _END,
}

# complete.c: whitespace is [ \t\n\f\r] only; quotes have no escapes (a doubled quote is two
# quoted tokens in a row, which comes to the same); a name is any run of IdChars.
_C_TRIVIA = r"[ \t\n\f\r]++|--[^\n]*+|/\*.*?(?:\*/|\Z)"
_C_QUOTED = r"'[^']*+'?|\"[^\"]*+\"?|`[^`]*+`?|\[[^\]]*+\]?"
_C_KEYWORD = rf"(?i:explain|create|temp(?:orary)?|trigger|end)(?![{_ID}])"
_C_END_THEN_SEMI = rf"(?i:end)(?![{_ID}])(?:{_C_TRIVIA})*+;"
_C_TOKEN = re.compile(
    rf"(?P<ws>{_C_TRIVIA})|(?P<semi>;)|(?P<name>[{_ID}]++)|(?P<other>{_C_QUOTED}|.)", _FLAGS
)
_C_BODY = rf"{_C_TRIVIA}|{_C_QUOTED}|{_UNQUOTED}|[-/]"
# For each state, a run of tokens that leave it unchanged, crossed in one call.
_C_LOOPS = tuple(
    re.compile(pattern, _FLAGS)
    for pattern in (
        rf"(?:{_C_TRIVIA})*+",
        rf"(?:{_C_TRIVIA})*+",
        rf"(?:{_C_BODY})*+",  # anything but ';'
        rf"(?:{_C_TRIVIA}|{_C_QUOTED}|(?!{_C_KEYWORD})[{_ID}]++|[^;{_ID}'\"`\[ \t\n\f\r])*+",
        rf"(?:{_C_TRIVIA}|(?i:temp(?:orary)?)(?![{_ID}]))*+",
        # anything but the '; END ;' that closes the body
        rf"(?:{_C_BODY}|;(?:{_C_TRIVIA}|;)*+(?!{_C_END_THEN_SEMI}))*+",
        rf"(?:{_C_TRIVIA}|;)*+",
        rf"(?:{_C_TRIVIA})*+",
    )
)
_C_EMPTY = re.compile(rf"(?:(?:{_C_TRIVIA})*+;)*+", _FLAGS)  # empty statements at a start


def split_statements(sql: str) -> list[str]:
    """The statements of `sql`, each with its terminating ';' and the trivia before it; pieces
    that are only trivia are dropped. A statement ends at a ';' where sqlite3_complete would
    call the text so far complete: not inside quotes or comments, nor inside a CREATE TRIGGER
    body. Text after the last such ';' is the last statement, complete or not."""
    if ";" not in sql:  # the common case: one statement, no state machine
        return [] if is_trivia(sql) else [sql]
    statements: list[str] = []
    start = pos = 0
    n = len(sql)
    state = _START
    while True:
        if state == _START:  # empty statements are pieces of their own, all trivia: skip them
            pos = start = _end(_C_EMPTY, sql, pos)
        pos = _end(_C_LOOPS[state], sql, pos)
        if pos >= n:
            break
        m = _C_TOKEN.match(sql, pos)
        assert m is not None  # any one char is a token
        pos = m.end()
        kind = m.lastgroup
        if kind == "semi":
            state = _TRANSITIONS[state][_SEMI]
            if state == _START:
                _append(statements, sql[start:pos])
                start = pos
            continue
        if kind == "name":
            token = _KEYWORDS.get(m.group().translate(_UPPER), _OTHER) if pos - m.start() <= 9 else _OTHER
        else:
            token = _WS if kind == "ws" else _OTHER
        state = _TRANSITIONS[state][token]
    _append(statements, sql[start:])
    return statements


def _end(run: re.Pattern[str], sql: str, pos: int) -> int:
    """Where `run`, a pattern that also matches nothing, ends when matched at `pos`."""
    m = run.match(sql, pos)
    assert m is not None
    return m.end()


def _append(statements: list[str], piece: str) -> None:
    if not is_trivia(piece):
        statements.append(piece)
