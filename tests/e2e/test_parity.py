"""The Kubernetes API stand-in (tests/support/kube_api.py) must not drift from the real API
server: the same TokenReview and pod cases go to both, and their verdicts must agree."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import KubeError, running_cluster
from tests.support.kube_api import StubKubeAPI

pytestmark = [pytest.mark.timeout(600)]
NS = "parity-development"


async def stand_in_review(stub: StubKubeAPI, token: str, audiences: list[str]) -> dict[str, Any]:
    return stub._check(token, audiences)


def verdict(status: dict[str, Any]) -> tuple[bool, str | None, str | None, str | None]:
    user = status.get("user") or {}
    extra = user.get("extra") or {}
    pod = extra.get("authentication.kubernetes.io/pod-name") or [None]
    uid = extra.get("authentication.kubernetes.io/pod-uid") or [None]
    return bool(status.get("authenticated")), user.get("username"), pod[0], uid[0]


async def test_token_review_and_pod_reads_agree_with_the_real_api_server(tmp_path: Path) -> None:
    stub = StubKubeAPI()
    async with running_cluster(tmp_path / "cluster") as cluster:
        await cluster.namespace(NS)
        real_pod = await cluster.request("POST", f"/api/v1/namespaces/{NS}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "task"},
            "spec": {"serviceAccountName": "default",
                     "containers": [{"name": "task", "image": "python:3.11"}]}})
        stub_pod = stub.add_pod(NS, "task", uid=real_pod["metadata"]["uid"])

        async def real_review(token: str, audiences: list[str]) -> dict[str, Any]:
            doc = await cluster.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences}})
            return dict(doc["status"])

        real_token = await cluster.token(NS, "default", audience="flyte-auth", pod=real_pod)
        stub_token = stub.token_for(stub_pod, audience="flyte-auth")
        cases = {
            "bound token, right audience": (["flyte-auth"], True),
            "bound token, wrong audience": (["vault"], False),
        }
        for name, (audiences, expected) in cases.items():
            real = verdict(await real_review(real_token, audiences))
            fake = verdict(await stand_in_review(stub, stub_token, audiences))
            assert real == fake, name
            assert real[0] is expected, name
        garbage = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
        assert verdict(await real_review(garbage, ["flyte-auth"]))[0] is False
        assert verdict(await stand_in_review(stub, garbage, ["flyte-auth"]))[0] is False

        # The pod is deleted: both stop vouching for its token, and both answer 404.
        await cluster.request("DELETE", f"/api/v1/namespaces/{NS}/pods/task")
        stub.pods.clear()
        # The real API server checks the bound pod through its informer cache: it stops
        # vouching once the cache has seen the deletion (the stand-in does at once).
        async with asyncio.timeout(30):
            while verdict(await real_review(real_token, ["flyte-auth"]))[0]:
                await asyncio.sleep(0.1)
        assert verdict(await stand_in_review(stub, stub_token, ["flyte-auth"]))[0] is False
        with pytest.raises(KubeError) as missing:
            await cluster.request("GET", f"/api/v1/namespaces/{NS}/pods/task")
        assert missing.value.status == 404
        assert missing.value.body["reason"] == "NotFound"
        await stub.start()
        try:
            import aiohttp  # noqa: PLC0415

            async with aiohttp.ClientSession() as session, session.get(
                    f"{stub.url}/api/v1/namespaces/{NS}/pods/task",
                    headers={"Authorization": f"Bearer {stub.bearer}"}) as resp:
                body = await resp.json()
            assert (resp.status, body["reason"], body["kind"]) == (404, "NotFound", "Status")
        finally:
            await stub.stop()
