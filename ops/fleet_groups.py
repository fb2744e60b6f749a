"""Fleet-wide groups: a GroupStore whose changes go through etcd (see ops.fleetwork)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from cluster.errors import EtcdUnavailable
from cluster.fleetwork import RecordConflict, Records
from cluster.keys import Keyspace
from cluster.membership import Node
from schema_sync.errors import GroupExists, GroupNotFound
from schema_sync.groups import Group, GroupStore
from schema_sync.migrations import Migration
from tenants.errors import TooLarge

log = logging.getLogger(__name__)

APPLY_WAIT = 30.0  # seconds a request waits for its own write to be applied here
MAX_DEFINITION_BYTES = 1 << 20  # etcd takes requests up to 1.5 MiB


def dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class GroupChanged(RecordConflict):
    code = "group_changed"


class FleetGroups(GroupStore):
    """A GroupStore whose changes go through etcd (see the module doc). `start` catches up
    (before serving); reads are local. Thread-safe."""

    def __init__(self, data_dir: Path, timeout: float, node: Node) -> None:
        super().__init__(data_dir, timeout)
        self.keys: Keyspace = node.keys
        self.records = Records(node)
        self._cond = threading.Condition()
        self._queue: list[tuple[list[tuple[bytes, bytes | None]], int]] = []
        self._applied = 0  # every definition up to this etcd revision is applied here
        self._closed = False
        self._thread = threading.Thread(target=self._apply_loop, name="fleet-groups", daemon=True)

    def start(self) -> None:
        """Follow `groups/`; returns once every definition there is applied here."""
        self._thread.start()
        revision = self.records.follow(self.keys.groups, self._on_change)
        self._on_change([], revision)
        self.wait_applied(revision)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(5)

    def wait_applied(self, revision: int, timeout: float = APPLY_WAIT) -> None:
        """Raises EtcdUnavailable when definitions up to `revision` are not applied in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._applied >= revision or self._closed, timeout):
                raise EtcdUnavailable(f"the group definitions did not reach this node within {timeout:g} s")

    def definition(self, name: str) -> tuple[dict[str, Any] | None, int]:
        """The group's definition in etcd (None when absent) and its mod revision."""
        record = self.records.read(self.keys.group(name))
        return (None if record.value is None else json.loads(record.value)), record.revision

    def sync(self, name: str | None = None) -> None:
        if name is None:
            records = self.records.read_prefix(self.keys.groups).values()
            self.wait_applied(max((r.revision for r in records), default=0))
        else:
            self.wait_applied(self.records.read(self.keys.group(name)).revision)

    # -- changes: through etcd ------------------------------------------------------------------

    def get(self, name: str) -> Group:
        try:
            return super().get(name)
        except GroupNotFound:
            # created through another node a moment ago: this one may not have applied it yet
            definition, revision = self.definition(name)
            if definition is None:
                raise
            self.wait_applied(revision)
            return super().get(name)

    def create(self, name: str, schema_sql: str | None = None, template: bytes | None = None) -> Group:
        self.check_new(name, schema_sql, template)
        encoded = None if template is None else base64.b64encode(template).decode()
        value = dump(
            {"schema": schema_sql, "template": encoded, "migrations": [], "released": 0, "rollout": None}
        )
        if len(value) > MAX_DEFINITION_BYTES:
            raise TooLarge(f"a cluster's group definition is at most {MAX_DEFINITION_BYTES} bytes")
        try:
            revision = self.records.swap({self.keys.group(name): 0}, {self.keys.group(name): value})
        except RecordConflict:
            raise GroupExists(f"group {name!r} already exists") from None
        self.wait_applied(revision)
        return self.get(name)

    def add_migration(self, name: str, migration_name: str, text: str) -> Migration:
        return self._register(name, migration_name, ".sql", text)

    def add_sync(
        self, name: str, migration_name: str, schema_sql: str, allow_drop: bool = False
    ) -> Migration:
        return self._register(name, migration_name, ".sync.sql", self.sync_text(schema_sql, allow_drop))

    def _register(self, name: str, migration_name: str, suffix: str, text: str) -> Migration:
        definition, revision = self.definition(name)
        if definition is None:
            raise GroupNotFound(f"no group {name!r}")
        self.wait_applied(revision)  # the trial runs on the definition as read
        migration = self.try_migration(name, migration_name, suffix, text)
        definition["migrations"].append({"file": migration.name + suffix, "text": text})
        self.swap_definition(name, definition, revision)
        return migration

    def swap_definition(
        self,
        name: str,
        definition: dict[str, Any],
        revision: int,
        also: dict[bytes, tuple[int, bytes]] | None = None,
    ) -> int:
        """Write the group's definition if it is still at `revision` (and each key of `also` at
        its revision), then wait until it is applied here. Raises GroupChanged, TooLarge."""
        value = dump(definition)
        if len(value) > MAX_DEFINITION_BYTES:
            raise TooLarge(f"a cluster's group definition is at most {MAX_DEFINITION_BYTES} bytes")
        key = self.keys.group(name)
        expected = {key: revision, **{k: rev for k, (rev, _) in (also or {}).items()}}
        puts = {key: value, **{k: v for k, (_, v) in (also or {}).items()}}
        try:
            committed = self.records.swap(expected, puts)
        except RecordConflict:
            raise GroupChanged(
                f"group {name!r} changed meanwhile (through another request): try again"
            ) from None
        self.wait_applied(committed)
        return committed

    # -- applying definitions (one thread) ------------------------------------------------------

    def _on_change(self, changes: list[tuple[bytes, bytes | None]], revision: int) -> None:
        with self._cond:  # on the cluster loop: only queue
            self._queue.append((changes, revision))
            self._cond.notify_all()

    def _apply_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closed)
                if self._closed:
                    return
                batch, self._queue = self._queue, []
            for changes, revision in batch:
                for key, value in changes:
                    if value is None:
                        continue  # groups are not deleted
                    name = Keyspace.name_in(key, self.keys.groups)
                    try:
                        self._apply(name, json.loads(value))
                    except Exception:
                        log.exception("applying the definition of group %s failed", name)
                with self._cond:
                    self._applied = max(self._applied, revision)
                    self._cond.notify_all()

    def _apply(self, name: str, definition: dict[str, Any]) -> None:
        if not (self.root / name / "template.db").exists():
            encoded = definition.get("template")
            template = None if encoded is None else base64.b64decode(encoded)
            with contextlib.suppress(GroupExists):
                GroupStore.create(self, name, definition.get("schema"), template)
        for migration in definition["migrations"]:
            self.put_migration(name, migration["file"], migration["text"])
        released = int(definition.get("released", 0))
        if released > GroupStore.get(self, name).state(fresh=True).head:
            self.release(name, upto=released)
