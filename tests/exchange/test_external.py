"""External mode: FlyteAdmin (the stand-in, in External mode) verifies tokens against an
IdP's key set that this server serves as the union of the IdP's keys and its own.

The IdP is devstack.idp's stand-in over real HTTP; `make e2e` runs the same cases on real
FlyteAdmin and real Keycloak (tests/e2e/test_external_idp.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from joserfc.jwk import RSAKey

from devstack.clock import FakeClock
from devstack.flyteadmin import ExternalAuthServer
from devstack.idp import StubIdP
from devstack.world import World, write_signing_key
from flyte_auth_common.jwt import jwt_claims
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.external import ExternalIdP, Unavailable
from flyte_auth_exchange.mint import Minter
from flyte_auth_exchange.runtime import RunningExchange, running_exchange
from tests.exchange.helpers import form, logged, post, user_info, user_info_code

#: FlyteAdmin's externalAuthServer.allowedAudience, and the audience the IdP's tokens carry.
AUDIENCE = "flyteadmin"


def header(token: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(token.split(".", maxsplit=1)[0] + "==")))


@pytest.fixture
async def idp() -> AsyncIterator[StubIdP]:
    stub = await StubIdP(audience=AUDIENCE).start()
    yield stub
    await stub.stop()


@asynccontextmanager
async def external_site(world: World, idp: StubIdP, *extra: str
                        ) -> AsyncIterator[RunningExchange]:
    """The exchange server with its own key in External mode, and FlyteAdmin (the stand-in)
    started after it, its externalAuthServer.baseUrl the server's /external/."""
    own_key = world.workdir / "exchange-key.pem"
    write_signing_key(own_key)
    args = world.exchange_args()
    args[args.index("--signing-key") + 1] = str(own_key)
    args[args.index("--admin-audience") + 1] = AUDIENCE
    config = ExchangeConfig.load([*args, "--idp-metadata-url", idp.metadata_url, *extra], {})
    async with running_exchange(config) as ex:
        world.admin.external = ExternalAuthServer(
            ex.url + "/external/.well-known/oauth-authorization-server", [AUDIENCE])
        await world.admin.external.start()
        yield ex


async def test_flyteadmin_takes_the_idps_tokens_and_the_exchanges_for_the_launcher(
        world: World, idp: StubIdP, http: aiohttp.ClientSession) -> None:
    alice = idp.users["alice"]  # FlyteAdmin records the IdP token's sub as the principal
    pod = world.task_pod(principal=alice)
    async with external_site(world, idp) as ex:
        assert await user_info(world, idp.token("alice")) == alice
        status, body = await post(http, ex.url, form(world.kube.token_for(pod)))
        assert status == 200, body
        token = str(body["access_token"])
        claims = jwt_claims(token) or {}
        assert claims["sub"] == alice and claims["aud"] == [AUDIENCE]
        assert claims["scp"] == ["all"]
        own = Minter.load_key(ex.config.signing_key)
        assert header(token)["kid"] == own.thumbprint()
        assert await user_info(world, token) == alice
        # Its GetExecution went through with a token it minted for itself: no IdP secret.
        assert ("GetExecution", "flyte-auth-exchange") in world.admin.calls
        # What Self mode would sign with, FlyteAdmin's token_rsa_key.pem, is refused here.
        self_mode = Minter(Minter.load_key(world.key_file), None, "x").mint(
            subject=alice, audience=[AUDIENCE], scopes=["all"], lifetime=60, now=time.time())
        assert await user_info_code(world, self_mode.token) == "UNAUTHENTICATED"


