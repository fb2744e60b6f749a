"""What can go wrong in schema sync, as SqlfleetErrors (class-level HTTP status and code)."""

from __future__ import annotations

from tenants.errors import BadRequest, NotFound, SqlfleetError


class GroupExists(SqlfleetError):
    status = 409
    code = "group_exists"


class GroupNotFound(NotFound):
    """No such schema group (code `not_found`, like any other missing admin resource)."""


class RolloutConflict(SqlfleetError):
    status = 409
    code = "rollout_running"


class RolloutNotFound(NotFound):
    """No such rollout of the group."""


class MigrationFailed(SqlfleetError):
    """A migration or plan failed on one database; its transaction was rolled back."""

    status = 400
    code = "migration_failed"


class HistoryMismatch(MigrationFailed):
    """A database's record of applied migrations disagrees with its group: an edited migration,
    one the group does not have, or a different order. Never skipped: an operator decides."""

    status = 409
    code = "migration_history_mismatch"


class PlanBlocked(MigrationFailed):
    """The schema change needs something not allowed (dropping data) or impossible."""

    code = "plan_blocked"


class InvalidMigration(BadRequest):
    code = "invalid_migration"


class SqlSyntaxError(BadRequest):
    """Schema SQL that cannot be taken apart (an unclosed string, identifier or comment...)."""

    code = "sql_syntax"
