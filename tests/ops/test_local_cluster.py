"""`scripts/cluster` as the README uses it: a 2-node cluster on this machine answers through
either node, and Ctrl-C stops every process it started and removes its temporary directory."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from ops.process import spawn, stop
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _two_free_ports() -> int:
    """A port p with p and p + 1 both free now."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no two consecutive free ports")


def test_the_cluster_script_serves_through_every_node_and_cleans_up(tmp_path: Path) -> None:
    port = _two_free_ports()
    out = tmp_path / "out.log"
    with open(out, "wb") as log:
        proc = spawn(
            [str(ROOT / "scripts" / "cluster"), "--nodes", "2", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "ready;" in out.read_text() or proc.poll() is not None, timeout=120)
        text = out.read_text()
        assert proc.poll() is None, text
        key = re.search(r"SQLFLEET_ADMIN_KEY=([\w-]+)", text)  # urlsafe base64: - too
        where = re.search(r"logs and data in (\S+)\)", text)
        assert key and where, text
        admin = {"authorization": f"Bearer {key.group(1)}"}
        n1, n2 = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
        with httpx.Client(headers=admin, timeout=30) as http:

            def all_owned() -> bool:  # 503 (another JSON shape) until the node serves
                return bool(http.get(f"{n1}/v1/admin/cluster").json().get("slots_owned") == 16384)

            wait_until(all_owned, timeout=60)
            assert http.post(f"{n2}/v1/admin/tenants", json={"id": "demo"}).status_code == 201
            r = http.post(f"{n1}/v1/tenants/demo/query", json={"sql": "SELECT 40 + 2"})
            assert r.status_code == 200 and r.json()["rows"] == [[42]], r.text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, out.read_text()
        deadline = time.monotonic() + 10
        while Path(where.group(1)).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(where.group(1)).exists()
    finally:
        stop(proc, 30)
