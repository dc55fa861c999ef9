"""Stand-in for FlyteAdmin: a real gRPC server from flyteidl stubs. We cannot run
FlyteAdmin here; this follows its documented behaviour (flyteadmin/auth at
v1.16.8) for what this project relies on:

- AuthMetadataService (GetOAuth2Metadata, GetPublicClientConfig) answers anonymously.
- Every other call must carry `flyte-authorization: Bearer <jwt>` (or `authorization`):
  RS256 verified with the public half of token_rsa_key.pem, or of token_rsa_key_old.pem when
  one is configured (key rotation); each key's id is its RFC 7638 thumbprint (FlyteAdmin's
  jwk.AssignKeyID), the header's `key_id` picks the key, an unknown id falls back to the
  first key (the current one); exp/iat/nbf are checked only when present;
  iss is not checked; `aud` (string or list) must contain the public URL, chosen from
  `authorizedUris` as GetPublicURL does (flyteadmin/auth/handler_utils.go; see
  `public_url_for`); `scp` is a list, or one string taken whole; no client_id and no scp
  grants `all`; BlanketAuthorization then requires scope `all`. Any failure is
  UNAUTHENTICATED, except a `client_id` that is not a string or a `user_info` that is not
  an object: real FlyteAdmin answers those INTERNAL (seen by the e2e parity table).
- The dialled host: FlyteAdmin reads `x-forwarded-host`, else the gRPC `:authority`. grpc's
  asyncio server exposes no `:authority` to a servicer, so the stand-in reads
  `x-forwarded-host` only; without it, it chooses as FlyteAdmin does for a host that matches
  no authorized URI (the first entry). Tests that need another host send the header; the
  e2e parity table sends the same header to the real FlyteAdmin.
- External mode (`authServerType: External`; resource_server.go and go-oidc v3.6.0's
  RemoteKeySet, read, and compared with the real one in `make e2e`): `ExternalAuthServer`
  fetches `externalAuthServer.baseUrl` + `metadataUrl` once at start (no retry, no timeout; a
  failure stops it) and verifies tokens against that document's `jwks_uri`: keys cached with
  no expiry, fetched again (one fetch at a time) when no cached key with the token's `kid`
  verifies it; a token without `kid` is tried with every key. `aud` must be in
  `allowedAudience` or be the authorized URI for the dialled host; the other claim checks
  are Self mode's (zero clock skew; `iss` unchecked).
- IdentityService.UserInfo returns the token's subject; AdminService.GetExecution returns an
  execution from an in-memory table (NOT_FOUND otherwise) with spec.metadata.principal.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
from flyteidl.admin import execution_pb2
from flyteidl.service import admin_pb2_grpc, identity_pb2, identity_pb2_grpc
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from devstack.admin_metadata import AuthMetadata, add_metadata_service

HEADER = "flyte-authorization"


class Unauthenticated(Exception):
    pass


class Internal(Unauthenticated):
    """FlyteAdmin fails these claims with INTERNAL rather than UNAUTHENTICATED."""


def public_url_for(dialled: str | None, authorized_uris: list[str]) -> str:
    """FlyteAdmin's GetPublicURL for a gRPC call: the dialled host as https://HOST[:PORT];
    among authorized URIs with its hostname, the first with its scheme wins, else the last
    with its port, else the last with its hostname; no hostname match → the first entry."""
    if dialled is None:
        return authorized_uris[0]
    u = urlsplit("https://" + dialled)
    host_match: str | None = None
    host_port_match: str | None = None
    for uri in authorized_uris:
        a = urlsplit(uri)
        if u.hostname == a.hostname:
            host_match = uri
            if u.port == a.port:
                host_port_match = uri
            if u.scheme == a.scheme:
                return uri
    return host_port_match or host_match or authorized_uris[0]


def bearer_token(value: str | None) -> tuple[str, dict[str, Any]]:
    """The token of an authorization value and its JOSE header."""
    if not value or not value.startswith("Bearer "):
        raise Unauthenticated("no bearer token")
    token = value.removeprefix("Bearer ").strip()
    try:
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    except (ValueError, IndexError):
        raise Unauthenticated("malformed token") from None
    if not isinstance(header, dict):
        raise Unauthenticated("malformed token")
    return token, header


def verified_claims(token: str, key: RSAKey, algorithms: list[str]) -> dict[str, Any]:
    registry = jws.JWSRegistry(strict_check_header=False, algorithms=algorithms)
    try:
        claims = json.loads(jws.deserialize_compact(token, key, registry=registry).payload)
    except (JoseError, ValueError):
        raise Unauthenticated("signature") from None
    if not isinstance(claims, dict):
        raise Unauthenticated("claims are not an object")
    return claims


def check_claims(claims: dict[str, Any], audiences: list[str], now: float) -> dict[str, Any]:
    """FlyteAdmin's claim checks after the signature, in its order; the claims if they pass."""
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if (exp is not None and now >= exp) or (nbf is not None and now < nbf) or (
            iat is not None and now < iat):
        raise Unauthenticated("exp/nbf/iat check failed")
    aud = claims.get("aud")
    if not set(audiences) & set([aud] if isinstance(aud, str) else aud or []):
        raise Unauthenticated("audience")
    if "client_id" in claims and not isinstance(claims["client_id"], str):
        raise Internal("client_id is not a string")
    if "user_info" in claims and not isinstance(claims["user_info"], dict):
        raise Internal("user_info is not an object")
    scp = claims.get("scp")
    if "client_id" not in claims and scp is None:
        scopes = ["all"]
    else:
        scopes = [scp] if isinstance(scp, str) else scp if isinstance(scp, list) else []
    if "all" not in scopes:
        raise Unauthenticated("scope all required")
    return dict(claims)


