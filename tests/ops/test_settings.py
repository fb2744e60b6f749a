from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from ops.settings import Settings, settings_markdown
from tenants.errors import BadRequest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented() -> None:
    for f in fields(Settings):
        assert len(f.metadata.get("help", "")) > 10, f"setting {f.name} has no help text"


def test_readme_settings_table_is_current() -> None:
    text = README.read_text()
    block = re.search(r"<!-- settings -->\n(.*?)\n?<!-- /settings -->", text, re.S)
    assert block is not None
    assert block.group(1).strip() == settings_markdown(), (
        "regenerate with: python -c 'from ops.settings import settings_markdown; print(settings_markdown())'"
    )


def test_env_then_flags() -> None:
    env = {"SQLFLEET_POOL_CAPACITY": "7", "SQLFLEET_STATEMENT_TIMEOUT": "0.5", "SQLFLEET_ADMIN_KEY": "k"}
    s = Settings.load(env)
    assert (s.pool_capacity, s.statement_timeout, s.admin_key) == (7, 0.5, "k")
    assert Settings.load(env, pool_capacity=9).pool_capacity == 9


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SQLFLEET_POOL_CAPACITY", "many"),
        ("SQLFLEET_POOL_CAPACITY", "0"),
        ("SQLFLEET_SYNCHRONOUS", "OFF"),
        ("SQLFLEET_STATEMENT_TIMEOUT", "-1"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(name: str, value: str) -> None:
    with pytest.raises(BadRequest, match=name.removeprefix("SQLFLEET_").lower()):
        Settings.load({name: value})
