"""Stand-in OAuth2 token endpoint, for tests, benchmarks and the local demo.

It validates requests the way a standards-following server does:
  - RFC 8693 §2.1 token exchange: grant_type, subject_token, subject_token_type (must be
    the JWT type unless told otherwise), optional audience/scope/resource;
  - RFC 7523 §2.2 client authentication: grant_type=client_credentials with
    client_assertion_type jwt-bearer and the service-account token as client_assertion;
  - RFC 6749 §2.3.1 client_secret_basic (form-urlencoded id and secret) when configured,
    or a public client's client_id in the form (§3.2.1);
  - the subject token's RS256 signature against the stand-in cluster issuer, its `iss`,
    `aud` and `exp`;
and answers RFC 6749 §5.1 JSON, or §5.2 errors. Tests can also make it answer garbage,
HTML error pages, or stall.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from joserfc import jwk, jwt
from joserfc.errors import JoseError

from devstack.issuer import StubIssuer
from devstack.serving import serve
from flyte_auth_common import contract

TOKEN_EXCHANGE = contract.GRANT_TYPE_TOKEN_EXCHANGE
JWT_TYPE = contract.TOKEN_TYPE_JWT
JWT_BEARER = contract.CLIENT_ASSERTION_TYPE_JWT_BEARER

Responder = Callable[[web.Request], web.StreamResponse]


def oauth_error(code: str, description: str, status: int = 400) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=status)


@dataclass
class Exchange:
    """One request the endpoint received."""

    form: dict[str, str]
    authorization: str | None
    user_agent: str = ""


@dataclass
class TokenEndpoint:
    issuer: StubIssuer
    subject_audience: str = "flyte-auth"
    lifetime: int = 3600
    scope: str = "all"
    client_id: str | None = None  # with client_secret: a confidential client (Basic auth)
    client_secret: str | None = None
    subject_token_type: str = JWT_TYPE
    now: Callable[[], float] = time.time
    received: list[Exchange] = field(default_factory=list)
    #: Responses to give before behaving normally again, one per request.
    queued: list[Responder] = field(default_factory=list)
    #: When clear, requests wait here (a stalled upstream).
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set whenever a token request arrives.
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    key: jwk.RSAKey = field(init=False)
    url: str = ""
    _runner: web.AppRunner | None = None
    _serial: Any = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.key = jwk.RSAKey.generate_key(2048, parameters={"kid": "as-key-1"})
        self.gate.set()

    @property
    def count(self) -> int:
        return len(self.received)

    # --- HTTP ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth2/token", self._token)
        app.router.add_get("/.well-known/oauth-authorization-server", self._metadata)
        app.router.add_get("/config/v1/flyte_client", self._client_config)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context: Any = None) -> str:
        self._runner, bound = await serve(self.app(), host=host, port=port,
                                          ssl_context=ssl_context)
        scheme = "https" if ssl_context else "http"
        self.base = f"{scheme}://{'localhost' if ssl_context else host}:{bound}"
        self.port = bound
        self.url = self.base + "/oauth2/token"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metadata(self, _: web.Request) -> web.Response:
        return web.json_response({"issuer": self.base, "token_endpoint": self.url,
                                  "grant_types_supported": [TOKEN_EXCHANGE, "client_credentials"]})

    async def _client_config(self, _: web.Request) -> web.Response:
        return web.json_response({"client_id": "flytepropeller", "scopes": ["all"],
                                  "authorization_metadata_key": "flyte-authorization",
                                  "audience": "http://flyteadmin.flyte:80"})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.received.append(Exchange(form, request.headers.get("Authorization"),
                                      request.headers.get("User-Agent", "")))
        self.arrived.set()
        await self.gate.wait()
        if self.queued:
            return self.queued.pop(0)(request)
        if request.content_type != "application/x-www-form-urlencoded":
            return oauth_error("invalid_request", "body must be application/x-www-form-urlencoded")
        refusal = self._authenticate_client(form, request.headers.get("Authorization"))
        if refusal is not None:
            return refusal
        grant = form.get("grant_type")
        if grant == TOKEN_EXCHANGE:
            if form.get("subject_token_type") != self.subject_token_type:
                return oauth_error("invalid_request", "unsupported subject_token_type")
            subject = form.get("subject_token")
        elif grant == "client_credentials" and form.get("client_assertion_type") == JWT_BEARER:
            subject = form.get("client_assertion")
        else:
            return oauth_error("unsupported_grant_type", f"grant_type {grant!r} not supported")
        if not subject:
            return oauth_error("invalid_request", "no subject token / client assertion")
        try:
            claims = self._verify(subject)
        except (JoseError, ValueError) as exc:
            return oauth_error("invalid_grant", f"subject token rejected: {exc}")
        return web.json_response(self._issue(claims["sub"], form.get("scope") or self.scope))

    def _authenticate_client(self, form: dict[str, str], header: str | None,
                             ) -> web.Response | None:
        if self.client_secret is None:
            return None
        if not header or not header.startswith("Basic "):
            return oauth_error("invalid_client", "client authentication required", 401)
        cid, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        if (unquote(cid), unquote(secret)) != (self.client_id, self.client_secret):
            return oauth_error("invalid_client", "bad client credentials", 401)
        return None

    def _verify(self, token: str) -> dict[str, Any]:
        decoded = jwt.decode(token, self.issuer.key, algorithms=["RS256"])
        now = self.now()
        claims = decoded.claims
        if claims.get("iss") != self.issuer.issuer:
            raise ValueError("wrong issuer")
        if self.subject_audience not in claims.get("aud", []):
            raise ValueError("wrong audience")
        if not claims.get("exp", 0) > now:
            raise ValueError("expired")
        return claims

    def _issue(self, subject: str, scope: str) -> dict[str, Any]:
        iat = int(self.now())
        token = jwt.encode(
            {"alg": "RS256", "kid": "as-key-1"},
            {"sub": subject, "aud": "http://flyteadmin.flyte:80", "scp": scope.split(),
             "iat": iat, "exp": iat + self.lifetime, "jti": str(uuid.uuid4()),
             "n": next(self._serial)},
            self.key,
        )
        return {"access_token": token, "issued_token_type":
                contract.TOKEN_TYPE_ACCESS_TOKEN, "token_type": "Bearer",
                "expires_in": self.lifetime, "scope": scope}
