"""Hrana's JSON value encoding: integers as decimal strings (64-bit safe), floats as numbers,
text, blobs as base64, null.

JSON has no infinities, but SQLite floats can be infinite (`SELECT 1e999`). They travel as the
number literal `1e999`/`-1e999`: valid JSON that every IEEE-754 parser reads back as infinity
(libsql-server would send null here, which the official clients reject). NaN never leaves
SQLite (it stores NULL instead).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from router.hrana.errors import ProtocolError
from tenants.execute import Value

_INT64 = (-(1 << 63), (1 << 63) - 1)
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def decode_value(raw: Any, where: str) -> Value:
    """A Hrana `Value` object as a SQLite value. Raises ProtocolError naming `where`."""
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where}: a value must be an object with a 'type'")
    kind = raw.get("type")
    if kind == "null":
        return None
    if kind == "integer":
        return _decode_integer(raw.get("value"), where)
    if kind == "float":
        number = raw.get("value")
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ProtocolError(f"{where}: a float value must be a JSON number")
        try:
            return float(number)
        except OverflowError:  # an integer literal past any double: 1e999 written out in digits
            raise ProtocolError(f"{where}: float value out of range") from None
    if kind == "text":
        text = raw.get("value")
        if not isinstance(text, str):
            raise ProtocolError(f"{where}: a text value must be a JSON string")
        return text
    if kind == "blob":
        return _decode_blob(raw.get("base64"), where)
    raise ProtocolError(f"{where}: unknown value type {kind!r}")


def _decode_integer(value: Any, where: str) -> int:
    # The spec sends a string; a JSON number is accepted as long as it is an exact integer.
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value):
        number = int(value)
    else:
        raise ProtocolError(f"{where}: an integer value must be a string of decimal digits")
    if not _INT64[0] <= number <= _INT64[1]:
        raise ProtocolError(f"{where}: integer {number} does not fit in 64 bits")
    return number


def _decode_blob(data: Any, where: str) -> bytes:
    if not isinstance(data, str):
        raise ProtocolError(f"{where}: a blob value needs 'base64', a string")
    try:
        # standard alphabet, padding optional (libsql-server omits it, the JS client sends it)
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{where}: invalid base64 in blob value") from None


def encode_value(value: Value) -> dict[str, Any]:
    if value is None:
        return {"type": "null"}
    if isinstance(value, int):
        return {"type": "integer", "value": str(value)}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, str):
        return {"type": "text", "value": value}
    return {"type": "blob", "base64": base64.b64encode(value).decode("ascii")}


def dumps_infinity_safe(body: str) -> str:
    """Rewrite the `Infinity` tokens `json.dumps(..., allow_nan=True, separators=(",", ":"))`
    writes for infinite float values into `1e999`. Only the unquoted `"value":Infinity` of a
    float value can match: inside a JSON string a quote is always escaped."""
    if "Infinity" not in body:
        return body
    return body.replace('"value":Infinity', '"value":1e999').replace('"value":-Infinity', '"value":-1e999')
