"""End to end on an External site: real FlyteAdmin and flytepropeller (Flyte's single binary)
with `authServerType: External`, real Keycloak as the organisation's IdP, our exchange
server in External mode (its own key; FlyteAdmin's key is never given to it), the injector,
agent and plugin, and the suite's real node.

FlyteAdmin's `externalAuthServer.baseUrl` is the exchange server's /external/: FlyteAdmin
reads Keycloak's metadata through it and verifies tokens against the union of Keycloak's keys
and the exchange server's. The realm is set up as a Keycloak site for Flyte would be: a client
scope named `all` that every client gets by default (with an audience mapper for FlyteAdmin's
`allowedAudience`, and `scp` so that client-credentials tokens, which carry `client_id`, hold
`all`), a public CLI client users log in with (here by direct grant), flytepropeller's
confidential client, and the users alice and bob.

1. alice's own Keycloak token launches an execution; FlyteAdmin records her Keycloak `sub`;
   the injected task pod gets a token for that `sub`, and FlyteRemote(Config.auto()) in the
   task launches a sub-execution recorded as hers. A pod of bob's execution gets bob.
2. Verdicts: one table presented to real FlyteAdmin and to the stand-in in External mode.
3. Keycloak rotates its key; the exchange server rotates its own: no refused call.
4. The exchange server stopped: what FlyteAdmin, a CLI login and a running task see.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from flyteidl.service import auth_pb2, auth_pb2_grpc, identity_pb2, identity_pb2_grpc
from joserfc import jwt
from joserfc.jwk import RSAKey

from devstack.admin_metadata import AuthMetadata
from devstack.flyteadmin import ExternalAuthServer, FlyteAdmin, start_flyteadmin
from devstack.real.images import AGENT_IMAGE
from devstack.real.keycloak import admin_api, running_keycloak
from devstack.real.webhook import injecting
from devstack.world import write_signing_key
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.mint import Minter
from flyte_auth_exchange.runtime import RunningExchange, running_exchange
from tests.e2e.flyte import (
    NAMESPACE,
    TASK_IMAGE,
    Flyte,
    FlyteCluster,
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
REALM, CLI, PROPELLER = "flyte", "flytectl", "flytepropeller"
#: FlyteAdmin's externalAuthServer.allowedAudience, and what Keycloak's audience mapper adds.
ALLOWED_AUDIENCE = "flyteadmin"
PASSWORD = "e2e-" + uuid.uuid4().hex[:12]
PROPELLER_SECRET = "e2e-" + uuid.uuid4().hex
SUBJECT_AUDIENCE = "flyte-auth"


async def set_up_realm(keycloak: str) -> None:
    async with admin_api(keycloak) as call:
        await call("", {"id": REALM, "realm": REALM, "enabled": True})
        all_scope = await call(f"/{REALM}/client-scopes", {
            "name": "all", "protocol": "openid-connect",
            "attributes": {"include.in.token.scope": "true"},
            "protocolMappers": [
                {"name": "flyteadmin audience", "protocol": "openid-connect",
                 "protocolMapper": "oidc-audience-mapper",
                 "config": {"included.custom.audience": ALLOWED_AUDIENCE,
                            "access.token.claim": "true"}},
                {"name": "scp", "protocol": "openid-connect",
                 "protocolMapper": "oidc-hardcoded-claim-mapper",
                 "config": {"claim.name": "scp", "claim.value": "all",
                            "jsonType.label": "String", "access.token.claim": "true"}}]})
        # Every client created from now on gets `all` by default.
        await call(f"/{REALM}/default-default-client-scopes/{all_scope}", None, "PUT")
        await call(f"/{REALM}/clients", {
            "clientId": CLI, "enabled": True, "publicClient": True,
            "directAccessGrantsEnabled": True, "standardFlowEnabled": False})
        await call(f"/{REALM}/clients", {
            "clientId": PROPELLER, "enabled": True, "publicClient": False,
            "secret": PROPELLER_SECRET, "serviceAccountsEnabled": True,
            "standardFlowEnabled": False, "directAccessGrantsEnabled": False})
        for user, first in (("alice", "Alice"), ("bob", "Bob")):
            await call(f"/{REALM}/users", {
                "username": user, "email": f"{user}@example.com", "emailVerified": True,
                "firstName": first, "lastName": "Example", "enabled": True,
                "credentials": [{"type": "password", "value": PASSWORD,
                                 "temporary": False}]})


async def rotate_keycloak_key(keycloak: str) -> None:
    """A new RSA key of higher priority: it signs from now on; the old one stays active
    (Keycloak still lists it), as an operator rotates a realm's key."""
    async with admin_api(keycloak) as call:
        await call(f"/{REALM}/components", {
            "name": "rotated", "providerId": "rsa-generated",
            "providerType": "org.keycloak.keys.KeyProvider", "parentId": REALM,
            "config": {"priority": ["200"], "keySize": ["2048"], "active": ["true"],
                       "enabled": ["true"], "algorithm": ["RS256"]}})


