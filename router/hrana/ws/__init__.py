"""Hrana over WebSocket (HRANA_3_SPEC.md): the handshake (endpoint), one connection (session),
ordered work per stream (lane), cursors (cursor)."""

from __future__ import annotations

from router.hrana.ws.endpoint import ROUTES

__all__ = ["ROUTES"]
