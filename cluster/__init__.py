"""A sqlfleet cluster on etcd: membership (node leases), slot assignment by an elected
controller, slot ownership with fencing tokens, and every node's routing table.

Only `cluster.etcd` imports the etcd client (aetcd, ~120 ms of grpc on import), and only when a
cluster is configured: importing this package, `slots`, `keys`, `config` or `errors` is cheap.
"""
