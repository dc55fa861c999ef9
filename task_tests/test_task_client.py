"""The socket client and the token command on this Python: what a Flyte 2 task image runs,
with nothing of ours installed but the agent's copy beside its socket."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import flyte_auth_common
from flyte_auth_common import contract
from flyte_auth_common.client import AgentClient, AgentClientError

from .conftest import Chain, without_flyte_env


def token_command(chain: Chain, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The script the agent wrote beside its socket, run by this Python with no site-packages
    (-S): only what the agent copied."""
    script = chain.socket.parent / contract.TOKEN_COMMAND
    return subprocess.run([sys.executable, "-S", str(script), *args], capture_output=True,
                          text=True, env=without_flyte_env() | env, timeout=30, check=False)


def test_the_kit_under_test_is_the_installed_wheel() -> None:
    """In a task venv, the code tested is what pip installed, not this source tree."""
    if not os.environ.get("FLYTE_AUTH_TASK_ENV"):
        assert Path(flyte_auth_common.__file__).is_relative_to(Path(__file__).parents[1])
        return
    assert Path(flyte_auth_common.__file__).is_relative_to(sysconfig.get_paths()["purelib"])


def test_the_client_fetches_the_token_config_and_status(chain: Chain) -> None:
    client = AgentClient(str(chain.socket))
    body = client.token()
    assert body["token_type"] == "Bearer" and body["access_token"].count(".") == 2
    assert client.config()["execution_id"] == chain.env["FLYTE_INTERNAL_EXECUTION_ID"]
    status = client.status()
    assert status["state"] == "valid"
    assert body["access_token"] not in str(status)


def test_the_client_says_no_agent_listens_without_one(tmp_path: Path) -> None:
    with pytest.raises(AgentClientError) as err:
        AgentClient(str(tmp_path / "absent" / contract.SOCKET_NAME), timeout=2).token()
    assert "no agent listens on" in str(err.value)


def test_the_token_command_prints_the_agents_token(chain: Chain) -> None:
    printed = token_command(chain)
    token = AgentClient(str(chain.socket)).token()["access_token"]
    assert (printed.returncode, printed.stdout, printed.stderr) == (0, token + "\n", "")


def test_the_token_command_fails_in_one_line_without_an_agent(chain: Chain) -> None:
    gone = str(chain.socket.parent / "gone" / contract.SOCKET_NAME)
    printed = token_command(chain, FLYTE_AUTH_AGENT_SOCKET=gone)
    assert printed.returncode == 1 and printed.stdout == ""
    assert printed.stderr.startswith("flyte-auth-token: ") and gone in printed.stderr
    assert len(printed.stderr.strip().splitlines()) == 1
