"""ops.bench.ack with tiny numbers: two real servers (ack=local, ack=replica) on one moto."""

from __future__ import annotations

from ops.bench.ack import ack_rows, measure_ack
from tests.support.s3 import MotoServer


def test_measure_ack_reports_both_sides(moto_server: MotoServer) -> None:
    r = measure_ack(
        moto_server, tenants=2, concurrency=2, slices=2, slice_seconds=0.4, flush_interval=0.2, timeout=120
    )
    for side in ("local", "replica"):
        assert r[side]["writes"] > 0 and r[side]["errors"] == 0, r
        assert 0 < r[side]["latency_ms"]["p50"] <= r[side]["latency_ms"]["p99"], r
    assert r["throughput_ratio"] == round(r["replica"]["writes_per_s"] / r["local"]["writes_per_s"], 3)
    # a durable ack waits for a PUT; the local one does not
    assert r["replica"]["latency_ms"]["p50"] > r["local"]["latency_ms"]["p50"], r
    assert r["p50_cost_ms"] == round(r["replica"]["latency_ms"]["p50"] - r["local"]["latency_ms"]["p50"], 3)
    assert [row[0].split(":")[0] for row in ack_rows(r)] == ["ack=local", "ack=replica", "ack=replica cost"]
