"""Open the ReplicaClient a `replica_url` setting names (parsing the URL; no I/O).

file:///var/lib/sqlfleet/replica   a local directory (percent-escapes decoded)
/var/lib/sqlfleet/replica          the same, as a plain path (~ expanded)
s3://bucket/some/prefix            S3 or a look-alike; endpoint, region and addressing
                                   style come from the keyword arguments
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from backups.errors import InvalidReplicaKey
from backups.local_replica import LocalReplica
from backups.replica import ReplicaClient
from tenants.errors import BadRequest

if TYPE_CHECKING:
    import boto3


def open_replica(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    force_path_style: bool = False,
    session: boto3.session.Session | None = None,
    **s3_options: Any,
) -> ReplicaClient:
    """The client `url` names. Raises BadRequest for a URL it cannot use. Does no I/O: a wrong
    bucket or an unreachable endpoint shows up as a ReplicaError on first use. `s3_options`
    go to S3Replica (timeouts, `max_connections`, `max_attempts`)."""
    if not url:
        raise BadRequest("replica_url must not be empty")
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if parts.query or parts.fragment:
            raise BadRequest(
                f"replica_url {url!r}: no query options; use the s3_* settings for endpoint and region"
            )
        if not parts.netloc:
            raise BadRequest(f"replica_url {url!r} names no bucket (s3://BUCKET/PREFIX)")
        # Imported here so a local-only install never pays for importing boto3.
        from backups.s3_replica import S3Replica

        try:
            return S3Replica(
                parts.netloc,
                parts.path.strip("/"),
                endpoint_url=endpoint_url,
                region=region,
                force_path_style=force_path_style,
                session=session,
                **s3_options,
            )
        except InvalidReplicaKey as e:
            raise BadRequest(f"replica_url {url!r}: {e.message}") from None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadRequest(f"replica_url {url!r}: file URLs must name a local path (file:///path)")
        return LocalReplica(Path(unquote(parts.path)))
    if parts.scheme == "" or (len(parts.scheme) == 1 and url[1:2] == ":"):  # also a Windows drive
        return LocalReplica(Path(url).expanduser())
    raise BadRequest(f"replica_url {url!r}: unknown scheme {parts.scheme!r} (use file:// or s3://)")
