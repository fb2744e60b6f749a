"""Hrana's value encoding: both directions, the 64-bit edges, and infinities as JSON."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from router.hrana.errors import ProtocolError
from router.hrana.values import decode_value, dumps_infinity_safe, encode_value

EDGES: list[Any] = [None, 0, (1 << 63) - 1, -(1 << 63), 1.5, -0.0, "", "héllo ✓ \x00", b"", b"\x00\xff" * 10]


@pytest.mark.parametrize("value", EDGES)
def test_values_round_trip(value: Any) -> None:
    encoded = json.loads(json.dumps(encode_value(value)))
    decoded = decode_value(encoded, "v")
    assert decoded == value and type(decoded) is type(value)


def test_integers_travel_as_strings_and_blobs_as_base64() -> None:
    assert encode_value((1 << 63) - 1) == {"type": "integer", "value": "9223372036854775807"}
    assert encode_value(b"\x00\x01") == {"type": "blob", "base64": "AAE="}
    assert decode_value({"type": "blob", "base64": "AAE"}, "v") == b"\x00\x01"  # padding optional
    assert decode_value({"type": "integer", "value": 5}, "v") == 5  # a JSON number is tolerated
    assert decode_value({"type": "float", "value": 2}, "v") == 2.0


@pytest.mark.parametrize("value", ["1e3", "0x10", "+1", "1_000", "٣", "-9223372036854775809", ""])
def test_integer_strings_are_plain_decimal_in_64_bits(value: str) -> None:
    with pytest.raises(ProtocolError, match="where"):
        decode_value({"type": "integer", "value": value}, "where")


def test_infinities_become_json_number_literals() -> None:
    body = {
        "rows": [[encode_value(math.inf), encode_value(-math.inf)]],
        "t": encode_value('"value":Infinity'),
    }
    text = dumps_infinity_safe(json.dumps(body, separators=(",", ":")))
    parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert parsed["rows"] == [[{"type": "float", "value": math.inf}, {"type": "float", "value": -math.inf}]]
    assert parsed["t"]["value"] == '"value":Infinity'  # text is never rewritten
