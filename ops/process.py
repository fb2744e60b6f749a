"""Child processes of the tests and the benchmarks, and the one launcher of a `sqlfleet serve`
child (`start_server`).

Every child is spawned in a process group of its own and is SIGKILLed by the kernel when this
process dies, however it dies (`PR_SET_PDEATHSIG`); `stop` ends the whole group: SIGTERM, then
SIGKILL after a bound. So neither a failing test, a timeout nor a Ctrl-C leaves a server running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from ops.errors import LaunchError

REPO = Path(__file__).resolve().parent.parent  # on the children's PYTHONPATH: `-m ops` from any cwd

# prctl(2) options (linux/prctl.h). Called through ctypes, not a library: the PyPI wrappers
# (python-prctl, pyprctl) are unmaintained since 2020/2021, and this is one libc call.
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up once here: the child runs `_die_with` between fork and exec, where it must not import.
_prctl = _load_prctl()
_SIGKILL = int(signal.SIGKILL)


def free_port() -> int:
    """A loopback port free right now (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL the calling process when its parent dies; exit at once if the
    parent (pid `parent`, default the current parent) is already gone. A no-op off Linux.
    The signal follows the parent *thread* that forked this process, hence `spawn`'s thread."""
    expected = os.getppid() if parent is None else parent
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
    if os.getppid() != expected:  # the parent died before the prctl: nobody would signal us
        os._exit(1)


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of PID 1, so that they stay
    visible as its descendants (the test suite's leak check). False where unsupported."""
    return _prctl is not None and _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def pause(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGSTOP `proc`'s process group and return once every thread of `proc` is stopped.
    kill(2) only queues the signal: a thread running on another core answers a request or two
    before it stops, and a test that acts "while paused" right after the call would race it.
    Raises TimeoutError if the stop has not taken effect within `timeout` seconds."""
    os.killpg(proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not _all_threads_stopped(proc.pid):
        if proc.poll() is not None:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {proc.pid} not stopped after {timeout} s")
        time.sleep(0.005)


def resume(proc: subprocess.Popen[Any]) -> None:
    """SIGCONT `proc`'s process group (after `pause`); a no-op once it has exited."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGCONT)


def _all_threads_stopped(pid: int) -> bool:
    # /proc/<pid>/task/<tid>/stat: "tid (comm) S ...", state after the last ')' (proc(5))
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # the thread ended meanwhile
        if state not in ("T", "t"):
            return False
    return True


_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def spawn(cmd: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(cmd, **popen)` in a new process group (session), killed when this
    process dies. PDEATHSIG fires when the forking *thread* exits, so a call from a thread other
    than the main one is handed to one long-lived spawner thread. Stop it with `stop`."""
    if threading.current_thread() is threading.main_thread():
        return _popen(cmd, popen)
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")
    return _spawner.submit(_popen, cmd, popen).result()


def _popen(cmd: Sequence[str], popen: dict[str, Any]) -> subprocess.Popen[bytes]:
    parent = os.getpid()
    return subprocess.Popen(
        list(cmd), start_new_session=True, preexec_fn=lambda: _managed_child(parent), **popen
    )


def _managed_child(parent: int) -> None:
    """In the child, before exec: die with `parent`, and answer SIGINT as a program does by
    default even when this process ignores it (a shell starts background jobs with SIGINT
    ignored, and an ignored signal stays ignored across exec): we stop our children by signal."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(proc: subprocess.Popen[Any], grace: float) -> int:
    """End `proc` and whatever else runs in its process group: SIGTERM, up to `grace` seconds to
    exit, then SIGKILL. Returns its exit code. Idempotent; a second Ctrl-C waits until it is done."""
    with signals_deferred():
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(30)
        _signal_group(proc, signal.SIGKILL)  # anything the leader left behind in its group
    return proc.returncode


def kill(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL `proc`'s whole process group at once (a crash, for tests) and reap it."""
    _signal_group(proc, signal.SIGKILL)
    proc.wait(30)


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    # `spawn` made the child a group leader, so its pid is the group's id; a child started some
    # other way (no group of its own) gets the signal alone.
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        if proc.poll() is None:
            proc.send_signal(sig)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive during the block take effect when it ends, so a second
    Ctrl-C cannot cut a cleanup short. Only the main thread can do this; elsewhere a no-op."""
    sigs = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or any(
        signal.getsignal(s) is None
        for s in sigs  # a handler installed outside Python
    ):
        yield
        return
    received: list[int] = []

    def note(sig: int, frame: FrameType | None) -> None:
        received.append(sig)

    previous = {s: signal.signal(s, note) for s in sigs}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A new temporary folder, removed however the block ends (a Ctrl-C or SIGTERM during the
    removal takes effect after it)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        with signals_deferred():
            shutil.rmtree(root, ignore_errors=True)


# -- the one `sqlfleet serve` launcher ------------------------------------------------------------


@dataclass
class ServerProcess:
    """A `sqlfleet serve` child on loopback: its `url`, `admin_key`, `data_dir` and log."""

    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    admin_key: str
    log_path: Path

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """An httpx client for the server, authenticated with the admin key."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=timeout
        )

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (a graceful shutdown), SIGKILL after `timeout` s; returns the exit code."""
        return stop(self.proc, timeout)

    def kill9(self) -> None:
        """SIGKILL, as a crash would; a no-op once it has ended."""
        if self.proc.poll() is None:
            kill(self.proc)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def start_server(
    data_dir: Path,
    args: Sequence[str] = (),
    *,
    admin_key: str,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    wait: float = 60.0,
) -> ServerProcess:
    """Start `python -m ops serve` on a free loopback port over `data_dir` and wait until its
    /readyz answers 200. The child sees this process's environment minus every `SQLFLEET_*`
    variable, plus `SQLFLEET_ADMIN_KEY=admin_key`, plus `env`; its output goes to `log_path`
    (default: next to the data dir). Raises LaunchError (with the log) if it exits or is
    not ready within `wait` s; it is stopped then. Stop it with `terminate`, or start it in a
    `with` statement: it is stopped on any way out of the block."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or data_dir.parent / f"server-{port}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SQLFLEET_")}
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), environment.get("PYTHONPATH")) if p)
    environment.update({"SQLFLEET_ADMIN_KEY": admin_key, **(env or {})})
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    cmd = [sys.executable, "-m", "ops", "serve", *listen, "--data-dir", str(data_dir), *args]
    with open(log_path, "wb") as log:
        proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=environment)
    server = ServerProcess(
        proc, f"http://127.0.0.1:{port}", data_dir, environment["SQLFLEET_ADMIN_KEY"], log_path
    )
    try:
        _wait_ready(server, wait)
    except BaseException:
        server.terminate(5)
        raise
    return server


def _wait_ready(server: ServerProcess, wait: float) -> None:
    deadline = time.monotonic() + wait
    with httpx.Client(timeout=1) as http:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise LaunchError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{server.url}/readyz").status_code == 200:
                    return
            time.sleep(0.05)
    raise LaunchError(f"server not ready after {wait:g} s:\n{server.log_tail()}")
