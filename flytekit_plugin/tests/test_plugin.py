"""flytekit inside a task: FlyteRemote(Config.auto()) and friends authenticate through the
agent with no code change."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import pytest
from flyteidl.service import identity_pb2, identity_pb2_grpc
from flytekit import task
from flytekit.clients.auth_helper import get_authenticated_channel
from flytekit.clients.grpc_utils.auth_interceptor import AuthUnaryInterceptor
from flytekit.configuration import Config, PlatformConfig
from flytekit.configuration.plugin import get_plugin
from flytekit.models.core.identifier import WorkflowExecutionIdentifier
from flytekit.remote import FlyteRemote

from devstack.clock import FakeClock
from devstack.world import EXECUTOR
from flyte_auth_common import __version__
from flyte_auth_common.client import AgentClient
from flytekitplugins.auth_agent import (
    AgentAuthenticator,
    AgentAuthError,
    default_remote,
    whoami,
)
from plugin_helpers import EXECUTION, Chain, FullChain, in_thread

EXECUTION_ID = WorkflowExecutionIdentifier(*EXECUTION)


def principal_via(remote: FlyteRemote) -> str:
    return str(remote.client.get_execution(EXECUTION_ID).spec.metadata.principal)


def user_info(channel: grpc.Channel) -> str:
    reply = identity_pb2_grpc.IdentityServiceStub(channel).UserInfo(
        identity_pb2.UserInfoRequest())
    return str(reply.subject)


async def test_config_auto_carries_the_agent_token_from_the_first_call(
        full_chain: FullChain) -> None:
    """The one test on the real chain (agent, exchange server, stand-in cluster): the rest
    run against the fake agent, which speaks only the contract."""
    chain = full_chain
    principal = await in_thread(lambda: principal_via(FlyteRemote(Config.auto())))
    assert principal == EXECUTOR
    admin = chain.world.admin
    agent_token = chain.agent.source.token()
    assert agent_token is not None
    assert admin.bearers == [agent_token.value]  # one call, authenticated from the start
    assert admin.rejected == 0
    assert ("GetExecution", EXECUTOR) in admin.calls


async def test_user_info_reports_the_executor(chain: Chain) -> None:
    channel = get_authenticated_channel(PlatformConfig.auto())
    try:
        assert await in_thread(user_info, channel) == EXECUTOR
    finally:
        channel.close()


async def test_unauthenticated_once_makes_the_plugin_ask_again(chain: Chain) -> None:
    chain.world.admin.reject_next = 1
    assert await in_thread(lambda: principal_via(FlyteRemote(Config.auto()))) == EXECUTOR
    assert chain.world.admin.rejected == 1
    assert chain.token_requests() == 2  # the first fetch, and the one after the rejection


async def test_the_same_token_refused_twice_is_a_clear_error(chain: Chain) -> None:
    chain.world.admin.reject_next = 10
    remote = FlyteRemote(Config.auto())
    with pytest.raises(Exception):  # noqa: B017, PT011 - flytekit's own wrapper, first time
        await in_thread(principal_via, remote)
    with pytest.raises(Exception) as err:  # noqa: PT011 - the second refusal: ours
        await in_thread(principal_via, remote)
    cause = err.value.__cause__  # flytekit wraps it in a FlyteSystemException
    assert isinstance(cause, AgentAuthError)
    text = str(cause)
    assert "FlyteAdmin rejected the agent's token" in text
    assert "flyte-authorization: Bearer ..." in text
    token = chain.agent.source.token()
    assert token is not None
    assert token.value not in text


async def test_agent_gone_is_a_clear_error(chain: Chain, monkeypatch: pytest.MonkeyPatch,
                                           short_dir: Path) -> None:
    # No socket directory: this pod has no agent (a present, empty one means it is starting).
    monkeypatch.setenv("FLYTE_AUTH_AGENT_SOCKET", str(short_dir / "not-injected/agent.sock"))
    with pytest.raises(Exception) as err:  # noqa: PT011 - whatever flytekit wraps it in
        await in_thread(lambda: principal_via(FlyteRemote(Config.auto())))
    cause = err.value.__cause__
    assert isinstance(cause, AgentAuthError)
    text = str(cause)
    assert "no agent listens on" in text
    assert "flyte-auth.flyte.org/inject=enabled" in text
    assert chain.world.admin.bearers == []  # nothing went out without a token


def interceptor_channel(chain: Chain, auth: AgentAuthenticator) -> grpc.Channel:
    """flytekit's own AuthUnaryInterceptor around a channel to FlyteAdmin."""
    return grpc.intercept_channel(grpc.insecure_channel(chain.world.admin_target),
                                  AuthUnaryInterceptor(lambda: auth))


