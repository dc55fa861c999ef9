"""End to end with real Flyte: FlyteAdmin (auth on, its own authorization server) and
flytepropeller from Flyte's single binary, on PostgreSQL, against the suite's kube-apiserver,
with our injector, guard, exchange server, agent and flytekit plugin.

1. Verdict parity: one table of tokens, each presented at every host a task might dial, to
   real FlyteAdmin and to our stand-in; they must agree.
2. A real execution launched by alice: flytepropeller creates the task pod, the API server
   has it injected, the kubelet runs it on the suite's real node with the agent beside the
   task, the exchange server maps it to alice through real FlyteAdmin, and
   FlyteRemote(Config.auto()) in the task, as uid 1000, launches a sub-execution that
   FlyteAdmin records as alice's.
3. The agent's discovery against real FlyteAdmin, over gRPC and over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from flyteidl.service import identity_pb2, identity_pb2_grpc
from joserfc import jwt
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from devstack.admin_metadata import AuthMetadata
from devstack.flyteadmin import FlyteAdmin, start_flyteadmin
from devstack.real.cluster import Cluster
from devstack.real.images import AGENT_IMAGE
from devstack.real.node import Node
from devstack.real.webhook import injecting
from flyte_auth_agent.discovery import _via_grpc, _via_http
from flyte_auth_common.admin import AdminEndpoint
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.mint import Minter
from flyte_auth_exchange.runtime import running_exchange
from tests.e2e.flyte import (
    NAMESPACE,
    TASK_IMAGE,
    Flyte,
    execute,
    flyte_cluster,
    flytekit_as,
    principal,
    register,
    running_flyte,
    wait_for_pod,
)
from tests.exchange.helpers import form, post

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]
ALICE = "alice@example.com"
AUDIENCE = "flyte-auth"
LENIENT = JWSRegistry(strict_check_header=False)  # FlyteAdmin's `key_id` header


@dataclass
class RealFlyte:
    cluster: Cluster
    flyte: Flyte
    exchange_url: str
    workdir: Path
    node: Node

    def mint(self, claims: dict[str, Any], *, key: RSAKey | None = None,
             key_id: str | None = None) -> str:
        """A token as FlyteAdmin's own authorization server signs one: `key_id` is the key's
        RFC 7638 thumbprint unless given."""
        signing = key or Minter.load_key(self.flyte.key_file)
        header = {"alg": "RS256", "typ": "JWT", "key_id": key_id or signing.thumbprint()}
        return jwt.encode(header, claims, signing, registry=LENIENT)

    def user_token(self, subject: str = ALICE, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": subject, "aud": self.flyte.authorized_uris,
                                  "scp": ["all"], "iat": now, "exp": now + 600,
                                  "jti": str(uuid.uuid4()), "iss": self.flyte.http_base}
        claims.update(overrides)
        return self.mint({k: v for k, v in claims.items() if v is not None})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def real(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RealFlyte]:
    workdir = tmp_path_factory.mktemp("real-flyte")
    async with flyte_cluster(workdir) as site, running_flyte(
            workdir / "flyte", site.admin_kubeconfig, await site.propeller_kubeconfig()
    ) as flyte:
        cluster = site.cluster
        assert flyte.blob == workdir / "flyte/blob"  # what the pod template mounts
        audiences = [a for uri in flyte.authorized_uris for a in ("--admin-audience", uri)]
        # Its pods run on the suite's node with hostNetwork (there is no CNI), which Pod
        # Security baseline forbids: the namespace is not labelled baseline, and the exchange
        # server is told the cluster vouches for it.
        exchange_config = ExchangeConfig.load([
            "--pod-security", "cluster-default",
            "--listen", "127.0.0.1:0", "--signing-key", str(flyte.key_file), *audiences,
            "--subject-issuer", cluster.url, "--subject-discovery", cluster.url,
            "--ca-cert-file", str(cluster.ca_file), "--subject-audience", AUDIENCE,
            "--token-review", "--cache-ttl", "0", "--admin-endpoint", flyte.target,
            "--admin-insecure", "--kubeconfig",
            str(await site.kubeconfig("flyte-auth", "flyte-auth-exchange"))], {})
        async with running_exchange(exchange_config) as exchange, injecting(
                cluster, workdir, [
                    "--admin-endpoint", flyte.target, "--admin-insecure",
                    "--token-endpoint", exchange.url + "/oauth2/token",
                    "--agent-image", AGENT_IMAGE, "--agent-image-pull-policy", "Never",
                    "--kubeconfig",
                    str(await site.kubeconfig("flyte-auth", "flyte-auth-injector"))]):
            yield RealFlyte(cluster, flyte, exchange.url, workdir, site.node)


# --- 1. verdict parity ------------------------------------------------------------------------

def claims_of(token: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==")))


def token_table(real: RealFlyte) -> dict[str, dict[str, str]]:
    """name -> metadata to send (no metadata: no header)."""
    t = real.user_token
    uris = real.flyte.authorized_uris
    now = int(time.time())
    other_key = RSAKey.generate_key(2048)
    old_key = Minter.load_key(real.flyte.old_key_file)
    table: dict[str, dict[str, str]] = {
        "valid, aud the minted list": {"flyte-authorization": f"Bearer {t()}"},
        "wrong aud": {"flyte-authorization": f"Bearer {t(aud=['https://elsewhere.example'])}"},
        "no all scope": {"flyte-authorization": f"Bearer {t(scp=['read'])}"},
        "scp as a string": {"flyte-authorization": f"Bearer {t(scp='all')}"},
        "expired": {"flyte-authorization": f"Bearer {t(iat=now - 7200, exp=now - 3600)}"},
        "nbf in the future": {"flyte-authorization": f"Bearer {t(nbf=now + 3600)}"},
        "another key": {"flyte-authorization": "Bearer " + real.mint(
            claims_of(t()), key=other_key)},
        "unknown key_id": {"flyte-authorization": "Bearer " + real.mint(
            claims_of(t()), key_id="nope")},
        # Key rotation: FlyteAdmin finds the old key by its id (the key's thumbprint) only.
        "the old key, key_id its thumbprint": {"flyte-authorization": "Bearer " + real.mint(
            claims_of(t()), key=old_key)},
        "the old key, key_id a file name": {"flyte-authorization": "Bearer " + real.mint(
            claims_of(t()), key=old_key, key_id="token_rsa_key.pem")},
        "no header": {},
        "the authorization header": {"authorization": f"Bearer {t()}"},
        "non-string client_id": {"flyte-authorization": f"Bearer {t(client_id=5)}"},
        "non-object user_info": {"flyte-authorization": f"Bearer {t(user_info='alice')}"},
    }
    for uri in uris:
        table[f"aud names only {uri}"] = {"flyte-authorization": f"Bearer {t(aud=uri)}"}
    return table


async def verdict(target: str, metadata: dict[str, str], host: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await identity_pb2_grpc.IdentityServiceStub(channel).UserInfo(
                identity_pb2.UserInfoRequest(),
                metadata=(*metadata.items(), ("x-forwarded-host", host)), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
    return f"OK {reply.subject}"


async def test_real_flyteadmin_and_the_stand_in_give_the_same_verdicts(real: RealFlyte) -> None:
    flyte = real.flyte
    public_pem = Minter.load_key(flyte.key_file).as_pem(private=False)
    old_pem = Minter.load_key(flyte.old_key_file).as_pem(private=False)
    stand_in = FlyteAdmin(public_pem, old_public_key_pem=old_pem,
                          authorized_uris=flyte.authorized_uris)
    server, target = await start_flyteadmin(stand_in, AuthMetadata(token_endpoint=""))
    hosts = ("flyteadmin.flyte:81", "flyteadmin.flyte.svc.cluster.local:81",
             f"127.0.0.1:{flyte.grpc_port}", "flyte.example.com:443")
    try:
        differences, verdicts = [], {}
        for name, metadata in token_table(real).items():
            for host in hosts:
                real_v = await verdict(flyte.target, metadata, host)
                stand_v = await verdict(target, metadata, host)
                verdicts[(name, host)] = real_v
                if real_v != stand_v:
                    differences.append((name, host, real_v, stand_v))
    finally:
        await server.stop(None)
    assert differences == [], "\n".join(map(str, differences))
    ok = f"OK {ALICE}"
    assert all(verdicts[("valid, aud the minted list", h)] == ok for h in hosts)
    assert verdicts[("wrong aud", hosts[0])] == "UNAUTHENTICATED"
    # The audience FlyteAdmin expects depends on the host: each authorized URI alone is
    # accepted only where it is the one FlyteAdmin picks.
    only_public = "aud names only https://flyte.example.com"
    assert verdicts[(only_public, "flyteadmin.flyte:81")] == ok  # no match: the first entry
    assert verdicts[(only_public, hosts[1])] == "UNAUTHENTICATED"
    assert verdicts[("the old key, key_id its thumbprint", hosts[1])] == ok
    assert verdicts[("the old key, key_id a file name", hosts[1])] == "UNAUTHENTICATED"


# --- 2. a real execution ----------------------------------------------------------------------

async def test_a_real_execution_launched_by_alice(real: RealFlyte) -> None:
    from tests.e2e import workflows  # noqa: PLC0415

    alice = flytekit_as(real.flyte.target, real.user_token())
    version = await register(alice, TASK_IMAGE, workflows.greet, workflows.launcher)
    execution = await execute(alice, workflows.launcher, version, version=version)
    name = execution.id.name
    admin = real.user_token("admin")
    assert await principal(real.flyte.target, name, admin) == ALICE  # FlyteAdmin records her

    pod = await wait_for_pod(real.cluster, name)
    meta = pod["metadata"]
    assert meta["labels"]["execution-id"] == name
    assert meta["ownerReferences"][0]["apiVersion"].startswith("flyte.lyft.com/")
    assert pod["spec"]["initContainers"][0]["name"] == "flyte-auth-agent"
    # A token the kubelet could project for this pod, to try once the pod is gone.
    bound = await real.cluster.token(NAMESPACE, pod["spec"]["serviceAccountName"],
                                     audience=AUDIENCE, pod=pod)

    done = await real.node.wait_phase(NAMESPACE, meta["name"], {"Succeeded", "Failed"}, 300)
    task = next(s for s in done["status"]["containerStatuses"])
    log = (await real.cluster.request(
        "GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{meta['name']}/log?"
               f"container={task['name']}"))["message"]
    assert done["status"]["phase"] == "Succeeded", (done["status"], log)
    agent = next(s for s in done["status"]["initContainerStatuses"])
    assert agent["restartCount"] == 0 and "terminated" in agent["state"]
    assert "eyJ" not in log

    finished = await asyncio.to_thread(alice.wait, execution, timeout=timedelta(minutes=3),
                                       poll_interval=timedelta(seconds=1))
    uid, child = finished.outputs["o0"].split()
    assert uid == "1000"  # the task ran as the image's user, not root
    assert await principal(real.flyte.target, child, admin) == ALICE  # the eager case

    await real.cluster.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/"
                                         f"{meta['name']}")
    async with aiohttp.ClientSession() as session:
        status, refused = await post(session, real.exchange_url, form(bound))
    assert (status, refused["error"]) == (400, "invalid_grant")


async def test_each_subtask_pod_of_a_map_task_gets_the_launcher(real: RealFlyte) -> None:
    """A map task (ArrayNode): flytepropeller creates a pod per subtask, each controlled by
    the execution's FlyteWorkflow; each is injected, and each one's agent holds alice's
    token (each subtask answers the `sub` its agent's token names)."""
    from tests.e2e import workflows  # noqa: PLC0415

    alice = flytekit_as(real.flyte.target, real.user_token())
    version = await register(alice, TASK_IMAGE, workflows.mapped)
    execution = await execute(alice, workflows.mapped, version)
    finished = await asyncio.to_thread(alice.wait, execution, timeout=timedelta(minutes=5),
                                       poll_interval=timedelta(seconds=1))
    assert sorted(finished.outputs["o0"]) == [f"{i} {ALICE}" for i in range(3)]
    pods = (await real.cluster.request(
        "GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=execution-id%3D"
               f"{execution.id.name}"))["items"]
    assert len(pods) == 3
    assert all(p["spec"]["initContainers"][0]["name"] == "flyte-auth-agent" for p in pods)


# --- 3. discovery -----------------------------------------------------------------------------

async def test_the_agent_discovers_real_flyteadmin_over_grpc_and_http(real: RealFlyte) -> None:
    flyte = real.flyte
    over_grpc = await _via_grpc(AdminEndpoint(flyte.target, True), None, 10)
    async with aiohttp.ClientSession() as session:
        over_http = await _via_http(AdminEndpoint(f"127.0.0.1:{flyte.http_port}", True),
                                    session, True, 10)
    for info in (over_grpc, over_http):
        assert info.authorization_metadata_key == "flyte-authorization"
        assert info.token_endpoint is not None
        assert info.token_endpoint.endswith("/oauth2/token")
        assert "all" in info.scopes
    assert (over_grpc.source, over_http.source) == ("grpc", "http")
