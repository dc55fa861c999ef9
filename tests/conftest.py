"""What every suite shares: a short temporary directory (socket paths), and no asyncio task
left behind a test. Each component's own fixtures live in its folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devstack.paths import short_temp_dir


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_temp_dir() as path:
        yield path


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    before = asyncio.all_tasks()
    yield
    leaked = [t for t in asyncio.all_tasks() - before
              if not t.done() and t is not asyncio.current_task()]
    assert not leaked, f"test leaked tasks: {[t.get_name() for t in leaked]}"
