"""Point-in-time restore, property style: random transactions over several tenants through the
real app, the logical content recorded after each commit, then restores (as forks) to many
moments compared exactly with what the tenant held then. Small flush interval and checkpoint
threshold, and a pool smaller than the tenants: checkpoints, WAL restarts, snapshots, evictions
and reopens all happen mid-test."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenants.rfc3339 import format_time, parse_time
from tests.support.app import ADMIN, InProcess, in_process
from tests.support.backups import (
    dump,
    integrity_check_cli,
    restore,
    restore_ok,
)

TENANTS = ["alpha", "beta", "gamma"]
STEPS = 45


@dataclass
class Commit:
    sent: float  # just before the request
    acked: float  # just after its response
    content: dict[str, Any]


@dataclass
class History:
    created: float = 0.0
    empty: dict[str, Any] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    columns: int = 4
    tables: list[str] = field(default_factory=lambda: ["items"])

    def at(self, moment: float) -> dict[str, Any]:
        """Content after the last commit acknowledged at or before `moment` (which must not fall
        inside a request: the commit time lies somewhere between sent and acked)."""
        content = self.empty
        for c in self.commits:
            assert not c.sent <= moment < c.acked, "ambiguous moment"
            if c.acked <= moment:
                content = c.content
        return content

    def gaps(self) -> list[tuple[float, float]]:
        """Stretches between commits where the content is known exactly."""
        edges = [self.created, *(x for c in self.commits for x in (c.sent, c.acked))]
        return [(edges[i], edges[i + 1]) for i in range(0, len(edges) - 1, 2)]


def transaction(rng: random.Random, h: History) -> list[dict[str, Any]]:
    """Several random statements; the first ever creates the table, one later changes the schema."""
    if not h.commits:
        return [
            {"sql": "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, n INTEGER, data BLOB)"},
            {"sql": "INSERT INTO items(name, n) VALUES ('first', 0)"},
        ]
    stmts: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choices(["insert", "blob", "update", "delete", "schema"], [5, 1, 3, 2, 1])[0]
        if kind == "insert":
            rows = [[f"n{rng.randrange(10**6)}", rng.randrange(-50, 50), {"base64": ""}] for _ in range(3)]
            for name, n, _ in rows:
                stmts.append(
                    {
                        "sql": "INSERT INTO items(name, n, data) VALUES (?, ?, randomblob(?))",
                        "params": [name, n, rng.randrange(0, 300)],
                    }
                )
        elif kind == "blob":  # overflow pages: many WAL frames in one commit
            stmts.append(
                {
                    "sql": "INSERT INTO items(name, data) VALUES ('big', randomblob(?))",
                    "params": [rng.randrange(20_000, 120_000)],
                }
            )
        elif kind == "update":
            stmts.append(
                {
                    "sql": "UPDATE items SET n = n + ?, name = name || 'u' WHERE id % 3 = ?",
                    "params": [rng.randrange(1, 9), rng.randrange(3)],
                }
            )
        elif kind == "delete":
            stmts.append(
                {"sql": "DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY random() LIMIT 2)"}
            )
        elif h.columns < 6:
            h.columns += 1
            stmts.append({"sql": f"ALTER TABLE items ADD COLUMN c{h.columns} TEXT DEFAULT 'd{h.columns}'"})
            stmts.append({"sql": f"CREATE INDEX IF NOT EXISTS items_n{h.columns} ON items(n, name)"})
        elif "notes" not in h.tables:
            h.tables.append("notes")
            stmts.append({"sql": "CREATE TABLE notes(k TEXT PRIMARY KEY, v) WITHOUT ROWID"})
            stmts.append(
                {"sql": "INSERT INTO notes SELECT name, n FROM items WHERE name IS NOT NULL GROUP BY name"}
            )
        else:
            h.tables.remove("notes")
            stmts.append({"sql": "DROP TABLE notes"})
    return stmts


def write_history(app: InProcess, rng: random.Random) -> dict[str, History]:
    histories = {t: History() for t in TENANTS}
    for tenant, h in histories.items():
        app.create(tenant)
        h.created = time.time()
        h.empty = dump(app.client, tenant)
    for _ in range(STEPS):
        tenant = rng.choice(TENANTS)
        h = histories[tenant]
        stmts = transaction(rng, h)
        sent = time.time()
        r = app.client.post(f"/v1/tenants/{tenant}/batch", json={"statements": stmts}, headers=ADMIN)
        acked = time.time()
        assert r.status_code == 200, r.text
        h.commits.append(Commit(sent, acked, dump(app.client, tenant)))
        time.sleep(rng.choice([0, 0, 0.01, 0.05, 0.15]))  # some commits share a flush, some do not
    return histories


def check_forks(app: InProcess, rng: random.Random, histories: dict[str, History]) -> list[str]:
    """Restore every tenant to many moments as forks and compare; returns the fork ids."""
    forks: list[str] = []

    def fork(tenant: str, moment: str | float) -> dict[str, Any]:
        forks.append(f"{tenant}-f{len(forks)}")
        result = restore_ok(app.client, tenant, moment, forks[-1])
        assert result["tenant"] == forks[-1]
        return result

    for tenant, h in histories.items():
        before = restore(app.client, tenant, h.created - 0.5, f"{tenant}-never")
        assert before.status_code == 404, before.text
        assert before.json()["error"]["code"] == "no_restore_point"

        first_gap, *gaps = h.gaps()
        fork(tenant, rng.uniform(*first_gap))  # created, nothing committed yet
        assert dump(app.client, forks[-1]) == h.empty

        for k in rng.sample(range(len(gaps)), 4):  # gaps[k] follows commit k
            moment = rng.uniform(*gaps[k])
            result = fork(tenant, moment)
            assert dump(app.client, forks[-1]) == h.at(moment), (tenant, moment)
            # the reported moment is the last commit applied: restoring exactly to it gives
            # the same state (the commit at that very moment is included)
            assert h.commits[k].sent <= parse_time(result["restored_to"]) <= h.commits[k].acked
            exact = fork(tenant, result["restored_to"])
            assert exact["restored_to"] == result["restored_to"]
            assert dump(app.client, forks[-1]) == h.at(moment)

        last = h.commits[-1]
        for stamp in (format_time(last.acked + 0.001), "latest"):
            result = fork(tenant, stamp)
            assert dump(app.client, forks[-1]) == last.content
            assert last.sent <= parse_time(result["restored_to"]) <= last.acked
    return forks


def test_restore_to_any_moment_gives_exactly_the_content_then(
    tmp_path: Path, replica_settings: dict[str, Any]
) -> None:
    rng = random.Random(20261124)
    settings = {
        "backup_flush_interval": 0.1,
        "backup_checkpoint_frames": 12,
        "backup_snapshot_bytes": 150_000,
        "pool_capacity": 2,
        **replica_settings,
    }
    with in_process(tmp_path / "data", **settings) as app:
        histories = write_history(app, rng)
        described = app.client.get("/v1/admin/tenants/alpha/backups", headers=ADMIN).json()
        forks = check_forks(app, rng, histories)
        paths = [app.server.fleet.layout.tenant_path(f) for f in forks]
    # the checkpoints and snapshots this test means to exercise did happen
    assert len(described["snapshots"]) >= 2, described
    # every restored file is sound for the real sqlite3 shell too (server stopped: no lock held)
    for path in paths:
        assert integrity_check_cli(path) == "ok", path
