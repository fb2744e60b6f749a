"""Deterministic fault simulation of WAL shipping (issue 11): one seed, one run, replayable.

Each seed drives random writes to a few tenants through the real fleet and shipper while the
simulated disk fills up, fails reads, writes and syncs, the process crashes or loses power at
any file operation, and the simulated S3 fails, times out, slows down and loses responses; then
every tenant is restored to many moments, from the local catalog and from the bucket alone, and
compared with what clients were told (tests/support/sim).

    SQLFLEET_SIM_SEEDS=5000 .venv/bin/pytest tests/backups/test_simulation.py   # more seeds
    SQLFLEET_SIM_FIRST=5000 SQLFLEET_SIM_SEEDS=1000 ...                         # other seeds
    SQLFLEET_SIM_STEPS=120 ...                                                  # longer runs
    SQLFLEET_SIM_SEED=1234 SQLFLEET_SIM_STEPS=32 ...                            # replay one

A failing seed's message ends with the command that replays it (the same seed and steps give
the same run, step for step: `test_a_seed_replays_exactly`).
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import gc
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from backups import continuity
from tests.support.sim.run import SimFailure, Simulation

# CI's share: 250 short runs, under a minute on one core (a run's cost grows with its steps; its
# faults, crashes and restores come from the seed's profile, so short runs cover them too)
SEEDS = int(os.environ.get("SQLFLEET_SIM_SEEDS", "250"))
STEPS = int(os.environ.get("SQLFLEET_SIM_STEPS", "32"))
ONE = os.environ.get("SQLFLEET_SIM_SEED")
FIRST = int(os.environ.get("SQLFLEET_SIM_FIRST", "0"))


def seeds() -> list[int]:
    if ONE is not None:
        return [int(ONE)]
    return list(range(FIRST, FIRST + SEEDS))


def replay_command(seed: int) -> str:
    return (
        f"SQLFLEET_SIM_SEED={seed} SQLFLEET_SIM_STEPS={STEPS} "
        f".venv/bin/pytest tests/backups/test_simulation.py -p no:cacheprovider"
    )


@pytest.mark.parametrize("seed", seeds())
def test_simulation(seed: int, tmp_path: Path) -> None:
    try:
        Simulation(seed, tmp_path / "sim", steps=STEPS).run()
    except SimFailure as exc:
        pytest.fail(f"{exc}\n\nreplay: {replay_command(seed)}", pytrace=False)


def test_a_seed_replays_exactly_however_fast_the_machine_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real time passing between a run's steps changes nothing: a CI machine under load once
    replayed seed 7 differently (whether a closed tenant's files were remembered depended on
    the real clock: backups.continuity SETTLE_NS)."""
    quick = Simulation(7, tmp_path / "quick", steps=60).run()
    leaving = continuity._leaving

    def slow_leaving(*args: Any) -> Any:  # as on a busy machine: the close comes 60 ms later
        time.sleep(0.06)
        return leaving(*args)

    monkeypatch.setattr(continuity, "_leaving", slow_leaving)
    assert Simulation(7, tmp_path / "slow", steps=60).run() == quick


def test_a_seed_replays_exactly(tmp_path: Path) -> None:
    """The same seed gives the same run (the same trace), in this process and in another one
    whose string hashing differs (set order must not steer a run)."""
    one, two = Simulation(7, tmp_path / "a", steps=60), Simulation(7, tmp_path / "b", steps=60)
    first = one.run()
    assert two.run() == first, "\n".join(
        difflib.unified_diff(one.trace, two.trace, "first run", "second run", lineterm="", n=3)
    )[:6000]
    code = (
        "import sys; from pathlib import Path; from tests.support.sim.run import Simulation;"
        "print(Simulation(7, Path(sys.argv[1]), steps=60).run())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == first


def _devnull_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == os.devnull:
                found.add(int(name))
        except OSError:
            continue
    return found


def test_a_run_closes_no_descriptor_of_the_test_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead process's descriptors are pointed at /dev/null and left to their holders, which
    may outlive the run (a spool copy a dead process still held, collected later). A number
    the run closed itself was reused by whoever opened next in this process, and then closed
    under it by the holder: the next test's server got "disk I/O error" from its catalog."""
    from tests.support.sim.disk import SimDisk

    let_go_numbers: set[int] = set()
    let_go = SimDisk.let_go

    def recorded(disk: SimDisk) -> None:
        before = _devnull_fds()
        let_go(disk)
        let_go_numbers.update(_devnull_fds() - before)

    monkeypatch.setattr(SimDisk, "let_go", recorded)
    innocents: dict[int, str] = {}
    try:
        # seeds whose dead processes left spool copies held past the end of the run
        for seed in (23, 42, 117, 134, 204):
            simulation = Simulation(seed, tmp_path / f"sim-{seed}", steps=STEPS)
            simulation.run()
            held = let_go_numbers & _devnull_fds()
            if held:
                break
        assert held, "no let-go descriptor still held after the runs (closed by the run?)"
        for fd in sorted(let_go_numbers - held):  # free after the run: taken by someone else
            if os.path.exists(f"/proc/self/fd/{fd}"):
                continue  # taken already (another thread's): never touched here, not even closed
            path = tmp_path / f"innocent-{fd}"
            innocent = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            # the lowest free number from fd on: fd itself unless another thread took it just now
            # (dup2 would have closed that thread's descriptor under it)
            taken = fcntl.fcntl(innocent, fcntl.F_DUPFD_CLOEXEC, fd)
            os.close(innocent)
            if taken != fd:
                os.close(taken)
                continue
            innocents[fd] = str(path)
        # (none may be free: all reused already. Then `held` above is the check: the run left
        # the numbers to their holders; taking a reused one would close another's descriptor)
        del simulation
        gc.collect()  # the holders go now, closing what they hold
        for fd, name in innocents.items():
            assert os.path.exists(f"/proc/self/fd/{fd}"), f"descriptor {fd} closed under its owner"
            assert os.readlink(f"/proc/self/fd/{fd}") == name
    finally:
        for fd in innocents:
            with contextlib.suppress(OSError):
                os.close(fd)
