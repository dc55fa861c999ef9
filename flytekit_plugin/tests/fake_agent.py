"""A flyte-auth agent as the wire contract (flyte_auth_common.contract) and the README's
socket API describe it, and nothing more: /v1/token, /v1/config and /v1/status on a Unix
socket, the required header, JSON bodies. Its tokens are JWTs for the execution's launcher,
signed with FlyteAdmin's key, so the FlyteAdmin stand-in accepts them. No exchange server
and no real agent behind it: the plugin's tests break where the plugin or the contract
changes, not where the servers do (conftest's `full_chain` keeps one test on the real
chain)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

from devstack.clock import FakeClock
from flyte_auth_common import __version__, contract
from flyte_auth_common.jwt import fingerprint

LIFETIME = 3600


@dataclass(frozen=True)
class FakeToken:
    value: str
    issued_at: float
    lifetime: float

    @property
    def expires_at(self) -> float:
        return self.issued_at + self.lifetime


class FakeAgent:
    """`source.token()` and `requests` stand for the real agent's TokenSource and request
    counter in the tests' assertions."""

    def __init__(self, sock: Path, key_file: Path, *, admin_target: str, audience: str,
                 subject: str, execution: tuple[str, str, str], clock: FakeClock) -> None:
        self.sock, self.clock = sock, clock
        self._key = RSAKey.import_key(key_file.read_bytes())
        self._admin_target, self._audience, self._subject = admin_target, audience, subject
        self._execution = execution
        self.requests = 0
        self.version = __version__  # what /v1/config says the agent is (the skew rule)
        self._token = self._mint()
        self.source = self  # the tests read `agent.source.token()`, as of the real agent
        self._runner: web.AppRunner | None = None

    def _mint(self) -> FakeToken:
        now = self.clock.now()
        value = jwt.encode({"alg": "RS256"}, {
            "sub": self._subject, "aud": [self._audience], "scp": ["all"], "iat": int(now),
            "exp": int(now + LIFETIME), "jti": f"fake-{time.monotonic_ns()}"}, self._key)
        return FakeToken(value, now, LIFETIME)

    def token(self) -> FakeToken:
        return self._token

    def rotate(self) -> FakeToken:
        """A fresh token from now on (as the agent's refresh at half life gives one)."""
        self._token = self._mint()
        return self._token

    async def _token_route(self, request: web.Request) -> web.Response:
        tok = self._token
        self.requests += 1
        if "text/plain" in request.headers.get("Accept", ""):
            return web.Response(text=tok.value + "\n")
        body: contract.TokenBody = {
            "access_token": tok.value, "token_type": "Bearer",
            "expires_at": contract.rfc3339(tok.expires_at),
            "expires_in": max(0, int(tok.expires_at - self.clock.now())), "scope": "all"}
        return web.json_response(body)

    async def _config_route(self, _: web.Request) -> web.Response:
        project, domain, name = self._execution
        body: contract.ConfigBody = {
            "endpoint": self._admin_target, "insecure": True, "ca_cert_file_path": None,
            "authorization_metadata_key": contract.DEFAULT_AUTHORIZATION_METADATA_KEY,
            "project": project, "domain": domain, "execution_id": name,
            "agent_version": self.version}
        return web.json_response(body)

    async def _status_route(self, _: web.Request) -> web.Response:
        tok = self._token
        body: dict[str, Any] = {"state": "valid", "reason": None, "token": {
            "expires_at": contract.rfc3339(tok.expires_at),
            "issued_at": contract.rfc3339(tok.issued_at),
            "scope": "all", "fingerprint": fingerprint(tok.value), "subject": self._subject}}
        return web.json_response(body)

    @web.middleware
    async def _header(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get(contract.REQUIRED_HEADER) != contract.REQUIRED_HEADER_VALUE:
            return web.json_response({"error": contract.ERROR_MISSING_HEADER,
                                      "error_description": "the required header is missing",
                                      "retry_after": None}, status=400)
        response: web.StreamResponse = await handler(request)
        return response

    async def start(self) -> FakeAgent:
        app = web.Application(middlewares=[self._header])
        app.router.add_get(contract.PATH_TOKEN, self._token_route)
        app.router.add_get(contract.PATH_CONFIG, self._config_route)
        app.router.add_get(contract.PATH_STATUS, self._status_route)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.sock)).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
