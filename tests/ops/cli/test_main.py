"""The `sqlfleet` group: every command group registered; the benchmarks loaded only on demand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.cli import cli, ok

REPO = Path(__file__).resolve().parents[3]


def test_every_command_group_is_there() -> None:
    shown = ok(cli(None, "--help"))
    for command in ("serve", "tenant", "token", "restore", "backups", "group", "migrate", "status", "bench"):
        assert f"  {command} " in shown, command


def test_the_benchmarks_load_only_when_a_benchmark_is_asked_for() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from ops.cli import main\n"
        "for args in (['--help'], ['tenant', '--help'], ['status', '--help']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith('ops.bench')))\n"
        "assert CliRunner().invoke(main, ['bench', 'fleet', '--help']).exit_code == 0\n"
        "print('ops.bench.core' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "True"]


def test_bench_lists_its_commands() -> None:
    shown = ok(cli(None, "bench", "--help"))
    for command in ("fleet", "hot", "cold", "backups", "migrate"):
        assert f"  {command} " in shown, command


def test_version_is_the_installed_packages() -> None:
    from importlib.metadata import version

    assert ok(cli(None, "--version")) == f"sqlfleet {version('sqlfleet')}\n"