async def test_the_metadata_is_the_idps_but_for_jwks_uri_and_the_keys_are_the_union(
        world: World, idp: StubIdP, http: aiohttp.ClientSession) -> None:
    async with external_site(world, idp) as ex:
        for path in ("/external/.well-known/oauth-authorization-server",
                     "/external/.well-known/openid-configuration"):
            async with http.get(ex.url + path) as resp:
                assert resp.status == 200
                assert await resp.json() == idp.document() | {
                    "jwks_uri": ex.url + "/external/jwks"}
        async with http.get(ex.url + "/external/jwks") as resp:
            kids = [k["kid"] for k in (await resp.json())["keys"]]
        assert kids == ["idp-1", Minter.load_key(ex.config.signing_key).thumbprint()]
        # The server's own metadata (agents, Flyte 2's proxy) is unchanged.
        async with http.get(ex.url + "/.well-known/oauth-authorization-server") as resp:
            assert (await resp.json())["token_endpoint"] == ex.url + "/oauth2/token"


@pytest.mark.parametrize(("case", "overrides", "forged"), [
    ("a key nobody published", {}, True),
    ("a wrong audience", {"aud": "elsewhere"}, False),
    ("no `all` (a client token with scp)", {"client_id": "app", "scp": ["read"]}, False),
    ("no `all` (a client token without scp)", {"client_id": "app"}, False),
    ("an iat 5 s ahead (FlyteAdmin allows no skew)", {"iat": "ahead"}, False),
])
async def test_flyteadmin_refuses(world: World, idp: StubIdP, case: str,
                                  overrides: dict[str, Any], forged: bool) -> None:
    if overrides.get("iat") == "ahead":
        overrides = {"iat": int(time.time()) + 5}
    async with external_site(world, idp):
        assert await user_info_code(world, idp.token("alice")) == "OK"
        if forged:
            idp.keys.insert(0, RSAKey.generate_key(2048, parameters={"kid": "idp-1"}))
            token = idp.token("alice")
            idp.keys.pop(0)
        else:
            token = idp.token("alice", **overrides)
        assert await user_info_code(world, token) == "UNAUTHENTICATED", case


async def test_an_idp_that_fails_after_a_good_answer_is_served_from_the_last_copy(
        world: World, idp: StubIdP, http: aiohttp.ClientSession) -> None:
    async with external_site(world, idp) as ex:
        async with http.get(ex.url + "/external/jwks") as resp:
            good = await resp.json()
        idp.answer = 503
        ex.api.external._keys.tried = float("-inf")  # type: ignore[union-attr]  # old copy
        with logged() as logs:
            async with http.get(ex.url + "/external/jwks") as resp:
                assert (resp.status, await resp.json()) == (200, good)
        assert any(e["event"] == "idp_unreachable" for e in logs)
        async with http.get(ex.url + "/metrics") as resp:
            assert "flyte_auth_exchange_idp_fetch_failures_total 1.0" in await resp.text()
        assert await user_info_code(world, idp.token("alice")) == "OK"


async def test_an_idp_never_reached_is_a_503_that_says_so(
        world: World, idp: StubIdP, http: aiohttp.ClientSession) -> None:
    idp.answer = "garbage"
    own_key = world.workdir / "exchange-key.pem"
    # FlyteAdmin started before the IdP went down: it holds this server's key (go-oidc
    # caches a key set with no expiry), as the stand-in's Self mode holds a key.
    world.admin.set_keys(write_signing_key(own_key))
    args = world.exchange_args()
    args[args.index("--signing-key") + 1] = str(own_key)
    config = ExchangeConfig.load([*args, "--idp-metadata-url", idp.metadata_url], {})
    async with running_exchange(config) as ex:
        for path in ("/external/.well-known/oauth-authorization-server", "/external/jwks"):
            async with http.get(ex.url + path) as resp:
                body = await resp.json()
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "5"
            assert body["error"] == "temporarily_unavailable"
            assert "did not answer JSON" in body["error_description"]
            assert idp.metadata_url in body["error_description"]
        # Exchanges do not depend on the IdP.
        status, _ = await post(http, ex.url, form(world.kube.token_for(world.task_pod())))
        assert status == 200


