"""Linear stand-ins for the SQLite built-ins whose one call can outrun any time limit.

A statement is stopped at its deadline by `sqlite3_interrupt` (tenants.watchdog), which SQLite
checks between VM steps. A few built-in functions do quadratic work inside one step and never
look at it (measured on SQLite 3.54, 8 MB values, the largest SQLITE_LIMIT_LENGTH allows):

- instr(X,Y), replace(X,Y,Z): a memcmp at every byte of X: |X| x |Y| (800 KB in 1.6 MB: 15 s);
- trim/ltrim/rtrim(X,Y): every character of X against every one of Y (100 KB each: 44 s);
- unhex(X,Y): every non-hex character of X against every one of Y (11 s at 200 KB / 100 KB);
- LIKE, GLOB: |S| x |pattern| once a wildcard precedes a long run (200 KB x 40 KB: 6 s) -- not
  replaced: a stand-in would lose the LIKE optimization (an index range for `LIKE 'abc%'`), so
  SQLITE_LIMIT_LIKE_PATTERN_LENGTH (the `max_like_pattern_length` setting) bounds it instead;
- json_patch, jsonb_patch: every member of one object against every member of the other
  (100k keys each: 73 s).

Each is registered here, per connection, under the same name and arity, so SQL keeps calling
`instr` and gets the same answers (deterministic and innocuous, so indexes on expressions,
generated columns and views keep working): instr/replace/trim/unhex through CPython's str and
bytes methods, which are linear (str.find switches to the two-way algorithm when the naive one
would be slow). json_patch keeps SQLite's own code (on a
private in-memory connection) but refuses inputs whose members multiply past `_PATCH_PAIRS`
(SQLITE_TOOBIG, like SQLite's own "LIKE or GLOB pattern too complex"). Unlike SQLite's, these
hold the GIL while they work: loops over big inputs share it (tenants.sqlvalues.relax); one C
call on an 8 MB value still holds it for some milliseconds.

Differences from the built-ins, all deliberate: text arguments that are not valid UTF-8 fail
(as reading such text in a result does); json_patch's result
is plain text without SQLite's JSON subtype, so `json_array(json_patch(a, b))` embeds it as a
string: write `json(json_patch(a, b))`. What stays quadratic and is bounded by a limit instead:
JSON functions taking many paths walk the document once per path; SQLITE_LIMIT_FUNCTION_ARG is
set back to SQLite's long-standing default of 127 (the bundled build raises it to 1000).
"""

from __future__ import annotations

import binascii
import functools
import re
import time
from collections.abc import Callable

import apsw

from tenants.sqlvalues import Value, builtin, bytes_of, relax, text_of, too_big, until_nul, utf8_len

FUNCTION_ARGS = 127
# json_patch compares each member of an object with each of the other (~7 ns a pair here):
# 2^24 pairs is ~0.1 s, e.g. a 100k-member document and a 160-member patch.
_PATCH_PAIRS = 1 << 24

_FLAGS = apsw.SQLITE_INNOCUOUS
_HEX = frozenset("0123456789abcdefABCDEF")
_HEX_BYTES = b"0123456789abcdefABCDEF"
_NOT_HEX_BYTES = bytes(b for b in range(256) if b not in _HEX_BYTES)
_HEX_MASK = bytes(ord("x") if chr(b) in _HEX else ord(" ") for b in range(256))  # digit -> x, else space
_ODD_HEX_RUN = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2})*+[0-9A-Fa-f](?![0-9A-Fa-f])")
# bytes that are not UTF-8 continuation bytes (0x80-0xBF): what bytes.translate deletes to count them
_NOT_CONTINUATION = bytes(range(0x80)) + bytes(range(0xC0, 0x100))


