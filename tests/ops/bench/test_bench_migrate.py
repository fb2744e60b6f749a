"""`sqlfleet bench migrate` end to end at a small size: seeds, rolls out, verifies, writes JSON."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ops.cli import main


def test_bench_migrate_small(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "migrate", "--tenants", "120", "--concurrency", "8", "--synchronous", "NORMAL",
            "--data-dir", str(tmp_path / "data"), "--json-out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.exception)
    body = json.loads(out.read_text())
    assert body["bench"] == "migrate" and body["tenants"] == 120
    assert (body["rollout"]["migrated"], body["rollout"]["failed"]) == (120, 0)
    assert body["verified_tenants"] == 2  # every 97th tenant: t0000000 and t0000097
    assert body["tenants_per_s"] > 0 and "throughput" in body["targets"]
