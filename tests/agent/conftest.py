"""The agent suite's fixtures: its socket, the stand-in issuer and token endpoint it trades
with, and an HTTP client on its socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from devstack.issuer import StubIssuer
from devstack.token_endpoint import TokenEndpoint


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