async def test_a_new_own_key_is_published_before_it_signs(
        world: World, idp: StubIdP, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Every replica lists a new key before any signs with it: FlyteAdmin's re-fetch on the
    new kid may reach any replica."""
    pod = world.task_pod(principal=idp.users["alice"])
    async with external_site(world, idp) as ex:
        old = Minter.load_key(ex.config.signing_key)
        write_signing_key(tmp_path / "new.pem")
        new = Minter.load_key(tmp_path / "new.pem")
        ex.config.signing_key.write_bytes((tmp_path / "new.pem").read_bytes())
        assert ex.files.signing_key.check() is True
        async with http.get(ex.url + "/external/jwks") as resp:
            kids = [k["kid"] for k in (await resp.json())["keys"]]
        assert kids == ["idp-1", old.thumbprint(), new.thumbprint()]
        _, body = await post(http, ex.url, form(world.kube.token_for(pod)))
        assert header(str(body["access_token"]))["kid"] == old.thumbprint()  # not yet new
        assert await user_info_code(world, str(body["access_token"])) == "OK"


# --- the IdP's copies, with a clock moved by hand ----------------------------------------------

@asynccontextmanager
async def mirror(idp: StubIdP, clock: FakeClock, **kwargs: Any) -> AsyncIterator[ExternalIdP]:
    own = {"keys": [{"kty": "RSA", "kid": "own", "n": "AQAB", "e": "AQAB"}]}
    async with aiohttp.ClientSession() as session:
        yield ExternalIdP(idp.metadata_url, lambda: own, "https://exchange.example/", session,
                          clock=clock.now, **kwargs)


async def test_the_idps_new_key_reaches_flyteadmin_on_its_first_use(idp: StubIdP) -> None:
    clock = FakeClock()
    async with mirror(idp, clock) as m:
        assert [k["kid"] for k in (await m.key_set())["keys"]] == ["idp-1", "own"]
        fetches = m.fetches
        idp.rotate()
        # A flood of unknown kids within min_refetch costs the IdP nothing more.
        for _ in range(50):
            await m.key_set()
        assert m.fetches == fetches
        clock.advance(clock.now() + 5)  # FlyteAdmin meets the new kid: the IdP is asked
        assert [k["kid"] for k in (await m.key_set())["keys"]] == ["idp-2", "idp-1", "own"]
        assert m.fetches == fetches + 1
        assert (await m.document())["jwks_uri"] == "https://exchange.example/external/jwks"


async def test_a_hanging_idp_never_holds_an_answer_past_the_timeout(idp: StubIdP) -> None:
    clock = FakeClock()
    async with mirror(idp, clock, timeout=0.2) as m:
        good = await m.key_set()
        idp.gate = asyncio.Event()  # the IdP accepts and never answers
        clock.advance(clock.now() + 60)
        assert await m.key_set() == good  # the last good copy, after one timeout
        tried = m.fetches
        assert await m.key_set() == good  # at once: the failed try waits out min_refetch
        assert m.fetches == tried
        assert await m.document() == idp.document() | {
            "jwks_uri": "https://exchange.example/external/jwks"}


@pytest.mark.parametrize("answer", [500, 404, "garbage", "empty"])
async def test_an_idp_that_never_answered_well_is_unavailable(idp: StubIdP,
                                                              answer: int | str) -> None:
    idp.answer = answer
    failures: list[int] = []
    async with mirror(idp, FakeClock(), on_failure=lambda: failures.append(1)) as m:
        with pytest.raises(Unavailable, match="has not been fetched yet"):
            await m.key_set()
        assert failures


async def test_callers_waiting_on_a_hanging_idp_share_one_fetch(idp: StubIdP) -> None:
    """An IdP that never answers, and nothing fetched yet: ten callers at once get their 503
    after one timeout, not one timeout each in turn."""
    idp.gate = asyncio.Event()
    async with mirror(idp, FakeClock(), timeout=0.2) as m:
        results = await asyncio.gather(*(m.document() for _ in range(10)),
                                       return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results)
        assert m.fetches == 1
