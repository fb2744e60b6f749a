"""`--profile` on the benchmarks: py-spy (the `bench` extra, part of `dev`) records the server
under test while the measured part runs, thread by thread."""

from __future__ import annotations

from pathlib import Path

from ops.bench import profile
from tests.support.server import run_bench


def test_a_bench_writes_a_profile_of_its_server_with_thread_ids(tmp_path: Path) -> None:
    stacks = tmp_path / "fleet.txt"
    args = ["fleet", "--tenants", "20", "--rounds", "20", "--concurrency", "2", "--timeout", "60"]
    _, report = run_bench(tmp_path, *args, "--profile", str(stacks), timeout=120)
    assert report["bench"] == "fleet"
    lines = stacks.read_text().splitlines()
    assert lines and all(line.startswith("thread (") for line in lines)  # collapsed, per thread
    assert any("serve" in line for line in lines)  # the server's stacks, not the bench's


def test_the_format_follows_the_suffix_and_the_mode_the_samples() -> None:
    def cmd(name: str, mode: str = "active") -> list[str]:
        return profile.command("py-spy", 42, Path(name), mode)

    assert cmd("a.svg")[cmd("a.svg").index("--format") + 1] == "flamegraph"
    assert cmd("a.json")[cmd("a.json").index("--format") + 1] == "speedscope"
    assert cmd("a.txt")[cmd("a.txt").index("--format") + 1] == "raw"
    assert "--threads" in cmd("a.txt") and "--gil" in cmd("a.txt", "gil") and "--idle" in cmd("a.txt", "idle")
    assert "--gil" not in cmd("a.txt") and "--idle" not in cmd("a.txt")
    assert "--nonblocking" in cmd("a.txt")  # never stops the server it measures
