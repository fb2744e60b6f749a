"""What a running `sqlfleet serve` shows of itself (issue 10, findings 11 and 12): no `server`
header naming the software, and every file and folder it makes in its data dir (tenant files,
WALs, catalogs, replica objects, keys) readable by its own user only."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

from tests.support.server import run_server


def test_a_running_server_keeps_its_files_to_itself_and_names_no_software(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with run_server(data) as server, server.client() as http:
        assert http.post("/v1/admin/tenants", json={"id": "acme"}).status_code == 201
        token = http.post("/v1/admin/tenants/acme/tokens", json={}).json()["token"]
        statements = [{"sql": "create table t(x)"}, {"sql": "insert into t values (randomblob(5000))"}]
        assert http.post("/v1/tenants/acme/batch", json={"statements": statements}).status_code == 200
        assert http.get("/v1/admin/tenants/acme/backups").status_code == 200  # shipped: replica objects
        answers = [
            http.get("/healthz"),
            http.post(
                "/v1/tenants/acme/query",
                json={"sql": "select 1"},
                headers={"authorization": f"Bearer {token}"},
            ),
            http.get("/nothing-here"),
            http.post("/v2/pipeline", json={"requests": []}, headers={"authorization": f"Bearer {token}"}),
        ]
        for r in answers:
            assert "server" not in r.headers, (r.request.url, dict(r.headers))
        modes = _modes(data)
        assert any(name.startswith("replica/") for name in modes), modes
        assert len(modes) > 10, modes
        shared = [f"{name} {stat.filemode(mode)}" for name, mode in modes.items() if mode & 0o077]
        assert shared == [], "readable by others:\n" + "\n".join(shared)


def _modes(root: Path) -> dict[str, int]:
    """Every path below `root` and its mode (a temporary file gone meanwhile is skipped)."""
    modes = {}
    for path in root.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            modes[str(path.relative_to(root))] = path.stat().st_mode
    return modes