async def test_eight_threads_share_one_token_without_a_socket_storm(chain: Chain) -> None:
    auth = AgentAuthenticator(chain.world.admin_target, "flyte-authorization",
                              client=AgentClient(str(chain.sock)))
    channel = interceptor_channel(chain, auth)
    failures: list[BaseException] = []
    subjects: list[str] = []

    def worker() -> None:
        try:
            for _ in range(200):  # real gRPC calls through flytekit's interceptor
                subjects.append(user_info(channel))
        except BaseException as exc:  # reported below, in the test thread
            failures.append(exc)

    def run() -> None:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    try:
        await in_thread(run)
    finally:
        channel.close()
    assert failures == []
    assert subjects == [EXECUTOR] * 1600
    assert len(set(chain.world.admin.bearers)) == 1  # one token shared by every call
    assert auth.fetches == 1
    assert chain.token_requests() == 1  # the socket was asked once


async def test_a_rotated_agent_token_is_used_before_the_old_one_expires(chain: Chain) -> None:
    clock = chain.clock
    auth = AgentAuthenticator(chain.world.admin_target, "flyte-authorization",
                              client=AgentClient(str(chain.sock)), clock=clock.now)
    channel = interceptor_channel(chain, auth)
    try:
        assert await in_thread(user_info, channel) == EXECUTOR
        first = chain.world.admin.bearers[-1]
        old = chain.agent.source.token()
        assert old is not None
        chain.agent.rotate()  # as the agent's refresh at half life does
        new = chain.agent.source.token()
        assert new is not None and new.value != first
        clock.advance(old.issued_at + old.lifetime * 0.75)  # when the plugin looks again
        assert await in_thread(user_info, channel) == EXECUTOR
    finally:
        channel.close()
    assert chain.world.admin.bearers[-1] == new.value
    assert clock.now() < old.expires_at - 60
    assert auth.fetches == 2


async def test_default_remote_for_this_execution(chain: Chain) -> None:
    remote = await in_thread(default_remote)
    assert (remote.default_project, remote.default_domain) == EXECUTION[:2]
    assert await in_thread(principal_via, remote) == EXECUTOR


@task  # type: ignore[untyped-decorator]
def who_launched_me(name: str) -> str:
    """A task as a user writes it: no credentials anywhere."""
    remote = default_remote()
    execution = remote.client.get_execution(WorkflowExecutionIdentifier(
        remote.default_project, remote.default_domain, name))
    return str(execution.spec.metadata.principal)


async def test_a_real_task_using_default_remote(chain: Chain) -> None:
    assert await in_thread(who_launched_me, EXECUTION[2]) == EXECUTOR


async def test_the_eager_workflow_remote_uses_the_agent(chain: Chain) -> None:
    """@eager builds its remote with get_plugin().get_remote(config=None, ...), from the
    FLYTE_* env the injector sets; its calls carry the agent's token."""
    remote = get_plugin().get_remote(config=None, project=EXECUTION[0], domain=EXECUTION[1])
    assert await in_thread(principal_via, remote) == EXECUTOR
    assert chain.world.admin.rejected == 0