def claims_of(token: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==")))


def header_of(token: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(token.split(".", maxsplit=1)[0] + "==")))


@dataclass
class ExternalSite:
    site: FlyteCluster
    flyte: Flyte
    keycloak: str
    exchange: RunningExchange
    #: Stop the exchange server (the site runs on without it).
    stop_exchange: Callable[[], Awaitable[None]]

    async def login(self, user: str) -> str:
        """The user's access token, as a CLI gets one (a direct grant at the CLI client)."""
        async with aiohttp.ClientSession() as session, session.post(
                f"{self.keycloak}/realms/{REALM}/protocol/openid-connect/token", data={
                    "grant_type": "password", "client_id": CLI, "username": user,
                    "password": PASSWORD}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return str(body["access_token"])

    @property
    def own_key(self) -> RSAKey:
        return Minter.load_key(self.exchange.config.signing_key)

    def signed(self, claims: dict[str, Any], key: RSAKey | None = None,
               kid: str | None = "own") -> str:
        """A token signed as the exchange server signs (its key, `kid` its thumbprint), or
        with another key or kid."""
        signing = key or self.own_key
        header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
        if kid is not None:
            header["kid"] = signing.thumbprint() if kid == "own" else kid
        return jwt.encode(header, {k: v for k, v in claims.items() if v is not None}, signing)

    def minted_claims(self, subject: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"sub": subject, "aud": [ALLOWED_AUDIENCE], "scp": ["all"], "iat": now - 60,
                "nbf": now - 60, "exp": now + 600, "jti": str(uuid.uuid4()),
                "iss": self.exchange.url, **overrides}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def external(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ExternalSite]:
    workdir = tmp_path_factory.mktemp("external-idp")
    own_key = workdir / "exchange-key.pem"
    write_signing_key(own_key)  # the exchange server's own key; FlyteAdmin's stays home
    async with flyte_cluster(workdir) as site, \
            running_keycloak(workdir, site.cluster) as keycloak:
        cluster = site.cluster
        await set_up_realm(keycloak)
        # FlyteAdmin's ports are chosen first: the exchange server asks it GetExecution, and
        # FlyteAdmin reads its externalAuthServer from the exchange server at start-up.
        flyte = Flyte(workdir / "flyte", site.admin_kubeconfig,
                      await site.propeller_kubeconfig(),
                      login_base=f"{keycloak}/realms/{REALM}", propeller_secret=PROPELLER_SECRET)
        config = ExchangeConfig.load([
            "--pod-security", "cluster-default", "--listen", "127.0.0.1:0",
            "--signing-key", str(own_key), "--admin-audience", ALLOWED_AUDIENCE,
            "--idp-metadata-url", f"{keycloak}/realms/{REALM}/.well-known/openid-configuration",
            "--subject-issuer", cluster.url, "--subject-discovery", cluster.url,
            "--ca-cert-file", str(cluster.ca_file), "--subject-audience", SUBJECT_AUDIENCE,
            "--token-review", "--cache-ttl", "0", "--admin-endpoint", flyte.target,
            "--admin-insecure", "--kubeconfig",
            str(await site.kubeconfig("flyte-auth", "flyte-auth-exchange"))], {})
        async with contextlib.AsyncExitStack() as exchange_stack:
            exchange = await exchange_stack.enter_async_context(running_exchange(config))
            flyte.app_auth = {
                "authServerType": "External",
                "externalAuthServer": {"baseUrl": exchange.url + "/external/",
                                       "allowedAudience": [ALLOWED_AUDIENCE]},
                "thirdPartyConfig": {"flyteClient": {
                    "clientId": CLI, "redirectUri": "http://localhost:53593/callback",
                    "scopes": ["all", "offline"]}}}
            async with running_flyte(flyte.workdir, flyte.admin_kubeconfig,
                                     flyte.propeller_kubeconfig, flyte), injecting(
                    cluster, workdir, [
                        "--admin-endpoint", flyte.target, "--admin-insecure",
                        "--token-endpoint", exchange.url + "/oauth2/token",
                        "--agent-image", AGENT_IMAGE, "--agent-image-pull-policy", "Never",
                        "--kubeconfig",
                        str(await site.kubeconfig("flyte-auth", "flyte-auth-injector"))]):
                yield ExternalSite(site, flyte, keycloak, exchange, exchange_stack.aclose)


# --- 1. alice's execution, her task's sub-execution; bob's pod ------------------------------

async def test_alices_keycloak_login_launches_and_her_task_launches_as_her(
        external: ExternalSite) -> None:
    from tests.e2e import workflows  # noqa: PLC0415

    target, cluster = external.flyte.target, external.site.cluster
    alice_token = await external.login("alice")
    alice_sub = claims_of(alice_token)["sub"]
    alice = flytekit_as(target, alice_token)
    version = await register(alice, TASK_IMAGE, workflows.greet, workflows.launcher)
    execution = await execute(alice, workflows.launcher, version, version=version)
    assert await principal(target, execution.id.name, alice_token) == alice_sub

    bob_token = await external.login("bob")
    bob_sub = claims_of(bob_token)["sub"]
    bobs = await execute(flytekit_as(target, bob_token), workflows.greet, version)
    assert await principal(target, bobs.id.name, bob_token) == bob_sub != alice_sub

    pod = await wait_for_pod(cluster, execution.id.name)
    assert pod["spec"]["initContainers"][0]["name"] == "flyte-auth-agent"
    # bob's pod, asked about directly with a token the kubelet could project for it: bob.
    bobs_pod = await wait_for_pod(cluster, bobs.id.name)
    bound = await cluster.token(NAMESPACE, bobs_pod["spec"]["serviceAccountName"],
                                audience=SUBJECT_AUDIENCE, pod=bobs_pod)
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, external.exchange.url, form(bound))
    assert status == 200, body
    assert claims_of(str(body["access_token"]))["sub"] == bob_sub

    done = await external.site.node.wait_phase(NAMESPACE, pod["metadata"]["name"],
                                               {"Succeeded", "Failed"}, 300)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    finished = await asyncio.to_thread(alice.wait, execution, timeout=timedelta(minutes=3),
                                       poll_interval=timedelta(seconds=1))
    _, child = finished.outputs["o0"].split()
    assert await principal(target, child, alice_token) == alice_sub  # the eager case


