"""flytekit in a task on this Python, with the plugin as pip installed it: FlyteRemote,
@eager's remote, the authenticated channel and whoami act as the launcher; an older
flytekit's ExternalCommand works with the token command."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from flyteidl.service import identity_pb2, identity_pb2_grpc
from flytekit.clients.auth_helper import get_authenticated_channel
from flytekit.configuration import Config, PlatformConfig
from flytekit.configuration.plugin import get_plugin
from flytekit.models.core.identifier import WorkflowExecutionIdentifier
from flytekit.remote import FlyteRemote

from flyte_auth_common import contract
from flytekitplugins.auth_agent import AgentAuthError, default_remote, whoami

from .conftest import Chain


def principal_via(remote: FlyteRemote, chain: Chain) -> str:
    """GetExecution of the pod's own execution: who launched it."""
    execution = remote.client.get_execution(WorkflowExecutionIdentifier(
        chain.env["FLYTE_INTERNAL_EXECUTION_PROJECT"],
        chain.env["FLYTE_INTERNAL_EXECUTION_DOMAIN"], chain.env["FLYTE_INTERNAL_EXECUTION_ID"]))
    return str(execution.spec.metadata.principal)


def test_the_wheel_registers_flytekits_auth_mode() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="flytekit.auth")}
    assert names[contract.PLUGIN_AUTH_MODE] == "flytekitplugins.auth_agent:from_platform_config"


def test_config_auto_acts_as_the_launcher(task_env: Chain) -> None:
    """UserInfo answers the subject of the token the call carried: the agent's, the launcher."""
    channel = get_authenticated_channel(PlatformConfig.auto())
    try:
        reply = identity_pb2_grpc.IdentityServiceStub(channel).UserInfo(
            identity_pb2.UserInfoRequest(), timeout=10)
    finally:
        channel.close()
    assert reply.subject == task_env.launcher
    assert principal_via(FlyteRemote(Config.auto()), task_env) == task_env.launcher


def test_default_remote_and_the_eager_remote(task_env: Chain) -> None:
    remote = default_remote()
    assert (remote.default_project, remote.default_domain) == (
        task_env.env["FLYTE_INTERNAL_EXECUTION_PROJECT"],
        task_env.env["FLYTE_INTERNAL_EXECUTION_DOMAIN"])
    assert principal_via(remote, task_env) == task_env.launcher
    eager = get_plugin().get_remote(config=None, project=remote.default_project,
                                    domain=remote.default_domain)
    assert principal_via(eager, task_env) == task_env.launcher


def test_whoami_names_the_launcher(task_env: Chain) -> None:
    assert whoami() == task_env.launcher


def test_no_agent_is_a_clear_error(task_env: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(contract.SOCKET_ENV, str(task_env.socket.parent / "none/agent.sock"))
    with pytest.raises(Exception) as err:  # noqa: PT011 - whatever flytekit wraps it in
        principal_via(FlyteRemote(Config.auto()), task_env)
    assert isinstance(err.value.__cause__, AgentAuthError)
    assert "no agent listens on" in str(err.value.__cause__)


def test_external_command_with_the_token_command(task_env: Chain,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """flytekit before the plugin's entry point: ExternalCommand runs the agent's script."""
    script = task_env.socket.parent / contract.TOKEN_COMMAND
    monkeypatch.setenv("FLYTE_CREDENTIALS_AUTH_MODE", "ExternalCommand")
    monkeypatch.setenv("FLYTE_CREDENTIALS_COMMAND", f"{sys.executable},{script}")
    assert principal_via(FlyteRemote(Config.auto()), task_env) == task_env.launcher


def test_the_plugin_imports_only_stdlib_and_flytekit() -> None:
    code = ("import sys\n"
            "import flytekit.clients.auth.authenticator, flytekit.configuration, flytekit.remote\n"
            "before = set(sys.modules)\n"
            "import flytekitplugins.auth_agent\n"
            "import json\n"
            "print(json.dumps(sorted(m.split('.')[0] for m in set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert set(json.loads(out.stdout.splitlines()[-1])) <= {"flyte_auth_common",
                                                            "flytekitplugins"}

