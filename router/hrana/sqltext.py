"""libSQL's `BEGIN [TRANSACTION] READONLY`, which stock SQLite does not parse. Splitting SQL
text into statements is tenants.sqllex's."""

from __future__ import annotations

from tenants.sqllex import is_trivia, skip_trivia, tokens

_BEGIN_READONLY = (("BEGIN", "READONLY"), ("BEGIN", "TRANSACTION", "READONLY"))


def is_begin_readonly(sql: str) -> bool:
    """Whether `sql` is libSQL's `BEGIN [TRANSACTION] READONLY` (what the clients send for a
    "read" transaction or batch), alone but for trivia."""
    words: list[str] = []
    end = 0
    for token in tokens(sql, skip_trivia(sql)):  # lazily: at most four tokens
        if token.kind == "semi" or len(words) == 3:
            break
        words.append(token.upper)
        end = token.end
    return tuple(words) in _BEGIN_READONLY and is_trivia(sql[end:])