# --- 2. verdicts: real FlyteAdmin and the stand-in ------------------------------------------

async def user_info(target: str, token: str | None, host: str) -> str:
    metadata = [("x-forwarded-host", host)]
    if token is not None:
        metadata.append(("flyte-authorization", f"Bearer {token}"))
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await identity_pb2_grpc.IdentityServiceStub(channel).UserInfo(
                identity_pb2.UserInfoRequest(), metadata=tuple(metadata), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
    return f"OK {reply.subject}"


async def token_table(external: ExternalSite) -> dict[str, str | None]:
    alice = await external.login("alice")
    sub = claims_of(alice)["sub"]
    c = external.minted_claims
    now = int(time.time())
    stranger = RSAKey.generate_key(2048)
    admin_key = Minter.load_key(external.flyte.key_file)
    return {
        "alice's Keycloak token": alice,
        "as the exchange server mints": external.signed(c(sub)),
        "no kid (tried with every key)": external.signed(c(sub), kid=None),
        "a key nobody published, under our kid": external.signed(
            c(sub), key=stranger, kid=external.own_key.thumbprint()),
        "a key nobody published": external.signed(c(sub), key=stranger),
        "FlyteAdmin's own key (Self mode's)": external.signed(c(sub), key=admin_key),
        "wrong aud": external.signed(c(sub, aud=["https://elsewhere.example"])),
        "aud an authorized URI": external.signed(c(sub, aud=external.flyte.authorized_uris)),
        "client token, scp read": external.signed(c(sub, client_id="app", scp=["read"])),
        "client token, no scp": external.signed(c(sub, client_id="app", scp=None)),
        "no client_id, no scp": external.signed(c(sub, scp=None)),
        "scp a string": external.signed(c(sub, scp="all")),
        "iat 5 s ahead": external.signed(c(sub, iat=now + 5, nbf=None)),
        "nbf ahead": external.signed(c(sub, nbf=now + 3600)),
        "expired": external.signed(c(sub, iat=now - 7200, nbf=None, exp=now - 3600)),
        "any iss": external.signed(c(sub, iss="https://anyone.example")),
        "no token": None,
    }


async def test_real_flyteadmin_and_the_stand_in_agree_in_external_mode(
        external: ExternalSite) -> None:
    flyte = external.flyte
    stand_in = FlyteAdmin(authorized_uris=flyte.authorized_uris,
                          external=ExternalAuthServer(
                              external.exchange.url +
                              "/external/.well-known/oauth-authorization-server",
                              [ALLOWED_AUDIENCE]))
    await stand_in.external.start()  # type: ignore[union-attr]
    server, target = await start_flyteadmin(stand_in, AuthMetadata(token_endpoint=""))
    hosts = ("flyteadmin.flyte:81", f"127.0.0.1:{flyte.grpc_port}")
    try:
        differences, verdicts = [], {}
        for name, token in (await token_table(external)).items():
            for host in hosts:
                real_v = await user_info(flyte.target, token, host)
                stand_v = await user_info(target, token, host)
                verdicts[(name, host)] = real_v
                if real_v != stand_v:
                    differences.append((name, host, real_v, stand_v))
    finally:
        await server.stop(None)
    assert differences == [], "\n".join(map(str, differences))
    for name in ("alice's Keycloak token", "as the exchange server mints",
                 "no kid (tried with every key)", "no client_id, no scp", "any iss"):
        assert verdicts[(name, hosts[0])].startswith("OK "), name
    for name in ("a key nobody published, under our kid", "a key nobody published",
                 "FlyteAdmin's own key (Self mode's)", "wrong aud", "client token, scp read",
                 "client token, no scp", "iat 5 s ahead", "expired", "no token"):
        assert verdicts[(name, hosts[0])] == "UNAUTHENTICATED", name


# --- 3. key rotations -------------------------------------------------------------------------

async def test_keycloak_rotates_its_key_and_alice_is_still_accepted(
        external: ExternalSite) -> None:
    before = header_of(await external.login("alice"))["kid"]
    await rotate_keycloak_key(external.keycloak)
    alice = await external.login("alice")
    new_kid = header_of(alice)["kid"]
    assert new_kid != before
    # FlyteAdmin meets the new kid and re-fetches the key set from the exchange server, which
    # asks Keycloak again once its copy is 5 s old: wait for that, then one call.
    async with aiohttp.ClientSession() as session, asyncio.timeout(30):
        while True:
            async with session.get(external.exchange.url + "/external/jwks") as resp:
                if new_kid in [k["kid"] for k in (await resp.json())["keys"]]:
                    break
            await asyncio.sleep(0.5)  # the copy's age, not a guess
    sub = claims_of(alice)["sub"]
    assert await user_info(external.flyte.target, alice, "flyteadmin.flyte:81") == f"OK {sub}"


async def test_the_exchange_server_rotates_its_key_and_no_call_is_refused(
        external: ExternalSite, tmp_path: Path) -> None:
    """The new key is published at once and signs only after every replica lists it: tokens
    of the old key (still signing) and of the new one (as it will sign) are both accepted."""
    exchange, target = external.exchange, external.flyte.target
    old = external.own_key
    write_signing_key(tmp_path / "new.pem")
    new = Minter.load_key(tmp_path / "new.pem")
    exchange.config.signing_key.write_bytes((tmp_path / "new.pem").read_bytes())
    assert exchange.files.signing_key.check() is True
    sub = str(uuid.uuid4())
    by_old = external.signed(external.minted_claims(sub), key=old)
    by_new = external.signed(external.minted_claims(sub), key=new)
    assert await user_info(target, by_old, "flyteadmin.flyte:81") == f"OK {sub}"
    assert await user_info(target, by_new, "flyteadmin.flyte:81") == f"OK {sub}"
    assert exchange.api.minter.key_id == old.thumbprint()  # not yet signing with the new


# --- 4. the exchange server stopped (last: the site keeps no exchange server) ----------------

async def test_with_the_exchange_server_stopped(external: ExternalSite) -> None:
    """As docs/external-idp.md says: FlyteAdmin keeps the key set it has (tokens it knows the
    key of still work: the IdP's users, a running task's token); a token of a key it has not
    seen is refused; GetOAuth2Metadata fails, so a CLI cannot start a login; FlyteAdmin
    could not start."""
    target, host = external.flyte.target, "flyteadmin.flyte:81"
    alice = await external.login("alice")
    sub = claims_of(alice)["sub"]
    held = external.signed(external.minted_claims("task-token"))  # a running task's token
    assert await user_info(target, alice, host) == f"OK {sub}"  # FlyteAdmin has both keys
    assert await user_info(target, held, host) == "OK task-token"
    await external.stop_exchange()
    assert await user_info(target, alice, host) == f"OK {sub}"
    assert await user_info(target, held, host) == "OK task-token"
    unseen = external.signed(external.minted_claims(sub), key=RSAKey.generate_key(2048))
    assert await user_info(target, unseen, host) == "UNAUTHENTICATED"
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await auth_pb2_grpc.AuthMetadataServiceStub(channel).GetOAuth2Metadata(
                auth_pb2.OAuth2MetadataRequest(), timeout=10)
