"""What can go wrong in schema sync, as SqlfleetErrors (class-level HTTP status and code)."""

from __future__ import annotations

from tenants.errors import BadRequest, NotFound, SqlfleetError, StatementTimeout


class GroupExists(SqlfleetError):
    status = 409
    code = "group_exists"


class GroupNotFound(NotFound):
    """No such schema group (code `not_found`, like any other missing admin resource)."""


class RolloutConflict(SqlfleetError):
    status = 409
    code = "rollout_running"


class RolloutFinished(RolloutConflict):
    """The rollout ended (completed, failed, aborted) or a newer one superseded it: it can be
    neither resumed nor aborted."""

    code = "rollout_finished"


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


class RecordBroken(MigrationFailed):
    """A database's `_sqlfleet_migrations` is not the table the server made (a view, other
    columns, triggers or indexes on it): never trusted, never read. Reported for that database."""

    status = 409
    code = "migration_record_broken"


class InternalTimeout(StatementTimeout):
    """A server-internal statement on a database (bookkeeping, schema reads, foreign key
    checks) outran its deadline (within a schema change, that change is rolled back)."""

    code = "internal_statement_timeout"


class PlanBlocked(MigrationFailed):
    """The schema change needs something not allowed (dropping data) or impossible."""

    code = "plan_blocked"


class InvalidMigration(BadRequest):
    code = "invalid_migration"


class SqlSyntaxError(BadRequest):
    """Schema SQL that cannot be taken apart (an unclosed string, identifier or comment...)."""

    code = "sql_syntax"
