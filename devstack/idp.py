"""Stand-in for an organisation's IdP (Keycloak, Okta, Entra ID, Auth0) as FlyteAdmin's
External mode and this project's exchange server see it: an OIDC discovery document whose
`jwks_uri` names its signing keys, and users' access tokens as Keycloak's direct grant mints
them (RS256 with a `kid`; `sub` the user's UUID; `aud` the audience mapper's; `scope` a
string, `azp` the client, no `client_id` and no `scp`, so FlyteAdmin grants `all`).
`make e2e` runs the same cases against real Keycloak (tests/e2e/test_external_idp.py).

Test controls: `rotate()` (a new signing key; the old one stays published, as Keycloak keeps
a passive key), `answer` (an HTTP status to give instead, "garbage" for HTML, "empty" for
`{}`), and `gate` (when set, requests wait for it: an IdP that hangs)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

from devstack.serving import serve

DISCOVERY = "/realms/people/.well-known/openid-configuration"


@dataclass
class StubIdP:
    keys: list[RSAKey] = field(default_factory=lambda: [
        RSAKey.generate_key(2048, parameters={"kid": "idp-1"})])
    users: dict[str, str] = field(default_factory=lambda: {
        "alice": "7c0e6d4a-5a0b-4c11-9a55-1d2f3a4b5c6d",
        "bob": "0f9e8d7c-1111-4222-8333-abcdefabcdef"})
    audience: str = "flyteadmin"
    answer: int | str = 200
    gate: asyncio.Event | None = None
    requests: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    @property
    def metadata_url(self) -> str:
        return self.url + DISCOVERY

    @property
    def realm(self) -> str:
        return self.url + "/realms/people"

    def rotate(self) -> RSAKey:
        key = RSAKey.generate_key(2048, parameters={"kid": f"idp-{len(self.keys) + 1}"})
        self.keys.insert(0, key)
        return key

    def token(self, user: str = "alice", **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.realm, "sub": self.users[user], "aud": self.audience, "typ": "Bearer",
            "azp": "flytectl", "scope": "openid email profile", "iat": now, "exp": now + 300,
            "jti": str(uuid.uuid4()), "preferred_username": user,
            "email": f"{user}@example.com"}
        claims.update(overrides)
        key = self.keys[0]
        return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": key.kid}, {
            k: v for k, v in claims.items() if v is not None}, key)

    def document(self) -> dict[str, Any]:
        base = self.realm + "/protocol/openid-connect"
        return {"issuer": self.realm, "authorization_endpoint": base + "/auth",
                "token_endpoint": base + "/token", "jwks_uri": base + "/certs",
                "userinfo_endpoint": base + "/userinfo",
                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "grant_types_supported": ["authorization_code", "refresh_token", "password"],
                "scopes_supported": ["openid", "email", "profile", "offline_access"]}

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        self.requests.append(request.path)
        if self.gate is not None:
            await self.gate.wait()
        if self.answer == "garbage":
            return web.Response(text="<html>maintenance</html>", content_type="text/html")
        if self.answer == "empty":
            return web.json_response({})
        if self.answer != 200:
            return web.Response(status=int(self.answer), text="unavailable")
        return web.json_response(body)

    async def _discovery(self, request: web.Request) -> web.Response:
        return await self._answer(request, self.document())

    async def _certs(self, request: web.Request) -> web.Response:
        return await self._answer(request, {"keys": [
            k.as_dict(private=False) | {"use": "sig", "alg": "RS256"} for k in self.keys]})

    async def start(self) -> StubIdP:
        app = web.Application()
        app.router.add_get(DISCOVERY, self._discovery)
        app.router.add_get("/realms/people/protocol/openid-connect/certs", self._certs)
        self._runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
