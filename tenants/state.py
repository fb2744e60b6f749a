"""The lifecycle state of a tenant, as the catalog stores it (the values are on disk and in the
admin API: never rename one)."""

from __future__ import annotations

from enum import StrEnum


class TenantState(StrEnum):
    """Where a tenant is in its life. Create writes the row before the file and delete removes
    the file before the row, so `Fleet.reconcile` after a crash can finish or undo what was in
    flight; every state but `active` refuses requests.

    - `creating`: the row is written, the file may not be yet; reconcile removes both.
    - `active`: the file is in place and served.
    - `deleting`: the files are being removed; reconcile finishes the job.
    - `corrupt`: the file failed to open or read, or a restore in place failed or was
      interrupted; requests get 503 until an operator restores or deletes the tenant.
    - `missing`: an active row whose file vanished; it turns active again if the file returns.
    - `restoring`: a restore in place is replacing the file; requests get 503 meanwhile.
    """

    CREATING = "creating"
    ACTIVE = "active"
    DELETING = "deleting"
    CORRUPT = "corrupt"
    MISSING = "missing"
    RESTORING = "restoring"
