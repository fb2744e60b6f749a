"""Template-ATTACH sync: diff a database against a template attached on its own connection,
and apply the plan in one transaction."""

from __future__ import annotations

from pathlib import Path

from schema_sync.diff import diff_schemas
from schema_sync.errors import PlanBlocked
from schema_sync.plan import SCRATCH_PREFIX, Plan, make_plan
from schema_sync.schema import read_schema
from schema_sync.session import SchemaSession


def plan_against(session: SchemaSession, alias: str, allow_drop: bool = False) -> Plan:
    """The plan turning `main` into the attached schema `alias`. Reads only."""
    current = read_schema(session.query, "main")
    target = read_schema(session.query, alias)
    return make_plan(diff_schemas(current, target), current, target, allow_drop)


def run_plan(session: SchemaSession, plan: Plan, where: str) -> None:
    """Run `plan` inside the caller's transaction. Raises PlanBlocked, MigrationFailed."""
    if plan.blocked:
        raise PlanBlocked(f"{where}: " + "; ".join(plan.blocked))
    with session.scratch_names(SCRATCH_PREFIX):
        for step in plan.steps:
            session.script(step.sql, where)


def sync_to_template(
    session: SchemaSession, template: Path, allow_drop: bool = False, dry_run: bool = False
) -> Plan:
    """Make the database's schema equal the template's, in one transaction (rolled back when
    `dry_run`, so the returned plan was tried but not kept). Raises PlanBlocked, MigrationFailed,
    TenantBusy."""
    with session.attached(template, "sqlfleet_template") as alias:
        plan = plan_against(session, alias, allow_drop)
        if plan.blocked:
            raise PlanBlocked("; ".join(plan.blocked))
        if plan.steps:
            with session.schema_transaction(dry_run):
                run_plan(session, plan, "sync")
    return plan
