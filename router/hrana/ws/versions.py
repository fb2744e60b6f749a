"""Hrana's WebSocket versions: the subprotocol names, picking one, and what each version lacks.

Picked as libsql-server does: by the server's preference among those offered, compared without
case. No `Sec-WebSocket-Protocol` header at all means `hrana1` (and none is sent back).
Hrana 2 added sequence, describe, stored SQL (store_sql, close_sql, `sql_id`); Hrana 3 cursors,
get_autocommit and the is_autocommit condition. Using one on an older version is a protocol
violation (the connection is closed with 1008), as the spec has it.
"""

from __future__ import annotations

from router.hrana.protocol import Cond, Stmt, WsRequest

# (version, binary encoding?) per subprotocol, in the server's order of preference
SUBPROTOCOLS: dict[str, tuple[int, bool]] = {
    "hrana3-protobuf": (3, True),
    "hrana3": (3, False),
    "hrana2": (2, False),
    "hrana1": (1, False),
}

_SINCE = {
    "sequence": 2,
    "describe": 2,
    "store_sql": 2,
    "close_sql": 2,
    "open_cursor": 3,
    "close_cursor": 3,
    "fetch_cursor": 3,
    "get_autocommit": 3,
}


def negotiate(offered: list[str]) -> str | None:
    """The subprotocol to answer with ("" for hrana1 when the client offered none), or None
    when nothing offered is supported. The client's own spelling is echoed back (its library
    compares it with what it offered)."""
    if not offered:
        return ""
    spelled = {name.strip().lower(): name.strip() for name in reversed(offered)}
    for name in SUBPROTOCOLS:
        if name in spelled:
            return spelled[name]
    return None


def lacks(version: int, req: WsRequest) -> str | None:
    """What of `req` the negotiated `version` does not have (as a close reason), or None."""
    since = _SINCE.get(req.kind, 1)
    if version < since:
        return f"{req.kind} is only supported in protocol version hrana{since} and higher"
    request = req.request
    batch = req.batch or (request.batch if request is not None else None)
    stmts: list[Stmt] = [request.stmt] if request is not None and request.stmt is not None else []
    if batch is not None:
        stmts += [step.stmt for step in batch.steps]
        if version < 3 and any(_asks_autocommit(step.condition) for step in batch.steps):
            return "is_autocommit is only supported in protocol version hrana3 and higher"
    if version < 2 and any(stmt.sql_id is not None for stmt in stmts):
        return "sql_id is only supported in protocol version hrana2 and higher"
    return None


def _asks_autocommit(cond: Cond | None) -> bool:
    if cond is None:
        return False
    return cond.kind == "is_autocommit" or any(_asks_autocommit(c) for c in cond.conds)
