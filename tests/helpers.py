"""Helpers the tests import (conftest.py keeps fixtures only)."""

from __future__ import annotations

from pathlib import Path

from devstack.clock import FakeClock
from devstack.token_endpoint import TokenEndpoint
from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.runtime import RunningAgent
from flyte_auth_common import contract

H = {contract.REQUIRED_HEADER: contract.REQUIRED_HEADER_VALUE}

def agent_config(sock: Path, token_file: Path, endpoint: TokenEndpoint, *extra: str,
                 ) -> AgentConfig:
    """The agent's config as a test wants it: flags only, no env leaking in."""
    return AgentConfig.load(["--socket", str(sock), "--token-file", str(token_file),
                             "--token-endpoint", endpoint.url, *extra], {})


async def outlive_the_token_endpoint_down(agent: RunningAgent, clock: FakeClock,
                                          endpoint: TokenEndpoint) -> None:
    """Let the agent get its first token, stop the token endpoint, and run the clock to that
    token's expiry: the agent now holds nothing valid and cannot get more."""
    await clock.next_sleep()
    tok = agent.source.token()
    assert tok is not None
    await endpoint.stop()
    await clock.run_until(tok.expires_at)
