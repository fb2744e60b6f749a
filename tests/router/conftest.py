from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from http_contract import checking
from support import InProcess, in_process


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    """The real app in-process (admin key `support.ADMIN_KEY`); every response it gives is
    checked against the API contract (`http_contract.check_response`)."""
    with in_process(tmp_path / "data") as running:
        checking(running.client)
        yield running
