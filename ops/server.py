"""Wiring: Settings in, a running server out (startup -> serve -> shutdown)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from ops import keys
from ops.settings import Settings
from router.app import build_app
from router.auth import Authenticator
from router.context import RouterConfig
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

    @classmethod
    def build(cls, settings: Settings) -> Server:
        """Take the data dir (raises DataDirLocked if another server has it) and build the app."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fleet = Fleet(settings.data_dir, settings.db_config(), settings.pool_capacity)
        try:
            admin_key, generated = keys.admin_key(settings.admin_key, settings.data_dir)
            auth = Authenticator(keys.signing_key(settings.signing_key_file, settings.data_dir), admin_key)
        except BaseException:
            fleet.close()
            raise
        config = RouterConfig(
            max_body_bytes=settings.max_body_bytes,
            max_batch_statements=settings.max_batch_statements,
            max_token_ttl=settings.max_token_ttl,
            worker_threads=settings.worker_threads,
        )
        return cls(settings, fleet, build_app(fleet, auth, config), admin_key, generated)

    def close(self) -> None:
        if self.fleet.lock_held:
            self.fleet.close()


class _Uvicorn(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, which would kill the process before
    our own shutdown runs; here a signal only asks uvicorn to stop, and we exit normally."""

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
    then every tenant handle is closed and the data-dir lock released."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
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
        lifespan="off",
    )
    try:
        _Uvicorn(config).run()
    finally:
        server.close()
