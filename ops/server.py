"""Wiring: Settings in, a running server out (startup -> serve -> shutdown)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from backups.catalog import BackupCatalog
from backups.replica import ReplicaError
from backups.replica_factory import open_replica
from backups.service import Backups
from backups.shipper import Shipper, ShipperConfig, server_id
from metrics.instruments import BACKUP_BACKLOG_BYTES, TENANT_BYTES
from ops import keys
from ops.settings import Settings
from router.app import build_app
from router.auth import Authenticator
from router.context import RouterConfig
from router.observe import JsonLines
from schema_sync.catch_up import SchemaHooks
from schema_sync.groups import GroupStore
from schema_sync.rollout import Rollouts
from tenants.fleet import Fleet

log = logging.getLogger(__name__)


@dataclass
class Server:
    """Everything a running sqlfleet owns. `close` is idempotent."""

    settings: Settings
    fleet: Fleet
    app: Starlette
    admin_key: str
    admin_key_generated: bool
    backups: Backups | None = None

    @classmethod
    def build(cls, settings: Settings) -> Server:
        """Take the data dir (raises DataDirLocked if another server has it) and build the app."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fleet = Fleet(settings.data_dir, settings.db_config(), settings.pool_capacity)
        try:
            admin_key, generated = keys.admin_key(settings.admin_key, settings.data_dir)
            auth = Authenticator(keys.signing_key(settings.signing_key_file, settings.data_dir), admin_key)
            backups = _backups(settings, fleet) if settings.backups else None
        except BaseException:
            fleet.close()
            raise
        config = RouterConfig(
            max_body_bytes=settings.max_body_bytes,
            max_batch_statements=settings.max_batch_statements,
            max_token_ttl=settings.max_token_ttl,
            worker_threads=settings.worker_threads,
            stream_idle_timeout=settings.stream_idle_timeout,
            max_streams_per_tenant=settings.max_streams_per_tenant,
            max_streams=settings.max_streams,
            base_domain=settings.base_domain,
        )
        fleet.pool.busy_timeout = settings.busy_timeout
        TENANT_BYTES.set_function(fleet.catalog.total_size)
        app = build_app(fleet, auth, config)
        app.state.ctx.backups = backups
        app.state.groups, app.state.rollouts = _schema_sync(settings, fleet)
        return cls(settings, fleet, app, admin_key, generated, backups)

    stop_requested_at: float | None = None  # time.monotonic() of SIGTERM

    def stop_accepting(self) -> None:
        """From now on /readyz answers 503, so a load balancer drains us while we finish."""
        self.app.state.ctx.shutting_down = True
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()

    def deadline(self) -> float:
        """When shutdown must be over (time.monotonic): `shutdown_timeout` after the stop request."""
        start = self.stop_requested_at if self.stop_requested_at is not None else time.monotonic()
        return start + self.settings.shutdown_timeout

    def close(self) -> None:
        """Ship what is left, checkpoint the fully shipped WALs, close every handle, release the
        data dir. Idempotent."""
        rollouts = getattr(self.app.state, "rollouts", None)
        if rollouts is not None:
            rollouts.close()  # before the fleet: its workers hold tenant leases
        self.app.state.hrana.close()  # before the fleet: an open Hrana transaction holds a tenant lock
        if self.backups is not None:
            self.backups.shipper.stop()
            # leave the WAL of every tenant still open empty (its frames are in the replica);
            # keep a second for closing the handles and the catalogs
            self.backups.shipper.checkpoint_shipped(self.deadline() - 1.0)
        if self.fleet.lock_held:
            self.fleet.close()
        if self.backups is not None:
            self.backups.catalog.close()
            self.backups.replica.close()
            self.backups = None


