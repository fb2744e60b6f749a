from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import InProcess, in_process


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    """The real app in-process over a fresh data dir, admin key `support.ADMIN_KEY`."""
    with in_process(tmp_path / "data") as running:
        yield running
