"""The REST API's JSON in: bodies read from their ASGI messages, and parsed exactly as the
stdlib's strict parser does (orjson where it agrees, which is most bodies)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message

from router.codec import parse_json_object, read_body
from tenants.errors import BadRequest, TooLarge

# Bodies where a fast parser might part from the stdlib: integers past 64 bits (orjson makes them
# floats), number forms, non-finite constants, surrogates, a BOM, control characters, nesting.
BODIES = [
    b'{"params": [1, -1, 0, -0, 9223372036854775807, -9223372036854775808]}',
    b'{"a": 18446744073709551615, "b": 18446744073709551616, "c": -9223372036854775809}',
    b'{"a": 123456789012345678901234567890}',
    b'{"a": 1e400}',
    b'{"a": -1e400}',
    b'{"a": 1.5e-400, "b": 0.1, "c": -0.0, "d": 1E2, "e": 1e+2, "f": 9007199254740993.0}',
    b'{"a": 0.1000000000000000055511151231257827021181583404541015625}',
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": -Infinity}',
    b'{"a": "\\ud800"}',
    b'{"a": "\\ud83d\\ude00", "\\u00e9": "\\u0000"}',
    b'{"a": "\xed\xa0\x80"}',
    b'\xef\xbb\xbf{"a": 1}',
    b'{"a": "x\ty"}',
    b'{"a": "x\x7fy"}',
    b'{"a": "\xff"}',
    b'{"a": 01}',
    b'{"a": +1}',
    b'{"a": .5}',
    b'{"a": 1.}',
    b'{"a": 1, "a": 2}',
    b'{"a": 1}x',
    b'{"a": 1,}',
    b"",
    b"  ",
    b"[1, 2]",
    b"null",
    b"\r\n\t {} ",
    b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"sql": "SELECT v FROM kv WHERE k = ?", "params": [12345678901234567890]}',
]


def _stdlib(body: bytes | str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(body, parse_constant=no_constant)
    except (ValueError, RecursionError):
        return BadRequest


def _ours(body: bytes | str) -> Any:
    try:
        return parse_json_object(body)
    except BadRequest:
        return BadRequest


@pytest.mark.parametrize("body", BODIES)
def test_bodies_parse_as_the_stdlib_parses_them(body: bytes) -> None:
    for form in (body, body.decode("utf-8", "replace")):  # REST bodies, Hrana text frames
        expected = _stdlib(form)
        if not isinstance(expected, dict):
            expected = BadRequest  # refused, or valid JSON that is not an object
        # repr: 1 and 1.0 are equal but not the same parameter; NaN is not equal to itself
        assert repr(_ours(form)) == repr(expected), form


def test_integers_past_64_bits_stay_integers() -> None:
    parsed = parse_json_object(b'{"params": [123456789012345678901234567890, 18446744073709551616]}')
    assert parsed["params"] == [123456789012345678901234567890, 18446744073709551616]
    assert all(type(v) is int for v in parsed["params"])


def _read(
    messages: list[Message], limit: int = 100, headers: list[tuple[bytes, bytes]] | None = None
) -> bytes:
    pending = list(messages)

    async def receive() -> Message:
        return pending.pop(0)

    request = Request({"type": "http", "method": "POST", "headers": headers or []}, receive)
    return asyncio.run(read_body(request, limit))


def test_a_body_in_one_piece() -> None:
    assert _read([{"type": "http.request", "body": b'{"a": 1}'}]) == b'{"a": 1}'


def test_a_body_in_pieces() -> None:
    pieces: list[Message] = [
        {"type": "http.request", "body": b'{"a"', "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b": 1}", "more_body": False},
    ]
    assert _read(pieces) == b'{"a": 1}'


@pytest.mark.parametrize("pieces", [[101], [60, 41], [100, 1, 0]])
def test_a_streamed_body_past_the_limit_is_too_large(pieces: list[int]) -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": b"x" * n, "more_body": i < len(pieces) - 1}
        for i, n in enumerate(pieces)
    ]
    with pytest.raises(TooLarge):
        _read(messages)


def test_a_declared_length_past_the_limit_is_too_large_before_reading() -> None:
    with pytest.raises(TooLarge):
        _read([], headers=[(b"content-length", b"101")])


def test_a_client_gone_mid_body_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="disconnected"):
        _read([{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}])
