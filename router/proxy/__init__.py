"""Cluster routing in the router: serve a tenant here or forward it to its owner (issue 16)."""
