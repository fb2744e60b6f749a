"""The one launcher of an S3-compatible test server: moto in a child process on 127.0.0.1, for the
tests and `sqlfleet bench backups` (needs the `moto[server]` extra).

`MotoServer` keeps one port for its whole life and can fake an outage three ways:
- `stop()` / `start()`: the listener closes and every open connection is cut (clients get
  connection refused / reset), then it listens again on the same port. The process lives on, so
  every bucket and object survives.
- `freeze()` / `thaw()`: SIGSTOP / SIGCONT. Connections are accepted by the kernel but never
  answered, so clients run into their timeouts (a hung S3, not a dead one).
- `kill()` then `start()`: SIGKILL and a new process; all objects are lost, the buckets are
  created again.
Run as `python -m ops.moto_s3 --serve PORT` this module is that child process: it reads
`stop`/`start` lines on stdin, answers `ok ...` on stdout, and exits when stdin closes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from ops.errors import LaunchError
from ops.process import REPO, kill, pause, resume, spawn, stop

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_s3 import S3Client

    from backups.s3_replica import S3Replica

BUCKET = "sqlfleet-test"
REGION = "us-east-1"
_ACCESS_KEY = "testing"  # moto accepts any credentials
_SECRET_KEY = "testing"


def aws_env() -> dict[str, str]:
    """Dummy AWS credentials as environment variables, for a child process's env or for
    monkeypatch.setenv; they also shut out the developer's ~/.aws and the EC2 metadata probe."""
    return {
        "AWS_ACCESS_KEY_ID": _ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": _SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _stable_port() -> int:
    """A free loopback port below the kernel's ephemeral range. A port inside it may be handed
    to some outgoing connection (even one to itself) while the server is stopped, and then the
    server could not listen on it again."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = random.Random().sample(range(max(1024, low - 12000), low), 200)
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise LaunchError("no free port below the ephemeral range")


class MotoServer:
    """A moto S3 server in a child process; see the module docstring for the outage controls.
    `launch()` (or `with`) starts it; `close()` ends it. Not thread-safe: drive it from one thread.
    Every method raises LaunchError when the child does not do what it is told in time."""

    def __init__(self, log_path: Path, buckets: tuple[str, ...] = (BUCKET,)) -> None:
        self.port = _stable_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.buckets = buckets
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._listening = False
        self._frozen = False
        self._session: boto3.session.Session | None = None

    def __enter__(self) -> MotoServer:
        self.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def launch(self, wait: float = 60.0) -> None:
        """Start the child process, wait for it to listen, create the buckets."""
        if importlib.util.find_spec("moto") is None:
            raise LaunchError("an S3 test server needs moto: pip install 'moto[server]'")
        env = {**os.environ, **aws_env()}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            self._proc = spawn(
                [sys.executable, "-m", "ops.moto_s3", "--serve", str(self.port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
            )
        try:
            self._expect("ready", wait)
            self._listening = True
            s3 = self.client()
            for bucket in self.buckets:
                s3.create_bucket(Bucket=bucket)
            s3.close()
        except BaseException:
            self.close()
            raise

    def stop(self) -> None:
        """Close the listener and cut every connection; data is kept. Idempotent."""
        self.thaw()
        if self._listening and self._alive():
            self._command("stop")
        self._listening = False

    def start(self) -> None:
        """Listen again on the same port (relaunching after `kill()`). Idempotent."""
        self.thaw()
        if not self._alive():
            self.launch()
        elif not self._listening:
            self._command("start")
            self._listening = True

    def freeze(self) -> None:
        """SIGSTOP the server: requests hang until the client's timeouts fire."""
        if self._proc is not None and self._alive() and not self._frozen:
            pause(self._proc)
            self._frozen = True

    def thaw(self) -> None:
        if self._proc is not None and self._frozen and self._alive():
            resume(self._proc)
        self._frozen = False

    def kill(self) -> None:
        """SIGKILL: every object is lost; `start()` brings up an empty server with the buckets."""
        if self._proc is not None:
            kill(self._proc)
        self._reap()

    def close(self) -> None:
        """End the child (it exits when its stdin closes; SIGTERM, then SIGKILL, if it does not).
        Idempotent."""
        self.thaw()
        if self._proc is not None:
            if self._proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)
            stop(self._proc, 5)
        self._reap()

    def _reap(self) -> None:
        """Forget an ended child: close our ends of its pipes."""
        if self._proc is not None:
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self._proc = None
        self._listening = self._frozen = False

    def session(self) -> boto3.session.Session:
        """A session with the dummy credentials, shared so clients build fast (boto3 sessions
        are not thread-safe: make clients from one thread)."""
        import boto3

        if self._session is None:
            self._session = boto3.session.Session(
                aws_access_key_id=_ACCESS_KEY, aws_secret_access_key=_SECRET_KEY, region_name=REGION
            )
        return self._session

    def client(self, max_attempts: int = 2) -> S3Client:
        """A plain boto3 client (thread-safe once made), for setting up and checking behind a
        replica's back."""
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": max_attempts})
        return self.session().client("s3", endpoint_url=self.url, config=config)

    def replica(self, prefix: str, bucket: str = BUCKET, **options: Any) -> S3Replica:
        from backups.s3_replica import S3Replica

        # moto sometimes answers 500 to concurrent overwrites of one key (a moto race, not
        # ours); more retries than production's default keep such tests about our code
        options.setdefault("max_attempts", 8)
        return S3Replica(
            bucket,
            prefix,
            endpoint_url=self.url,
            region=REGION,
            force_path_style=True,
            session=self.session(),
            **options,
        )

    def server_env(self, prefix: str, bucket: str = BUCKET) -> dict[str, str]:
        """Environment for a `sqlfleet serve` child process replicating to this server."""
        return {
            **aws_env(),
            "SQLFLEET_REPLICA_URL": f"s3://{bucket}/{prefix}",
            "SQLFLEET_S3_ENDPOINT_URL": self.url,
            "SQLFLEET_S3_REGION": REGION,
            "SQLFLEET_S3_FORCE_PATH_STYLE": "true",
        }

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self, command: str, wait: float = 15.0) -> None:
        if self._proc is None or self._proc.stdin is None:
            raise LaunchError(f"moto server: not running, cannot {command}")
        self._proc.stdin.write(f"{command}\n".encode())
        self._proc.stdin.flush()
        self._expect(f"ok {command}", wait)

    def _expect(self, reply: str, wait: float) -> None:
        """Read one line from the child within `wait` seconds; it must be `reply`."""
        if self._proc is None or self._proc.stdout is None:
            raise LaunchError(f"moto server: not running, no {reply!r}")
        fd = self._proc.stdout.fileno()
        line = b""
        deadline = time.monotonic() + wait
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise LaunchError(f"moto server: no {reply!r} in {wait}s; log {self.log_path}")
            chunk = os.read(fd, 1)
            if not chunk:
                raise LaunchError(f"moto server exited; log {self.log_path}")
            line += chunk
        if line.decode().strip() != reply:
            raise LaunchError(f"moto server said {line!r}, wanted {reply!r}; log {self.log_path}")