async def test_external_command_fallback_for_older_flytekit(
        chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys  # noqa: PLC0415

    agent = str(Path(sys.executable).parent / "flyte-auth-agent")
    monkeypatch.setenv("FLYTE_CREDENTIALS_AUTH_MODE", "ExternalCommand")
    monkeypatch.setenv("FLYTE_CREDENTIALS_COMMAND", f"{agent},token")
    assert await in_thread(lambda: principal_via(FlyteRemote(Config.auto()))) == EXECUTOR
    admin = chain.world.admin
    # ExternalCommand runs only after a failed call: the first goes out without a token.
    assert admin.rejected == 1
    assert admin.bearers[0] == ""
    token = chain.agent.source.token()
    assert token is not None
    assert admin.bearers[1] == token.value


def test_the_readme_eager_example_is_valid_flytekit(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The worked example in the README defines a real eager workflow."""
    import importlib  # noqa: PLC0415
    import re  # noqa: PLC0415

    from flytekit.core.python_function_task import EagerAsyncPythonFunctionTask  # noqa: PLC0415

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("**Eager workflows.**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    (tmp_path / "readme_eager_example.py").write_text(code.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("readme_eager_example")
    assert isinstance(module.fan_out, EagerAsyncPythonFunctionTask)


async def test_an_agent_without_a_token_fails_the_first_attempt_at_once_saying_why_once(
        chain: Chain, monkeypatch: pytest.MonkeyPatch, short_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The agent's token file is missing: one socket request answers 503 at once (no
    --wait-timeout), flytekit's retries get the same answer without asking again, and the
    cause is said once, plainly, before flytekit wraps it."""
    from flyte_auth_agent.config import AgentConfig  # noqa: PLC0415
    from flyte_auth_agent.runtime import running_agent  # noqa: PLC0415

    sock = short_dir / "broken.sock"
    config = AgentConfig.load(["--socket", str(sock), "--token-file", str(short_dir / "nope"),
                               "--token-endpoint", "http://127.0.0.1:9/oauth2/token",
                               "--wait-timeout", "30"], {})
    monkeypatch.setenv("FLYTE_AUTH_AGENT_SOCKET", str(sock))
    clock = FakeClock(time.time())
    async with running_agent(config, clock=clock) as agent:
        await clock.next_sleep()  # the first exchange attempt has failed; it backs off
        with pytest.raises(Exception) as err, caplog.at_level(  # noqa: PT011 - flytekit's
                "ERROR", logger="flytekitplugins.auth_agent"):
            async with asyncio.timeout(20):  # would take 30 s per try if the agent waited
                await in_thread(lambda: principal_via(FlyteRemote(Config.auto())))
        served = agent.api.metrics.registry.get_sample_value(
            "flyte_auth_agent_requests_total", {"path": "/v1/token", "code": "503"})
    text = str(err.value.__cause__)
    assert f"the agent has no valid token: service-account token file {short_dir / 'nope'} " \
           "does not exist" in text
    assert "no valid token: no valid token" not in text  # said once, not stuttered
    assert served == 1  # flytekit's retries did not ask again
    plain = [r.getMessage() for r in caplog.records if "does not exist" in r.getMessage()]
    assert len(plain) == 1


async def test_whoami_names_the_launcher_without_asking_flyteadmin(chain: Chain) -> None:
    calls = list(chain.world.admin.calls)
    assert await in_thread(whoami) == EXECUTOR
    assert chain.world.admin.calls == calls  # no FlyteAdmin round trip


async def test_an_agent_beyond_the_skew_rule_is_named_once_and_the_call_goes_on(
        chain: Chain, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The agent's /v1/config names its version; a plugin more than one minor from it says
    so once, as a warning, and still authenticates."""
    from flytekitplugins.auth_agent import authenticator  # noqa: PLC0415

    chain.agent.version = "7.0.0"
    monkeypatch.setattr(authenticator, "_skew_warned", set())
    with caplog.at_level("WARNING", logger="flytekitplugins.auth_agent"):
        for _ in range(2):
            assert await in_thread(lambda: principal_via(FlyteRemote(Config.auto()))) == \
                EXECUTOR
    said = [r.getMessage() for r in caplog.records if "skew rule" in r.getMessage()]
    assert said == [f"the pod's flyte-auth agent 7.0.0 and this task's plugin {__version__} "
                    "are more than 1 minor version apart, which the skew rule does not "
                    "support: upgrade one minor at a time (README: Versions)"]
