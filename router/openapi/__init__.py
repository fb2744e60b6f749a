"""The OpenAPI 3 document of every route: one module per API area (its paths and schemas),
`builders` for the pieces they share, `document` to assemble them."""

from __future__ import annotations

from router.openapi.document import openapi_document

__all__ = ["openapi_document"]
