"""Keeping the token fresh: timing on a fake clock, outages on a real endpoint that stops."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from devstack.clock import FakeClock
from devstack.issuer import StubIssuer
from devstack.token_endpoint import TokenEndpoint
from flyte_auth_agent.exchange import retry_after_seconds
from flyte_auth_agent.runtime import running_agent
from flyte_auth_agent.source import MIN_REMAINING
from tests.helpers import H, outlive_the_token_endpoint_down
from tests.helpers import agent_config as config


async def fingerprint(http: aiohttp.ClientSession) -> tuple[int, str | None]:
    resp = await http.get("/v1/token", headers=H)
    if resp.status != 200:
        return resp.status, None
    status = await (await http.get("/v1/status", headers=H)).json()
    return 200, status["token"]["fingerprint"]


async def test_refresh_after_half_life_with_jitter_then_new_token(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    clock = FakeClock(time.time())
    endpoint.now = clock.now  # its tokens' exp follow the same clock
    t0 = clock.now()
    async with running_agent(config(sock_path, token_file, endpoint), clock=clock):
        refresh_at = await clock.next_sleep()
        assert t0 + 1800 <= refresh_at <= t0 + 2160  # half of 3600 s, plus up to 10 %
        _, first = await fingerprint(http)

        clock.advance(refresh_at - 1)  # not yet: no exchange
        _, same = await fingerprint(http)
        assert (same, endpoint.count) == (first, 1)

        next_refresh = await clock.run_next()
        assert endpoint.count == 2
        _, second = await fingerprint(http)
        assert second != first
        assert refresh_at + 1800 <= next_refresh <= refresh_at + 2160


async def test_short_lived_tokens_refresh_60s_before_expiry(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint) -> None:
    endpoint.lifetime = 150
    clock = FakeClock(time.time())
    async with running_agent(config(sock_path, token_file, endpoint), clock=clock) as agent:
        refresh_at = await clock.next_sleep()
        tok = agent.source.token()
        assert tok is not None
        # No earlier than half its life (the endpoint's `exp` is whole seconds, so the
        # lifetime is up to 1 s short of 150).
        assert tok.expires_at - 60 >= refresh_at >= (tok.issued_at + tok.expires_at) / 2


async def test_service_account_token_is_reread_before_every_exchange(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint, issuer: StubIssuer) -> None:
    clock = FakeClock(time.time())
    async with running_agent(config(sock_path, token_file, endpoint), clock=clock):
        await clock.next_sleep()
        rotated = issuer.write(token_file, pod="rotated-pod")  # the kubelet rotates the file
        await clock.run_next()
    assert endpoint.received[0].form["subject_token"] != rotated
    assert endpoint.received[1].form["subject_token"] == rotated


async def test_upstream_down_longer_than_refresh_window_fails_no_request(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    clock = FakeClock(time.time())
    async with running_agent(config(sock_path, token_file, endpoint), clock=clock) as agent:
        await clock.next_sleep()
        status, first = await fingerprint(http)
        assert status == 200
        tok = agent.source.token()
        assert tok is not None
        await endpoint.stop()
        failures = 0
        # Walk the refresher through every retry until the token is about to expire.
        while (deadline := await clock.next_sleep()) < tok.expires_at - MIN_REMAINING:
            clock.advance(deadline)
            await clock.next_sleep()
            status, served = await fingerprint(http)
            failures += status != 200 or served != first
        st = await (await http.get("/v1/status", headers=H)).json()
    assert failures == 0
    assert st["consecutive_failures"] >= 3
    assert st["last_error"]["kind"] == "unreachable"
    assert endpoint.url in st["last_error"]["message"]
    assert st["state"] == "valid"


async def test_upstream_down_past_expiry_gives_503_then_recovers(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    endpoint.lifetime = 120
    clock = FakeClock(time.time())
    endpoint.now = clock.now  # its tokens' exp follow the same clock
    cfg = config(sock_path, token_file, endpoint, "--wait-timeout", "0.2")
    async with running_agent(cfg, clock=clock) as agent:
        await outlive_the_token_endpoint_down(agent, clock, endpoint)
        resp = await http.get("/v1/token", headers=H)
        assert resp.status == 503
        body = await resp.json()
        assert body["error"] == "token_unavailable"
        assert "token endpoint" in body["error_description"]
        assert body["retry_after"] >= 1
        assert resp.headers["Retry-After"] == str(body["retry_after"])
        assert (await http.get("/readyz")).status == 503

        await endpoint.start(port=endpoint.port)
        await clock.run_next()
        status, _ = await fingerprint(http)
        assert status == 200
        assert (await http.get("/readyz")).status == 200


@pytest.mark.parametrize(("responder", "kind", "text"), [
    pytest.param(lambda _: web.Response(status=502, text="<html>Bad Gateway</html>",
                                        content_type="text/html"),
                 "http_error", "HTTP 502 with a non-JSON body", id="html-page"),
    pytest.param(lambda _: web.Response(text="}{", content_type="application/json"),
                 "bad_response", "not a JSON object", id="garbage-json"),
    pytest.param(lambda _: web.json_response({"token_type": "Bearer"}),
                 "bad_response", "no access_token", id="missing-field"),
    pytest.param(lambda _: web.json_response({"error": "temporarily_unavailable"}, status=503),
                 "oauth:temporarily_unavailable", "temporarily_unavailable", id="oauth-error"),
])
async def test_bad_upstream_answers_show_in_status_and_keep_the_token(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession, responder: object, kind: str, text: str) -> None:
    clock = FakeClock(time.time())
    async with running_agent(config(sock_path, token_file, endpoint), clock=clock):
        await clock.next_sleep()
        _, first = await fingerprint(http)
        endpoint.queued.append(responder)  # type: ignore[arg-type]
        retry_at = await clock.run_next()
        status = await (await http.get("/v1/status", headers=H)).json()
        assert await fingerprint(http) == (200, first)
    assert status["last_error"]["kind"] == kind
    assert text in status["last_error"]["message"]
    assert status["next_attempt_at"] is not None
    assert retry_at - clock.now() <= 2  # first retry after at most base * 2^0 (+ jitter)


@pytest.mark.parametrize(("content", "message"), [
    pytest.param(None, "does not exist", id="missing"),
    pytest.param("", "is empty", id="empty"),
    pytest.param("not a jwt", "does not hold a JWT", id="not-jwt"),
])
async def test_unusable_token_file_is_reported_and_the_old_token_served(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession, content: str | None, message: str) -> None:
    clock = FakeClock(time.time())
    async with running_agent(config(sock_path, token_file, endpoint), clock=clock):
        await clock.next_sleep()
        _, first = await fingerprint(http)
        if content is None:
            token_file.unlink()
        else:
            token_file.write_text(content)
        await clock.run_next()
        status = await (await http.get("/v1/status", headers=H)).json()
        assert await fingerprint(http) == (200, first)
    assert status["last_error"]["kind"] == "subject_token"
    assert str(token_file) in status["last_error"]["message"]
    assert message in status["last_error"]["message"]
    assert endpoint.count == 1  # nothing was sent upstream


async def test_missing_token_file_at_start_gives_a_clear_503(
        sock_path: Path, tmp_path: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    cfg = config(sock_path, tmp_path / "nope", endpoint, "--wait-timeout", "0.2")
    async with running_agent(cfg):
        resp = await http.get("/v1/token", headers=H)
    assert resp.status == 503
    assert f"{tmp_path / 'nope'} does not exist" in (await resp.json())["error_description"]


async def test_slow_upstream_times_out_with_a_clear_error(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    endpoint.gate.clear()  # the endpoint accepts the request and never answers
    cfg = config(sock_path, token_file, endpoint, "--exchange-timeout", "0.2",
                 "--wait-timeout", "1.5")
    async with running_agent(cfg):
        resp = await http.get("/v1/token", headers=H)  # waits past the exchange's timeout
    assert resp.status == 503
    assert "did not answer within 0.2 s (--exchange-timeout)" in (
        await resp.json())["error_description"]


async def test_stopping_without_a_token_leaves_the_reason_for_kubectl_describe(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint, tmp_path: Path) -> None:
    """The kubelet creates the termination-log file; an agent stopped (say, by a failed
    startupProbe) without a valid token writes why there, and nothing where no file is."""
    log = tmp_path / "termination-log"
    log.write_text("")
    missing = tmp_path / "never-created"
    token_file.unlink()
    for path in (log, missing):
        clock = FakeClock(time.time())
        cfg = config(sock_path, token_file, endpoint, "--termination-log", str(path))
        async with running_agent(cfg, clock=clock):
            await clock.next_sleep()  # the first attempt failed; the refresher backs off
    assert log.read_text().startswith("the agent stopped without a valid token: "
                                      f"service-account token file {token_file} does not exist")
    assert not missing.exists()


async def test_stopping_with_a_token_leaves_no_termination_message(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")
    async with running_agent(config(sock_path, token_file, endpoint, "--termination-log",
                                    str(log))) as agent:
        assert await agent.source.wait(10) is not None
    assert log.read_text() == ""


async def test_a_shed_exchange_waits_its_retry_after_then_jitter(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    """The exchange server sheds load with 503 + Retry-After: the agent waits that long, and
    its jittered backoff on top (a burst of agents does not come back in step)."""
    endpoint.queued.append(lambda _: web.json_response(
        {"error": "temporarily_unavailable"}, status=503, headers={"Retry-After": "7"}))
    clock = FakeClock(time.time())
    async with running_agent(config(sock_path, token_file, endpoint), clock=clock):
        retry_at = await clock.next_sleep()  # the first attempt was shed
        status = await (await http.get("/v1/status", headers=H)).json()
        assert 7 <= retry_at - clock.now() <= 7 + 1  # Retry-After + backoff base * 2^0
        await clock.run_next()
        assert (await http.get("/v1/token", headers=H)).status == 200
    assert status["last_error"]["kind"] == "oauth:temporarily_unavailable"


@pytest.mark.parametrize(("header", "seconds"), [
    ("7", 7.0), (" 12 ", 12.0), ("100000", 300.0), ("", None), ("-1", None), ("²", None),
    ("Wed, 21 Oct 2026 07:28:00 GMT", None)])
def test_retry_after_is_seconds_capped_else_the_backoff_decides(
        header: str, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds
