"""The bytes a new tenant file starts as: what SQLite makes of an empty database, or of a copy of
a group's template, with the server's settings (WAL mode, no WAL left). Every new tenant of a
kind starts as the same bytes, so they are made once and remembered; a create then writes them
(`tenants.files.create_durably`) instead of having SQLite make each file (a copy, an open, a
checkpoint, a close: several fsyncs and ~0.5 ms of CPU per create).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import apsw

from tenants.config import DbConfig
from tenants.connection import open_database
from tenants.layout import TENANT_SUFFIX, copy_private

MAX_TEMPLATE_BYTES = 1 << 20  # larger templates are copied file to file for each tenant
KEPT_TEMPLATES = 8  # the templates remembered (the groups tenants are being created in)

# What tells a changed template file from the one remembered: a new file (groups replace
# them), or one written in place (its size or times move). Were a change ever missed, tenants
# would start as the template before it: their schema catch-up applies what they lack.
_Version = tuple[str, int, int, int, int, int]


def prepare(path: Path, config: DbConfig) -> None:
    """Make the database file at `path` (missing: a new empty one) what a tenant file starts as."""
    conn, _ = open_database(path, config, create=True)
    try:
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    finally:
        conn.close()
    Path(f"{path}-wal").unlink(missing_ok=True)  # empty after the TRUNCATE checkpoint


class Images:
    """Thread-safe. Images are made in temporary folders under `folder` (the system folder)."""

    def __init__(self, folder: Path, config: DbConfig) -> None:
        self._folder = folder
        self._config = config
        self._lock = threading.Lock()
        self._empty: bytes | None = None
        self._templates: OrderedDict[_Version, bytes] = OrderedDict()

    def empty(self) -> bytes:
        """The file of a new, empty tenant database."""
        with self._lock:
            if self._empty is None:
                self._empty = self._make(None)
            return self._empty

    def of_template(self, template: Path) -> bytes | None:
        """The file of a new tenant made from the file `template` as it is now; None if that is
        larger than MAX_TEMPLATE_BYTES (copy it and `prepare` the copy instead). Raises OSError,
        apsw.Error (a template that is no database)."""
        version = _version(template)
        if version[3] > MAX_TEMPLATE_BYTES:
            return None
        with self._lock:
            image = self._templates.get(version)
            if image is not None:
                self._templates.move_to_end(version)
                return image
            image = self._make(template)
            if _version(template) == version:  # unchanged while it was read: it is this version
                self._templates[version] = image
                if len(self._templates) > KEPT_TEMPLATES:
                    self._templates.popitem(last=False)
            return image

    def _make(self, template: Path | None) -> bytes:
        with tempfile.TemporaryDirectory(dir=self._folder) as folder:
            path = Path(folder) / f"image{TENANT_SUFFIX}"
            if template is not None:
                copy_private(template, path)
            prepare(path, self._config)
            return path.read_bytes()


def _version(path: Path) -> _Version:
    st = os.stat(path)
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
