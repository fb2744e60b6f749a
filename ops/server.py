"""Wiring: Settings in, a running server out (startup -> serve -> shutdown)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from types import FrameType

import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette

from backups.catalog import BackupCatalog
from backups.fleet_meta import FleetMeta
from backups.keyring import Keyring
from backups.replica_url import open_replica
from backups.sealed_replica import SealedReplica
from backups.service import Backups
from backups.shipper import Shipper, server_id
from metrics.instruments import TENANT_BYTES
from ops import fleetwork, keys
from ops.logs import configure_logging
from ops.node import ClusterNode, noted_writer
from ops.settings import Settings, url_host
from router.admission import LEND_AFTER, Admission
from router.app import build_app
from router.auth import Authenticator
from router.changes_api import encode_event
from router.context import Context
from router.hrana import Streams
from router.proxy.arrivals import Arrivals
from router.proxy.middleware import ProxyParts
from schema_sync.catch_up import SchemaHooks
from schema_sync.groups import GroupStore
from tenants.changes import ChangeFeed
from tenants.checkpointer import Checkpointer, WalGuard
from tenants.connection import configure_sqlite
from tenants.errors import BadRequest, SqlfleetError
from tenants.fleet import Fleet
from tenants.hooks import FleetHooks
from tenants.layout import DataDirLock, Layout

log = logging.getLogger(__name__)


@dataclass
class Server:
    """Everything a running sqlfleet owns. `close` is idempotent."""

    settings: Settings
    fleet: Fleet
    context: Context
    app: Starlette
    admin_key: str
    admin_key_generated: bool
    node: ClusterNode | None = None  # cluster mode
    stop_requested_at: float | None = None  # time.monotonic() of SIGTERM
    closed: bool = field(default=False, init=False)

    @classmethod
    def build(cls, settings: Settings) -> Server:
        """Take the data dir (raises DataDirLocked if another server has it) and build the app."""
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        node = _join_cluster(settings)
        try:
            return cls._build(settings, node)
        except BaseException:
            if node is not None:
                node.stop()
            raise

    @classmethod
    def _build(cls, settings: Settings, node: ClusterNode | None) -> Server:
        groups = fleetwork.group_store(settings.data_dir, settings.migration_timeout, node)
        hooks = _Hooks(settings, groups, node)
        fleet = Fleet(settings.data_dir, settings.db_config(), settings.pool_config(), hooks)
        if node is not None:
            fleet.admit = node.admit
        try:
            admin_key, generated = keys.admin_key(settings.admin_key, settings.data_dir)
            signing_key = keys.signing_key(settings.signing_key_file, settings.data_dir)
            auth = Authenticator(signing_key, admin_key, fleet.catalog.get)
        except BaseException:
            fleet.close()
            if hooks.backups is not None:
                hooks.backups.close()
            raise
        config = settings.router_config()
        context = Context(
            fleet,
            auth,
            config,
            groups=groups,
            rollouts=fleetwork.rollouts(groups, fleet, settings.rollout_concurrency, node),
            backups=hooks.backups,
            feed=hooks.feed,
            streams=Streams(
                fleet.pool,
                config.stream_idle_timeout,
                config.max_streams_per_tenant,
                config.max_streams,
                writable=fleet.writable,
                before_use=fleet.before_use,
            ),
            placement=node,
            admission=hooks.admission,
        )
        proxy = (
            ProxyParts(node, node.forwarder, node.websockets, Arrivals(fleet)) if node is not None else None
        )
        app = build_app(context, proxy)
        if node is not None:
            node.guard(app)  # a fenced node answers nothing but that it was fenced
        server = cls(settings, fleet, context, app, admin_key, generated, node)
        try:
            TENANT_BYTES.set_function(fleet.catalog.total_size)
            if hooks.backups is not None:
                if node is not None:  # before anything ships: stale copies must not
                    node.forget_if_taken_over(fleet, hooks.backups)
                hooks.backups.start(token_key_fingerprint(signing_key))
                if node is not None:
                    node.serve(fleet, hooks.backups)  # from now on its slots can move
            context.rollouts.start_runner()
        except BaseException:
            server.close()
            raise
        return server

    @property
    def backups(self) -> Backups | None:
        return self.context.backups

    def stop_accepting(self) -> None:
        """From now on /readyz answers 503, so a load balancer drains us while we finish."""
        self.context.stop_accepting()
        self.context.feed.close("the server is stopping")  # streams end now, not at the deadline
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()

    def deadline(self) -> float:
        """When shutdown must be over (time.monotonic): `shutdown_timeout` after the stop request."""
        start = self.stop_requested_at if self.stop_requested_at is not None else time.monotonic()
        return start + self.settings.shutdown_timeout

    def close(self) -> None:
        """Ship what is left, checkpoint the fully shipped WALs, close every handle, release the
        data dir. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.context.rollouts.close()  # before the fleet: its workers hold tenant leases
        self.context.streams.close()  # before the fleet: an open Hrana transaction holds a tenant lock
        self.context.feed.close("the server is stopping")
        backups = self.context.backups
        if backups is not None:
            # leave the WAL of every tenant still open empty (its frames are in the replica);
            # keep a second for closing the handles and the catalogs
            backups.stop(self.deadline() - 1.0)
        if self.fleet.lock_held:
            self.fleet.close()
        if backups is not None:
            backups.close()  # after the fleet: nothing calls its hooks any more
        self.context.close()
        if self.node is not None:
            self.node.stop()  # last: the slots go once everything here is shipped and closed


