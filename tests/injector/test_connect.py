"""The connect guard: exec, attach, port-forward and proxy reviews, answered over real TLS
with the pod read from a Kubernetes API (the stand-in) through the injector's own client."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from devstack.kube_api import StubKubeAPI
from flyte_auth_injector.runtime import running_injector
from tests.injector.helpers import injector_config

NS = "flytesnacks-development"
PROPELLER = "system:serviceaccount:flyte:flytepropeller"
Connect = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


def review(pod: str, subresource: str = "exec", user: str = "mallory@example.com",
           groups: list[str] | None = None, operation: str = "CONNECT") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "PodExecOptions"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "subResource": subresource, "name": pod, "namespace": NS, "operation": operation,
        "userInfo": {"username": user, "groups": groups or ["system:authenticated"]},
        "object": {"kind": "PodExecOptions", "command": ["sh"]}}}


def injected(pod: dict[str, Any]) -> None:
    """The token volume the injector adds (its audience, the injector's default)."""
    pod["spec"]["volumes"] = [{"name": "flyte-auth-token", "projected": {"sources": [
        {"serviceAccountToken": {"audience": "flyte-auth", "path": "token"}}]}}]


@pytest.fixture
async def kube() -> AsyncIterator[StubKubeAPI]:
    stub = StubKubeAPI()
    await stub.start()
    claims = {"execution-id": "e1", "project": "flytesnacks", "domain": "development"}
    injected(stub.add_pod(NS, "task", labels=claims))
    stub.add_pod(NS, "opted-out", labels=claims)  # Flyte's pod, not injected: no token
    injected(stub.add_pod(NS, "notebook", labels={"app": "notebook"}))
    injected(stub.add_pod(NS, "v2", owners=[{"apiVersion": "flyte.org/v1", "kind": "TaskAction",
                                             "name": "a0", "uid": "u", "controller": True}]))
    yield stub
    await stub.stop()


def _client(ca: trustme.CA) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


@pytest.fixture
async def connect(kube: StubKubeAPI, tls_files: tuple[Path, Path], ca: trustme.CA,
                  tmp_path: Path) -> AsyncIterator[Connect]:
    config = injector_config(tls_files, "--kubeconfig", str(kube.kubeconfig(tmp_path / "kc")),
                             "--guard-creators", f" {PROPELLER} , other ")
    async with running_injector(config) as injector, _client(ca) as http:
        async def post(body: Any) -> tuple[int, dict[str, Any]]:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with http.post(injector.url + "/connect", data=data) as resp:
                return resp.status, await resp.json()
        yield post


@pytest.mark.parametrize("subresource", ["exec", "attach", "portforward", "proxy"])
async def test_a_project_user_is_refused_on_a_pod_with_flytes_claims(
        connect: Connect, subresource: str) -> None:
    status, answer = await connect(review("task", subresource))
    assert status == 200
    response = answer["response"]
    assert (response["uid"], response["allowed"], response["status"]["code"]) == (
        "u-1", False, 403)
    message = response["status"]["message"]
    assert f"mallory@example.com may not use pods/{subresource}" in message
    assert "execution-id=e1" in message and PROPELLER in message and "kubectl logs" in message


async def test_a_flyte2_pod_is_guarded_by_its_taskaction_owner(connect: Connect) -> None:
    _, answer = await connect(review("v2"))
    assert answer["response"]["allowed"] is False
    assert "owner=TaskAction/a0" in answer["response"]["status"]["message"]


@pytest.mark.parametrize(("pod", "user", "groups"), [
    ("task", PROPELLER, None),                       # Flyte itself
    ("task", "root@example.com", ["system:masters"]),  # a cluster admin
    ("notebook", "mallory@example.com", None),       # her own pod, no claims
    ("opted-out", "mallory@example.com", None),      # Flyte's, but holds no exchange token
    ("gone", "mallory@example.com", None),           # the API server answers 404 itself
])
async def test_flyte_admins_and_pods_without_claims_pass(connect: Connect, pod: str, user: str,
                                                         groups: list[str] | None) -> None:
    status, answer = await connect(review(pod, user=user, groups=groups))
    assert (status, answer["response"]["allowed"]) == (200, True)


async def test_a_pod_that_cannot_be_read_is_refused_saying_why(
        connect: Connect, kube: StubKubeAPI) -> None:
    await kube.stop()  # the API server is gone: fail closed
    _, answer = await connect(review("notebook"))
    assert answer["response"]["allowed"] is False
    assert "cannot read pod flytesnacks-development/notebook" in (
        answer["response"]["status"]["message"])


async def test_a_read_the_api_server_refuses_is_refused_too(
        connect: Connect, kube: StubKubeAPI) -> None:
    """The API server answers the injector's pod read with an error (its RBAC revoked, its
    token expired): that answer is no pod, and the connect is refused, not judged on it."""
    kube.bearer = "another"  # the injector's token no longer authenticates
    _, answer = await connect(review("task"))
    assert answer["response"]["allowed"] is False
    assert "cannot read pod flytesnacks-development/task" in (
        answer["response"]["status"]["message"])


async def test_without_a_kubernetes_client_every_connect_is_refused(
        tls_files: tuple[Path, Path], ca: trustme.CA) -> None:
    async with running_injector(injector_config(tls_files)) as injector, _client(ca) as http, \
            http.post(injector.url + "/connect", json=review("notebook")) as resp:
        answer = await resp.json()
    assert answer["response"]["allowed"] is False
    assert "cannot read pod" in answer["response"]["status"]["message"]


@pytest.mark.parametrize("body", [
    b"not json", b"[]", json.dumps(review("task", operation="CREATE")).encode(),
    json.dumps(review("task", subresource="log")).encode(),
    json.dumps({**review("task"), "request": {**review("task")["request"], "name": ""}}).encode(),
])
async def test_a_review_that_is_not_a_connect_is_a_400_naming_it(connect: Connect,
                                                                 body: bytes) -> None:
    status, answer = await connect(body)
    assert status == 400
    assert answer["error"] == "bad_review"
    assert "AdmissionReview" in answer["message"] or "CONNECT" in answer["message"]
