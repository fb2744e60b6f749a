"""Settings: one frozen dataclass, read from `SQLFLEET_<NAME>` and CLI flags (flags win).

Every field carries its documentation in `metadata["help"]`; `sqlfleet serve --help` and the
README's settings table are generated from it, and a test checks both stay complete.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tenants.config import DbConfig
from tenants.errors import BadRequest

ENV_PREFIX = "SQLFLEET_"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sqlfleet"


def _doc(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(
        default_factory=_default_data_dir,
        metadata=_doc(
            "Directory holding tenant files, the catalog and the keys (default ~/.local/share/sqlfleet)."
        ),
    )
    host: str = field(default="127.0.0.1", metadata=_doc("Address to listen on."))
    port: int = field(default=8080, metadata=_doc("Port to listen on."))
    admin_key: str | None = field(
        default=None,
        metadata=_doc("Admin API key. Unset: generated on first start into DATA_DIR/admin.key and printed."),
    )
    signing_key_file: Path | None = field(
        default=None,
        metadata=_doc(
            "PEM file of the Ed25519 key that signs tenant tokens. Unset: DATA_DIR/signing-key.pem, "
            "generated on first start."
        ),
    )
    pool_capacity: int = field(
        default=1000,
        metadata=_doc(
            "Tenant connections kept open (LRU). Each idle one costs ~100-150 KiB and 2 file descriptors."
        ),
    )
    worker_threads: int = field(default=16, metadata=_doc("Threads that run SQLite work off the event loop."))
    synchronous: str = field(
        default="FULL",
        metadata=_doc("SQLite synchronous mode for tenant databases: FULL (durable on ack) or NORMAL."),
    )
    cache_size_kib: int = field(default=256, metadata=_doc("SQLite page cache per tenant connection, KiB."))
    statement_timeout: float = field(
        default=2.0, metadata=_doc("Seconds one statement may run before it is interrupted (HTTP 504).")
    )
    max_sql_length: int = field(default=100_000, metadata=_doc("Longest SQL text accepted, bytes."))
    max_result_rows: int = field(default=10_000, metadata=_doc("Most rows one result may carry."))
    max_result_bytes: int = field(default=8 << 20, metadata=_doc("Largest result, bytes (approximate)."))
    max_db_bytes: int = field(default=1 << 30, metadata=_doc("Largest tenant database, bytes."))
    max_body_bytes: int = field(default=4 << 20, metadata=_doc("Largest request body, bytes (HTTP 413)."))
    max_batch_statements: int = field(default=1000, metadata=_doc("Most statements in one batch."))
    max_token_ttl: int = field(
        default=365 * 86400, metadata=_doc("Longest lifetime a minted tenant token may have, seconds.")
    )
    log_level: str = field(default="info", metadata=_doc("Log level: debug, info, warning, error."))

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `SQLFLEET_*` variables, then non-None `overrides`.
        Raises BadRequest naming the setting whose value does not parse."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, str(f.type), raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise BadRequest(f"synchronous must be FULL or NORMAL, not {self.synchronous!r}")
        for name in (
            "pool_capacity",
            "worker_threads",
            "max_sql_length",
            "max_result_rows",
            "max_result_bytes",
            "max_db_bytes",
            "max_body_bytes",
            "max_batch_statements",
        ):
            if getattr(self, name) < 1:
                raise BadRequest(f"{name} must be at least 1")
        if self.statement_timeout <= 0:
            raise BadRequest("statement_timeout must be positive")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def db_config(self) -> DbConfig:
        return DbConfig(
            synchronous=self.synchronous.upper(),
            cache_size_kib=self.cache_size_kib,
            max_db_bytes=self.max_db_bytes,
            max_sql_length=self.max_sql_length,
            statement_timeout=self.statement_timeout,
            max_result_rows=self.max_result_rows,
            max_result_bytes=self.max_result_bytes,
        )


def _parse(name: str, type_name: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if "Path" in type_name:
            return Path(raw).expanduser()
    except ValueError:
        raise BadRequest(f"setting {name}: cannot parse {raw!r} as {type_name}") from None
    return raw


def setting_fields() -> list[tuple[str, str, str]]:
    """(name, type, help) of every setting, for --help and docs."""
    return [(f.name, str(f.type), f.metadata.get("help", "")) for f in fields(Settings)]
