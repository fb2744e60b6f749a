"""DESIGN's layering: a package imports only the packages below it (its own modules aside).
Every module's imports are read with `ast`, those under `if TYPE_CHECKING:` and inside
functions included: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What each top-level package may import of ours, from DESIGN.md's layout table.
MAY_IMPORT: dict[str, set[str]] = {
    "metrics": set(),
    "tenants": {"metrics"},
    "backups": {"tenants", "metrics"},
    "schema_sync": {"tenants", "metrics"},
    "cluster": {"tenants", "metrics"},
    "router": {"tenants", "backups", "schema_sync", "cluster", "metrics"},
    "ops": {"tenants", "backups", "schema_sync", "cluster", "router", "metrics"},
}
OURS = {*MAY_IMPORT, "tests"}


def imported(path: Path) -> set[str]:
    """The top-level names of every absolute import in the module at `path`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def upward_imports(package: str) -> list[str]:
    """`module -> package` for each import of `package`'s modules that DESIGN does not allow."""
    allowed = MAY_IMPORT[package] | {package}
    return [
        f"{path.relative_to(ROOT)} -> {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(imported(path) & (OURS - allowed))
    ]


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_no_upward_imports(package: str) -> None:
    assert upward_imports(package) == []


def test_every_package_of_ours_has_a_rule() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(MAY_IMPORT)


def test_the_check_sees_imports_wherever_they_are(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "import tenants.fleet, os\n"
        "if TYPE_CHECKING:\n    from router.context import Context\n"
        "def f():\n    import ops.server\n"
        "from . import sibling\n"
    )
    assert imported(module) == {"typing", "tenants", "os", "router", "ops"}