def validate_bearer(value: str | None, keys: list[tuple[str, RSAKey]], audience: str,
                    now: float) -> dict[str, Any]:
    """Self mode: the header's `key_id` picks one of token_rsa_key(_old).pem, else the first."""
    token, header = bearer_token(value)
    key = dict(keys).get(str(header.get("key_id")), keys[0][1])
    return check_claims(verified_claims(token, key, ["RS256"]), [audience], now)


@dataclass
class ExternalAuthServer:
    """FlyteAdmin's `auth.appAuth.externalAuthServer` (External mode)."""

    #: baseUrl + metadataUrl, resolved as FlyteAdmin does.
    metadata_url: str
    allowed_audience: list[str]
    jwks_uri: str = ""
    keys: list[tuple[str | None, RSAKey]] = field(default_factory=list)
    key_fetches: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        """The one GET at start-up; any failure raises (FlyteAdmin exits)."""
        async with aiohttp.ClientSession() as session, \
                session.get(self.metadata_url) as resp:
            resp.raise_for_status()
            self.jwks_uri = str((await resp.json(content_type=None))["jwks_uri"])

    async def _fetch_keys(self) -> None:
        self.key_fetches += 1
        async with aiohttp.ClientSession() as session, session.get(self.jwks_uri) as resp:
            resp.raise_for_status()
            listed = (await resp.json(content_type=None))["keys"]
        keys: list[tuple[str | None, RSAKey]] = []
        for jwk in listed:
            try:
                keys.append((jwk.get("kid"), RSAKey.import_key(jwk)))
            except (JoseError, ValueError, TypeError):
                continue  # go-jose skips keys it cannot use
        self.keys = keys

    def _verify(self, token: str, kid: str | None) -> dict[str, Any] | None:
        for key_id, key in self.keys:
            if kid is None or key_id == kid:
                try:
                    return verified_claims(token, key, ["RS256", "RS384", "RS512"])
                except Unauthenticated:
                    continue
        return None

    async def validate(self, value: str | None, audience: str, now: float) -> dict[str, Any]:
        token, header = bearer_token(value)
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        claims = self._verify(token, kid)
        if claims is None:
            async with self._lock:  # one fetch at a time; no rate limit
                try:
                    await self._fetch_keys()
                except (aiohttp.ClientError, KeyError, TypeError, ValueError):
                    raise Unauthenticated("the key set could not be fetched") from None
            claims = self._verify(token, kid)
        if claims is None:
            raise Unauthenticated("no key of the key set verifies the token")
        return check_claims(claims, [*self.allowed_audience, audience], now)


