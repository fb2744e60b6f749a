"""An etcd member's command line and health check, for what starts etcd itself: the cluster tests
(tests/support/etcd.py) and `scripts/cluster` (ops.local_cluster). Debian's `etcd-server` 3.4.

`fast` is for tests only: 10 ms heartbeats and 100 ms elections (a new leader in ~0.3 s, leases as
short as 1 s) and no fsync; without it etcd keeps its defaults (100 ms / 1 s, fsync on).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from ops.errors import LaunchError
from ops.process import free_port, kill, spawn

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
TEST_TIMINGS = ["--heartbeat-interval", "10", "--election-timeout", "100", "--unsafe-no-fsync"]


def member_command(
    name: str, data_dir: str, client_url: str, peer_url: str, initial_cluster: str, token: str, fast: bool
) -> list[str]:
    """`etcd` for member `name` of a new cluster (`initial_cluster`: name=peer_url,...),
    logging errors only."""
    flags = {
        "--name": name,
        "--data-dir": data_dir,
        "--listen-client-urls": client_url,
        "--advertise-client-urls": client_url,
        "--listen-peer-urls": peer_url,
        "--initial-advertise-peer-urls": peer_url,
        "--initial-cluster": initial_cluster,
        "--initial-cluster-state": "new",
        "--initial-cluster-token": token,
        "--logger": "zap",
        "--log-level": "error",
    }
    return [ETCD, *(part for pair in flags.items() for part in pair), *(TEST_TIMINGS if fast else [])]


def healthy(client_url: str) -> bool:
    """Whether the member at `client_url` says it is healthy (a quorum is up)."""
    with contextlib.suppress(httpx.HTTPError):
        return '"health":"true"' in httpx.get(f"{client_url}/health", timeout=0.5).text
    return False


@contextlib.contextmanager
def running_member(data_dir: Path, log_path: Path, fast: bool = False, wait: float = 60.0) -> Iterator[str]:
    """One etcd member of a new single-member cluster on free loopback ports, its data in
    `data_dir`, until the block ends (SIGKILL: nothing to flush that a restart would need);
    yields its client URL. Raises LaunchError when it is not healthy within `wait` seconds."""
    client_url, peer_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    command = member_command(
        "etcd", str(data_dir), client_url, peer_url, f"etcd={peer_url}", uuid.uuid4().hex, fast
    )
    with open(log_path, "ab") as log:
        proc = spawn(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + wait
        while not healthy(client_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise LaunchError(f"etcd did not become healthy within {wait:g}s:\n{tail}")
            time.sleep(0.05)
        yield client_url
    finally:
        kill(proc)
