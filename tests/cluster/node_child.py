"""A cluster node in a child process, for tests that SIGSTOP it: `python -m
tests.cluster.node_child CONFIG_JSON`. It joins, claims what is assigned to it, and answers
each line on stdin with one JSON line: {"alive", "why", "incarnation", "owned": {slot: token},
"owns": [slots it may serve now]}."""

from __future__ import annotations

import json
import sys

from cluster.config import ClusterConfig
from cluster.membership import Node
from cluster.ownership import Ownership


def main() -> None:
    raw = json.loads(sys.argv[1])
    config = ClusterConfig(**{**raw, "endpoints": tuple(raw["endpoints"])})
    node = Node(config)
    node.start()
    ownership = Ownership(node)
    ownership.start()
    try:
        for _ in sys.stdin:
            owned = dict(ownership.owned())
            state = {
                "alive": node.alive(),
                "why": node.why_not_serving(),
                "incarnation": node.incarnation,
                "owned": {str(s): t for s, t in owned.items()},
                "owns": [s for s, t in owned.items() if ownership.owns(s, t)],
            }
            sys.stdout.write(json.dumps(state) + "\n")
            sys.stdout.flush()
    finally:
        node.stop()


if __name__ == "__main__":
    main()
