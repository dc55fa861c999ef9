"""Helpers the tests import (conftest.py keeps fixtures only)."""

from __future__ import annotations

from pathlib import Path

from devstack.token_endpoint import TokenEndpoint
from flyte_auth_agent.config import AgentConfig
from flyte_auth_common import contract

H = {contract.REQUIRED_HEADER: contract.REQUIRED_HEADER_VALUE}

def agent_config(sock: Path, token_file: Path, endpoint: TokenEndpoint, *extra: str,
                 ) -> AgentConfig:
    """The agent's config as a test wants it: flags only, no env leaking in."""
    return AgentConfig.load(["--socket", str(sock), "--token-file", str(token_file),
                             "--token-endpoint", endpoint.url, *extra], {})
