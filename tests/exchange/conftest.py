from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp
import pytest

from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.runtime import RunningExchange, running_exchange
from tests.support.world import World

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await World(tmp_path / "world").start()
    yield w
    await w.stop()


StartExchange = Callable[..., AbstractAsyncContextManager[RunningExchange]]


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


Post = Callable[..., Awaitable[tuple[int, dict[str, object]]]]


def form(subject_token: str, **extra: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": subject_token,
            "subject_token_type": JWT_TYPE, **extra}


async def post(http: aiohttp.ClientSession, url: str, data: object) -> tuple[int,
                                                                              dict[str, object]]:
    async with http.post(url + "/oauth2/token", data=data) as resp:
        return resp.status, await resp.json()
