"""What tests share, one module per concern:

- `app`: the real ASGI app in-process (`in_process`, `InProcess`), the admin key and headers;
- `server`: real `sqlfleet serve` processes (`run_server`, `start_server`), `run_command`;
- `cli`: the `sqlfleet` CLI in-process (`cli`, `ok`, `fails`, `usage_error`);
- `http_contract`: every router response checked against the OpenAPI document;
- `loopback`: stand-in HTTP servers for fault injection;
- `waiting`: `wait_until`;
- per layer: `tenants`, `schema`, `backups`, `shipper`, `s3`, `hrana`.
"""
