"""What a task sees: `chain`, FlyteAdmin's stand-in and a fake agent that speaks the wire
contract (fake_agent.py); `full_chain`, the real chain (the stand-in cluster and FlyteAdmin,
the real exchange server, a real agent on a real socket discovering the exchange server from
FlyteAdmin). Real flytekit calls FlyteAdmin over gRPC from worker threads in both."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fake_agent import FakeAgent

from devstack.admin_metadata import AuthMetadata
from devstack.clock import FakeClock
from devstack.flyteadmin import FlyteAdmin, start_flyteadmin
from devstack.paths import short_temp_dir
from devstack.world import ADMIN_URL, EXECUTOR, World, write_signing_key
from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.runtime import running_agent
from flyte_auth_common import contract
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.runtime import running_exchange
from plugin_helpers import EXECUTION, AdminSide, Chain, FullChain


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_temp_dir() as path:
        yield path


def clear_flyte_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("FLYTE_")]:
        monkeypatch.delenv(key)


@pytest.fixture
async def chain(tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch,
                ) -> AsyncIterator[Chain]:
    """FlyteAdmin's stand-in and the fake agent, and this process's env set as the injector
    sets a task container's."""
    clear_flyte_env(monkeypatch)
    key_file = tmp_path / "token_rsa_key.pem"
    admin = FlyteAdmin(write_signing_key(key_file), authorized_uris=[ADMIN_URL])
    admin.executions[EXECUTION] = EXECUTOR
    server, target = await start_flyteadmin(admin, AuthMetadata(token_endpoint="",
                                                                audience=ADMIN_URL))
    agent = FakeAgent(short_dir / contract.SOCKET_NAME, key_file, admin_target=target,
                      audience=ADMIN_URL, subject=EXECUTOR, execution=EXECUTION,
                      clock=FakeClock(time.time()))
    await agent.start()
    try:
        chain = Chain(AdminSide(admin, target), agent, agent.sock, agent.clock)
        for key, value in chain.env().items():
            monkeypatch.setenv(key, value)
        yield chain
    finally:
        await agent.stop()
        await server.stop(None)


@pytest.fixture
async def full_chain(tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch,
                     ) -> AsyncIterator[FullChain]:
    """The agent and the exchange server, running against devstack's world, and this
    process's env set as the injector sets a task container's."""
    clear_flyte_env(monkeypatch)
    world = await World(tmp_path / "world").start()
    pod = world.task_pod()
    token_file = tmp_path / "sa-token"
    token_file.write_text(world.kube.token_for(pod))
    sock = short_dir / contract.SOCKET_NAME
    clock = FakeClock(time.time())
    try:
        async with running_exchange(ExchangeConfig.load(world.exchange_args(), {})) as ex:
            world.metadata.token_endpoint = ex.url + "/oauth2/token"
            config = AgentConfig.load(["--socket", str(sock), "--token-file", str(token_file),
                                       "--admin-endpoint", world.admin_target,
                                       "--admin-insecure"], {})
            async with running_agent(config, clock=clock) as agent:
                assert await agent.source.wait(10) is not None
                world.admin.bearers.clear()  # from here on: only what the task sends
                world.admin.calls.clear()
                chain = FullChain(world, agent, sock, clock)
                for key, value in chain.env().items():
                    monkeypatch.setenv(key, value)
                yield chain
    finally:
        await world.stop()