def install(conn: apsw.Connection) -> None:
    """Register the stand-ins on `conn` and set the limits they rely on."""
    conn.limit(apsw.SQLITE_LIMIT_FUNCTION_ARG, FUNCTION_ARGS)
    length_limit = conn.limit(apsw.SQLITE_LIMIT_LENGTH, -1)

    def add(name: str, arity: int, fn: Callable[..., Value]) -> None:
        conn.create_scalar_function(name, fn, arity, deterministic=True, flags=_FLAGS)

    add("instr", 2, instr)
    add("replace", 3, functools.partial(replace, limit=length_limit))
    add("trim", 2, functools.partial(trim, left=True, right=True, limit=length_limit))
    add("ltrim", 2, functools.partial(trim, left=True, right=False, limit=length_limit))
    add("rtrim", 2, functools.partial(trim, left=False, right=True, limit=length_limit))
    add("unhex", 2, unhex)
    add("json_patch", 2, functools.partial(_json_patch, "json_patch", length_limit))
    add("jsonb_patch", 2, functools.partial(_json_patch, "jsonb_patch", length_limit))


# -- instr, replace, trim, unhex -----------------------------------------------------------------


def instr(haystack: Value, needle: Value) -> int | None:
    """Characters before the first occurrence plus one (bytes, if both are blobs); 0 if none."""
    if type(haystack) is str and type(needle) is str:  # the common case, first
        return haystack.find(needle) + 1 if needle else 1
    if haystack is None or needle is None:
        return None
    if isinstance(haystack, bytes) and isinstance(needle, bytes):
        return haystack.find(needle) + 1 if needle else 1
    if not isinstance(haystack, bytes) and not isinstance(needle, bytes):
        hay_text, needle_text = text_of(haystack), text_of(needle)
        assert hay_text is not None and needle_text is not None
        return hay_text.find(needle_text) + 1 if needle_text else 1
    # One blob, one not: SQLite compares both as bytes and counts characters (a byte that is
    # not a UTF-8 continuation byte starts one), trying only positions where a character starts.
    hay, pin = bytes_of(haystack), bytes_of(needle)
    if not pin:
        return 1
    if 0x80 <= pin[0] < 0xC0:  # starts mid-character: only position 0 is ever tried
        return 1 if hay.startswith(pin) else 0
    at = hay.find(pin)
    if at < 0:
        return 0
    return 1 + at - len(hay[1 : at + 1].translate(None, _NOT_CONTINUATION))


def replace(value: Value, old: Value, new: Value, limit: int) -> Value:
    """Every occurrence of `old` replaced by `new`, left to right, as text. An empty `old` (or
    one starting with NUL) gives `value` back as text, as SQLite does. Like SQLite, raises
    SQLITE_TOOBIG for a result (or an input, plus one byte) past SQLITE_LIMIT_LENGTH, before
    building it."""
    if type(value) is str and type(old) is str and type(new) is str and old and old[0] != "\0":
        size = utf8_len(value)
        grows = utf8_len(new) - utf8_len(old) if len(new) > len(old) or not new.isascii() else 0
        if size + 1 > limit or (grows > 0 and size + value.count(old) * grows > limit):
            raise too_big()
        return value.replace(old, new)
    if value is None or old is None:
        return None
    old_text = text_of(old)
    if not old_text or old_text[0] == "\0":
        return text_of(value)
    if new is None:
        return None
    if isinstance(value, bytes) or isinstance(old, bytes) or isinstance(new, bytes):
        data, find, put = bytes_of(value), bytes_of(old), bytes_of(new)
        if len(data) + 1 > limit or len(data) + data.count(find) * (len(put) - len(find)) > limit:
            raise too_big()
        return data.replace(find, put).decode()
    text, new_text = text_of(value), text_of(new)
    assert text is not None and new_text is not None
    return replace(text, old_text, new_text, limit)


