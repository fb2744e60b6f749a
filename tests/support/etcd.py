"""Real etcd members for the cluster tests (Debian `etcd-server`; `scripts/test` installs it).

One or three members on free loopback ports, each under `ops.process.spawn` (own process group,
killed with this process), with test timings: 10 ms heartbeats, 100 ms elections (a new leader
in ~0.3 s; leases as short as 1 s), no fsync, errors-only logging. Their data (62 MB of WAL per
member) is in a `sqlfleet-etcd-*` temp dir removed on close. Members are stopped with SIGKILL:
the data is throwaway and a degraded cluster takes seconds to answer SIGTERM.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ops.etcd_member import healthy, member_command
from ops.process import free_port, kill, pause, resume, spawn


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    members: list[Member]
    root: Path
    token: str
    stopped: set[str] = field(default_factory=set)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.client_url for m in self.members)

    def kill(self, index: int) -> None:
        """SIGKILL member `index` (a crash)."""
        proc = self.members[index].proc
        if proc is not None and proc.poll() is None:
            kill(proc)

    def pause(self, index: int | None = None) -> None:
        """SIGSTOP member `index`, or every member (etcd unreachable, connections stay open)."""
        for member in self._chosen(index):
            if member.proc is not None and member.proc.poll() is None:
                pause(member.proc)
                self.stopped.add(member.name)

    def resume(self, index: int | None = None) -> None:
        for member in self._chosen(index):
            if member.proc is not None:
                resume(member.proc)
            self.stopped.discard(member.name)

    def restart(self, index: int) -> None:
        """Start member `index` again (after `kill`) on its old data and ports: it rejoins."""
        member = self.members[index]
        member.proc = _spawn(member, self, "ab")

    def _chosen(self, index: int | None) -> list[Member]:
        return self.members if index is None else [self.members[index]]

    def healthy(self, member: Member) -> bool:
        return healthy(member.client_url)

    def leader_index(self) -> int:
        """The member that is raft leader now (its /v3 status says so). Raises AssertionError."""
        for i, member in enumerate(self.members):
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                status = httpx.post(f"{member.client_url}/v3/maintenance/status", json={}, timeout=0.5).json()
                if status["leader"] == status["header"]["member_id"]:
                    return i
        raise AssertionError("no etcd leader")

    def close(self) -> None:
        self.resume()
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                kill(member.proc)
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(
            f"--- {m.name}\n{m.log_path.read_text(errors='replace')[-2000:]}"
            for m in self.members
            if m.log_path.exists()
        )


def _command(member: Member, cluster: EtcdCluster) -> list[str]:
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
    return member_command(
        member.name,
        str(member.data_dir),
        member.client_url,
        member.peer_url,
        initial,
        cluster.token,
        fast=True,
    )


def _spawn(member: Member, cluster: EtcdCluster, log_mode: str) -> subprocess.Popen[bytes]:
    with open(member.log_path, log_mode) as log:
        return spawn(_command(member, cluster), stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def start_etcd(size: int = 1, wait: float = 30.0) -> EtcdCluster:
    """Start `size` members and wait until every one is healthy. A member that cannot bind its
    port (taken between choosing and binding) makes the whole cluster start again, up to 3 times."""
    for attempt in range(3):
        root = Path(tempfile.mkdtemp(prefix="sqlfleet-etcd-"))
        cluster = EtcdCluster([], root, f"t-{uuid.uuid4().hex[:10]}")
        for i in range(size):
            name = f"m{i}"
            cluster.members.append(Member(name, free_port(), free_port(), root / name, root / f"{name}.log"))
        try:
            for member in cluster.members:
                member.proc = _spawn(member, cluster, "wb")
            deadline = time.monotonic() + wait
            while not all(cluster.healthy(m) for m in cluster.members):
                if any(m.proc is not None and m.proc.poll() is not None for m in cluster.members):
                    raise RuntimeError(f"etcd exited:\n{cluster.logs()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd not healthy after {wait} s:\n{cluster.logs()}")
                time.sleep(0.02)
            return cluster
        except RuntimeError:
            cluster.close()
            if attempt == 2:
                raise
        except BaseException:
            cluster.close()
            raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_etcd(size: int = 1) -> Iterator[EtcdCluster]:
    cluster = start_etcd(size)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    """One fresh etcd member for the test."""
    with running_etcd(1) as cluster:
        yield cluster


@pytest.fixture
def etcd3() -> Iterator[EtcdCluster]:
    """A fresh three-member etcd cluster for the test."""
    with running_etcd(3) as cluster:
        yield cluster