@dataclass
class FlyteAdmin(admin_pb2_grpc.AdminServiceServicer,  # type: ignore[misc]
                 identity_pb2_grpc.IdentityServiceServicer):  # type: ignore[misc]
    #: The public half of token_rsa_key.pem (Self mode; empty in External mode).
    public_key_pem: bytes = b""
    #: The public half of token_rsa_key_old.pem, during a key rotation.
    old_public_key_pem: bytes | None = None
    #: FlyteAdmin's auth.authorizedUris, in its order.
    authorized_uris: list[str] = field(default_factory=lambda: [
        "http://flyteadmin.flyte.svc.cluster.local:80"])
    #: (project, domain, name) -> principal
    executions: dict[tuple[str, str, str], str] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, subject)
    bearers: list[str] = field(default_factory=list)  # every token presented, in order
    rejected: int = 0
    #: Refuse the next N calls with UNAUTHENTICATED whatever they carry (a revoked token).
    reject_next: int = 0
    #: When set, GetExecution waits for it (a slow database); `held` is set while one waits.
    hold: asyncio.Event | None = None
    held: asyncio.Event = field(default_factory=asyncio.Event)
    #: External mode: tokens are verified against this IdP's key set, not the keys above.
    external: ExternalAuthServer | None = None

    def __post_init__(self) -> None:
        self.set_keys(self.public_key_pem, self.old_public_key_pem)

    def set_keys(self, current_pem: bytes, old_pem: bytes | None = None) -> None:
        """token_rsa_key.pem and token_rsa_key_old.pem, as FlyteAdmin loads them at start."""
        self.public_key_pem, self.old_public_key_pem = current_pem, old_pem
        pems = [pem for pem in (current_pem, old_pem) if pem]
        self.keys = [(key.thumbprint(), key) for key in map(RSAKey.import_key, pems)]

    async def _authenticate(self, method: str, context: Any) -> dict[str, Any]:
        md = dict(context.invocation_metadata())
        presented = md.get(HEADER) or md.get("authorization") or ""
        self.bearers.append(presented.removeprefix("Bearer "))
        if self.reject_next > 0:
            self.reject_next -= 1
            self.rejected += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token rejected: revoked")
        try:
            audience = public_url_for(md.get("x-forwarded-host"), self.authorized_uris)
            presented_value = md.get(HEADER) or md.get("authorization")
            claims = await self.external.validate(presented_value, audience, time.time()) \
                if self.external is not None else \
                validate_bearer(presented_value, self.keys, audience, time.time())
        except Unauthenticated as exc:
            self.rejected += 1
            code = grpc.StatusCode.INTERNAL if isinstance(exc, Internal) else \
                grpc.StatusCode.UNAUTHENTICATED
            await context.abort(code, f"token rejected: {exc}")
        self.calls.append((method, str(claims.get("sub", ""))))
        return claims

    async def UserInfo(self, request: Any, context: Any) -> Any:
        claims = await self._authenticate("UserInfo", context)
        return identity_pb2.UserInfoResponse(subject=claims.get("sub", ""),
                                             name=claims.get("sub", ""))

    async def GetExecution(self, request: Any, context: Any) -> Any:
        await self._authenticate("GetExecution", context)
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        key = (request.id.project, request.id.domain, request.id.name)
        if key not in self.executions:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"execution {key} not found")
        execution = execution_pb2.Execution(id=request.id)
        execution.spec.metadata.principal = self.executions[key]
        return execution


async def start_flyteadmin(admin: FlyteAdmin, metadata: AuthMetadata) -> tuple[Any, str]:
    """Serve AdminService, IdentityService and AuthMetadataService on one loopback port."""
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(admin, server)
    add_metadata_service(metadata, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
