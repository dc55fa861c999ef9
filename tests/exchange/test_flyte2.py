"""Flyte 2 pods through the exchange server over real HTTP: pod → TaskAction (stand-in
Kubernetes API) → run → executed_by (stand-in runs service, over Connect's protocol)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devstack.serving import serve
from devstack.world import ADMIN_URL, EXECUTOR, World
from flyte_auth_common import contract
from flyte_auth_common.contract import GUARD_NAME
from flyte_auth_common.jwt import jwt_claims
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.flyteadmin import SELF_SUBJECT
from flyte_auth_exchange.runtime import running_exchange
from tests.exchange.helpers import StartExchange, form, logged, post

RUN = {"project": "flytesnacks", "domain": "development", "name": "r8k2m4p6q1"}


async def test_a_flyte2_pod_gets_the_launcher_of_its_run(world: World, exchange: StartExchange,
                                                         http: aiohttp.ClientSession) -> None:
    pod = world.flyte2_task_pod()
    async with exchange() as ex:
        status, body = await post(http, ex.url, form(world.kube.token_for(pod),
                                                     audience=ADMIN_URL))
    assert status == 200, body
    claims = jwt_claims(str(body["access_token"])) or {}
    assert claims["sub"] == EXECUTOR
    assert claims["run_id"] == RUN
    assert "execution_id" not in claims
    assert claims["act"] == {"sub": "system:serviceaccount:flyte:default"}
    # The runs service was asked with the server's own token (so a proxy in front lets it by).
    asked = world.runs.requests[0]["Authorization"].removeprefix("Bearer ")
    assert (jwt_claims(asked) or {})["sub"] == SELF_SUBJECT


async def test_the_launchers_profile_the_runs_service_records_reaches_the_token(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    """Flyte 2's runs service reads email, given_name and family_name from a bearer token
    when it records a child run's launcher (and asks userinfo only for what is missing): the
    minted token carries what it recorded of the parent's, and nothing it did not."""
    pod = world.flyte2_task_pod()
    world.runs.profiles[("flytesnacks", "development", RUN["name"])] = {
        "first_name": "Alice", "email": "alice@example.com"}
    async with exchange() as ex:
        _, body = await post(http, ex.url, form(world.kube.token_for(pod)))
    claims = jwt_claims(str(body["access_token"])) or {}
    assert (claims["sub"], claims["email"], claims["given_name"]) == (
        EXECUTOR, "alice@example.com", "Alice")
    assert "family_name" not in claims


def _forged(world: World, **owner: Any) -> str:
    """A pod whose creator copied a real Flyte 2 pod's labels and changed its owner."""
    real = world.flyte2_task_pod()
    ref = {**real["metadata"]["ownerReferences"][0], **owner}
    pod = world.kube.add_pod("flyte", "forged", labels=real["metadata"]["labels"], owners=[ref])
    return world.kube.token_for(pod)


def _elsewhere(world: World) -> str:
    """A TaskAction owner named from a namespace Flyte 2 does not run actions in."""
    real = world.flyte2_task_pod()
    world.kube.set_namespace("team-a", labels=dict(contract.ENABLED_NAMESPACE_LABELS))
    pod = world.kube.add_pod("team-a", "forged", labels=real["metadata"]["labels"],
                             owners=real["metadata"]["ownerReferences"])
    return world.kube.token_for(pod)


def _unguarded(world: World) -> str:
    token = world.kube.token_for(world.flyte2_task_pod())
    del world.kube.admission[("validatingadmissionpolicybindings", GUARD_NAME)]
    return token


def _run_unknown(world: World) -> str:
    token = world.kube.token_for(world.flyte2_task_pod())
    world.runs.runs.clear()
    return token


def _garbage(world: World) -> str:
    world.runs.garbage = b"\xff\xffnot a protobuf message"
    return world.kube.token_for(world.flyte2_task_pod())