class _Hooks:
    """The fleet's hooks factory (see `tenants.fleet.HooksFactory`: the fleet calls it once,
    from its constructor, because the hooks need the fleet). Backups first, so the commits of a
    schema catch-up are shipped. Keeps the Backups it built, for the server."""

    def __init__(self, settings: Settings, groups: GroupStore, node: ClusterNode | None) -> None:
        self._settings = settings
        self._groups = groups
        self._node = node
        self.backups: Backups | None = None
        self.feed: ChangeFeed
        self.admission: Admission | None = None

    def __call__(self, fleet: Fleet) -> list[FleetHooks]:
        settings = self._settings
        hooks: list[FleetHooks] = []
        if settings.backups:
            self.backups = _backups(settings, fleet, self._groups, self._node)
            hooks += self.backups.fleet_hooks()
            on_full = self.backups.shipper.request_checkpoint
        else:  # nothing else would ever checkpoint
            checkpointer = Checkpointer(settings.wal_config(), fleet.lease_if_open)
            hooks.append(checkpointer)
            on_full = checkpointer.request
        hooks.append(WalGuard(settings.max_wal_bytes, on_full))
        schema = SchemaHooks(self._groups, fleet.group_of, settings.lazy_catch_up, settings.migration_timeout)
        # last: a schema catch-up's commits reach the change feed as a `schema` change
        self.feed = ChangeFeed(settings.feed_config(), fleet.pool, encode_event)
        if settings.runnable_workers:  # its commit hook goes on every tenant connection
            self.admission = Admission(settings.runnable_workers, LEND_AFTER, fleet.pool.is_open)
            return [*hooks, schema, self.feed, self.admission]
        return [*hooks, schema, self.feed]


def _join_cluster(settings: Settings) -> ClusterNode | None:
    """This server's cluster node, joined (None without `cluster_etcd`). Raises BadRequest for
    a cluster without backups (slots move through the replica), EtcdUnavailable, NodeIdInUse
    (another live node has this node's id)."""
    config = settings.cluster_config()
    if config is None:
        return None
    if not settings.backups:
        raise BadRequest("a cluster node needs backups on: tenants move between nodes through the replica")
    # what the data dir last ran as: `nodes/<id>` held by that process (dead: the data dir's lock
    # is free, `_check_before_joining`) is this node's own registration, replaced at once
    previous = noted_writer(Layout(settings.data_dir).system_dir)
    node = ClusterNode(config, settings.proxy_config(), settings.max_body_bytes, previous)
    try:
        _check_before_joining(settings, node)
        # said before the wait, so that a wrong URL is not a silent pause
        log.info(
            "joining cluster %s as node %s through etcd at %s (giving up after %g s)",
            config.name,
            config.node_id,
            ", ".join(config.endpoints),
            config.join_timeout,
        )
        node.start()
    except BaseException:
        node.stop()
        raise
    return node


def _check_before_joining(settings: Settings, node: ClusterNode) -> None:
    """What can refuse a cluster node's start, checked before it registers in etcd, so a refused
    start leaves nothing there (no node the controller gives slots to, no incarnation to take
    over): the data dir in use by another server, the backup key file, the replica prefix
    (another cluster's, or a single server's). Raises DataDirLocked, BadRequest, ForeignReplica,
    ReplicaError, BackupBroken."""
    probe = DataDirLock(Layout(settings.data_dir))
    probe.acquire()  # the fleet takes it for good once the node has joined
    probe.release()
    replica = _replica(settings, settings.backup_keyring())
    try:
        node.check_replica(replica)
    finally:
        replica.close()


def _replica(settings: Settings, keyring: Keyring | None) -> SealedReplica:
    """The replica the settings name, sealed with `keyring`."""
    return SealedReplica(
        open_replica(
            settings.replica_target(),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            force_path_style=settings.s3_force_path_style,
        ),
        keyring,
    )


