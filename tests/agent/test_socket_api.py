"""The agent on a real Unix socket, against a real token endpoint over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from devstack.clock import FakeClock
from devstack.issuer import StubIssuer
from devstack.token_endpoint import JWT_BEARER, TOKEN_EXCHANGE, TokenEndpoint
from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.runtime import bind_unix_socket, running_agent
from flyte_auth_common import __version__
from flyte_auth_common.client import AgentClient, AgentUnreachableError
from flyte_auth_common.errors import ConfigError
from tests.helpers import H
from tests.helpers import agent_config as config


async def test_token_exchange_round_trip(sock_path: Path, token_file: Path,
                                         endpoint: TokenEndpoint,
                                         http: aiohttp.ClientSession) -> None:
    cfg = config(sock_path, token_file, endpoint, "--audience", "flyteadmin", "--scope", "all")
    async with running_agent(cfg):
        resp = await http.get("/v1/token", headers=H)
        assert resp.status == 200
        body = await resp.json()
        assert set(body) == {"access_token", "token_type", "expires_at", "expires_in", "scope"}
        assert body["token_type"] == "Bearer"
        assert 3590 <= body["expires_in"] <= 3600
        assert body["expires_at"].endswith("Z")
        assert body["scope"] == "all"
        form = endpoint.received[0].form
        assert form["grant_type"] == TOKEN_EXCHANGE
        assert form["subject_token"] == token_file.read_text()
        assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
        assert (form["audience"], form["scope"]) == ("flyteadmin", "all")
        assert "client_id" not in form and endpoint.received[0].authorization is None

        plain = await http.get("/v1/token", headers={**H, "Accept": "text/plain"})
        assert plain.content_type == "text/plain"
        assert await plain.text() == body["access_token"] + "\n"
        assert endpoint.count == 1  # served from the cache


async def test_client_assertion_grant(sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
                                      http: aiohttp.ClientSession) -> None:
    cfg = config(sock_path, token_file, endpoint, "--grant", "client-assertion",
                 "--client-id", "11111111-aaaa", "--scope", "api://flyte/.default")
    async with running_agent(cfg):
        assert (await http.get("/v1/token", headers=H)).status == 200
    form = endpoint.received[0].form
    assert form == {"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER,
                    "client_assertion": token_file.read_text(), "client_id": "11111111-aaaa",
                    "scope": "api://flyte/.default"}


async def test_confidential_client_uses_client_secret_basic(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    endpoint.client_id, endpoint.client_secret = "agent:1", "p@ss word"
    secret_file = tmp_path / "secret"
    secret_file.write_text("p@ss word\n")
    cfg = config(sock_path, token_file, endpoint, "--client-id", "agent:1",
                 "--client-secret-file", str(secret_file))
    async with running_agent(cfg):
        assert (await http.get("/v1/token", headers=H)).status == 200
    sent = endpoint.received[0]
    assert sent.authorization == "Basic " + base64.b64encode(b"agent%3A1:p%40ss%20word").decode()
    assert "client_id" not in sent.form


async def test_public_client_sends_client_id_in_the_form(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    async with running_agent(config(sock_path, token_file, endpoint, "--client-id", "flytectl")):
        assert (await http.get("/v1/token", headers=H)).status == 200
    assert endpoint.received[0].form["client_id"] == "flytectl"
    assert endpoint.received[0].authorization is None


async def test_wrong_client_secret_is_reported_as_non_retryable(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    endpoint.client_id, endpoint.client_secret = "agent", "right"
    secret_file = tmp_path / "secret"
    secret_file.write_text("wrong")
    cfg = config(sock_path, token_file, endpoint, "--client-id", "agent",
                 "--client-secret-file", str(secret_file), "--wait-timeout", "0.5")
    async with running_agent(cfg):
        resp = await http.get("/v1/token", headers=H)
        assert resp.status == 503
        status = await (await http.get("/v1/status", headers=H)).json()
    assert status["last_error"]["kind"] == "oauth:invalid_client"
    assert status["last_error"]["retryable"] is False
    assert "wrong" not in json.dumps(status)


async def test_requests_without_the_header_are_refused(sock_path: Path, token_file: Path,
                                                       endpoint: TokenEndpoint,
                                                       http: aiohttp.ClientSession) -> None:
    async with running_agent(config(sock_path, token_file, endpoint)):
        for path in ("/v1/token", "/v1/config", "/v1/status"):
            resp = await http.get(path)
            assert resp.status == 400
            body = await resp.json()
            assert body["error"] == "missing_header"
            assert "X-Flyte-Auth-Agent: 1" in body["error_description"]
        assert (await http.get("/v1/token", headers={"X-Flyte-Auth-Agent": "true"})).status == 400
        assert (await http.get("/healthz")).status == 200  # probes need no header


async def test_peer_uid_allowlist(sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
                                  http: aiohttp.ClientSession) -> None:
    """Checked at accept (SO_PEERCRED): a uid outside the list is closed before it can send
    anything, and the stdlib client says why that may be."""
    other = str(os.getuid() + 1)
    with capture_logs() as logs:
        async with running_agent(config(sock_path, token_file, endpoint, "--allowed-uids",
                                        other)) as agent:
            with pytest.raises(AgentUnreachableError) as refused:
                await asyncio.to_thread(AgentClient(str(sock_path), timeout=5).token)
            metrics = generate_latest(agent.api.metrics.registry)  # what /metrics serves
    assert f"outside its --allowed-uids (this process runs as uid {os.getuid()})" in str(
        refused.value)
    assert [e["reason"] for e in logs if e["event"] == "connection_refused"] == [
        "uid_not_allowed"]
    assert b'flyte_auth_agent_connections_refused_total{reason="uid_not_allowed"} 1.0' in \
        metrics
    async with running_agent(config(sock_path, token_file, endpoint, "--allowed-uids",
                                    f"{other},{os.getuid()}")):
        assert (await http.get("/v1/token", headers=H)).status == 200


async def test_socket_mode_is_applied(sock_path: Path, token_file: Path,
                                      endpoint: TokenEndpoint) -> None:
    async with running_agent(config(sock_path, token_file, endpoint, "--socket-mode", "0600")):
        assert sock_path.stat().st_mode & 0o777 == 0o600
    assert not sock_path.exists()  # removed on shutdown


async def test_two_hundred_cold_requests_cause_one_exchange(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    endpoint.gate.clear()  # the upstream holds the first exchange until every request waits
    connector = aiohttp.UnixConnector(path=str(sock_path), limit=0)
    async with running_agent(config(sock_path, token_file, endpoint, "--wait-timeout", "30")), \
            aiohttp.ClientSession(connector=connector, base_url="http://agent") as many:
        async def one() -> tuple[int, str]:
            async with many.get("/v1/token", headers=H) as resp:
                return resp.status, (await resp.json())["access_token"]

        calls = [asyncio.create_task(one()) for _ in range(200)]
        await endpoint.arrived.wait()
        endpoint.gate.set()
        results = await asyncio.gather(*calls)
    assert {status for status, _ in results} == {200}
    assert len({token for _, token in results}) == 1
    assert endpoint.count == 1


async def test_config_reports_what_a_client_needs(sock_path: Path, token_file: Path,
                                                  endpoint: TokenEndpoint,
                                                  http: aiohttp.ClientSession) -> None:
    env = {"FLYTE_INTERNAL_EXECUTION_ID": "abc123", "FLYTE_INTERNAL_EXECUTION_PROJECT": "p",
           "FLYTE_INTERNAL_EXECUTION_DOMAIN": "development"}
    cfg = AgentConfig.load(["--socket", str(sock_path), "--token-file", str(token_file),
                            "--token-endpoint", endpoint.url, "--admin-endpoint",
                            "flyteadmin.flyte:81", "--ca-cert-file", "/etc/ca.pem"], env)
    # The CA file does not exist here: starting must say so, not crash.
    with pytest.raises(ConfigError, match="--ca-cert-file / FLYTE_AUTH_AGENT_CA_CERT_FILE"):
        async with running_agent(cfg):
            pass
    cfg = AgentConfig.load(["--socket", str(sock_path), "--token-file", str(token_file),
                            "--token-endpoint", endpoint.url, "--admin-endpoint",
                            "http://flyteadmin.flyte:80"], env)
    async with running_agent(cfg):
        body = await (await http.get("/v1/config", headers=H)).json()
    assert body == {"endpoint": "flyteadmin.flyte:80", "insecure": True,
                    "ca_cert_file_path": None, "authorization_metadata_key": "flyte-authorization",
                    "project": "p", "domain": "development", "execution_id": "abc123",
                    "agent_version": __version__}


async def test_health_readiness_and_metrics(sock_path: Path, token_file: Path,
                                            endpoint: TokenEndpoint,
                                            http: aiohttp.ClientSession) -> None:
    endpoint.gate.clear()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(sock_path, token_file, endpoint, "--health-addr", f"127.0.0.1:{port}")
    async with running_agent(cfg) as agent, aiohttp.ClientSession() as tcp:
        assert (await http.get("/healthz")).status == 200
        ready = await http.get("/readyz")
        assert ready.status == 503
        assert "waiting for the first token" in await ready.text()
        endpoint.gate.set()
        assert await agent.source.wait(10) is not None
        assert (await http.get("/readyz")).status == 200
        await http.get("/v1/token", headers=H)
        base = f"http://127.0.0.1:{port}"
        assert (await tcp.get(base + "/readyz")).status == 200
        metrics = await (await tcp.get(base + "/metrics")).text()
        assert (await tcp.get(base + "/v1/token", headers=H)).status == 404  # never on TCP
    assert 'flyte_auth_agent_exchanges_total{outcome="success"} 1.0' in metrics
    assert 'flyte_auth_agent_requests_total{code="200",path="/v1/token"} 1.0' in metrics
    assert "flyte_auth_agent_token_expiry_timestamp_seconds" in metrics


async def test_stale_socket_is_replaced_and_other_files_are_refused(short_dir: Path) -> None:
    stale = short_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # bound, never listening: what a killed agent leaves behind
    bind_unix_socket(stale, 0o600).close()
    assert stale.stat().st_mode & 0o777 == 0o600

    regular = short_dir / "file"
    regular.write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        bind_unix_socket(regular, 0o600)
    assert regular.read_text() == "keep me"

    live = short_dir / "live.sock"
    listener = bind_unix_socket(live, 0o600)
    listener.listen()
    with pytest.raises(ConfigError, match="another process is already serving"):
        bind_unix_socket(live, 0o600)
    listener.close()


async def test_no_token_reaches_logs_status_or_metrics(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint, issuer: StubIssuer,
        http: aiohttp.ClientSession) -> None:
    """Every secret the agent handles, grepped for in everything it writes."""
    subject = token_file.read_text()
    clock = FakeClock(time.time())
    with capture_logs() as logs:
        async with running_agent(config(sock_path, token_file, endpoint), clock=clock):
            token = (await (await http.get("/v1/token", headers=H)).json())["access_token"]
            token_file.write_text("garbage")
            await clock.run_next()  # a refresh that fails on the garbage file
            issuer.write(token_file)
            endpoint.queued.append(lambda _: web.json_response(
                {"error": "invalid_grant", "error_description": f"echo {subject}"}, status=400))
            await clock.run_next()  # ... and one the upstream refuses, echoing the subject
            outputs = [
                await (await http.get("/v1/status", headers=H)).text(),
                await (await http.get("/metrics")).text(),
                await (await http.get("/readyz")).text(),
                await (await http.get("/v1/config", headers=H)).text(),
            ]
    everything = json.dumps(logs) + "".join(outputs)
    assert any(e["event"] == "token_served" for e in logs)
    assert any(e["event"] == "token_refresh_failed" for e in logs)
    assert "echo [redacted" in everything
    for secret in (token, subject, token_file.read_text()):
        assert secret not in everything
        assert secret.split(".")[1] not in everything  # not even the claims part


async def test_audit_line_per_token_per_connection(sock_path: Path, token_file: Path,
                                                   endpoint: TokenEndpoint,
                                                   http: aiohttp.ClientSession) -> None:
    clock = FakeClock(time.time())
    with capture_logs() as logs:
        async with running_agent(config(sock_path, token_file, endpoint), clock=clock):
            for _ in range(3):  # one keep-alive connection: the same fact, logged once
                await http.get("/v1/token", headers=H)
            for _ in range(2):  # new connections (curl, the plugin, ExternalCommand): each one
                connector = aiohttp.UnixConnector(path=str(sock_path))
                async with aiohttp.ClientSession(connector=connector) as fresh:
                    await fresh.get("http://agent/v1/token", headers=H)
            await clock.run_next()  # a new token ...
            await http.get("/v1/token", headers=H)  # ... on the first connection: logged
            metrics = await (await http.get("/metrics")).text()
    served = [e for e in logs if e["event"] == "token_served"]
    assert len(served) == 4
    assert served[0]["peer_pid"] == os.getpid()
    assert served[0]["peer_uid"] == os.getuid()
    assert served[0]["fingerprint"].startswith("sha256:")
    assert served[0]["expires_at"] > time.time()
    assert served[3]["fingerprint"] != served[0]["fingerprint"]
    assert 'flyte_auth_agent_requests_total{code="200",path="/v1/token"} 6.0' in metrics
