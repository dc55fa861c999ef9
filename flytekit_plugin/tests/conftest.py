"""The chain a task sees: the stand-in cluster and FlyteAdmin, the real exchange server, a real
agent on a real socket (discovering the exchange server from FlyteAdmin), and real flytekit
calling FlyteAdmin over gRPC from worker threads."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devstack.clock import FakeClock
from devstack.paths import short_temp_dir
from devstack.world import World
from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.runtime import running_agent
from flyte_auth_common import contract
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.runtime import running_exchange
from plugin_helpers import Chain


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_temp_dir() as path:
        yield path


@pytest.fixture
async def chain(tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch,
                ) -> AsyncIterator[Chain]:
    """The agent and the exchange server, running against devstack's world, and this
    process's env set as the injector sets a task container's."""
    for key in [k for k in os.environ if k.startswith("FLYTE_")]:
        monkeypatch.delenv(key)
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
                chain = Chain(world, agent, sock, clock)
                for key, value in chain.env().items():
                    monkeypatch.setenv(key, value)
                yield chain
    finally:
        await world.stop()


