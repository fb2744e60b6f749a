"""Rendering the registry in the Prometheus text format."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


def render() -> tuple[bytes, str]:
    """The current metrics and their content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
