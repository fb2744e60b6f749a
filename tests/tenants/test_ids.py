from __future__ import annotations

import pytest

from tenants.errors import InvalidTenantId
from tenants.ids import is_name, is_name_prefix, validate_tenant_id


@pytest.mark.parametrize(
    "value",
    ["a", "0", "acme", "a-b_c", "9lives", "x" * 63, "a" + "-" * 62, "tenant_42", "a_"],
)
def test_valid_ids_are_returned_unchanged(value: str) -> None:
    assert validate_tenant_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "../x",
        "..",
        ".",
        "a/b",
        "a\\b",
        "x" * 64,
        "café",
        "\uff41",  # fullwidth a
        "a\u200b",  # zero-width space
        "-a",
        "_a",
        "Acme",
        "acmE",
        "acme\n",
        "\nacme",
        " acme",
        "acme ",
        "a.b",
        "a:b",
        "a\x00b",
        "a%2fb",
    ],
)
def test_invalid_ids_are_rejected(value: str) -> None:
    with pytest.raises(InvalidTenantId) as info:
        validate_tenant_id(value)
    assert info.value.status == 400
    assert info.value.code == "invalid_tenant_id"


@pytest.mark.parametrize("value", [None, 1, 1.5, b"acme", ["acme"], {"id": "acme"}, True])
def test_non_strings_are_rejected(value: object) -> None:
    with pytest.raises(InvalidTenantId):
        validate_tenant_id(value)


def test_message_never_echoes_a_huge_id() -> None:
    with pytest.raises(InvalidTenantId) as info:
        validate_tenant_id("x" * 10_000)
    assert len(info.value.message) < 300 and "10000 chars" in info.value.message
    with pytest.raises(InvalidTenantId, match="of type int"):
        validate_tenant_id(7)
    with pytest.raises(InvalidTenantId, match="'Acme'"):
        validate_tenant_id("Acme")


def test_group_names_follow_the_tenant_id_rule() -> None:
    assert is_name("acme") and is_name("9-lives_x") and is_name("x" * 63)
    assert not any(is_name(v) for v in ("", "x" * 64, "-a", "Acme", "a.b", None, 7, b"acme"))


@pytest.mark.parametrize("value", ["", "a", "-", "_x", "acme-", "x" * 63])
def test_prefixes_of_names(value: str) -> None:
    assert is_name_prefix(value)


@pytest.mark.parametrize("value", ["A", "a.b", "a/b", "x" * 64, "caf\u00e9", "a "])
def test_not_prefixes_of_names(value: str) -> None:
    assert not is_name_prefix(value)
