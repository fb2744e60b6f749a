"""Batons across servers: a baton another process issued (the tenant moved to another node, or
the server restarted) is told apart from a forged one."""

from __future__ import annotations

from pathlib import Path

from tests.router.hrana.test_streams import execute, pipe
from tests.support.app import in_process


def test_a_baton_of_another_server_says_the_stream_ended(tmp_path: Path) -> None:
    """A tenant that moved (a drain, a takeover) or a restarted server: the client's baton is of
    a server that no longer has its stream, which is told apart from a forged one."""
    with in_process(tmp_path / "one") as one, in_process(tmp_path / "two") as two:
        for app in (one, two):
            app.create("acme")
        baton = pipe(one, one.token("acme"), [execute("BEGIN")]).json()["baton"]
        r = pipe(two, two.token("acme"), [execute("COMMIT")], baton)
        assert (r.status_code, r.json()["code"]) == (400, "BATON_INVALID"), r.text
        assert "stream has ended because its tenant moved" in r.json()["message"], r.text
        pipe(one, one.token("acme"), [execute("ROLLBACK"), {"type": "close"}], baton)
