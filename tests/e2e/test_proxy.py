"""Flyte 2's auth proxy in front of its runs service: the real oauth2-proxy (from the Go
module proxy) trusts the exchange server as a JWT issuer (`--extra-jwt-issuers`), finding
its keys through the exchange server's OIDC discovery document, and forwards the minted
token's `sub` as the caller's identity; a token signed with another key is refused there.
The upstream only records what reaches it (the v2 runs service reads the same headers).
The exchange server runs on the local stand-ins (Kubernetes API and FlyteAdmin)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from devstack.real import peers
from devstack.real.cluster import free_port
from devstack.world import ADMIN_URL, EXECUTOR, World
from flyte_auth_common import contract
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.runtime import running_exchange

pytestmark = [pytest.mark.timeout(300)]


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An upstream that answers 200 and records the headers of each request it gets."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="upstream\n")

    application = web.Application()
    application.router.add_get("/{tail:.*}", record)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/", seen
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_oauth2_proxy(workdir: Path, issuer: str, audience: str,
                               upstream: str) -> AsyncIterator[str]:
    """oauth2-proxy as a Flyte 2 deployment runs it for tasks: bearer tokens only (no login
    for machines), the exchange server as an extra JWT issuer for `audience`."""
    port = free_port()
    log = workdir / "oauth2-proxy.log"
    argv = [str(peers.oauth2_proxy()), f"--http-address=127.0.0.1:{port}",
            f"--upstream={upstream}", "--provider=oidc", f"--oidc-issuer-url={issuer}",
            "--client-id=flyte-auth-e2e", "--client-secret=unused",
            "--cookie-secret=" + base64.urlsafe_b64encode(os.urandom(24)).decode(),
            "--cookie-secure=false", "--email-domain=*", "--skip-jwt-bearer-tokens=true",
            f"--extra-jwt-issuers={issuer}={audience}",
            f"--redirect-url=http://127.0.0.1:{port}/oauth2/callback"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        async with asyncio.timeout(30), aiohttp.ClientSession() as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"oauth2-proxy exited:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/ping") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)  # a process this test does not own, starting
        yield f"http://127.0.0.1:{port}"
    except BaseException:
        print(log.read_text()[-3000:])
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_oauth2_proxy_trusts_the_exchange_servers_tokens_and_refuses_forged_ones(
        tmp_path: Path) -> None:
    world = await World(tmp_path / "world").start()
    try:
        config = ExchangeConfig.load(world.exchange_args(), {})
        async with running_exchange(config) as ex, recording_upstream() as (upstream, seen), \
                running_oauth2_proxy(tmp_path, ex.url, ADMIN_URL, upstream) as proxy, \
                aiohttp.ClientSession() as http:
            form = {"grant_type": contract.GRANT_TYPE_TOKEN_EXCHANGE,
                    "subject_token": world.kube.token_for(world.task_pod()),
                    "subject_token_type": contract.TOKEN_TYPE_JWT}
            async with http.post(ex.url + "/oauth2/token", data=form) as resp:
                minted = (await resp.json())["access_token"]
            forged = forge(minted)

            async def call(token: str | None) -> int:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.get(proxy + "/api/runs", headers=headers,
                                    allow_redirects=False) as answer:
                    return answer.status

            statuses = [await call(minted), await call(forged), await call(None)]
    finally:
        await world.stop()
    assert statuses[0] == 200
    assert len(seen) == 1  # only the minted token got through
    assert seen[0]["X-Forwarded-User"] == EXECUTOR  # the launcher, from `sub`
    assert statuses[1] in (401, 403)
    assert statuses[2] != 200


def forge(token: str) -> str:
    """The same header and claims, signed with a key the exchange server never had."""
    header, payload = (json.loads(base64.urlsafe_b64decode(part + "=="))
                       for part in token.split(".")[:2])
    return jwt.encode(header, payload, RSAKey.generate_key(2048),
                      registry=JWSRegistry(strict_check_header=False))
