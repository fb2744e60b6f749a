"""tenants.dump: literals that read back exactly, and the name imports share with schema sync."""

from __future__ import annotations

import math

import apsw
from hypothesis import given
from hypothesis import strategies as st

from schema_sync.migrations import RECORD_TABLE
from tenants import imports
from tenants.dump import quote_value

_conn = apsw.Connection(":memory:")


@given(
    st.one_of(
        st.none(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
        st.text(),
        st.binary(),
    )
)
def test_every_value_reads_back_as_itself(value: object) -> None:
    (back,) = _conn.execute(f"SELECT {quote_value(value)}").fetchall()[0]
    assert type(back) is type(value)
    if isinstance(value, float):
        assert (
            isinstance(back, float) and (back == value) and math.copysign(1, back) == math.copysign(1, value)
        )
    else:
        assert back == value


def test_nan_is_null_as_sqlite_stores_it() -> None:
    assert quote_value(float("nan")) == "NULL"


def test_imports_know_the_migration_record_by_its_name() -> None:
    assert imports.RECORD_TABLE == RECORD_TABLE
