"""`scripts/cluster`: a sqlfleet cluster on this machine until Ctrl-C (or SIGTERM): one etcd
member and N `sqlfleet serve` nodes on consecutive ports, sharing one replica (a directory, or
`--replica-url s3://...` for a real bucket), one admin key and one token signing key.

For trying a cluster out; production runs etcd and each node apart (the Helm chart's cluster
mode). Everything lives in `--dir` (kept, and reused by the next run) or else in a temporary
directory removed at the end. Every process is started with `ops.process` (own process group,
killed with this one), so none outlives the script.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx

from ops import keys
from ops.etcd_member import ETCD, running_member
from ops.process import spawn, stop

READY_WAIT = 60.0  # seconds for etcd, then each node, to become ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="nodes to start (default 3)")
    parser.add_argument("--port", type=int, default=8081, help="first node's port (default 8081)")
    parser.add_argument("--dir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    parser.add_argument("--replica-url", default=None, help="shared replica (default: DIR/replica)")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 16:
        parser.error("--nodes must be 1..16")
    if not Path(ETCD).exists():
        parser.error("etcd is not installed (Debian: apt-get install etcd-server)")
    root = args.dir or Path(tempfile.mkdtemp(prefix="sqlfleet-cluster-"))
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        return _run(args, root, procs, stopping)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


def _run(
    args: argparse.Namespace, root: Path, procs: list[subprocess.Popen[bytes]], stopping: threading.Event
) -> int:
    root.mkdir(parents=True, exist_ok=True)
    with running_member(root / "etcd", root / "etcd.log") as etcd_url:
        try:
            return _serve(args, root, etcd_url, procs, stopping)
        finally:
            for proc in reversed(procs):  # the nodes ship and leave before etcd stops
                stop(proc, 30)


def _serve(
    args: argparse.Namespace,
    root: Path,
    etcd_url: str,
    procs: list[subprocess.Popen[bytes]],
    stopping: threading.Event,
) -> int:
    admin_key, signing_key = _keys(root)
    replica = args.replica_url or (root / "replica").absolute().as_uri()
    flags = {"--host": "127.0.0.1", "--cluster-etcd": etcd_url, "--replica-url": replica}
    common = [*(part for pair in flags.items() for part in pair), "--signing-key-file", str(signing_key)]
    urls = []
    for n in range(1, args.nodes + 1):
        port = args.port + n - 1
        node = [sys.executable, "-m", "ops", "serve", "--node-id", f"n{n}", "--port", str(port), *common]
        node += ["--data-dir", str(root / f"n{n}")]
        procs.append(_start(node, root / f"n{n}.log", {"SQLFLEET_ADMIN_KEY": admin_key}))
        urls.append(f"http://127.0.0.1:{port}")
    for n, url in enumerate(urls, start=1):
        _wait(partial(_ready, url), f"node n{n}", root / f"n{n}.log", stopping)
    print(f"sqlfleet cluster of {args.nodes} nodes (etcd {etcd_url}; logs and data in {root}):", flush=True)
    for n, url in enumerate(urls, start=1):
        print(f"  n{n}  {url}", flush=True)
    print(f"  export SQLFLEET_URL={urls[0]} SQLFLEET_ADMIN_KEY={admin_key}", flush=True)
    print("ready; Ctrl-C stops every node and etcd", flush=True)
    while not stopping.wait(0.5):
        for proc in procs:
            if proc.poll() is not None:
                print(f"a process exited ({proc.args!r}); stopping", file=sys.stderr)
                return 1
    return 0


def _start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return spawn(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env={**os.environ, **(env or {})}
        )


def _keys(root: Path) -> tuple[str, Path]:
    """The cluster's admin key and signing key file (made on the first run in `root`)."""
    return keys.admin_key(None, root)[0], keys.signing_key_file(root)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(ready: Callable[[], bool], what: str, log: Path, stopping: threading.Event) -> None:
    deadline = time.monotonic() + READY_WAIT
    while not ready():
        if stopping.is_set() or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SystemExit(f"{what} did not become ready within {READY_WAIT:g}s:\n{tail}")
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
