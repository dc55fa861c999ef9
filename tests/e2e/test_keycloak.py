"""The agent straight against a third-party IdP that federates Kubernetes tokens: Keycloak
(from Maven Central) with its Kubernetes identity provider and federated client
authentication (features `client-auth-federated`, `kubernetes-service-accounts`). The agent
sends the pod's service-account token — issued by the real kube-apiserver — as an RFC 7523 client
assertion; Keycloak checks it against the API server's OIDC discovery and answers with its
own access token. Chosen over Dex: Dex's token exchange needs a `connector_id` form field no
standard client sends, while Keycloak's path is plain RFC 7523."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from devstack.real.cluster import running_cluster
from devstack.real.keycloak import admin_api, running_keycloak
from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.runtime import running_agent
from flyte_auth_common.jwt import jwt_claims
from tests.helpers import H

pytestmark = [pytest.mark.timeout(600)]
NAMESPACE, CLIENT = "flytesnacks-development", "flyte-task"


async def configure(url: str, issuer: str) -> None:
    async with admin_api(url) as post:
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
