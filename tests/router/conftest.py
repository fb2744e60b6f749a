from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.app import InProcess, in_process
from tests.support.http_contract import checking


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    """The real app in-process (admin key `tests.support.app.ADMIN_KEY`); every response it gives is
    checked against the API contract (`tests.support.http_contract.check_response`)."""
    with in_process(tmp_path / "data") as running:
        checking(running.client)
        yield running
