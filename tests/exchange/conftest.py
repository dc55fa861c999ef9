from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp
import pytest

from devstack.world import World
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.runtime import RunningExchange, running_exchange
from tests.exchange.helpers import StartExchange


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await World(tmp_path / "world").start()
    yield w
    await w.stop()




@pytest.fixture
def exchange(world: World) -> StartExchange:
    """Start the exchange server in this world: `async with exchange(*flags) as ex:`."""
    def start(*extra: str) -> AbstractAsyncContextManager[RunningExchange]:
        return running_exchange(ExchangeConfig.load(world.exchange_args(*extra), {}))
    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session






