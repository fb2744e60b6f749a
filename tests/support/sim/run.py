"""One seeded run of the fault simulation: random writes to several tenants through the real
fleet and shipper (real SQLite files and WALs, a LocalReplica behind the SealedReplica), with
faults injected all along (see `Profile`), then every tenant restored to many moments and
compared with the model, exactly.

Determinism: everything random comes from one `random.Random(seed)`; time is the simulated
clock; there are no threads (the simulation calls flush, checkpoint, snapshot, retention and
restore itself, and runs other requests while a PUT is in flight), so a seed replays the same
run: `trace` (and its digest) is the same every time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import logging
import math
import random
import re
import shutil
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from backups import restore
from backups.catalog import BackupCatalog
from backups.errors import BackupBroken, NoRestorePoint, ReplicaBehind, ReplicaError
from backups.keyring import Keyring
from backups.local_replica import LocalReplica
from backups.service import Backups
from ops.settings import Settings
from tenants.errors import (
    InsufficientStorage,
    SqlfleetError,
    TenantExists,
    TooLarge,
)
from tenants.execute import Statement
from tenants.state import TenantState
from tests.support.sim.clock import SimClock
from tests.support.sim.disk import Faults, SimCrash, SimDisk
from tests.support.sim.model import Content, Doubt, Op, TenantModel, read_content
from tests.support.sim.process import SimProcess
from tests.support.sim.replica import ReplicaFaults, SimReplica

log = logging.getLogger(__name__)

KEY = bytes(range(32))  # the encryption key of runs that encrypt (any fixed key would do)
# states a restore in place (again) repairs: one that failed or died midway leaves them
REPAIRABLE = (str(TenantState.CORRUPT), str(TenantState.RESTORING))


class SimFailure(AssertionError):
    """The run found the server doing something wrong."""


@dataclass(frozen=True)
class Profile:
    """What one run does and injects. Swarm testing: each seed draws its own mix (some faults
    off entirely), so a bug that one kind of fault hides still shows under another seed."""

    tenants: int
    steps: int
    pool_capacity: int
    encrypted: bool
    checkpoint_frames: int
    snapshot_bytes: int
    snapshot_interval: float
    segment_max_bytes: int
    spool_bytes: int
    crash: float  # chance per step that the process dies somewhere in the next few operations
    power_loss: float  # share of those crashes that are power losses
    ack_crash: float  # chance that the process dies after a commit, before the client got its answer
    restart: float  # chance per step of a clean restart
    disk_full: float  # chance per step that the disk fills up (for a few steps)
    write_eio: float
    read_eio: float
    sync_eio: float
    replica: ReplicaFaults
    outage: float  # chance per step that the replica goes down (for a few steps)
    interleave: float  # chance that other requests run while a PUT is in flight
    retention: float | None  # window of the retention steps (None: none)
    restores: float  # chance per step of a restore (as a copy, or now and then in place)
    big: float  # share of values that are large (overflow pages, many frames)

    @classmethod
    def draw(cls, rng: random.Random, steps: int) -> Profile:
        def some(rate: float, p: float = 0.5) -> float:
            return rate if rng.random() < p else 0.0

        replica = ReplicaFaults(
            put_error=some(0.15),
            lost_response=some(0.1),
            timeout=some(0.05),
            slow=some(0.2),
            get_error=some(0.05, 0.3),
            slow_seconds=rng.choice([0.5, 3.0, 20.0]),
        )
        return cls(
            tenants=rng.randint(2, 4),
            steps=steps,
            pool_capacity=rng.choice([1, 2, 8]),
            encrypted=rng.random() < 0.3,
            checkpoint_frames=rng.choice([2, 8, 32, 1000]),
            snapshot_bytes=rng.choice([4096, 64 << 10, 1 << 30]),
            snapshot_interval=rng.choice([5.0, 60.0, 1e9]),
            segment_max_bytes=rng.choice([1, 16 << 10, 64 << 20]),
            spool_bytes=rng.choice([1, 8 << 10, 64 << 20]),
            crash=some(0.06, 0.7),
            power_loss=some(0.4),
            ack_crash=some(0.03),
            restart=some(0.02),
            disk_full=some(0.03),
            write_eio=some(0.002, 0.3),
            read_eio=some(0.001, 0.2),
            sync_eio=some(0.002, 0.3),
            replica=replica,
            outage=some(0.03),
            interleave=some(0.3),
            retention=rng.choice([None, None, 30.0, 300.0]),
            restores=some(0.04, 0.7),
            big=rng.choice([0.0, 0.05, 0.2]),
        )


_NOISE = [
    (re.compile(r"[0-9a-f]{13}[0-9a-f]{8}"), "<gen>"),  # generation ids
    (re.compile(r"segments/\d{13}-[0-9a-f]{8}-"), "segments/<t>-<server>-"),
    (re.compile(r"tmp[a-z0-9_]{6,}"), "tmp<x>"),  # tempfile names
    (re.compile(r"copy-[a-z0-9_]+\.db"), "copy-<x>.db"),
    (re.compile(r"\.tmp[0-9a-f]{8}"), ".tmp<x>"),  # durable-replace temporaries
    (re.compile(r"#\d+"), "#<n>"),  # anonymous files
    (re.compile(r"0x[0-9a-f]+"), "0x<addr>"),
    # a file's inode and real mtime (files written by Python's own I/O keep real time)
    (re.compile(r"main file (inode|mtime_ns) \d+ where \d+"), r"main file \1 <n> where <n>"),
]


def normalize(text: str) -> str:
    """`text` without what differs between two runs of one seed (random names)."""
    for pattern, replacement in _NOISE:
        text = pattern.sub(replacement, text)
    return text


class _Logged(logging.Handler):
    """sqlfleet's log, into the trace (what the backups decided: new generations, skipped
    maintenance, failed flushes); ERRORs and tracebacks are kept for the failure report."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(logging.INFO)
        self.events = events
        # as text: a record's exc_info would keep a dead process's objects (open connections)
        # alive through its traceback
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("backups", "tenants")):
            return
        self.events.append(f"log {record.levelname.lower()} {record.name}: {record.getMessage()}")
        if record.levelno >= logging.ERROR or record.exc_info:
            error = f" ({record.exc_info[1]!r})" if record.exc_info else ""
            self.records.append(f"  {record.name}: {record.getMessage()}{error}")


