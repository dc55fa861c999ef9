"""The agent straight against a third-party IdP that federates Kubernetes tokens: Keycloak
(from Maven Central) with its Kubernetes identity provider and federated client
authentication (features `client-auth-federated`, `kubernetes-service-accounts`). The agent
sends the pod's service-account token — issued by the real kube-apiserver — as an RFC 7523 client
assertion; Keycloak checks it against the API server's OIDC discovery and answers with its
own access token. Chosen over Dex: Dex's token exchange needs a `connector_id` form field no
standard client sends, while Keycloak's path is plain RFC 7523."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from devstack.real import peers
from devstack.real.cluster import Cluster, free_port, running_cluster
from devstack.real.process import stop, until_ok
from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.runtime import running_agent
from flyte_auth_common.jwt import jwt_claims
from tests.helpers import H

pytestmark = [pytest.mark.timeout(600)]
ADMIN_USER, ADMIN_PASSWORD = "admin", "e2e-admin-password"
NAMESPACE, CLIENT = "flytesnacks-development", "flyte-task"


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


async def configure(url: str, issuer: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/realms/master/protocol/openid-connect/token", data={
                "grant_type": "password", "client_id": "admin-cli", "username": ADMIN_USER,
                "password": ADMIN_PASSWORD}) as resp:
            admin = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {admin}"}

        async def post(path: str, body: object) -> None:
            async with session.post(url + "/admin/realms" + path, json=body,
                                    headers=headers) as resp:
                assert resp.status in (201, 204), f"{path}: {resp.status} {await resp.text()}"

        await post("", {"realm": "flyte", "enabled": True})
        await post("/flyte/identity-provider/instances", {
            "alias": "kubernetes", "providerId": "kubernetes", "enabled": True,
            "config": {"issuer": issuer, "supportsClientAssertions": "true",
                       "validateSignature": "true", "useJwksUrl": "true",
                       "jwksUrl": f"{issuer}/openid/v1/jwks",
                       # projected tokens live 10 min to 24 h; Keycloak's default cap is 5 min
                       "federatedClientAssertionMaxExpiration": "3600",
                       # the kubelet reuses one projected token for up to 80 % of its life
                       "supportsClientAssertionReuse": "true"}})
        await post("/flyte/clients", {
            "clientId": CLIENT, "enabled": True, "publicClient": False,
            "serviceAccountsEnabled": True, "standardFlowEnabled": False,
            "clientAuthenticatorType": "federated-jwt",
            "attributes": {"jwt.credential.issuer": "kubernetes",
                           "jwt.credential.sub":
                               f"system:serviceaccount:{NAMESPACE}:default"}})


async def test_the_agent_gets_a_keycloak_token_with_the_pods_kubernetes_token(
        tmp_path: Path, short_dir: Path) -> None:
    async with running_cluster(tmp_path / "cluster") as cluster:
        await cluster.namespace(NAMESPACE)
        pod = await cluster.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "task"},
            "spec": {"containers": [{"name": "task", "image": "python:3.11"}]}})
        async with running_keycloak(tmp_path, cluster) as keycloak:
            await configure(keycloak, cluster.url)
            realm = f"{keycloak}/realms/flyte"
            token_file = short_dir / "token"
            token_file.write_text(await cluster.token(NAMESPACE, "default", audience=realm,
                                                      pod=pod, seconds=1800))
            config = AgentConfig.load([
                "--socket", str(short_dir / "agent.sock"), "--token-file", str(token_file),
                "--grant", "client-assertion", "--client-id", CLIENT,
                "--token-endpoint", realm + "/protocol/openid-connect/token",
                "--wait-timeout", "30"], {})
            connector = aiohttp.UnixConnector(path=str(short_dir / "agent.sock"))
            async with running_agent(config) as agent, aiohttp.ClientSession(
                    connector=connector) as http:
                resp = await http.get("http://agent/v1/token", headers=H)
                body = await resp.json()
                status = agent.source.status()
    assert resp.status == 200, (body, status, (tmp_path / "keycloak.log").read_text()[-3000:])
    claims = jwt_claims(body["access_token"]) or {}
    assert claims["iss"] == realm
    assert claims["azp"] == CLIENT
