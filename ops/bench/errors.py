"""What can go wrong in a benchmark, as SqlfleetErrors (the CLI prints the message)."""

from __future__ import annotations

from tenants.errors import SqlfleetError


class BenchError(SqlfleetError):
    """A benchmark step failed; the message says which, often with the server's log."""

    code = "bench"


class LoadgenError(SqlfleetError):
    """The load generator could not do its job (a worker died or overran its phase)."""

    code = "loadgen"
