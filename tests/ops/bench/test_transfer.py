"""`sqlfleet bench transfer` end to end at a small size."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import cli, ok


def test_bench_transfer_small(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    ok(cli(None, "bench", "transfer", "--mb", "3", "--subscribers", "5", "--json-out", str(out)))
    body = json.loads(out.read_text())
    assert body["bench"] == "transfer" and body["tenant_bytes"] > 3 << 20
    phases = body["phases"]
    assert {"export", "sqlite3_backup", "import"} <= set(phases)
    assert all(phases[p]["mb_per_s"] > 0 for p in ("export", "sqlite3_backup", "import"))
    assert phases["export"]["peak_rss_bytes"] > 0
    assert {"export MB/s", "import MB/s", "export peak RSS above idle"} <= set(body["targets"])
    feed = phases["feed"]
    assert feed["events"] == 5 * feed["commits"]  # every commit reached every stream
    assert 0 < feed["latency_p50_ms"] <= feed["latency_p99_ms"] <= feed["latency_max_ms"] < 10_000
    assert "feed: commit-to-event p99, 5 subscribers" in body["targets"]
