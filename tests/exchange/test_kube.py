"""The exchange server's Kubernetes reads against a real loopback server: an answer that is
neither the object nor 404 is never taken for the object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from devstack.serving import serve
from flyte_auth_exchange.errors import TEMPORARILY_UNAVAILABLE, Refusal
from flyte_auth_exchange.kube import Kube

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}


def status_doc(code: int) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code,
            "metadata": {}, "message": "no"}


def kubeconfig(tmp_path: Path, port: int) -> Path:
    """A kubeconfig for the API server stand-in on `port`, with a bearer token."""
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return config


@asynccontextmanager
async def kube_answering(tmp_path: Path, code: int) -> AsyncIterator[Kube]:
    async def pod(_: web.Request) -> web.Response:
        return web.json_response(POD if code == 200 else status_doc(code), status=code)
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/p", pod)
    runner, port = await serve(app)
    try:
        kube = await Kube.connect(kubeconfig(tmp_path, port))
        try:
            yield kube
        finally:
            await kube.close()
    finally:
        await runner.cleanup()


async def test_an_object_and_a_missing_one(tmp_path: Path) -> None:
    async with kube_answering(tmp_path, 200) as kube:
        assert await kube.pod("ns", "p") == POD
    async with kube_answering(tmp_path, 404) as kube:
        assert await kube.pod("ns", "p") is None


@pytest.mark.parametrize("code", [400, 401, 403, 409, 422, 429, 500, 503])
async def test_any_other_answer_is_unavailable_not_an_object(tmp_path: Path, code: int) -> None:
    async with kube_answering(tmp_path, code) as kube:
        with pytest.raises(Refusal) as refused:
            await kube.pod("ns", "p")
        assert refused.value.code == TEMPORARILY_UNAVAILABLE
        assert f"HTTP {code}" in refused.value.description


async def test_a_name_never_adds_a_path_segment(tmp_path: Path) -> None:
    """A name is escaped whole: `../secrets/x` asks for a pod of that (impossible) name, not
    for another resource."""
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response(status_doc(404), status=404)
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", anything)
    runner, port = await serve(app)
    try:
        kube = await Kube.connect(kubeconfig(tmp_path, port))
        try:
            assert await kube.pod("ns", "../secrets/x") is None
        finally:
            await kube.close()
    finally:
        await runner.cleanup()
    assert seen == ["/api/v1/namespaces/ns/pods/..%2Fsecrets%2Fx"]
