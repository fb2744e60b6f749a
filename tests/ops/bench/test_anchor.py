"""`sqlfleet bench backups --against litestream` at a tiny size: real moto, a real sqlfleet server
and a real Litestream 0.5 (the `bench` extra, part of `dev`), side by side in one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.bench import litestream
from tests.support.server import run_bench

SIDES = ("sqlfleet", "litestream")


@pytest.mark.timeout(300)
def test_a_tiny_run_compares_both_sides_on_every_metric(tmp_path: Path) -> None:
    args = "--against litestream --sizes 3 --seconds 2 --rate 20 --restore-mb 1 --restore-commits 20"
    proc, r = run_bench(tmp_path, "backups", *args.split(), timeout=280)
    assert "N=3: PUTs/s" in proc.stdout
    assert r["litestream_version"].lstrip("v").startswith("0.5.")
    (size,) = r["sizes"]
    assert size["databases"] == 3
    for side in SIDES:
        s = size[side]
        assert "broken" not in s, s
        assert s["commits"] >= 30 and s["errors"] == 0  # 20/s for 2 s, and the probe's
        assert s["puts_per_s"] > 0 and s["requests_per_s"] >= s["puts_per_s"]
        assert s["requests"].get("PUT", 0) >= 1
        assert s["samples"] >= 1 and 0 < s["lag_p50_s"] <= s["lag_p99_s"] < 30
        assert s["cpu_s_per_1000_commits"] > 0
        assert s["peak_rss_bytes"] > 1 << 20 and s["peak_open_fds"] > 3
    for side in SIDES:  # both restored exactly the first half, to a second between the halves
        x = r["restore"][side]
        assert x["exact"] and x["rows"] == 10 and x["seconds"] > 0 and x["db_bytes"] > 1_000_000, x
    assert r["targets"]["restore 1 MB to a mid timestamp"]["met"]


def test_the_config_replicates_each_database_to_its_own_path(tmp_path: Path) -> None:
    paths = litestream.make_databases(tmp_path, ["a", "b"])
    text = litestream.config(paths, "http://127.0.0.1:9", "bucket", "ls-x", 1.0)
    assert text.count("- path: ") == 2 and "path: ls-x/a" in text and "path: ls-x/b" in text
    assert "sync-interval: 1000ms" in text and "force-path-style: true" in text
    assert all(p.stat().st_size > 0 for p in paths)
    assert "AWS_CA_BUNDLE" not in litestream.environment()


def test_request_counts_are_the_replicators_own_by_prefix() -> None:
    rows = [["testing", "PUT", "ls-x", 3], ["testing", "GET", "ls-x", 2], ["bench", "GET", "ls-x", 9]]
    rows += [["testing", "PUT", "sf-y", 4]]
    assert litestream.counts_by_prefix(rows, "testing", "ls-x") == {"PUT": 3, "GET": 2}