def _backups(settings: Settings, fleet: Fleet, groups: GroupStore, node: ClusterNode | None) -> Backups:
    """WAL shipping, the fleet metadata (groups, tenant identities) and restore over the
    replica; not started yet (`Backups.start`). A cluster node ships under its incarnation
    (backups.fence)."""
    keyring = settings.backup_keyring()  # before anything opens: a bad key file stops the start
    replica = _replica(settings, keyring)
    try:
        catalog = BackupCatalog(fleet.layout.system_dir / "backups.db")
    except BaseException:
        replica.close()
        raise
    config = settings.shipper_config()
    server = server_id(fleet.layout)
    shipper = Shipper(
        replica,
        catalog,
        fleet.layout,
        config,
        server,
        fleet.lease_if_open,
        writer=node.writer if node is not None else None,
        on_fenced=node.on_fenced if node is not None else None,
    )
    meta = FleetMeta(replica, fleet.catalog, groups, server, config.flush_interval, config.retention)
    return Backups(replica, catalog, shipper, fleet, meta)


def token_key_fingerprint(key: Ed25519PrivateKey) -> str:
    """Names the key that signs tenant tokens without revealing it: a hash of its public key.
    Kept in the fleet metadata, so a restore can tell whether old tokens will work here."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


# Connections a listening socket holds until uvicorn accepts them (uvicorn's default); they
# queue there while the server starts, too.
BACKLOG = 2048
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


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM: uvicorn stops accepting and finishes in-flight requests,
    then every tenant handle is closed and the data-dir lock released. Raises CannotListen
    before anything is created, locked or joined when the address cannot be listened on."""
    # Listening first: a port in use stops the start before the data dir or the cluster is
    # touched, and a cluster node joins (and gets slots) only once connections to it queue in
    # the backlog until uvicorn serves them, instead of being refused meanwhile.
    sockets = listening_sockets(settings.host, settings.port)
    try:
        _serve(replace(settings, port=sockets[0].getsockname()[1]), sockets)  # --port 0: the one bound
    finally:
        for sock in sockets:
            sock.close()


def _serve(settings: Settings, sockets: list[socket.socket]) -> None:
    # Whatever the server makes (tenant files, WALs, catalogs, replica objects, keys, spool
    # files) is readable by its user only; the tenants layer also sets modes explicitly.
    os.umask(0o077)
    configure_logging(settings)
    configure_sqlite()
    server = Server.build(settings)
    url = f"http://{url_host(settings.host)}:{settings.port}"
    if server.admin_key_generated:
        print(f"sqlfleet: generated admin key (saved in {settings.data_dir / 'admin.key'}):", file=sys.stderr)
        print(f"  export SQLFLEET_ADMIN_KEY={server.admin_key}", file=sys.stderr)
    elif not settings.admin_key:
        print(f"sqlfleet: admin key is in {settings.data_dir / 'admin.key'}", file=sys.stderr)
    print(f"sqlfleet: serving {settings.data_dir} on {url}  (export SQLFLEET_URL={url})", file=sys.stderr)
    config = uvicorn_config(settings, server.app)
    try:
        _Uvicorn(config, server.stop_accepting).run(sockets=sockets)
    finally:
        server.stop_accepting()
        with _watchdog(server.deadline()):
            server.close()


class CannotListen(SqlfleetError):
    """The server's address cannot be listened on (a port in use, an address not this
    machine's): nothing was started. The CLI exits 2 with the message."""

    code = "cannot_listen"


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to `host`:`port` and listening (connections wait in their backlog until
    uvicorn serves them): one per address `host` resolves to, as asyncio's `create_server`
    (uvicorn's own bind) makes them, each by the stdlib's `socket.create_server`; with port 0,
    all on the port the first one got. Raises CannotListen (every socket closed)."""
    where = f"{url_host(host)}:{port}"
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {where}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys(found):
            if sockets and port == 0:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sockets.append(socket.create_server(address, family=family, backlog=BACKLOG))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(
                f"cannot listen on {where}: the address is already in use (another process "
                "listens there): stop it, or choose another --port"
            ) from None
        raise CannotListen(
            f"cannot listen on {where}: {os.strerror(exc.errno) if exc.errno else exc}"
        ) from None
    return sockets


def uvicorn_config(settings: Settings, app: Starlette) -> uvicorn.Config:
    """How uvicorn serves `app` (tests that need the real HTTP and WebSocket stack in-process
    use it too)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,  # no `server: uvicorn`: responses name no software or host detail
        log_config=None,  # uvicorn's loggers propagate to ours, in the same format
        lifespan="off",
        # Hrana over WebSocket: the `websockets` library's sans-I/O protocol (the legacy one warns);
        # a message past max_body_bytes closes the socket with 1009 before the app sees it
        ws="websockets-sansio",
        ws_max_size=settings.max_body_bytes,
        backlog=BACKLOG,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout * DRAIN_SHARE)),
    )


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
