"""Stand-in for FlyteAdmin's AuthMetadataService, a real gRPC server from flyteidl stubs.

Behaves as FlyteAdmin with `useAuth` does (flyteadmin/auth at v1.16.8; `make e2e` checks it
against the real one): both RPCs answer anonymously,
GetOAuth2Metadata with the authorization server's RFC 8414 metadata, GetPublicClientConfig
with the client config whose `authorization_metadata_key` clients must send tokens under.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
from flyteidl.service import auth_pb2, auth_pb2_grpc

from flyte_auth_common import contract


@dataclass
class AuthMetadata(auth_pb2_grpc.AuthMetadataServiceServicer):  # type: ignore[misc]
    token_endpoint: str
    authorization_metadata_key: str = "flyte-authorization"
    audience: str = "http://flyteadmin.flyte:80"
    scopes: list[str] = field(default_factory=lambda: ["all"])
    calls: int = 0
    #: When set, GetOAuth2Metadata waits for it: a FlyteAdmin that has not answered yet.
    gate: asyncio.Event | None = None

    async def GetOAuth2Metadata(self, request: Any, context: Any) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return auth_pb2.OAuth2MetadataResponse(
            issuer="http://flyteadmin.flyte:80", token_endpoint=self.token_endpoint,
            grant_types_supported=[contract.GRANT_TYPE_TOKEN_EXCHANGE])

    async def GetPublicClientConfig(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return auth_pb2.PublicClientAuthConfigResponse(
            client_id="flytepropeller", scopes=self.scopes, audience=self.audience,
            authorization_metadata_key=self.authorization_metadata_key)


def add_metadata_service(servicer: AuthMetadata, server: Any) -> None:
    auth_pb2_grpc.add_AuthMetadataServiceServicer_to_server(servicer, server)


async def start_metadata_server(servicer: AuthMetadata, *, tls: tuple[bytes, bytes] | None = None,
                                ) -> tuple[Any, str]:
    """Start on loopback; returns (server, "HOST:PORT"). `tls` is (cert chain PEM, key PEM)."""
    server = grpc.aio.server()
    add_metadata_service(servicer, server)
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
        target = f"127.0.0.1:{port}"
    else:
        creds = grpc.ssl_server_credentials([(tls[1], tls[0])])
        port = server.add_secure_port("127.0.0.1:0", creds)
        target = f"localhost:{port}"
    await server.start()
    return server, target
