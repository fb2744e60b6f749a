"""`sqlfleet status`: one screen on a running server — health, tenants by state, pool use,
backup shipping, running rollouts, and on a cluster node every node with its slots — built from
/readyz, /metrics and the admin API.

Exit status 0 when the server is ready, 1 when it answers but is not ready (or cannot be
reached), so scripts can wait on it.
"""

from __future__ import annotations

from typing import Any

import click
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from ops.cli.cluster import node_state
from ops.cli.common import admin_command, output, size
from ops.client import AdminClient

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def collect(client: AdminClient) -> dict[str, Any]:
    """The server's state as one JSON-ready dict. Raises ServerUnreachable, ApiError."""
    readiness = client.readiness()
    samples = _samples(client.metrics())
    groups = [g["name"] for g in client.list_groups()]
    rollouts = [r for g in groups for r in client.rollouts(g) if r.get("state") == "running"]
    return {
        "url": client.url,
        "ready": readiness["ready"],
        "checks": readiness["checks"],
        "replica": readiness.get("replica"),
        "tenants": {
            dict(labels)["state"]: int(v)
            for (name, labels), v in samples.items()
            if name == "sqlfleet_tenants"
        },
        "bytes_on_disk": int(samples.get(("sqlfleet_tenant_bytes", ()), 0)),
        "pool": {
            "open": int(samples.get(("sqlfleet_pool_open_handles", ()), 0)),
            "capacity": int(samples.get(("sqlfleet_pool_capacity", ()), 0)),
            "hits": int(samples.get(("sqlfleet_pool_hits_total", ()), 0)),
            "misses": int(samples.get(("sqlfleet_pool_misses_total", ()), 0)),
            "evictions": int(samples.get(("sqlfleet_pool_evictions_total", ()), 0)),
        },
        "backups": {
            "lag_max_seconds": samples.get(("sqlfleet_backup_lag_max_seconds", ()), 0.0),
            "backlog_bytes": int(samples.get(("sqlfleet_backup_backlog_bytes", ()), 0)),
            "upload_errors": int(samples.get(("sqlfleet_backup_upload_errors_total", ()), 0)),
            "segments_uploaded": int(samples.get(("sqlfleet_backup_segments_uploaded_total", ()), 0)),
        },
        "rollouts": [
            {k: r.get(k) for k in ("group", "id", "done", "failed", "remaining", "eta_s")} for r in rollouts
        ],
        # a cluster node (its /readyz has a cluster check): every node, its slots, whether it drains
        "cluster": client.cluster_status() if "cluster" in readiness["checks"] else None,
    }


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def render(state: dict[str, Any]) -> Table:
    """The one screen: a two-column table, section by section."""
    table = Table("", "", show_header=False, box=None, title=f"sqlfleet at {state['url']}")
    checks = ", ".join(f"{k} {'ok' if v else 'FAILING'}" for k, v in state["checks"].items())
    table.add_row("health", f"{'READY' if state['ready'] else 'NOT READY'} ({checks})")
    tenants = state["tenants"]
    by_state = ", ".join(f"{n} {s}" for s, n in sorted(tenants.items()) if n)
    table.add_row("tenants", f"{sum(tenants.values())} total: {by_state}")
    table.add_row("on disk", size(state["bytes_on_disk"]))
    pool = state["pool"]
    looked_up = pool["hits"] + pool["misses"]
    hit = f"{100 * pool['hits'] / looked_up:.1f}% hits" if looked_up else "no leases yet"
    table.add_row("pool", f"{pool['open']} / {pool['capacity']} open, {hit}, {pool['evictions']} evictions")
    b = state["backups"]
    lag = f"lag {b['lag_max_seconds']:.2f} s, backlog {size(b['backlog_bytes'])}"
    table.add_row("shipping", f"{lag}, {b['segments_uploaded']} segments, {b['upload_errors']} upload errors")
    if state["replica"] is not None:
        table.add_row("replica", f"{state['replica']['failed_flushes_in_a_row']} failed flushes in a row")
    if not state["rollouts"]:
        table.add_row("rollouts", "none running")
    for r in state["rollouts"]:
        eta = f", eta {r['eta_s']} s" if r["eta_s"] is not None else ""
        progress = f"{r['done']} done, {r['failed']} failed, {r['remaining']} left{eta}"
        table.add_row("rollout", f"{r['group']}/{r['id']}: {progress}")
    cluster = state["cluster"]
    if cluster is not None:
        table.add_row("cluster", f"node {cluster['node']}, {cluster['slots_owned']}/16384 slots owned")
        for node, info in cluster["nodes"].items():
            draining = ", draining" if info["draining"] else ""
            if info.get("state", "live") != "live":
                state_text = node_state(info, cluster.get("takeovers", {}).get(node))
                table.add_row("", f"{node} {info['url'] or '?'}: {state_text}{draining}")
                continue
            table.add_row("", f"{node} {info['url']}: {info['slots']} slots{draining}")
    return table


@click.command("status")
@admin_command
def status(client: AdminClient, as_json: bool) -> None:
    """One screen on a running server: health, tenants, pool, shipping, rollouts."""
    state = collect(client)
    output(state, as_json, render(state))
    if not state["ready"]:
        raise SystemExit(1)
