from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from flyte_auth_agent import contract
from flyte_auth_agent.config import AgentConfig
from tests.support.cluster import StubIssuer
from tests.support.token_endpoint import TokenEndpoint

H = {contract.REQUIRED_HEADER: contract.REQUIRED_HEADER_VALUE}


def agent_config(sock: Path, token_file: Path, endpoint: TokenEndpoint, *extra: str,
                 ) -> AgentConfig:
    """The agent's config as a test wants it: flags only, no env leaking in."""
    return AgentConfig.load(["--socket", str(sock), "--token-file", str(token_file),
                             "--token-endpoint", endpoint.url, *extra], {})


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temp dir with a short path: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fa-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
