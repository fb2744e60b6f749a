"""The REST API's JSON: request bodies in, values both ways (blobs as {"base64": ...})."""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tenants.budget import Budget, Encoding
from tenants.errors import BadRequest, TooLarge
from tenants.execute import Params, QueryResult, Statement, Value

_INT64 = (-(1 << 63), (1 << 63) - 1)
# What the REST API's JSON adds to a value (a comma, {"base64": ...} around a blob) and to a
# row (its brackets): see tenants.budget.
REST = Encoding(per_value=14, per_row=3)


class BudgetedResponse(Response):
    """A response whose results stay counted against the server's result memory (see
    tenants.budget) until it has been sent, or the client went away."""

    def __init__(
        self,
        content: bytes | str,
        budget: Budget,
        status_code: int = 200,
        media_type: str = "application/json",
    ) -> None:
        super().__init__(content, status_code, media_type=media_type)
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.budget.release()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object (strict JSON: no NaN/Infinity). Raises TooLarge past `limit`
    bytes, whether declared by Content-Length or streamed chunked; BadRequest otherwise."""
    return parse_json_object(await read_body(request, limit))


async def read_body(request: Request, limit: int) -> bytes:
    """The body's bytes. Raises TooLarge past `limit` bytes, whether declared by Content-Length
    or streamed chunked; BadRequest if the client went away."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body larger than {limit} bytes")
    # The ASGI messages themselves, not Request.stream(): an async generator per request, on
    # every hot query, for the same loop. The body is read once, here.
    receive = request.receive
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: nobody will read the answer
            raise BadRequest("client disconnected before sending the whole body")
        chunk: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if not more and not body and len(chunk) <= limit:
            return chunk  # the usual case: one piece, no copy
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"request body larger than {limit} bytes")
        if not more:
            return bytes(body)


# orjson where it gives what the stdlib parser gives, else the stdlib parser (which says why it
# refuses a body). orjson parses an integer beyond 64 bits as a float, so a body with 19 or more
# digits in a row (anywhere: ints that fit are found by the stdlib all the same) goes to the
# stdlib; everything else orjson refuses (NaN, lone surrogates, a BOM, deep nesting) too.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")


def parse_json_object(body: bytes | str) -> dict[str, Any]:
    """`body` as a JSON object (strict JSON: no NaN/Infinity). Raises BadRequest."""
    data: Any = None
    if not (_LONG_DIGITS.search(body) if isinstance(body, bytes) else _LONG_DIGITS_TEXT.search(body)):
        try:  # not contextlib.suppress: this is on every request's path, and try costs nothing
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
    if data is None:
        data = _stdlib_loads(body)
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _stdlib_loads(body: bytes | str) -> Any:
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is not acceptable JSON: nested too deeply") from None
    return data


def dumps(document: Any) -> bytes:
    """Compact UTF-8 JSON, as Starlette's JSONResponse renders it (callable off the event loop)."""
    return orjson.dumps(document)


def decode_value(value: Any) -> Value:
    """A JSON parameter as a SQLite value. Raises BadRequest for anything else."""
    kind = type(value)
    if kind is str or value is None or (kind is int and _INT64[0] <= value <= _INT64[1]):
        usual: Value = value  # the usual ones first, by exact type (a bool is an int subclass)
        return usual
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise BadRequest(f"integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            raise BadRequest("invalid base64 in blob parameter") from None
    raise BadRequest(
        f"unsupported parameter value {json.dumps(value)[:80]}: use null, a number, "
        'a string or {"base64": "..."}'
    )


def encode_value(value: Value) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, float) and not math.isfinite(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def parse_params(raw: Any) -> Params:
    if raw is None:
        return ()
    if isinstance(raw, list):
        return [decode_value(v) for v in raw]
    if isinstance(raw, dict):
        return {str(k): decode_value(v) for k, v in raw.items()}
    raise BadRequest("params must be an array or an object")


_STATEMENT_FIELDS = frozenset({"sql", "params"})


def parse_statement(raw: Any, where: str = "body") -> Statement:
    """A {"sql", "params"} object as a Statement. Raises BadRequest naming `where`."""
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be an object with 'sql'")
    if not raw.keys() <= _STATEMENT_FIELDS:
        unknown = set(raw) - _STATEMENT_FIELDS
        raise BadRequest(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    sql = raw.get("sql")
    if not isinstance(sql, str):
        raise BadRequest(f"{where}.sql must be a string")
    return Statement(sql, parse_params(raw.get("params")))


def encode_result(result: QueryResult) -> dict[str, Any]:
    return {
        "columns": result.columns,
        "rows": [[encode_value(v) for v in row] for row in result.rows],
        "rows_affected": result.rows_affected,
        "last_insert_rowid": result.last_insert_rowid,
    }
