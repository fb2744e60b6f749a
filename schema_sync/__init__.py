"""Schema sync: one schema for every tenant of a group, changed safely across the fleet.

sqltext, schema, diff, plan  -- read two schemas, diff them, plan the SQL (12-step rebuilds)
session, sync                -- run it on a tenant's own connection, template ATTACHed read-only
migrations, alembic_render   -- recorded migrations (SQL files, rendered alembic revisions)
groups                       -- template + ordered migrations, stored in the data dir
catch_up, rollout            -- lazy catch-up on open; fleet rollout with canary/dry run/resume
"""
