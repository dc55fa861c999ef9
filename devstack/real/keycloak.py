"""Keycloak (from Maven Central, by devstack.real.peers) on loopback: a real OpenID provider
for the e2e suite, as an IdP that federates Kubernetes tokens (tests/e2e/test_keycloak.py)
and as the organisation's login IdP whose users launch Flyte 2 runs (tests/e2e/test_flyte2.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp

from devstack.real import peers
from devstack.real.cluster import Cluster, free_port
from devstack.real.process import stop, until_ok

ADMIN_USER, ADMIN_PASSWORD = "admin", "e2e-admin-password"


@contextlib.asynccontextmanager
async def running_keycloak(workdir: Path, cluster: Cluster) -> AsyncIterator[str]:
    """Keycloak in dev mode on loopback, trusting the API server's CA; yields its URL."""
    java = peers.java21()
    port, management = free_port(), free_port()
    env = {**os.environ, "JAVA_HOME": str(java), "PATH": f"{java}/bin:{os.environ['PATH']}",
           "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USER,
           "KC_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
           # Java 24+ needs this for Keycloak's thread pool (its own log says so).
           "JAVA_OPTS_APPEND": "--add-opens java.base/java.lang=ALL-UNNAMED"}
    log = (workdir / "keycloak.log").open("wb")
    proc = subprocess.Popen(
        [str(peers.keycloak() / "bin/kc.sh"), "start-dev", "--http-host=127.0.0.1",
         f"--http-port={port}", f"--http-management-port={management}", "--db=dev-mem",
         "--features=client-auth-federated,kubernetes-service-accounts",
         f"--truststore-paths={cluster.ca_file}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        # Keycloak's first start builds its runtime.
        await until_ok(proc, url + "/realms/master", workdir / "keycloak.log", "Keycloak",
                       300, 1)
        yield url
    finally:
        stop(proc, 30)
        log.close()


@contextlib.asynccontextmanager
async def admin_api(url: str) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """`call(path, body, method="POST")` against Keycloak's admin REST API (/admin/realms +
    path), as the bootstrap admin; each call must be answered 201 or 204, and answers the id
    of what it created (the last segment of `Location`), if anything."""
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/realms/master/protocol/openid-connect/token", data={
                "grant_type": "password", "client_id": "admin-cli", "username": ADMIN_USER,
                "password": ADMIN_PASSWORD}) as resp:
            admin = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {admin}"}

        async def call(path: str, body: object, method: str = "POST") -> str:
            async with session.request(method, url + "/admin/realms" + path, json=body,
                                       headers=headers) as resp:
                assert resp.status in (201, 204), f"{path}: {resp.status} {await resp.text()}"
                return resp.headers.get("Location", "").rsplit("/", 1)[-1]

        yield call
