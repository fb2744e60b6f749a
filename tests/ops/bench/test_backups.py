"""`sqlfleet bench backups` in quick mode: real moto, real servers, a few tenants, short phases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ops.bench.s3 import quantile, share_within
from tests.support.server import run_bench


def test_quick_run_reports_lag_puts_throughput_and_restore(tmp_path: Path) -> None:
    sizes = "--sizes 2,6 --seconds 1 --flush-interval 0.2 --concurrency 4 --timeout 120"
    more = "--ratio-tenants 3 --ratio-slices 2 --slice-seconds 0.4 --restore-mb 1 --restore-commits 40"
    args = [*sizes.split(), *more.split()]
    proc, r = run_bench(tmp_path, "backups", *args, timeout=180)
    assert "sqlfleet bench backups" in proc.stdout
    assert [p["tenants"] for p in r["lag"]] == [2, 6]
    for p in r["lag"]:
        assert p["writes"] > 0 and p["errors"] == 0
        # every commit of the phase was shipped and observed, the probe's included
        assert p["commits_observed"] >= p["writes"]
        assert 0 < p["lag_p50_s"] <= p["lag_p99_s"] < 5
        assert p["probe"]["samples"] >= 1 and p["probe"]["errors"] == []
        assert p["puts"] >= 1 and p["puts_per_s"] > 0 and p["segments"] >= 1
        assert 1 <= p["dirty_tenants_per_segment_max"] <= p["tenants"] + 1  # + the probe tenant
    assert r["puts_spread"] >= 1
    assert [b["dirty_tenants"] for b in r["bursts"]] == [2, 6]
    for b in r["bursts"]:  # one flush carries every dirty tenant in one PUT
        assert b["puts"] == b["segments"] == 1 and b["dirty_tenants_per_segment_max"] == b["dirty_tenants"]
    t = r["throughput"]
    assert t["on"]["writes"] > 0 and t["off"]["writes"] > 0 and t["on"]["errors"] == t["off"]["errors"] == 0
    assert t["ratio"] == round(t["on"]["writes_per_s"] / t["off"]["writes_per_s"], 3)
    x = r["restore"]
    assert x["commits_applied"] == 40  # exactly the commits after the one snapshot
    assert x["db_bytes"] > 1_000_000 and x["snapshot_bytes"] > 900_000 and x["seconds"] > 0
    assert {"throughput ratio", "PUTs/s max / min over sizes", "PUTs per flush max / min"} <= set(
        r["targets"]
    )


def test_quantiles_interpolate_inside_buckets() -> None:
    buckets = [(0.5, 10.0), (1.0, 90.0), (1.5, 99.0), (2.0, 100.0), (math.inf, 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.5 + 0.5 * 40 / 80)
    assert quantile(buckets, 0.99) == pytest.approx(1.5)
    assert share_within(buckets, 1.5) == 0.99
    assert quantile([(1.0, 0.0), (math.inf, 4.0)], 0.5) == 1.0  # all past the last edge
    assert quantile([(1.0, 0.0), (math.inf, 0.0)], 0.5) == 0.0