def _serve(port: int) -> None:
    """The child process: moto behind a werkzeug server that can close and reopen its port."""
    import logging

    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import ThreadedWSGIServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything moto prints goes to the log, not into the reply channel

    class Server(ThreadedWSGIServer):
        """Tracks open connections so `stop` can cut requests in flight too: closing the
        listener alone would let a half-sent upload finish after the "outage" began."""

        connections: set[socket.socket]
        lock: threading.Lock

        def process_request(self, request: Any, client_address: Any) -> None:
            with self.lock:
                self.connections.add(request)
            super().process_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            with self.lock:
                self.connections.discard(request)
            super().shutdown_request(request)

        def drop_connections(self) -> None:
            with self.lock:
                open_now = list(self.connections)
            for conn in open_now:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    # S3 alone, without moto's dispatcher that guesses the service per request: a third less
    # CPU per request. Path-style addressing only (virtual-host names would need DNS anyway).
    app = _Counted(create_backend_app("s3"))

    def listen() -> Server:
        deadline = time.monotonic() + 10
        while True:  # the old socket's connections may hold the port for a moment
            try:
                server = Server("127.0.0.1", port, app, handler=MotoRequestHandler)
                break
            except (OSError, SystemExit):  # werkzeug exits when the port is taken
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        server.connections, server.lock = set(), threading.Lock()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    server: Server | None = listen()
    replies.write("ready\n")
    for line in sys.stdin:  # ends when the parent closes stdin or dies
        command = line.strip()
        try:
            if command == "stop" and server is not None:
                server.shutdown()
                server.server_close()
                server.drop_connections()
                server = None
            elif command == "start" and server is None:
                server = listen()
        except (OSError, SystemExit) as e:
            replies.write(f"failed {command}: {e!r}\n")
            continue
        replies.write(f"ok {command}\n")


REQUESTS_PATH = "/_sqlfleet/requests"  # GET: the request counts of `_Counted`, as JSON


class _Counted:
    """WSGI middleware of the child: counts requests by access key id, method and top-level key
    prefix (the first path segment after the bucket, or a listing's `prefix`), so a benchmark can
    tell each replicator's requests from its own; GET REQUESTS_PATH returns the counts."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str, str], int] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == REQUESTS_PATH:
            with self.lock:
                body = json.dumps([[*k, n] for k, n in self.counts.items()]).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        auth = environ.get("HTTP_AUTHORIZATION", "")
        key_id = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else ""
        parts = path.lstrip("/").split("/")
        prefix = (
            parts[1] if len(parts) > 1 else parse_qs(environ.get("QUERY_STRING", "")).get("prefix", [""])[0]
        )
        counted = (key_id, environ.get("REQUEST_METHOD", ""), prefix.split("/", 1)[0])
        with self.lock:
            self.counts[counted] = self.counts.get(counted, 0) + 1
        return self.app(environ, start_response)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(int(sys.argv[2]))
