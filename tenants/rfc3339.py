"""Timestamps on the wire and on disk: RFC 3339 in UTC with microseconds and a 'Z', one format
for every layer (2026-11-24T10:00:00.000000Z): sortable as text, exact to a commit."""

from __future__ import annotations

from datetime import UTC, datetime

from tenants.errors import BadRequest


def format_time(unix_seconds: float) -> str:
    """`unix_seconds` as RFC 3339, UTC, microseconds, 'Z'."""
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """RFC 3339 (any offset, any fraction; also ISO 8601 with a zone) -> unix seconds.
    Raises BadRequest for anything else, and for a time without a zone."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest(f"timestamp {text!r} is not RFC 3339 (e.g. 2026-11-24T10:00:00Z)") from None
    if moment.tzinfo is None:
        raise BadRequest(f"timestamp {text!r} needs a time zone (e.g. a trailing Z)")
    return moment.timestamp()
