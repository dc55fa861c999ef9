"""The chain a task sees: the stand-in cluster and FlyteAdmin, the real exchange server, a real
agent on a real socket (discovering the exchange server from FlyteAdmin), and real flytekit
calling FlyteAdmin over gRPC from worker threads."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.runtime import RunningAgent, running_agent
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.runtime import running_exchange
from tests.support.clock import FakeClock
from tests.support.world import World

EXECUTION = ("flytesnacks", "development", "f3a1b2c4d5e6")


@dataclass
class Chain:
    world: World
    agent: RunningAgent
    sock: Path
    clock: FakeClock

    def token_requests(self) -> int:
        """How many times the socket was asked for a token (from the agent's metrics)."""
        text = self.agent.api.metrics.registry.get_sample_value(
            "flyte_auth_agent_requests_total", {"path": "/v1/token", "code": "200"})
        return int(text or 0)

    def env(self, **extra: str) -> dict[str, str]:
        """What the injector puts in a task container."""
        return {"FLYTE_PLATFORM_URL": self.world.admin_target, "FLYTE_PLATFORM_INSECURE": "true",
                "FLYTE_CREDENTIALS_AUTH_MODE": "flyte-auth-agent",
                "FLYTE_AUTH_AGENT_SOCKET": str(self.sock),
                "FLYTE_INTERNAL_EXECUTION_PROJECT": EXECUTION[0],
                "FLYTE_INTERNAL_EXECUTION_DOMAIN": EXECUTION[1],
                "FLYTE_INTERNAL_EXECUTION_ID": EXECUTION[2], **extra}


@pytest.fixture
async def chain(tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch,
                ) -> AsyncIterator[Chain]:
    for key in [k for k in os.environ if k.startswith("FLYTE_")]:
        monkeypatch.delenv(key)
    world = await World(tmp_path / "world").start()
    pod = world.task_pod()
    token_file = tmp_path / "sa-token"
    token_file.write_text(world.kube.token_for(pod))
    sock = short_dir / "agent.sock"
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


async def in_thread(fn: Any, *args: Any) -> Any:
    """flytekit is synchronous: run it off the event loop the servers live on."""
    return await asyncio.to_thread(fn, *args)
