"""WebSocket close reasons: a code-like word first, then what happened, within one close frame.

A close frame's payload is at most 125 bytes, two of them the close code (RFC 6455 §5.5), so a
reason holds at most MAX_REASON_BYTES of UTF-8. Every reason this server sends (a Hrana
session's, the durable-ack gate's, the cluster proxy's relay, a fenced node's) is built here:
the word a client can act on comes first (`PROTOCOL_ERROR`, `replica_unavailable`, ...), and
what follows is cut at a word, with an ellipsis, when it does not fit; never inside a character.
Words follow where the condition comes from: a Hrana session's own conditions use Hrana's
upper-case codes (as its `Error`s on the socket do), a server error its `SqlfleetError.code`.
"""

from __future__ import annotations

import re

from tenants.errors import SqlfleetError

MAX_REASON_BYTES = 123
ELLIPSIS = "..."  # ASCII: the same on every client's screen, 3 bytes like "…"

_LAST_SPACE = re.compile(r"\s+\S*$")


def close_reason(word: str, text: str) -> str:
    """`word: text`, fitted into a close frame (`fitted`)."""
    return fitted(f"{word}: {text}")


def error_reason(error: SqlfleetError) -> str:
    """`error` as a close reason: its code and what a client may read of it (`public()`)."""
    shown = error.public()
    return close_reason(shown.code, shown.message)


def fitted(reason: str) -> str:
    """`reason` if it fits in a close frame, else its longest run of whole words that leaves
    room for ELLIPSIS, with ELLIPSIS (a first word longer than all that is cut where it must)."""
    encoded = reason.encode()
    if len(encoded) <= MAX_REASON_BYTES:
        return reason
    # textwrap.shorten would do the cutting, but it counts characters: a reason is bounded in bytes
    head = encoded[: MAX_REASON_BYTES - len(ELLIPSIS.encode())].decode(errors="ignore")
    if not reason[len(head)].isspace():  # the cut fell inside a word: drop that word
        whole = _LAST_SPACE.sub("", head)
        head = whole if whole.strip() else head
    return head.rstrip().rstrip(",:;.-").rstrip() + ELLIPSIS
