"""A schema group as one archive, for the fleet metadata in the replica (disaster recovery).

A plain tar (readable with `tar tf`) whose first member, `group.json`, says what it is:
{"format": "sqlfleet-group", "version": 1, "name": ..., "written": unix seconds}. Then the
group's files as they lie in DATA/groups/<name>/ (see schema_sync/groups.py): `template.db`,
`migrations/NNNN_x.sql` (and a sync step's `.sync.db`), `rollouts/<id>.json`.

Unpacking takes only those names, as regular files, and checks the result before anything is
put in place: an archive never writes outside its staging folder, whatever it holds.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from pathlib import Path

from tenants.errors import BadRequest
from tenants.files import write_durably

FORMAT = "sqlfleet-group"
VERSION = 1
HEADER = "group.json"
TEMPLATE = "template.db"
_MEMBER = re.compile(
    r"template\.db|migrations/\d{4}_[a-z0-9][a-z0-9_]{0,58}\.(sql|sync\.sql|sync\.db)"
    r"|rollouts/[0-9A-Za-z-]{1,64}\.json"
)
MAX_MEMBERS = 100_000  # migrations and rollouts of one group; far beyond any real one


def pack(name: str, root: Path) -> bytes:
    """The archive of group `name` whose folder is `root`. The caller holds the group's lock, so
    no migration is being added or released meanwhile (a file replaced by rename is read whole,
    old or new). Raises OSError."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        header = json.dumps({"format": FORMAT, "version": VERSION, "name": name, "written": time.time()})
        _add(tar, HEADER, header.encode())
        _add(tar, TEMPLATE, (root / TEMPLATE).read_bytes())
        for folder in ("migrations", "rollouts"):
            for path in sorted((root / folder).iterdir()):
                member = f"{folder}/{path.name}"
                if path.is_file() and _MEMBER.fullmatch(member):
                    _add(tar, member, path.read_bytes())
    return out.getvalue()


def unpack(archive: bytes, name: str, into: Path) -> None:
    """Write the files of the archive of group `name` into the empty folder `into` (with its
    `migrations/` and `rollouts/`). Raises BadRequest for anything but such an archive of that
    group: another format or version, another group, a member of another name or kind."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            members = tar.getmembers()
            if not members or members[0].name != HEADER:
                raise BadRequest(f"archive of group {name!r} does not start with {HEADER}")
            _check_header(_read(tar, members[0]), name)
            if len(members) > MAX_MEMBERS:
                raise BadRequest(f"archive of group {name!r} holds too many files")
            (into / "migrations").mkdir(exist_ok=True)
            (into / "rollouts").mkdir(exist_ok=True)
            seen: set[str] = set()
            for member in members[1:]:
                if not member.isfile() or not _MEMBER.fullmatch(member.name) or member.name in seen:
                    raise BadRequest(f"archive of group {name!r} holds an unexpected member {member.name!r}")
                seen.add(member.name)
                write_durably(into / member.name, _read(tar, member))
    except tarfile.TarError as exc:
        raise BadRequest(f"archive of group {name!r} is not a readable tar: {exc}") from None
    if TEMPLATE not in seen:
        raise BadRequest(f"archive of group {name!r} has no {TEMPLATE}")


def _check_header(raw: bytes, name: str) -> None:
    try:
        header = json.loads(raw)
    except ValueError:
        raise BadRequest(f"archive of group {name!r}: {HEADER} is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BadRequest(f"archive of group {name!r} is not a {FORMAT} archive")
    if header.get("version") != VERSION:
        raise BadRequest(
            f"archive of group {name!r} is version {header.get('version')!r}; this server reads {VERSION}"
        )
    if header.get("name") != name:
        raise BadRequest(f"archive of group {header.get('name')!r} offered as group {name!r}")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise BadRequest(f"archive member {member.name!r} is not a file")
    with f:
        return f.read()
