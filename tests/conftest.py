from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from devstack.issuer import StubIssuer
from devstack.paths import short_temp_dir
from devstack.token_endpoint import TokenEndpoint


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_temp_dir() as path:
        yield path


@pytest.fixture
def sock_path(short_dir: Path) -> Path:
    return short_dir / "agent.sock"


@pytest.fixture
def issuer() -> StubIssuer:
    return StubIssuer()


@pytest.fixture
def token_file(tmp_path: Path, issuer: StubIssuer) -> Path:
    path = tmp_path / "token"
    issuer.write(path)
    return path


@pytest.fixture
async def endpoint(issuer: StubIssuer) -> AsyncIterator[TokenEndpoint]:
    ep = TokenEndpoint(issuer)
    await ep.start()
    yield ep
    ep.gate.set()
    await ep.stop()


@pytest.fixture
async def http(sock_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    """A real HTTP client on the agent's Unix socket."""
    connector = aiohttp.UnixConnector(path=str(sock_path))
    async with aiohttp.ClientSession(connector=connector, base_url="http://agent") as session:
        yield session


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    before = asyncio.all_tasks()
    yield
    leaked = [t for t in asyncio.all_tasks() - before
              if not t.done() and t is not asyncio.current_task()]
    assert not leaked, f"test leaked tasks: {[t.get_name() for t in leaked]}"