def _schema_sync(settings: Settings, fleet: Fleet) -> tuple[GroupStore, Rollouts]:
    """Schema groups and rollouts; the hook that creates group tenants from their template and
    catches tenants up on open. Added after the backup hooks, so catch-up commits are shipped."""
    groups = GroupStore(settings.data_dir, settings.migration_timeout)

    def group_of(tenant_id: str) -> str | None:
        row = fleet.catalog.get(tenant_id)
        return row.group if row is not None else None

    fleet.hooks.append(SchemaHooks(groups, group_of, settings.lazy_catch_up, settings.migration_timeout))
    return groups, Rollouts(groups, fleet, settings.rollout_concurrency)


def _backups(settings: Settings, fleet: Fleet) -> Backups:
    """WAL shipping hooked into the fleet, plus restore; the shipper's loop is started here."""
    replica = open_replica(
        settings.replica_target(),
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        force_path_style=settings.s3_force_path_style,
    )
    catalog = BackupCatalog(fleet.layout.system_dir / "backups.db")
    config = ShipperConfig(
        flush_interval=settings.backup_flush_interval,
        segment_max_bytes=settings.backup_segment_max_bytes,
        checkpoint_frames=settings.backup_checkpoint_frames,
        snapshot_bytes=settings.backup_snapshot_bytes,
        snapshot_interval=settings.backup_snapshot_interval,
        max_backlog_bytes=settings.backup_max_backlog_bytes,
    )
    shipper = Shipper(replica, catalog, fleet.layout, config, server_id(fleet.layout))
    shipper.lease = fleet.lease_if_open
    BACKUP_BACKLOG_BYTES.set_function(shipper.backlog_bytes)  # current at every scrape, not per flush
    backups = Backups(replica, catalog, shipper, fleet)
    shipper.periodic = lambda: backups.enforce_retention(settings.backup_retention)
    fleet.hooks.extend([shipper, backups])
    try:
        backups.rebuild_if_empty()  # a fresh data dir over a bucket: know what it can restore
    except ReplicaError as exc:
        log.warning("could not read the backup catalog from the replica (%s); POST "
                    "/v1/admin/backups/rebuild once it is reachable", exc)  # fmt: skip
    shipper.start()
    return backups


# The share of `shutdown_timeout` in-flight requests get (a statement is bounded by its own
# timeout; this bounds slow clients); the rest ships the last WAL frames and checkpoints.
DRAIN_SHARE = 0.6


class _Uvicorn(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, which would kill the process before
    our own shutdown runs; here a signal only asks uvicorn to stop, and we exit normally."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def configure_logging(settings: Settings) -> None:
    """Root handler on stderr in the chosen format; uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM: uvicorn stops accepting and finishes in-flight requests,
    then every tenant handle is closed and the data-dir lock released."""
    configure_logging(settings)
    server = Server.build(settings)
    url = f"http://{settings.host}:{settings.port}"
    if server.admin_key_generated:
        print(f"sqlfleet: generated admin key (saved in {settings.data_dir / 'admin.key'}):", file=sys.stderr)
        print(f"  export SQLFLEET_ADMIN_KEY={server.admin_key}", file=sys.stderr)
    elif not settings.admin_key:
        print(f"sqlfleet: admin key is in {settings.data_dir / 'admin.key'}", file=sys.stderr)
    print(f"sqlfleet: serving {settings.data_dir} on {url}  (export SQLFLEET_URL={url})", file=sys.stderr)
    config = uvicorn.Config(
        server.app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        log_config=None,  # uvicorn's loggers propagate to ours, in the same format
        lifespan="off",
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout * DRAIN_SHARE)),
    )
    try:
        _Uvicorn(config, server.stop_accepting).run()
    finally:
        server.stop_accepting()
        with _watchdog(server.deadline()):
            server.close()


@contextlib.contextmanager
def _watchdog(deadline: float) -> Iterator[None]:
    """Exit hard (status 1) if the block is still running at `deadline`: better than the
    orchestrator's SIGKILL a moment later, and every acknowledged write is already durable on
    disk (an unshipped tail ships on the next start)."""

    def give_up() -> None:
        log.error("shutdown did not finish within shutdown_timeout; exiting now")
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
