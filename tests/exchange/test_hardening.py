"""Inputs an unauthenticated caller controls, each as a class: every one gets an RFC 6749
JSON answer and its audit line, never aiohttp's bare 500 or a traceback."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import pytest

from devstack.issuer import StubIssuer
from devstack.world import World
from flyte_auth_exchange.server import MAX_FORM_BYTES
from tests.exchange.helpers import StartExchange, form, logged, post


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


NESTED_PAYLOAD = "eyJhbGciOiJSUzI1NiIsImtpZCI6InNhLWtleSJ9." + b64(nested(5000)) + ".c2ln"
NESTED_HEADER = b64(b'{"alg":' * 5000 + b'"RS256"' + b"}" * 5000) + "." + b64(b"{}") + ".c2ln"


def decisions(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == "exchange_decision"]


@pytest.mark.parametrize("subject", [NESTED_PAYLOAD, NESTED_HEADER],
                         ids=["nested-payload", "nested-header"])
@pytest.mark.parametrize("review", [False, True], ids=["jwks", "token-review"])
async def test_deeply_nested_json_in_the_subject_token(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession, subject: str,
        review: bool) -> None:
    flags = ("--token-review",) if review else ()
    with logged() as logs:
        async with exchange(*flags) as ex:
            status, body = await post(http, ex.url, form(subject))
    assert (status, body["error"]) == (400, "invalid_grant"), body
    assert len(decisions(logs)) == 1


BODIES: list[Any] = [
    pytest.param("application/x-www-form-urlencoded; charset=bogus", b"grant_type=x", 400,
                 "charset is unknown", id="unknown-charset"),
    pytest.param("application/x-www-form-urlencoded; charset=utf-8", b"grant_type=%ff%fe", 400,
                 "grant_type", id="not-utf8"),
    pytest.param("application/x-www-form-urlencoded", b"a=" + b"x" * MAX_FORM_BYTES, 413,
                 f"larger than {MAX_FORM_BYTES} bytes", id="too-large-declared"),
]


@pytest.mark.parametrize(("content_type", "data", "status", "text"), BODIES)
async def test_malformed_bodies(world: World, exchange: StartExchange,
                                http: aiohttp.ClientSession, content_type: str, data: bytes,
                                status: int, text: str) -> None:
    with logged() as logs:
        async with exchange() as ex, http.post(ex.url + "/oauth2/token", data=data,
                             headers={"Content-Type": content_type}) as resp:
            got, body = resp.status, await resp.json()
    assert got == status
    assert body["error"] in ("invalid_request", "unsupported_grant_type")  # never a 500
    assert text in body["error_description"]
    assert len(decisions(logs)) == 1


async def test_a_streamed_body_over_the_limit_is_a_json_413(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    async def chunks() -> Any:  # no Content-Length: the limit is found while reading
        for _ in range(MAX_FORM_BYTES // 1024 + 2):
            yield b"a" * 1024

    async with exchange() as ex, http.post(
            ex.url + "/oauth2/token", data=chunks(),
            headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        body = await resp.json()
    assert resp.status == 413
    assert body["error"] == "invalid_request"


async def test_an_unexpected_error_is_one_server_error_without_the_token(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    subject = world.kube.token_for(world.task_pod())

    async def broken(*_: Any) -> dict[str, Any]:
        raise RuntimeError(f"bug while handling {subject}")

    with logged() as logs:
        async with exchange() as ex:
            ex.api.service.exchange = broken  # type: ignore[method-assign,assignment]
            status, body = await post(http, ex.url, form(subject))
    assert (status, body["error"]) == (500, "server_error")
    assert [e["outcome"] for e in decisions(logs)] == ["refused"]
    failed = [e for e in logs if e["event"] == "exchange_failed"]
    assert failed and failed[0]["error_type"] == "RuntimeError"
    assert subject not in json.dumps(body) + json.dumps(logs, default=str)


async def test_a_forged_kid_never_makes_a_valid_exchange_wait_for_a_slow_jwks(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    valid = world.kube.token_for(world.task_pod())
    pod = world.task_pod("other-pod")
    meta = pod["metadata"]
    forged = StubIssuer(issuer=world.kube.issuer.issuer, kid="forged").mint(
        namespace=meta["namespace"], pod=meta["name"], pod_uid=meta["uid"])
    world.kube.jwks_gate = asyncio.Event()
    async with exchange() as ex:
        assert (await post(http, ex.url, form(valid)))[0] == 200  # keys loaded
        keys = ex.api.keys
        assert keys is not None
        keys._fetched_at -= 60  # a refetch is allowed again
        refetching = asyncio.create_task(post(http, ex.url, form(forged)))
        await world.kube.jwks_waiting.wait()  # the refetch is stuck at the slow issuer
        status, _ = await post(http, ex.url, form(valid))
        assert not refetching.done()
        world.kube.jwks_gate.set()
        refused, body = await refetching
    assert status == 200
    assert (refused, body["error"]) == (400, "invalid_grant")


Make = Callable[[World], str]


async def test_one_requests_audit_context_never_reaches_the_next(
        world: World, exchange: StartExchange, http: aiohttp.ClientSession) -> None:
    """A grant, then a refusal on the same keep-alive connection: the refusal's audit line
    names only what that request got to, not the pod and principal of the one before."""
    subject = world.kube.token_for(world.task_pod())
    with logged() as logs:
        async with exchange() as ex:
            granted, _ = await post(http, ex.url, form(subject))
            refused, body = await post(http, ex.url, {**form(subject), "grant_type": "password"})
    assert (granted, refused, body["error"]) == (200, 400, "unsupported_grant_type")
    first, second = decisions(logs)
    assert first["principal"] == "alice@example.com" and first["pod"]
    assert {"principal", "pod", "namespace", "rule", "jti"} & set(second) == set()
    assert second["peer"] == "127.0.0.1"
