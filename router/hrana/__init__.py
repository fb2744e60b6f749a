"""Hrana over HTTP: what lets the official libSQL clients talk to sqlfleet unchanged."""

from __future__ import annotations

from router.hrana.routes import ROUTES
from router.hrana.streams import Streams

__all__ = ["ROUTES", "Streams"]
