"""`sqlfleet cluster status|drain NODE`: a cluster as one of its nodes sees it, and planned moves
of a node's slots to the others. Clients of any node (each answers for the whole cluster).

Exit status as every admin command's: 2 for a command line refused before asking the server
(click's usage errors; here also an invalid node id), 1 for what the server refuses (a node
that is not live, the last node not draining: 409) or a failure on the way."""

from __future__ import annotations

import time

import click
from rich.table import Table
from rich.text import Text

from cluster.config import check_node_id
from ops.api_types import ClusterNodeInfo, ClusterStatus
from ops.cli.common import admin_command, console, output
from ops.client import AdminClient
from ops.errors import ClientError
from tenants.errors import BadRequest

SLOTS = 16384  # cluster.slots.SLOTS (not imported: the CLI stays light)
POLL = 0.5  # seconds between looks while `drain --wait` waits


def _status_table(status: ClusterStatus) -> Table:
    table = Table("node", "url", "slots", "draining", "state", title=_title(status))
    table.columns[2].justify = "right"
    for node, info in status["nodes"].items():
        cells = (
            node,
            info["url"] or "?",
            info["slots"],
            "yes" if info["draining"] else "-",
            node_state(info, status.get("takeovers", {}).get(node)),
        )
        table.add_row(*(Text(str(c)) for c in cells))
    return table


def node_state(info: ClusterNodeInfo, pending: str | None = None) -> str:
    """ "live", or for a node that holds slots without a lease e.g. "LEASE LOST 3 s ago, 5570
    slots not served, takeover in 27 s" (`sqlfleet status` shows it too). `pending`: why its
    takeover failed so far (the status's `takeovers`), if it did."""
    if info.get("state", "live") == "live":
        return "live"
    if info.get("state") == "fenced":  # the node answering was taken over (ops.node)
        return "FENCED (taken over): restart it"
    ago, due = info.get("lease_lost_ago_s"), info.get("takeover_in_s")
    when = "before this node started" if ago is None else f"{ago:g} s ago"
    if pending is not None:
        takeover = f", takeover pending: {pending}"
    elif due is None:
        takeover = ""
    elif due > 0:
        takeover = f", takeover in {due:g} s"
    else:  # the controller's attempt runs (it reads the replica) and has not failed yet
        takeover = ", takeover under way"
    return f"LEASE LOST {when}, {info.get('assigned_slots', 0)} slots not served{takeover}"


def _title(status: ClusterStatus) -> str:
    served = "serving" if status["serving"] else f"NOT serving: {status['reason']}"
    return f"seen from {status['node']} ({served}); {status['slots_owned']}/{SLOTS} slots owned"


@click.group()
def cluster() -> None:
    """Inspect a sqlfleet cluster and move a node's slots away (through any node)."""


@cluster.command("status")
@click.option("--tenant", default=None, metavar="ID", help="Also show where tenant ID lives.")
@admin_command
def status(client: AdminClient, as_json: bool, tenant: str | None) -> None:
    """Every node: its URL, the slots it owns, whether it drains."""
    body = client.cluster_status(tenant)
    output(body, as_json, _status_table(body))
    if not as_json:  # a node the table does not show (its lease_lost entry went meanwhile)
        for node, reason in body.get("takeovers", {}).items():
            if node not in body["nodes"]:
                console().print(Text(f"takeover of node {node} pending: {reason}"))
    where = body.get("tenant")
    if where is not None and not as_json:
        owner = where["owner"]["node"] if where["owner"] else "nobody right now"
        console().print(f"tenant {where['id']}: slot {where['slot']}, served by {owner}")


def _node_id(ctx: click.Context, param: click.Parameter, node: str) -> str:
    """NODE, checked here: an invalid id is a usage error (exit 2), never sent."""
    try:
        return check_node_id(node)
    except BadRequest as exc:
        raise click.BadParameter(exc.message) from None


@cluster.command("drain")
@click.argument("node", metavar="NODE", callback=_node_id)
@click.option("--undo", is_flag=True, help="Stop draining NODE: it gets its share of slots again.")
@click.option("--wait/--no-wait", default=True, help="Wait until NODE owns no slot (default: wait).")
@click.option("--wait-timeout", type=float, default=600.0, show_default=True, help="Seconds to wait at most.")
@admin_command
def drain(client: AdminClient, as_json: bool, node: str, undo: bool, wait: bool, wait_timeout: float) -> None:
    """Move every slot of NODE to the other nodes (planned moves: each slot's tenants are
    shipped and handed over, nothing acknowledged is lost), e.g. before taking NODE down."""
    body = client.drain_node(node, undo)
    if wait and not undo:
        body = _wait_drained(client, node, wait_timeout)
    output(body, as_json, _status_table(body))


def _wait_drained(client: AdminClient, node: str, timeout: float) -> ClusterStatus:
    deadline = time.monotonic() + timeout
    with console().status(f"draining {node}") as shown:
        while True:
            body = client.cluster_status()
            left = body["nodes"].get(node, {"slots": 0})["slots"]
            if left == 0 and body["slots_owned"] == SLOTS:
                return body
            if time.monotonic() > deadline:
                raise ClientError(f"{node} still owns {left} slots after {timeout:g}s (it keeps draining)")
            shown.update(f"draining {node}: {left} slots left, {body['slots_owned']}/{SLOTS} owned")
            time.sleep(POLL)
