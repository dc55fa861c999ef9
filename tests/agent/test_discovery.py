"""Finding the token endpoint from FlyteAdmin: real gRPC (plain and TLS), HTTP fallback."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from devstack.admin_metadata import AuthMetadata, start_metadata_server
from devstack.issuer import StubIssuer
from devstack.token_endpoint import TokenEndpoint
from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.runtime import running_agent
from flyte_auth_common import __version__
from tests.helpers import H


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem.bytes())
    return path


@pytest.fixture
async def tls_endpoint(issuer: StubIssuer, ca: trustme.CA) -> AsyncIterator[TokenEndpoint]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ep = TokenEndpoint(issuer)
    await ep.start(ssl_context=ctx)
    yield ep
    await ep.stop()


def agent(sock: Path, token_file: Path, *extra: str) -> AgentConfig:
    return AgentConfig.load(["--socket", str(sock), "--token-file", str(token_file), *extra], {})


async def test_config_waits_for_discovery_instead_of_guessing_the_header_key(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    """Before FlyteAdmin has said which header it reads tokens from, /v1/config must not
    answer the default: a client would send its token under the wrong key."""
    gate = asyncio.Event()
    servicer = AuthMetadata(token_endpoint=endpoint.url, authorization_metadata_key="x-flyte-auth",
                            gate=gate)
    server, target = await start_metadata_server(servicer)
    try:
        cfg = agent(sock_path, token_file, "--admin-endpoint", target, "--admin-insecure",
                    "--wait-timeout", "0.5")
        async with running_agent(cfg):
            held = await http.get("/v1/config", headers=H)  # FlyteAdmin holds discovery
            held_body = await held.json()
            gate.set()
            assert (await http.get("/v1/token", headers=H)).status == 200
            conf = await (await http.get("/v1/config", headers=H)).json()
    finally:
        gate.set()
        await server.stop(None)
    assert held.status == 503
    assert held_body["error"] == "token_unavailable"
    assert "flyte-authorization" not in json.dumps(held_body)
    assert conf["authorization_metadata_key"] == "x-flyte-auth"


async def test_grpc_discovery_supplies_endpoint_header_key_audience_and_scopes(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    servicer = AuthMetadata(token_endpoint=endpoint.url, authorization_metadata_key="x-flyte-auth",
                            audience="https://flyte.example.com", scopes=["all", "offline"])
    server, target = await start_metadata_server(servicer)
    try:
        cfg = agent(sock_path, token_file, "--admin-endpoint", target, "--admin-insecure")
        async with running_agent(cfg):
            assert (await http.get("/v1/token", headers=H)).status == 200
            conf = await (await http.get("/v1/config", headers=H)).json()
            status = await (await http.get("/v1/status", headers=H)).json()
    finally:
        await server.stop(None)
    assert conf["authorization_metadata_key"] == "x-flyte-auth"
    assert conf["endpoint"] == target
    # Both halves of the skew rule: the agent's version to its clients and to the server.
    assert conf["agent_version"] == __version__
    assert endpoint.received[0].user_agent == f"flyte-auth-agent/{__version__}"
    assert status["upstream"]["discovered_from"] == "grpc"
    assert status["upstream"]["token_endpoint"] == endpoint.url
    form = endpoint.received[0].form
    assert (form["audience"], form["scope"]) == ("https://flyte.example.com", "all offline")


async def test_flags_beat_discovered_audience_and_scope(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    server, target = await start_metadata_server(AuthMetadata(token_endpoint=endpoint.url))
    try:
        cfg = agent(sock_path, token_file, "--admin-endpoint", target, "--admin-insecure",
                    "--audience", "mine", "--scope", "custom")
        async with running_agent(cfg):
            assert (await http.get("/v1/token", headers=H)).status == 200
    finally:
        await server.stop(None)
    form = endpoint.received[0].form
    assert (form["audience"], form["scope"]) == ("mine", "custom")


async def test_grpc_discovery_over_tls_with_a_custom_ca(
        sock_path: Path, token_file: Path, tls_endpoint: TokenEndpoint, ca: trustme.CA,
        ca_file: Path, http: aiohttp.ClientSession) -> None:
    cert = ca.issue_cert("localhost")
    tls = (b"".join(p.bytes() for p in cert.cert_chain_pems), cert.private_key_pem.bytes())
    server, target = await start_metadata_server(AuthMetadata(token_endpoint=tls_endpoint.url),
                                                 tls=tls)
    try:
        cfg = agent(sock_path, token_file, "--admin-endpoint", target,
                    "--ca-cert-file", str(ca_file))
        async with running_agent(cfg):
            resp = await http.get("/v1/token", headers=H)
            status = await (await http.get("/v1/status", headers=H)).json()
    finally:
        await server.stop(None)
    assert resp.status == 200, status
    assert status["upstream"]["discovered_from"] == "grpc"
    assert tls_endpoint.url.startswith("https://")


async def test_tls_token_endpoint_needs_the_ca(
        sock_path: Path, token_file: Path, tls_endpoint: TokenEndpoint, ca_file: Path,
        http: aiohttp.ClientSession) -> None:
    untrusted = agent(sock_path, token_file, "--token-endpoint", tls_endpoint.url,
                      "--wait-timeout", "0.5")
    async with running_agent(untrusted):
        resp = await http.get("/v1/token", headers=H)
    assert resp.status == 503
    assert "Certificate" in (await resp.json())["error_description"]
    trusted = agent(sock_path, token_file, "--token-endpoint", tls_endpoint.url,
                    "--ca-cert-file", str(ca_file))
    async with running_agent(trusted):
        assert (await http.get("/v1/token", headers=H)).status == 200


async def test_http_fallback_when_grpc_is_not_served(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    # The stand-in endpoint speaks HTTP/1.1 only, as FlyteAdmin behind an HTTP-only proxy.
    cfg = agent(sock_path, token_file, "--admin-endpoint", f"http://127.0.0.1:{endpoint.port}",
                "--exchange-timeout", "2")
    async with running_agent(cfg):
        assert (await http.get("/v1/token", headers=H)).status == 200
        status = await (await http.get("/v1/status", headers=H)).json()
    assert status["upstream"]["discovered_from"] == "http"
    assert endpoint.received[0].form["audience"] == "http://flyteadmin.flyte:80"


async def test_discovery_failure_names_both_paths_and_what_to_do(
        sock_path: Path, token_file: Path, http: aiohttp.ClientSession) -> None:
    cfg = agent(sock_path, token_file, "--admin-endpoint", "127.0.0.1:1", "--admin-insecure",
                "--wait-timeout", "1", "--exchange-timeout", "0.5")
    async with running_agent(cfg):
        resp = await http.get("/v1/token", headers=H)
    assert resp.status == 503
    message = (await resp.json())["error_description"]
    assert "cannot read FlyteAdmin's auth metadata from 127.0.0.1:1" in message
    assert "gRPC: gRPC UNAVAILABLE" in message
    assert "HTTP: GET http://127.0.0.1:1/.well-known/oauth-authorization-server failed" in message
    assert "set --token-endpoint" in message


def test_grpc_is_not_imported_without_discovery(tmp_path: Path) -> None:
    """RSS matters in a sidecar: a configuration without discovery never loads grpc."""
    code = (
        "import sys, asyncio\n"
        "from flyte_auth_agent.config import AgentConfig\n"
        "from flyte_auth_agent.runtime import running_agent\n"
        f"cfg = AgentConfig.load(['--socket', {str(tmp_path / 's')!r}, '--token-endpoint',"
        " 'http://127.0.0.1:1/t', '--wait-timeout', '0.1'], {})\n"
        "async def main():\n"
        "    async with running_agent(cfg) as a:\n"
        "        await a.source.wait(0.3)\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('grpc', 'flyteidl', 'joserfc', 'authlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "[]"


def test_the_contract_and_client_import_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "import flyte_auth_common.contract, flyte_auth_common.client, flyte_auth_agent.cli\n"
        "heavy = ('aiohttp', 'grpc', 'flyteidl', 'structlog', 'prometheus_client', 'authlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "[]"


async def test_endpoint_and_header_given_means_no_discovery_at_all(
        sock_path: Path, token_file: Path, endpoint: TokenEndpoint,
        http: aiohttp.ClientSession) -> None:
    servicer = AuthMetadata(token_endpoint="http://unused/")
    server, target = await start_metadata_server(servicer)
    try:
        cfg = agent(sock_path, token_file, "--admin-endpoint", target, "--admin-insecure",
                    "--token-endpoint", endpoint.url, "--authorization-metadata-key",
                    "x-flyte-auth")
        async with running_agent(cfg):
            assert (await http.get("/v1/token", headers=H)).status == 200
            conf = await (await http.get("/v1/config", headers=H)).json()
    finally:
        await server.stop(None)
    assert servicer.calls == 0
    assert conf["authorization_metadata_key"] == "x-flyte-auth"
    assert conf["endpoint"] == target
    # Both halves of the skew rule: the agent's version to its clients and to the server.
    assert conf["agent_version"] == __version__
    assert endpoint.received[0].user_agent == f"flyte-auth-agent/{__version__}"