class Simulation:
    """One run. `run()` raises SimFailure (with the trace's tail) when the server misbehaved."""

    def __init__(self, seed: int, root: Path, steps: int = 120) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.profile = Profile.draw(self.rng, steps)
        self.root = root
        self.data_dir = root / "data"
        self.clock = SimClock()
        self.disk = SimDisk(root, self.rng, self.clock, track_power=self.profile.power_loss > 0)
        self.replica = SimReplica(
            LocalReplica(root / "replica"), self.disk, self.rng, self.clock, self._during_put
        )
        self.keyring = Keyring([("k1", KEY)]) if self.profile.encrypted else None
        settings = Settings.load(
            environ={},
            data_dir=self.data_dir,
            pool_capacity=self.profile.pool_capacity,
            backup_checkpoint_frames=self.profile.checkpoint_frames,
            backup_snapshot_bytes=self.profile.snapshot_bytes,
            backup_snapshot_interval=self.profile.snapshot_interval,
            backup_segment_max_bytes=self.profile.segment_max_bytes,
            backup_spool_bytes=self.profile.spool_bytes,
            backup_retention=1e9,
            backup_tenant_quota_bytes=1 << 40,
        )
        self.settings = settings
        self.process: SimProcess | None = None
        self.models: dict[str, TenantModel] = {}
        self.trace: list[str] = []
        self.step = 0
        self.horizon = -math.inf  # moments before it were given up by retention
        self.full_until = -1  # the step the disk gets space back
        self.down_until = -1  # the step the replica comes back
        self.in_put = False
        self.opened: set[str] = set()  # tenants the simulation used since the process started
        self.ending = False  # the final checks: no more client requests
        self.forks = 0
        self.errors = _Logged(self.disk.events)
        self.stats: dict[str, int] = {}

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> str:
        """Run, check, and return the trace's digest. Raises SimFailure."""
        logger = logging.getLogger()
        logger.addHandler(self.errors)
        level = logger.level
        logger.setLevel(min(level, logging.INFO))
        # what exists before the run is not the run's garbage: collections (one per crash, to
        # let go of what the dead process left unclosed) then look at the run's objects only
        gc.collect()
        gc.freeze()
        # and only then: an automatic collection runs when allocations (of any thread: another
        # test's leftover ones too) pass a threshold, and what it closes (a cycle holding a
        # dead process's file) would land in the trace at a moment the seed does not decide
        collecting = gc.isenabled()
        gc.disable()
        try:
            with self.clock.installed(), self.disk.installed():
                try:
                    self.note(f"seed {self.seed} profile {self.profile}")
                    self.start()
                    for name in [f"t{i}" for i in range(self.profile.tenants)]:
                        self.act(functools.partial(self.create, name), f"create {name}")
                    for step in range(1, self.profile.steps + 1):
                        self.step = step
                        self.one_step()
                    self.final_checks()
                finally:
                    # while the disk's VFS is still registered: a connection closed after it
                    # went would call into a freed VFS (an abort, at some later collection)
                    self.end_process()
        except SimFailure:
            raise
        except BaseException as exc:
            where = "".join(traceback.format_exception(exc)[-12:])
            raise self.failure(f"unexpected {type(exc).__name__}: {exc}\n{where}") from exc
        finally:
            logger.removeHandler(self.errors)
            logger.setLevel(level)
            gc.unfreeze()
            if collecting:
                gc.enable()
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()

    def end_process(self) -> None:
        """The run is over: the last process goes as a dead one would (no shutdown work) and
        every connection it left on the disk is closed."""
        with self.disk.quietly():
            if self.process is not None:
                self.process.abandon()
            _collect()
            self.disk.close_connections()

    def note(self, line: str) -> None:
        for event in self.disk.events:
            self.trace.append(self.normalize(f"      {event}"))
        self.disk.events.clear()
        self.trace.append(
            self.normalize(f"{self.step:4d} {self.clock.time():.6f} [{self.disk.ticks}] {line}")
        )

    def normalize(self, text: str) -> str:
        return normalize(text.replace(str(self.disk.root), "<root>").replace(str(self.root), "<root>"))

    def failure(self, message: str) -> SimFailure:
        self.note("failed")
        tail = "\n".join(self.trace[-60:])
        logged = "\n".join(self.errors.records[-10:])
        return SimFailure(
            f"seed {self.seed}, step {self.step}: {message}\n--- trace (last 60 lines) ---\n{tail}"
            + (f"\n--- errors logged ---\n{logged}" if logged else "")
        )

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    @property
    def backups(self) -> Backups:
        assert self.process is not None and self.process.backups is not None
        return self.process.backups

    # -- steps ------------------------------------------------------------------------------------

    def one_step(self) -> None:
        rng, profile = self.rng, self.profile
        self.clock.advance(
            rng.choice([0.001, 0.05, 0.4, 2.0]) if rng.random() < 0.9 else rng.uniform(10, 400)
        )
        self.weather()
        if profile.crash and rng.random() < profile.crash and self.disk.crash_at is None:
            self.disk.crash_at = self.disk.ticks + rng.randint(1, 80)
            self.disk.power_loss = rng.random() < profile.power_loss
        tenants = self.writable()
        actions: list[tuple[float, str, Callable[[], None]]] = [
            (6.0 if tenants else 0.0, "write", lambda: self.write(rng.choice(tenants))),
            (2.0, "flush", self.flush),
            (
                0.3 if tenants else 0.0,
                "request checkpoint",
                lambda: self.request_checkpoint(rng.choice(tenants)),
            ),
            (profile.restart * 50, "restart", self.restart),
            (profile.restores * 50, "restore", self.restore_step),
            (0.2 if profile.retention else 0.0, "retention", self.retention),
        ]
        total = sum(w for w, _, _ in actions)
        pick = rng.uniform(0, total)
        for weight, name, action in actions:
            pick -= weight
            if pick <= 0 and weight > 0:
                self.act(action, name)
                return
        self.act(self.flush, "flush")

    def weather(self) -> None:
        """Faults that last a while: a full disk, a replica outage; and the per-operation rates."""
        rng, profile = self.rng, self.profile
        faults = self.disk.faults
        if faults.full and self.step >= self.full_until:
            faults.full = False
            self.note("disk has space again")
        elif not faults.full and profile.disk_full and rng.random() < profile.disk_full:
            faults.full, self.full_until = True, self.step + rng.randint(1, 10)
            self.note("disk full")
        faults.write_eio, faults.read_eio, faults.sync_eio = (
            profile.write_eio,
            profile.read_eio,
            profile.sync_eio,
        )
        replica = self.replica.faults
        down = replica.down
        self.replica.faults = dataclasses.replace(profile.replica, down=down)
        if down and self.step >= self.down_until:
            self.replica.faults.down = False
            self.note("replica back")
        elif not down and profile.outage and rng.random() < profile.outage:
            self.replica.faults.down, self.down_until = True, self.step + rng.randint(1, 10)
            self.note("replica down")

    def act(self, action: Callable[[], None], name: str) -> None:
        """Run one step; if the process died in it, restart it (which may die too, and so on)."""
        self.count(name)
        try:
            action()
        except SimCrash as exc:
            self.note(f"{name}: died ({exc})")
        if self.disk.dead:
            self.after_crash()

    def start(self) -> None:
        """Start a process over the data dir; a start that dies or fails is tried again (as a
        supervisor would), the last tries without faults."""
        journal_faults = self.disk.journal_faults
        for attempt in range(20):
            try:
                if attempt >= 10:
                    with self.disk.quietly():
                        self.process = SimProcess(self.data_dir, self.settings, self.replica, self.keyring)
                else:
                    self.process = SimProcess(self.data_dir, self.settings, self.replica, self.keyring)
                self.note("started")
                self.opened = set()
                break
            except SimCrash as exc:
                self.note(f"start: died ({exc})")
                power = self.disk.power_loss
                self.put_back()
                if power:  # the commit-times journal is never synced: see after_crash
                    for model in self.models.values():
                        model.widen(model.shipped, self.clock.time(), "time may be lost")
            except (SqlfleetError, apsw.Error, OSError) as exc:
                self.note(f"start failed: {type(exc).__name__}: {exc}")
                with self.disk.quietly():  # what the failed start left open goes, quietly
                    _collect()
                    self.disk.close_connections()
        else:
            raise self.failure("the server does not start")
        if self.disk.journal_faults > journal_faults:
            # the commit-times journal could not be read back: what no flush shipped yet gets
            # its WAL's mtime
            for model in self.models.values():
                model.widen(model.shipped, self.clock.time(), "time may be lost")
        self.settle()

    def put_back(self) -> None:
        # what the dead process left unclosed goes first, while its writes still go nowhere
        _collect()
        self.disk.let_go()
        image = self.disk.revive()
        assert image is not None
        self.disk.put_back(image)

    def after_crash(self) -> None:
        assert self.process is not None
        self.process.abandon()
        self.process = None
        power = self.disk.power_loss
        self.put_back()
        self.count("power loss" if power else "crash")
        # commits no successful flush shipped whose commit-times record is gone get their WAL's
        # mtime (no later than now): after a power loss any of them (the journal is not synced),
        # after a crash those whose record could not be written
        for model in self.models.values():
            model.widen(model.shipped, self.clock.time(), "time may be lost", only_lost=not power)
        self.start()

    def settle(self) -> None:
        """After a start: find out what became of the writes and restores in doubt."""
        for name, model in sorted(self.models.items()):
            row = self.process_fleet_row(name)
            if model.unavailable == "deleted":
                continue
            if row is None:
                if model.unavailable == "creating":  # its create died before it was made
                    del self.models[name]
                    self.note(f"{name}: was never created")
                    continue
                raise self.failure(f"tenant {name} is gone after a restart")
            if row.state != TenantState.ACTIVE:
                model.unavailable = str(row.state)
                continue
            if model.pending_fork is not None:
                self.adopt_fork(name)
                continue
            if model.unavailable == "creating":
                model.unavailable = None
            if model.doubts or model.pending_reset is not None or model.unavailable:
                self.resolve(name, final=True)

    def process_fleet_row(self, name: str) -> Any:
        assert self.process is not None
        with self.disk.quietly():
            return self.process.fleet.catalog.get(name)

    def live(self, name: str) -> Content | None:
        """The tenant's content as a client reads it now (None: it cannot be read now)."""
        assert self.process is not None
        self.opened.add(name)
        try:
            with self.disk.quietly(), self.process.fleet.lease(name, readonly=True) as handle:
                assert handle.conn is not None
                return read_content(handle.conn)
        except (SqlfleetError, apsw.Error) as exc:
            self.note(f"{name}: cannot be read ({type(exc).__name__}: {exc})")
            return None

    def resolve(self, name: str, final: bool = False) -> None:
        """Read the tenant and settle what is in doubt about it (`final`: after a restart)."""
        model = self.models[name]
        content = self.live(name)
        if content is None:
            return
        reset = model.pending_reset
        if reset is not None:
            model.pending_reset = None
            candidates, at = reset
            if any(c.digest() == content.digest() for c in candidates):
                # done before the crash; its new generation starts by the first open after it
                model.reset(content, at, self.clock.time(), "restore in place (found done)")
                model.unavailable = None
                self.note(f"{name}: restore in place found done")
                return
        try:
            decided = model.resolve(content, math.inf, final=final)
        except AssertionError as exc:
            raise self.failure(str(exc)) from None
        model.unavailable = None
        self.note(f"{name}: writes in doubt: {decided}")

    # -- what a client does ---------------------------------------------------------------------------

    def writable(self) -> list[str]:
        return sorted(n for n, m in self.models.items() if m.unavailable is None)

    def create(self, name: str) -> None:
        assert self.process is not None
        model = TenantModel(name, self.clock.time())
        model.unavailable = "creating"
        self.models[name] = model
        try:
            self.process.fleet.create(name)
        except (SqlfleetError, apsw.Error, OSError) as exc:
            self.note(f"create {name}: failed ({type(exc).__name__}: {exc})")
            if self.process_fleet_row(name) is None:
                del self.models[name]
            return
        if self.disk.dead:
            return
        model.unavailable = None
        self.note(f"create {name}: ok")

    def ops(self, model: TenantModel) -> tuple[list[Op], list[Statement]]:
        """A random transaction for the tenant: its ops for the model, its statements for SQL."""
        rng = self.rng
        content = model.content
        tables = sorted(content.tables)
        ops: list[Op] = []
        if not tables or (len(tables) < 3 and rng.random() < 0.03):
            name = f"x{len(tables)}"
            ops.append(("create_table", name, f"CREATE TABLE {name}(k INTEGER PRIMARY KEY, v)"))
            tables.append(name)
        elif rng.random() < 0.02:
            table = rng.choice(tables)
            index = f"i{len(content.schema)}"
            ops.append(("create_index", index, f"CREATE INDEX {index} ON {table}(v)"))
        shadow = content.copy()
        shadow.apply(ops)
        for _ in range(rng.choice([1, 1, 1, 2, 5])):
            table = rng.choice(tables)
            rows = shadow.tables[table]
            kind = rng.random()
            if rows and kind < 0.25:
                op: Op = ("update", table, rng.choice(sorted(rows)), self.value())
            elif rows and kind < 0.35:
                op = ("delete", table, rng.choice(sorted(rows)))
            else:
                op = ("insert", table, model.next_key, self.value())
                model.next_key += 1
            shadow.apply([op])
            ops.append(op)
        return ops, [_statement(op) for op in ops]

    def value(self) -> str | bytes:
        rng = self.rng
        if rng.random() < self.profile.big:
            return rng.randbytes(rng.choice([3000, 9000, 40000]))
        if rng.random() < 0.5:
            return rng.randbytes(rng.randint(1, 200))
        return "".join(rng.choice("abcdefghij") for _ in range(rng.randint(0, 40)))

    def write(self, name: str) -> None:
        """One transaction; acknowledged only if the process is alive to answer."""
        assert self.process is not None
        model = self.models[name]
        if model.doubts:
            self.resolve(name)
            if self.disk.dead or model.unavailable is not None:
                return
        ops, statements = self.ops(model)
        label = f"w{self.step}.{len(model.entries)}"
        at = self.clock.time()
        doubt = Doubt(ops, at, label)
        journal_faults = self.disk.journal_faults
        self.opened.add(name)
        try:
            self.process.fleet.batch(name, statements)
        except (SqlfleetError, apsw.Error, OSError) as exc:
            model.doubts.append(doubt)  # a failed commit may still be in the WAL (a failed sync)
            self.note(f"write {name} {label}: failed ({type(exc).__name__}: {exc})")
            if isinstance(exc, TooLarge):  # no tenant here is near its size limit
                raise self.failure(
                    f"write {name} {label}: {type(exc).__name__} ({exc}) for a full disk"
                ) from None
            return
        except SimCrash:
            model.doubts.append(doubt)
            raise
        if self.disk.dead:
            model.doubts.append(doubt)
            return
        if self.profile.ack_crash and self.rng.random() < self.profile.ack_crash:
            model.doubts.append(doubt)
            self.note(f"write {name} {label}: committed, then the process dies before answering")
            self.disk.die(f"before acknowledging {label}")
        model.commit(ops, at, at, label)
        model.entries[-1].journal_lost = self.disk.journal_faults > journal_faults
        self.note(f"write {name} {label}: ok ({len(ops)} ops)")

    def _during_put(self) -> None:
        """While a PUT is in flight the server keeps answering: a few writes run meanwhile."""
        if (
            self.in_put
            or self.ending
            or not self.profile.interleave
            or self.rng.random() >= self.profile.interleave
        ):
            return
        assert self.process is not None
        pool = self.process.fleet.pool
        self.in_put = True
        try:
            for _ in range(self.rng.randint(1, 3)):
                candidates = [n for n in self.writable() if pool.is_open(n) and not self.models[n].doubts]
                if not candidates:
                    return
                name = self.rng.choice(candidates)
                handle = pool.try_lease(name)
                if handle is None:
                    continue
                pool.release(handle, used=False)
                self.note(f"during a PUT: write {name}")
                self.write(name)
                if self.disk.dead:
                    return
        finally:
            self.in_put = False

    # -- what the server does on its own --------------------------------------------------------------

    def flush(self) -> None:
        marks = {name: len(m.entries) for name, m in self.models.items()}
        # what a flush ships of a tenant the shipper has not seen since the start (not opened
        # yet) is unknown: its log is what it ships from
        known = {n for n in self.models if n in self.opened or self.backups.shipper.ledger.get(n) is not None}
        ok = self.backups.shipper.flush()
        if self.disk.dead:
            return
        self.note(f"flush: {'ok' if ok else 'failed'}")
        if ok:
            for name, model in self.models.items():
                model.bound(self.clock.time())
                if name in known:
                    model.shipped = max(model.shipped, marks.get(name, 0))

    def request_checkpoint(self, name: str) -> None:
        self.backups.shipper.request_checkpoint(name)
        self.note(f"request checkpoint {name}")

    def restart(self) -> None:
        assert self.process is not None
        process = self.process
        try:
            process.stop()
        except (SqlfleetError, apsw.Error, OSError) as exc:
            # the shutdown failed (an I/O error closing a catalog): the process exits anyway
            self.note(f"stop failed: {type(exc).__name__}: {exc}")
            if self.disk.dead:
                return
            self.end_process()
            self.process = None
            self.start()
            return
        if self.disk.dead:
            return
        self.process = None
        self.note("stopped cleanly")
        self.start()

    def retention(self) -> None:
        window = self.profile.retention
        assert window is not None
        # what it forgot stays forgotten even if deleting the segments then fails
        self.horizon = max(self.horizon, self.clock.time() - window)
        try:
            dropped, deleted = self.backups.enforce_retention(window)
        except (ReplicaError, apsw.Error, OSError) as exc:  # a full or failing disk too
            self.note(f"retention: failed ({exc})")
            return
        self.note(f"retention: {dropped} chunks, {deleted} segments")

    # -- restores ---------------------------------------------------------------------------------------

    def restore_step(self) -> None:
        rng = self.rng
        names = sorted(n for n, m in self.models.items() if m.unavailable in (None, *REPAIRABLE))
        if not names:
            return
        name = rng.choice(names)
        model = self.models[name]
        corrupt = model.unavailable in REPAIRABLE
        moments = [m for m in model.moments(rng, 6) if m >= self.horizon]
        if not moments:
            return
        moment = rng.choice(moments)
        if corrupt or rng.random() < 0.25:
            self.restore_in_place(name, model.repair_moment if corrupt else moment)
        else:
            self.restore_fork(name, moment)

    def restore_fork(self, name: str, moment: float) -> None:
        model = self.models[name]
        self.forks += 1
        fork = f"f{self.forks}"
        indexes, nothing = model.acceptable(moment)
        fork_model = TenantModel(fork, self.clock.time())
        fork_model.unavailable = "creating"
        fork_model.pending_fork = (name, moment)
        self.models[fork] = fork_model
        try:
            self.backups.restore(name, moment, as_tenant=fork)
        except (ReplicaBehind, InsufficientStorage, ReplicaError, SqlfleetError, apsw.Error, OSError) as exc:
            if isinstance(exc, NoRestorePoint) and not nothing:
                raise self.failure(
                    f"restore {name} to {moment:.6f}: no restore point, expected {model.describe(indexes)}"
                ) from exc
            if isinstance(exc, BackupBroken):
                raise self.failure(f"restore {name} to {moment:.6f}: {exc}") from None
            if isinstance(exc, TenantExists):
                raise
            self.note(f"restore {name} to {moment:.6f} as {fork}: refused ({type(exc).__name__}: {exc})")
            row = self.process_fleet_row(fork)
            if row is None or row.state in (TenantState.CREATING, TenantState.DELETING):
                del self.models[fork]  # not made (a half-made one is gone at the next start)
            else:  # made, then something after it failed
                self.adopt_fork(fork)
            return
        if self.disk.dead:
            return
        self.adopt_fork(fork)

    def adopt_fork(self, fork: str) -> None:
        """The fork exists (its restore answered, or may have before the process died): it must
        hold its source's content at the moment, and it is a tenant of its own from now on."""
        pending = self.models[fork]
        assert pending.pending_fork is not None
        name, moment = pending.pending_fork
        content = self.live(fork)
        if content is None:
            raise self.failure(f"restored fork {fork} cannot be read")
        self.expect(self.models[name], moment, content, f"restore {name} as {fork}")
        # created during the restore, after it shipped what the source had (which takes time)
        made = TenantModel(fork, pending.entries[0].lo, content, f"fork of {name}", until=self.clock.time())
        if len(self.models) > 8:  # keep the fleet small: forget the fork (its files stay)
            del self.models[fork]
        else:
            self.models[fork] = made
        self.note(f"restore {name} to {moment:.6f} as {fork}: ok ({content.summary()})")

    def restore_in_place(self, name: str, moment: float) -> None:
        model = self.models[name]
        indexes, _ = model.acceptable(moment)
        if not indexes:
            return
        # a restore in place answers with the content at `moment`; if it dies midway, the
        # tenant is found either way after the restart
        candidates = [model.entries[i].content for i in indexes]
        at = self.clock.time()
        # a restore in place that died midway may have replaced the file (and begun a new
        # generation) before the tenant was marked corrupt: this one, to the same moment,
        # takes effect at some time since then
        since = model.pending_reset[1] if model.pending_reset is not None else at
        model.repair_moment = moment
        model.pending_reset = (candidates, since)
        try:
            self.backups.restore(name, moment)
        except (ReplicaBehind, InsufficientStorage, ReplicaError, SqlfleetError, apsw.Error, OSError) as exc:
            if isinstance(exc, BackupBroken):
                raise self.failure(f"restore {name} in place to {moment:.6f}: {exc}") from None
            row = self.process_fleet_row(name)
            self.note(
                f"restore {name} in place to {moment:.6f}: refused ({type(exc).__name__}: {exc});"
                f" tenant {row.state if row else 'gone'}"
            )
            if row is not None and row.state != TenantState.ACTIVE:
                # it failed midway (the file may be replaced, a generation begun): as if it died
                model.unavailable = "corrupt"
            else:
                model.pending_reset = None
            return
        if self.disk.dead:
            return
        model.pending_reset = None
        content = self.live(name)
        if content is None:
            raise self.failure(f"tenant {name} cannot be read after its restore in place")
        self.expect(model, moment, content, f"restore {name} in place")
        model.reset(content, since, self.clock.time(), f"restore in place to {moment:.6f}")
        model.unavailable = None
        self.note(f"restore {name} in place to {moment:.6f}: ok ({content.summary()})")

    def expect(self, model: TenantModel, moment: float, content: Content, what: str) -> None:
        indexes, _ = model.acceptable(moment)
        digest = content.digest()
        if any(model.entries[i].digest == digest for i in indexes):
            return
        nearest = min(indexes or [len(model.entries) - 1], key=lambda i: abs(model.entries[i].lo - moment))
        explained = ""
        if self.process is not None and self.process.backups is not None:
            with contextlib.suppress(Exception), self.disk.quietly():
                rows = self.backups.catalog.chunks(model.name)
                explained = "\n--- plan (now) ---\n" + _explain(
                    restore.plan(model.name, rows, moment), rows, moment
                )
        raise self.failure(
            f"{what} to {moment:.6f} gave {content.summary()} ({digest}); expected one of: "
            f"{model.describe(indexes)}; it differs from #{nearest} in: "
            f"{content.diff(model.entries[nearest].content)}; it equals entries "
            f"{[i for i, e in enumerate(model.entries) if e.digest == digest]}{explained}"
        )

    # -- the end ------------------------------------------------------------------------------------------

    def final_checks(self) -> None:
        """Faults off; ship everything; then the live content and every restore must be exact."""
        self.step = self.profile.steps + 1
        self.ending = True
        self.disk.crash_at = None
        self.disk.faults = Faults()
        self.replica.faults = ReplicaFaults()
        self.note("final checks")
        if self.process is None:
            self.start()
        for name in sorted(self.models):
            model = self.models[name]
            if model.unavailable in REPAIRABLE:
                repair = functools.partial(self.restore_in_place, name, model.repair_moment)
                self.act(repair, f"repair {name}")
        for name in sorted(self.models):
            if self.models[name].doubts:
                self.resolve(name, final=True)
        # every tenant is read (opened) before the last flush, as a restore through the service
        # opens its tenant first: a tenant's commits a crash left unshipped ship once it opens
        self.clock.advance(1.0)
        for name, model in sorted(self.models.items()):
            if model.unavailable is not None:
                continue
            content = self.live(name)
            if content is None or content.digest() != model.content.digest():
                raise self.failure(
                    f"tenant {name} reads {content.summary() if content else 'nothing'}, "
                    f"acknowledged {model.content.summary()}"
                )
        for _ in range(3):
            self.clock.advance(1.0)
            ok = self.backups.shipper.flush()
            self.note(f"final flush: {'ok' if ok else 'failed'}")
            if ok:
                for model in self.models.values():
                    model.bound(self.clock.time())
                break
        else:
            raise self.failure(f"flushes keep failing without faults: {self.backups.shipper.health()}")
        self.clock.advance(1.0)
        checks = self.root / "checks"  # on the simulated disk: no real fsync (faults are off now)
        checks.mkdir(exist_ok=True)
        restored: dict[tuple[Any, ...], Content] = {}  # the content each distinct plan gives
        try:
            self.check_restores(self.backups.catalog, checks, restored, live=True)
            with self.dr_catalog(checks) as catalog:
                self.check_restores(catalog, checks, restored, live=False)
        finally:
            shutil.rmtree(checks, ignore_errors=True)
        self.note(f"done: {dict(sorted(self.stats.items()))}")

    @contextlib.contextmanager
    def dr_catalog(self, checks: Path) -> Iterator[BackupCatalog]:
        """A catalog rebuilt from the bucket alone (disaster recovery's first step)."""
        with self.disk.quietly():
            catalog = BackupCatalog(checks / "dr.db")
            try:
                backups = Backups(
                    self.backups.replica, catalog, self.backups.shipper, self.backups.fleet, self.backups.meta
                )
                backups.rebuild_catalog()
                yield catalog
            finally:
                catalog.close()

    def check_restores(
        self, catalog: BackupCatalog, checks: Path, restored: dict[tuple[Any, ...], Content], live: bool
    ) -> None:
        """Restore every tenant to some of its moments from `catalog` and compare with the model.
        Moments with the same plan (the same chunks up to the same LSN) are one restore: it is
        materialized once (`restored`), each moment still checked against the model."""
        source = "catalog" if live else "bucket"
        for name, model in sorted(self.models.items()):
            for moment in model.moments(self.rng, 8 if live else 4):
                if moment < self.horizon:
                    continue
                indexes, nothing = model.acceptable(moment)
                with self.disk.quietly():
                    rows = catalog.chunks(name)
                    try:
                        plan = restore.plan(name, rows, moment)
                    except NoRestorePoint:
                        if nothing:
                            continue
                        raise self.failure(
                            f"restore {name} to {moment:.6f} from the {source}: no restore point, "
                            f"expected {model.describe(indexes)}"
                        ) from None
                    if not indexes:
                        raise self.failure(
                            f"restore {name} to {moment:.6f} from the {source}: found one before it existed"
                        )
                    try:
                        if live:
                            restore.check_covered(plan, rows, self.backups.shipper.replica_position(name))
                        key = _plan_key(plan)
                        if key not in restored:
                            path = checks / f"{name}.db"
                            restore.materialize(plan, self.backups.replica.get_range, path)
                            conn = apsw.Connection(str(path))
                            try:
                                restored[key] = read_content(conn)
                            finally:
                                conn.close()
                        content = restored[key]
                    except BackupBroken as exc:
                        raise self.failure(
                            f"restore {name} to {moment:.6f} from the {source}: {exc}"
                        ) from None
                try:
                    self.expect(model, moment, content, f"restore {name} from the {source}")
                except SimFailure as exc:
                    raise SimFailure(f"{exc}\n--- plan ---\n{_explain(plan, rows, moment)}") from None
            self.note(f"restores of {name} from the {source}: ok")


