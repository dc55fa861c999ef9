from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
import trustme

from flyte_auth_injector.config import InjectorConfig
from flyte_auth_injector.runtime import RunningInjector, running_injector

ADMIN = "flyteadmin.flyte.svc.cluster.local:81"


def review(pod: dict[str, Any], namespace: str = "flytesnacks-development",
           operation: str = "CREATE") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": str(uuid.uuid4()), "operation": operation,
                        "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": namespace, "object": pod}}


def apply(pod: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    response = answer["response"]
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(pod, patch)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "flyte-auth-injector.flyte-auth.svc")
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return cert_file, key_file


def injector_config(tls_files: tuple[Path, Path], *extra: str) -> InjectorConfig:
    return InjectorConfig.load(["--listen", "127.0.0.1:0", "--tls-cert", str(tls_files[0]),
                                "--tls-key", str(tls_files[1]), "--admin-endpoint", ADMIN,
                                "--admin-insecure", "--agent-image", "flyte-auth-agent:test",
                                *extra], {})


@pytest.fixture
async def injector(tls_files: tuple[Path, Path]) -> AsyncIterator[RunningInjector]:
    async with running_injector(injector_config(tls_files)) as running:
        yield running


@pytest.fixture
async def client(ca: trustme.CA) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield session


Call = Callable[[dict[str, Any] | bytes], Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture
def call(injector: RunningInjector, client: aiohttp.ClientSession) -> Call:
    async def post(body: Any) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with client.post(injector.url + "/mutate", data=data,
                               headers={"Content-Type": "application/json"}) as resp:
            return resp.status, await resp.json()
    return post
