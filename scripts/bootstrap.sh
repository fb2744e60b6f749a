#!/usr/bin/env bash
# Sourced by scripts/serve and scripts/test: makes .venv and installs the project into it.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "sqlfleet: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)-${SQLFLEET_EXTRAS:-base}"
if [ ! -f "$stamp" ]; then
  echo "sqlfleet: installing dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  if [ -n "${SQLFLEET_EXTRAS:-}" ]; then target="$ROOT[$SQLFLEET_EXTRAS]"; else target="$ROOT"; fi
  "$VENV/bin/python" -m pip install --quiet -e "$target" >&2
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
