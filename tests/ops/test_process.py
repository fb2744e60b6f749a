"""ops.process: children in process groups of their own, killed with their parent, stopped whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from ops.process import signals_deferred, spawn, stop

REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int, wait: float = 10.0) -> bool:
    try:
        psutil.Process(pid).wait(wait)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


def _parent(code: str) -> subprocess.Popen[str]:
    """A Python process running `code`, which prints the pids it wants checked, one a line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.parametrize("spawned_from", ["main thread", "a thread that has ended"])
def test_a_child_dies_with_its_parent_however_the_parent_dies(spawned_from: str) -> None:
    code = f"""
        import sys, threading, time
        from ops.process import spawn
        children = []
        def start():
            children.append(spawn(["sleep", "300"]))
        if {spawned_from == "main thread"}:
            start()
        else:
            thread = threading.Thread(target=start)
            thread.start()
            thread.join()
        print(children[0].pid, flush=True)
        time.sleep(300)
    """
    parent = _parent(code)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(0.2)
        assert not _gone(child, 0.1), "the child died before its parent"
        parent.kill()  # SIGKILL: the parent gets no chance to clean up
        parent.wait(10)
        assert _gone(child), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()


def test_stop_ends_the_whole_group_and_insists_with_sigkill() -> None:
    # A shell that ignores SIGTERM, with a grandchild in its process group.
    proc = spawn(["sh", "-c", "trap '' TERM; sleep 300 & echo $!; wait"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    proc.stdout.close()
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)  # a group of its own
    started = time.monotonic()
    assert stop(proc, grace=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10
    assert _gone(grandchild)
    assert stop(proc, grace=0.5) == -signal.SIGKILL  # idempotent


def test_signals_in_a_cleanup_take_effect_when_it_ends() -> None:
    # as an interactive run has it (a suite started in the background has SIGINT ignored)
    ours = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt), signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C, mid-cleanup
            time.sleep(0.1)
            done.append("cleaned up")
        assert done == ["cleaned up"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, ours)


def test_a_spawned_child_answers_ctrl_c_even_when_its_parent_ignores_it() -> None:
    ours = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job of a shell
    try:
        child = spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    finally:
        signal.signal(signal.SIGINT, ours)
    try:
        os.kill(child.pid, signal.SIGINT)
        assert child.wait(10) != 0  # SIG_DFL or, once Python is up, KeyboardInterrupt ended it
    finally:
        stop(child, 1)


def test_a_thread_cannot_defer_signals_and_does_not_try() -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with signals_deferred():
                pass
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert errors == []