REFUSALS: list[Any] = [
    pytest.param(lambda w: _forged(w, uid="u-1"), 400, "access_denied",
                 "owner check: pod flyte/forged names TaskAction 'r8k2m4p6q1-a0' with another "
                 "uid", id="owner-uid-mismatch"),
    pytest.param(lambda w: _forged(w, name="gone-a0"), 400, "access_denied",
                 "names TaskAction 'gone-a0' as its controller, which does not exist",
                 id="owner-does-not-exist"),
    pytest.param(lambda w: _forged(w, controller=False), 400, "access_denied",
                 "is not controlled by exactly one", id="owner-not-controller"),
    pytest.param(_elsewhere, 400, "access_denied", "namespace check: pod team-a/forged names "
                 "a TaskAction owner, but Flyte 2 runs actions only in namespace 'flyte'",
                 id="outside-the-v2-namespace"),
    pytest.param(_unguarded, 400, "access_denied", "guard check: the "
                 "ValidatingAdmissionPolicyBinding 'flyte-auth-execution-labels' does not "
                 "exist", id="guard-missing"),
    pytest.param(lambda w: w.kube.token_for(w.flyte2_task_pod(launcher=None)), 400,
                 "access_denied", "run flytesnacks/development/r8k2m4p6q1 has no principal "
                 "and policy rule 'flyte' refuses", id="run-without-executed-by"),
    pytest.param(_run_unknown, 400, "invalid_grant",
                 "run flytesnacks/development/r8k2m4p6q1 of the pod's TaskAction does not "
                 "exist in the Flyte 2 runs service", id="run-unknown"),
    pytest.param(_garbage, 503, "temporarily_unavailable", "GetRunDetails at the Flyte 2 runs "
                 "service at http://127.0.0.1:", id="runs-service-garbage"),
]
POLICY = "rules:\n  - name: flyte\n    no_principal: refuse\n"


@pytest.mark.parametrize(("make", "status", "code", "text"), REFUSALS)
async def test_flyte2_refusals_name_the_failed_check(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession, tmp_path: Path,
        make: Callable[[World], str], status: int, code: str, text: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    token = make(world)
    with logged() as logs:
        async with exchange("--policy", str(policy)) as ex:
            answer = await post(http, ex.url, form(token))
    assert answer[0] == status, answer
    assert answer[1]["error"] == code
    assert text in str(answer[1]["error_description"])
    assert token not in json.dumps(answer[1]) + json.dumps(logs, default=str)


async def test_an_unreachable_runs_service_is_temporary(world: World, exchange: StartExchange,
                                                       http: aiohttp.ClientSession) -> None:
    token = world.kube.token_for(world.flyte2_task_pod())
    await world.runs.stop()
    async with exchange() as ex:
        status, body = await post(http, ex.url, form(token))
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    assert "runs service at http://127.0.0.1:" in str(body["error_description"])
    assert "unreachable" in str(body["error_description"])


async def test_without_a_runs_service_a_flyte2_pod_is_refused_and_told_why(
        world: World, http: aiohttp.ClientSession) -> None:
    args = world.exchange_args()
    at = args.index("--runs-url")
    del args[at:at + 2]
    token = world.kube.token_for(world.flyte2_task_pod())
    async with running_exchange(ExchangeConfig.load(args, {})) as ex:
        status, body = await post(http, ex.url, form(token))
    assert (status, body["error"]) == (400, "access_denied")
    assert "is a Flyte 2 task pod" in str(body["error_description"])
    assert "--runs-url" in str(body["error_description"])


async def test_flyte2_alone_needs_no_flyteadmin(world: World, http: aiohttp.ClientSession,
                                                ) -> None:
    args = world.exchange_args()
    at = args.index("--admin-endpoint")
    del args[at:at + 3]  # and --admin-insecure
    v1_pod, v2_pod = world.task_pod(), world.flyte2_task_pod()
    async with running_exchange(ExchangeConfig.load(args, {})) as ex:
        v2 = await post(http, ex.url, form(world.kube.token_for(v2_pod)))
        v1 = await post(http, ex.url, form(world.kube.token_for(v1_pod)))
    assert v2[0] == 200
    assert (jwt_claims(str(v2[1]["access_token"])) or {})["sub"] == EXECUTOR
    assert (v1[0], v1[1]["error"]) == (400, "access_denied")
    assert "no FlyteAdmin to ask" in str(v1[1]["error_description"])


async def test_a_proxy_that_refuses_the_servers_own_token_is_named_with_the_fix(
        world: World, http: aiohttp.ClientSession) -> None:
    """The runs URL is usually the auth proxy: if it does not trust this server as an issuer,
    the refusal says so, and how to fix it (a 503: the pod is not at fault)."""
    async def refuse(_: web.Request) -> web.Response:
        return web.Response(status=403, text="<html>sign in</html>", content_type="text/html")

    application = web.Application()
    application.router.add_post("/{tail:.*}", refuse)
    runner, port = await serve(application)
    args = world.exchange_args()
    args[args.index("--runs-url") + 1] = f"http://127.0.0.1:{port}"
    token = world.kube.token_for(world.flyte2_task_pod())
    try:
        async with running_exchange(ExchangeConfig.load(args, {})) as ex:
            status, body = await post(http, ex.url, form(token))
    finally:
        await runner.cleanup()
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    assert "was refused (HTTP 403)" in str(body["error_description"])
    assert "--extra-jwt-issuers" in str(body["error_description"])
