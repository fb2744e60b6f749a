#!/usr/bin/env bash
# Sourced by scripts/serve and scripts/test: makes .venv and installs the project into it.
# Installs only when pyproject.toml changed since the last install, or when the extras asked
# for (SQLFLEET_EXTRAS, e.g. dev) were not installed with it. The base install is part of every
# install with extras, so running scripts/serve after scripts/test (or the other way round once
# both ran) installs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "sqlfleet: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# One stamp per installed set of extras: .installed-<pyproject hash>-<extras or base>.
prefix="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
wanted="${SQLFLEET_EXTRAS:-base}"
if [ "$wanted" = base ]; then
  installed="$(compgen -G "$prefix-*" || true)"  # any install of this pyproject has the base
else
  installed="$(compgen -G "$prefix-$wanted" || true)"
fi
if [ -z "$installed" ]; then
  echo "sqlfleet: installing dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  if [ "$wanted" != base ]; then target="$ROOT[$wanted]"; else target="$ROOT"; fi
  "$VENV/bin/python" -m pip install --quiet -e "$target" >&2
  # stamps of an older pyproject.toml go; those of this one stay (their extras are still in)
  find "$VENV" -maxdepth 1 -name '.installed-*' ! -name "$(basename "$prefix")-*" -delete
  touch "$prefix-$wanted"
fi
export PATH="$VENV/bin:$PATH"