def _collect() -> None:
    """Collect garbage: what a dead process left unclosed goes now (its files without a
    ResourceWarning: a killed process does not warn about its open files either)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()


def _statement(op: Op) -> Statement:
    kind = op[0]
    if kind in ("create_table", "create_index"):
        return Statement(op[2])
    if kind == "insert":
        return Statement(f"INSERT INTO {op[1]}(k, v) VALUES (?, ?)", (op[2], op[3]))
    if kind == "update":
        return Statement(f"UPDATE {op[1]} SET v = ? WHERE k = ?", (op[3], op[2]))
    return Statement(f"DELETE FROM {op[1]} WHERE k = ?", (op[2],))


def _plan_key(plan: restore.RestorePlan) -> tuple[Any, ...]:
    """What a restore reads, and up to where: two plans with the same key give the same file."""
    chunks = (plan.snapshot, *plan.frames)
    return (plan.target_lsn, *((c.key, c.offset, c.length) for c in chunks))


def _explain(plan: restore.RestorePlan, rows: list[Any], moment: float) -> str:
    """The restore plan and the catalog rows of its tenant, for a failure report."""
    gens = {g: f"g{i}" for i, g in enumerate(sorted({r.generation for r in rows}))}
    lines = [
        f"moment {moment:.6f}: generation {gens.get(plan.generation)}, "
        f"snapshot lsn {plan.snapshot.first_lsn} ({plan.snapshot.first_time:.6f}), "
        f"target lsn {plan.target_lsn}, restored_to {plan.restored_to:.6f}"
    ]
    for r in rows:
        commits = ", ".join(f"{lsn}@{t:.6f}" for lsn, t in r.commits)
        lines.append(
            f"  {gens[r.generation]} {r.kind} {r.first_lsn}..{r.last_lsn} "
            f"[{r.first_time:.6f}, {r.last_time:.6f}] {normalize(r.key)} commits {commits}"
        )
    return "\n".join(lines)
