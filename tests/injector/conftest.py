from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from flyte_auth_injector.runtime import RunningInjector, running_injector
from tests.injector.helpers import Call, injector_config


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




@pytest.fixture
def call(injector: RunningInjector, client: aiohttp.ClientSession) -> Call:
    async def post(body: Any) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with client.post(injector.url + "/mutate", data=data,
                               headers={"Content-Type": "application/json"}) as resp:
            return resp.status, await resp.json()
    return post
