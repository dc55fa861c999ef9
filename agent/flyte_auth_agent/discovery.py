"""Read FlyteAdmin's auth metadata: gRPC AuthMetadataService first, HTTP as the fallback.

FlyteAdmin (with `useAuth`) answers both anonymously (flyteadmin/auth at v1.16.8; `make e2e`
reads the real one both ways):
  GetOAuth2Metadata      ~ GET /.well-known/oauth-authorization-server  (token_endpoint, ...)
  GetPublicClientConfig  ~ GET /config/v1/flyte_client  (authorization_metadata_key, audience,
                                                         scopes)
grpc and flyteidl are imported here, on first use only, so an agent configured with an
explicit token endpoint never loads them.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from flyte_auth_agent.errors import DiscoveryError
from flyte_auth_common import contract
from flyte_auth_common.admin import AdminEndpoint, admin_channel
from flyte_auth_common.jwt import redact

WELL_KNOWN_PATH = "/.well-known/oauth-authorization-server"
CLIENT_CONFIG_PATH = "/config/v1/flyte_client"
_MAX_BODY = 256 * 1024


@dataclass(frozen=True)
class AdminAuthInfo:
    token_endpoint: str | None
    authorization_metadata_key: str
    audience: str | None
    scopes: tuple[str, ...]
    source: str  # "grpc" or "http"


def _info(metadata: dict[str, Any], client: dict[str, Any], source: str) -> AdminAuthInfo:
    def field(doc: dict[str, Any], snake: str) -> Any:
        camel = snake.split("_", maxsplit=1)[0] + "".join(p.title() for p in snake.split("_")[1:])
        return doc.get(snake, doc.get(camel))

    scopes = field(client, "scopes") or ()
    return AdminAuthInfo(
        token_endpoint=field(metadata, "token_endpoint") or None,
        authorization_metadata_key=field(client, "authorization_metadata_key")
        or contract.DEFAULT_AUTHORIZATION_METADATA_KEY,
        audience=field(client, "audience") or None,
        scopes=tuple(str(s) for s in scopes) if isinstance(scopes, list | tuple) else (),
        source=source,
    )


async def _via_grpc(admin: AdminEndpoint, ca_pem: bytes | None, timeout: float) -> AdminAuthInfo:
    try:
        import grpc  # noqa: PLC0415 - heavy; only agents that discover load it
        from flyteidl.service import auth_pb2, auth_pb2_grpc  # noqa: PLC0415
        from google.protobuf.json_format import MessageToDict  # noqa: PLC0415
    except ImportError as exc:
        raise DiscoveryError(f"gRPC discovery needs grpcio and flyteidl ({exc.name} is "
                             "missing); install flyte-auth-agent[agent]") from None
    try:
        async with admin_channel(admin, ca_pem) as channel:
            stub = auth_pb2_grpc.AuthMetadataServiceStub(channel)
            metadata = await stub.GetOAuth2Metadata(auth_pb2.OAuth2MetadataRequest(),
                                                    timeout=timeout)
            client = await stub.GetPublicClientConfig(auth_pb2.PublicClientAuthConfigRequest(),
                                                      timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise DiscoveryError(f"gRPC {exc.code().name}: {redact(exc.details() or '')}") from None
    return _info(MessageToDict(metadata, preserving_proto_field_name=True),
                 MessageToDict(client, preserving_proto_field_name=True), "grpc")


async def _get_json(session: aiohttp.ClientSession, url: str, ssl_ctx: ssl.SSLContext | bool,
                    timeout: float) -> dict[str, Any]:
    try:
        async with session.get(url, ssl=ssl_ctx, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.content.read(_MAX_BODY)
            if resp.status != 200:
                raise DiscoveryError(f"GET {url} answered HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DiscoveryError(f"GET {url} failed: {type(exc).__name__} "
                             f"{redact(str(exc))}".rstrip()) from None
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise DiscoveryError(f"GET {url} did not answer a JSON object")
    return doc


async def _via_http(admin: AdminEndpoint, session: aiohttp.ClientSession,
                    ssl_ctx: ssl.SSLContext | bool, timeout: float) -> AdminAuthInfo:
    metadata = await _get_json(session, admin.http_base + WELL_KNOWN_PATH, ssl_ctx, timeout)
    try:
        client = await _get_json(session, admin.http_base + CLIENT_CONFIG_PATH, ssl_ctx, timeout)
    except DiscoveryError:
        client = {}  # older or proxied deployments: fall back to FlyteAdmin's defaults
    return _info(metadata, client, "http")


async def discover(
    admin: AdminEndpoint,
    *,
    session: aiohttp.ClientSession,
    ssl_ctx: ssl.SSLContext | bool,
    ca_pem: bytes | None,
    timeout: float,
) -> AdminAuthInfo:
    """FlyteAdmin's auth info, over gRPC, else over HTTP; DiscoveryError names both failures."""
    try:
        return await _via_grpc(admin, ca_pem, timeout)
    except DiscoveryError as grpc_error:
        try:
            return await _via_http(admin, session, ssl_ctx, timeout)
        except DiscoveryError as http_error:
            raise DiscoveryError(
                f"cannot read FlyteAdmin's auth metadata from {admin.host_port} "
                f"(insecure={str(admin.insecure).lower()}): gRPC: {grpc_error}; "
                f"HTTP: {http_error}. Check --admin-endpoint, --admin-insecure and that "
                f"FlyteAdmin runs with auth enabled, or set --token-endpoint") from None
