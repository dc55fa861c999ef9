"""Flyte 2's auth proxy in front of its runs service: the real oauth2-proxy (from the Go
module proxy) trusts the exchange server as a JWT issuer (`--extra-jwt-issuers`), finding
its keys through the exchange server's OIDC discovery document, and forwards the minted
token's `sub` as the caller's identity; a token signed with another key is refused there.

1. In front of an upstream that records what reaches it.
2. In front of the real Flyte 2 backend (tests/e2e/flyte2.py): its runs service reports
   the launcher, as it would record a run's `executed_by`, through the proxy; and, reached
   directly, whatever an unsigned JWT claims (the hole the proxy must be the only way past).

The exchange server runs on the local stand-ins (Kubernetes API and FlyteAdmin)."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from devstack.real.cluster import running_cluster
from devstack.real.proxy import running_oauth2_proxy
from devstack.serving import serve
from devstack.world import ADMIN_URL, EXECUTOR, World, write_signing_key
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.runtime import RunningExchange, running_exchange
from tests.e2e.flyte2 import running_flyte2
from tests.exchange.helpers import form, post

pytestmark = [pytest.mark.timeout(300)]
CLAIMED = "ceo@example.com"  # whom a forged or unsigned token claims


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An upstream that answers 200 and records the headers of each request it gets."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="upstream\n")

    application = web.Application()
    application.router.add_get("/{tail:.*}", record)
    runner, port = await serve(application)
    try:
        yield f"http://127.0.0.1:{port}/", seen
    finally:
        await runner.cleanup()


Call = Callable[[str | None], Awaitable[int]]


@contextlib.asynccontextmanager
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[World, RunningExchange, Call,
                                                        list[dict[str, str]],
                                                        aiohttp.ClientSession]]:
    """The exchange server on the stand-ins, oauth2-proxy trusting it in front of a recording
    upstream, and `call(token)`: the proxy's status for a request with that bearer token."""
    world = await World(tmp_path / "world").start()
    try:
        config = ExchangeConfig.load(world.exchange_args(), {})
        async with running_exchange(config) as ex, recording_upstream() as (upstream, seen), \
                running_oauth2_proxy(tmp_path, ex.url, ADMIN_URL, upstream) as proxy, \
                aiohttp.ClientSession() as http:

            async def call(token: str | None) -> int:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.get(proxy + "/api/runs", headers=headers,
                                    allow_redirects=False) as answer:
                    return answer.status

            yield world, ex, call, seen, http
    finally:
        await world.stop()


async def test_oauth2_proxy_trusts_the_exchange_servers_tokens_and_refuses_forged_ones(
        tmp_path: Path) -> None:
    async with proxied(tmp_path) as (world, ex, call, seen, http):
        minted = await minted_token(world, ex.url, http)
        statuses = [await call(minted), await call(forge(minted)), await call(None)]
    assert statuses[0] == 200
    assert len(seen) == 1  # only the minted token got through
    assert seen[0]["X-Forwarded-User"] == EXECUTOR  # the launcher, from `sub`
    assert statuses[1] in (401, 403)
    assert statuses[2] != 200


async def test_a_key_rotation_refuses_no_token_at_the_proxy(tmp_path: Path) -> None:
    """Step 2 of deploy/README's rotation: the exchange server signs with a new key. The first
    new token makes oauth2-proxy fetch /jwks again; a token of the old key, still valid, must
    verify with what it fetched (it did not while /jwks held the signing key alone)."""
    async with proxied(tmp_path) as (world, ex, call, _, http):
        before = await minted_token(world, ex.url, http)
        first = await call(before)  # the proxy now holds the old key
        write_signing_key(world.key_file)
        assert ex.files.signing_key.check() is True
        after = await minted_token(world, ex.url, http)
        statuses = [first, await call(after), await call(before)]
    assert statuses == [200, 200, 200]


def forge(token: str) -> str:
    """The same header and claims, signed with a key the exchange server never had."""
    header, payload = (json.loads(base64.urlsafe_b64decode(part + "=="))
                       for part in token.split(".")[:2])
    return jwt.encode(header, payload, RSAKey.generate_key(2048),
                      registry=JWSRegistry(strict_check_header=False))


async def minted_token(world: World, exchange_url: str, http: aiohttp.ClientSession) -> str:
    """What the exchange server gives a task pod of `world` (naming EXECUTOR)."""
    _, body = await post(http, exchange_url, form(world.kube.token_for(world.task_pod())))
    return str(body["access_token"])


def unsigned(claims: dict[str, object]) -> str:
    """A JWT anyone can write: the claims, and a signature nothing checks."""
    def b64(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.c2lnbmF0dXJl"


async def user_info(http: aiohttp.ClientSession, base: str, token: str,
                    **headers: str) -> tuple[int, str | None]:
    """Flyte 2's IdentityService.UserInfo over Connect's JSON protocol: the identity the
    runs service would record as a run's `executed_by`."""
    async with http.post(base + "/flyteidl2.auth.IdentityService/UserInfo", json={},
                         headers={"Authorization": f"Bearer {token}", **headers},
                         allow_redirects=False) as resp:
        body = await resp.json(content_type=None) if resp.status == 200 else {}
        return resp.status, body.get("subject")


async def test_the_flyte2_runs_service_sees_the_launcher_through_the_proxy_and_only_there(
        tmp_path: Path) -> None:
    world = await World(tmp_path / "world").start()
    try:
        config = ExchangeConfig.load(world.exchange_args(), {})
        async with running_cluster(tmp_path / "cluster") as cluster, \
                running_flyte2(tmp_path / "flyte2", cluster) as flyte2, \
                running_exchange(config) as ex, \
                running_oauth2_proxy(tmp_path, ex.url, ADMIN_URL, flyte2.url + "/") as proxy, \
                aiohttp.ClientSession() as http:
            minted = await minted_token(world, ex.url, http)
            through_proxy = await user_info(http, proxy, minted)
            spoofed = await user_info(http, proxy, minted, **{"X-Forwarded-User": CLAIMED})
            forged = await user_info(http, proxy, forge(minted))
            direct = await user_info(http, flyte2.url, unsigned({"sub": CLAIMED}))
    finally:
        await world.stop()
    assert through_proxy == (200, EXECUTOR)
    assert spoofed == (200, EXECUTOR)  # the proxy replaces a caller's own identity header
    assert forged[0] in (401, 403)
    # Reached directly, the runs service believes any JWT: task pods must reach it only
    # through the proxy (the README's Flyte 2 trust model).
    assert direct == (200, CLAIMED)