def trim(value: Value, chars: Value, left: bool, right: bool, limit: int) -> str | None:
    """`value` as text without the leading and/or trailing characters that occur in `chars`
    (up to its first NUL, as SQLite reads it). SQLite allocates 12 bytes per character of
    `chars` within SQLITE_LIMIT_LENGTH: past it, SQLITE_TOOBIG here too."""
    if type(value) is str and type(chars) is str and len(chars) <= _SMALL_SET and "\0" not in chars:
        return _strip(value, chars, left, right)
    if value is None or chars is None:
        return None
    text, charset = text_of(value), text_of(chars)
    assert text is not None and charset is not None
    charset = until_nul(charset)
    if len(charset) * 12 > limit:
        raise too_big()
    if len(charset) <= _SMALL_SET:
        return _strip(text, charset, left, right)
    members = frozenset(charset)
    if len(members) <= _SMALL_SET:
        return _strip(text, "".join(members), left, right)
    start = _leading(text, members) if left else 0
    end = len(text)
    if right and start < end:
        end -= _leading(text[start:][::-1], members)
    return text[start:end]


_SMALL_SET = 16  # str.strip checks each character against each of these (memchr): cheap
_CHUNK = 4096


def _strip(text: str, chars: str, left: bool, right: bool) -> str:
    if left and right:
        return text.strip(chars)
    return text.lstrip(chars) if left else text.rstrip(chars)


def _leading(text: str, members: frozenset[str]) -> int:
    """How many characters at the start of `text` are in `members`: whole chunks by a set
    operation in C, the last one character by character."""
    pos = 0
    since = time.perf_counter()
    while pos < len(text):
        chunk = text[pos : pos + _CHUNK]
        if members.issuperset(chunk):
            pos += len(chunk)
            since = relax(since)
            continue
        for char in chunk:
            if char not in members:
                return pos
            pos += 1
    return pos


def unhex(value: Value, allowed: Value) -> bytes | None:
    """Pairs of hex digits as a blob; characters of `allowed` may stand between pairs (never
    inside one); anything else makes it NULL. Reads `value` up to its first NUL."""
    if value is None or allowed is None:
        return None
    text, passes = text_of(value), text_of(allowed)
    assert text is not None and passes is not None
    text = until_nul(text)
    if not text.isascii():  # rare: by characters, a piece at a time
        return _unhex_text(text, passes)
    # ASCII: a few passes over bytes, each a fast C loop (no set of 8 M characters)
    data = text.encode()
    others = data.translate(None, _HEX_BYTES)
    if others and others.translate(None, passes.encode()):
        return None  # a character that is neither a hex digit nor allowed
    if b"x" in data.translate(_HEX_MASK).replace(b"xx", b""):
        return None  # a run of hex digits of odd length: some pair is split
    return binascii.unhexlify(data.translate(None, _NOT_HEX_BYTES) if others else data)


def _unhex_text(text: str, passes: str) -> bytes | None:
    others: set[str] = set()
    since = time.perf_counter()
    for start in range(0, len(text), _CHUNK):
        others.update(text[start : start + _CHUNK])
        since = relax(since)
    others -= _HEX
    if not others.issubset(passes) or _ODD_HEX_RUN.search(text):
        return None
    return bytes.fromhex(text.translate(dict.fromkeys(map(ord, others))) if others else text)


def _json_patch(name: str, length_limit: int, target: Value, patch: Value) -> Value:
    pairs = _members(target) * _members(patch)
    if pairs > _PATCH_PAIRS:
        raise too_big(
            f"{name}: documents too large to merge ({pairs:,} member pairs, at most "
            f"{_PATCH_PAIRS:,}): patch in smaller parts"
        )
    rows = builtin(length_limit).execute(f"SELECT {name}(?, ?)", (target, patch)).fetchall()
    result: Value = rows[0][0]
    return result


def _members(value: Value) -> int:
    """At least the number of object members in a JSON text (one per ':') or JSONB blob."""
    if isinstance(value, str):
        return value.count(":") + 1
    if isinstance(value, bytes):
        return len(value) // 2 + 1
    return 1
