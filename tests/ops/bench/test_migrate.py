"""`sqlfleet bench migrate` end to end at a small size: seeds, rolls out, verifies, writes JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import cli, ok


def test_bench_migrate_small(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    sizes = ("--tenants", "120", "--concurrency", "8", "--synchronous", "NORMAL")
    ok(cli(None, "bench", "migrate", *sizes, "--data-dir", str(tmp_path / "data"), "--json-out", str(out)))
    body = json.loads(out.read_text())
    assert body["bench"] == "migrate" and body["tenants"] == 120
    assert (body["rollout"]["migrated"], body["rollout"]["failed"]) == (120, 0)
    assert body["verified_tenants"] == 2  # every 97th tenant: t0000000 and t0000097
    assert body["tenants_per_s"] > 0 and "throughput" in body["targets"]
    # the floor: the same migration on as many copies with bare APSW, in the same run
    assert body["floor"]["tenants"] == 120 and body["floor"]["tenants_per_s"] > 0
    assert body["rollout_vs_floor"] == round(body["tenants_per_s"] / body["floor"]["tenants_per_s"], 3)


def test_bench_migrate_without_the_floor(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    sizes = ("--tenants", "10", "--concurrency", "2", "--synchronous", "NORMAL", "--no-floor")
    ok(cli(None, "bench", "migrate", *sizes, "--data-dir", str(tmp_path / "data"), "--json-out", str(out)))
    body = json.loads(out.read_text())
    assert body["rollout"]["migrated"] == 10 and "floor" not in body
    assert not (tmp_path / "data" / "floor").exists()
