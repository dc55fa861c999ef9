"""Helpers the tests import (conftest.py keeps fixtures only)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fake_agent import FakeAgent

from devstack.clock import FakeClock
from devstack.flyteadmin import FlyteAdmin
from devstack.world import World
from flyte_auth_agent.runtime import RunningAgent

EXECUTION = ("flytesnacks", "development", "f3a1b2c4d5e6")


@dataclass
class AdminSide:
    """The FlyteAdmin stand-in the task calls, as `chain.world` names it."""
    admin: FlyteAdmin
    admin_target: str


@dataclass
class Chain:
    """What most plugin tests run against: FlyteAdmin's stand-in and a fake agent."""
    world: AdminSide
    agent: FakeAgent
    sock: Path
    clock: FakeClock

    def token_requests(self) -> int:
        """How many times the socket was asked for a token."""
        return self.agent.requests

    def env(self, **extra: str) -> dict[str, str]:
        return task_env(self.world.admin_target, self.sock, **extra)


@dataclass
class FullChain:
    """The real chain: the stand-in cluster and FlyteAdmin, the exchange server, the agent."""
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
        return task_env(self.world.admin_target, self.sock, **extra)


def task_env(admin_target: str, sock: Path, **extra: str) -> dict[str, str]:
    """What the injector puts in a task container."""
    return {"FLYTE_PLATFORM_URL": admin_target, "FLYTE_PLATFORM_INSECURE": "true",
            "FLYTE_CREDENTIALS_AUTH_MODE": "flyte-auth-agent",
            "FLYTE_AUTH_AGENT_SOCKET": str(sock),
            "FLYTE_INTERNAL_EXECUTION_PROJECT": EXECUTION[0],
            "FLYTE_INTERNAL_EXECUTION_DOMAIN": EXECUTION[1],
            "FLYTE_INTERNAL_EXECUTION_ID": EXECUTION[2], **extra}

async def in_thread(fn: Any, *args: Any) -> Any:
    """flytekit is synchronous: run it off the event loop the servers live on."""
    return await asyncio.to_thread(fn, *args)
