"""FlyteAdmin, for one question: who launched this execution (`spec.metadata.principal`)?

The server authenticates with a token it mints for itself, sent under FlyteAdmin's
`flyte-authorization` header.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from flyteidl.admin import execution_pb2
from flyteidl.core import identifier_pb2
from flyteidl.service import admin_pb2_grpc

from flyte_auth_common import contract
from flyte_auth_common.admin import AdminEndpoint, admin_channel
from flyte_auth_exchange.errors import INVALID_GRANT, TEMPORARILY_UNAVAILABLE, Refusal
from flyte_auth_exchange.trust import ExecutionRef

#: `sub` of the tokens this server mints for its own FlyteAdmin calls.
SELF_SUBJECT = "flyte-auth-exchange"


class Admin:
    def __init__(self, endpoint: AdminEndpoint, token: Callable[[], str], *,
                 ca_pem: bytes | None = None, timeout: float = 10.0,
                 header: str = contract.DEFAULT_AUTHORIZATION_METADATA_KEY,
                 counted: Callable[[str], None] = lambda _: None) -> None:
        self._counted = counted
        self._channel = admin_channel(endpoint, ca_pem)
        self._stub: Any = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._token = token
        self._timeout = timeout
        self._header = header
        self.endpoint = endpoint

    async def close(self) -> None:
        await self._channel.close()

    async def principal(self, ref: ExecutionRef) -> str:
        """The execution's principal ('' if it has none); Refusal if it cannot be read."""
        request = execution_pb2.WorkflowExecutionGetRequest(
            id=identifier_pb2.WorkflowExecutionIdentifier(
                project=ref.project, domain=ref.domain, name=ref.name))
        self._counted("GetExecution")
        try:
            execution = await self._stub.GetExecution(
                request, timeout=self._timeout,
                metadata=((self._header, f"Bearer {self._token()}"),))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise Refusal(INVALID_GRANT, f"execution {ref} named by the pod's labels does "
                              "not exist in FlyteAdmin") from None
            raise Refusal(TEMPORARILY_UNAVAILABLE, f"FlyteAdmin GetExecution failed with "
                          f"{exc.code().name} at {self.endpoint.host_port}") from None
        return str(execution.spec.metadata.principal)


class SelfToken:
    """This server's own token for FlyteAdmin, re-minted when half its life has passed."""

    def __init__(self, mint: Callable[[float], tuple[str, float]],
                 clock: Callable[[], float] = time.time) -> None:
        self._mint = mint
        self._clock = clock
        self._token = ""
        self._renew_at = 0.0

    def __call__(self) -> str:
        now = self._clock()
        if now >= self._renew_at:
            self._token, expires_at = self._mint(now)
            self._renew_at = now + (expires_at - now) / 2
        return self._token
