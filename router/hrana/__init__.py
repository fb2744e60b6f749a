"""Hrana over HTTP and WebSocket: what lets the official libSQL clients talk to sqlfleet unchanged."""

from __future__ import annotations

from router.hrana import routes, ws
from router.hrana.streams import Streams

ROUTES = [*routes.ROUTES, *ws.ROUTES]

__all__ = ["ROUTES", "Streams"]
