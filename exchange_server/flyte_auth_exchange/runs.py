"""Flyte 2's runs service, for one question: who launched this run (the root action's
`metadata.executed_by`)?

Asked over Connect's unary protocol (the v2 backend serves Connect, gRPC and gRPC-Web on one
port): POST /flyteidl2.workflow.RunService/GetRunDetails with the protobuf message as the
body. An error is an HTTP status with a JSON body {"code": "not_found", "message": ...}. The
request carries a token this server mints for itself, so it passes an auth proxy that trusts
this issuer; the runs service itself authenticates nobody.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import aiohttp
from flyteidl2.common import identifier_pb2
from flyteidl2.workflow import run_service_pb2
from google.protobuf.message import DecodeError

from flyte_auth_common.contract import V2_GET_RUN_DETAILS_PATH
from flyte_auth_exchange.errors import INVALID_GRANT, TEMPORARILY_UNAVAILABLE, Refusal
from flyte_auth_exchange.trust import ExecutionRef, Launcher

PROTO = "application/proto"


class Runs:
    def __init__(self, url: str, token: Callable[[], str], session: aiohttp.ClientSession, *,
                 ssl_ctx: ssl.SSLContext | bool = True, timeout: float = 10.0,
                 counted: Callable[[str], None] = lambda _: None) -> None:
        self._counted = counted
        self.url = url.rstrip("/")
        self._token = token
        self._session = session
        self._ssl = ssl_ctx
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def launcher(self, run: ExecutionRef) -> Launcher:
        """The run's `executed_by`: its subject ('' if it has none) and, for a user, the
        profile it records; Refusal if the run cannot be read."""
        request = run_service_pb2.GetRunDetailsRequest(run_id=identifier_pb2.RunIdentifier(
            project=run.project, domain=run.domain, name=run.name))
        where = f"the Flyte 2 runs service at {self.url}"
        self._counted("GetRunDetails")
        try:
            async with self._session.post(
                    self.url + V2_GET_RUN_DETAILS_PATH, data=request.SerializeToString(),
                    headers={"Content-Type": PROTO, "Authorization": f"Bearer {self._token()}"},
                    ssl=self._ssl, timeout=self._timeout, allow_redirects=False) as resp:
                body = await resp.read()
                status, content_type = resp.status, resp.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Refusal(TEMPORARILY_UNAVAILABLE, f"GetRunDetails failed: {where} is "
                          f"unreachable ({type(exc).__name__})") from None
        if status == 404:
            raise Refusal(INVALID_GRANT, f"run {run} of the pod's TaskAction does not exist in "
                          f"{where}")
        if status in (401, 403):
            raise Refusal(TEMPORARILY_UNAVAILABLE, f"GetRunDetails was refused (HTTP {status}) "
                          f"by {where}: its auth proxy must trust this exchange server as an "
                          "issuer (oauth2-proxy: --extra-jwt-issuers=<--public-url>=<an "
                          "--admin-audience>)")
        if status != 200 or content_type != PROTO:
            raise Refusal(TEMPORARILY_UNAVAILABLE, f"GetRunDetails failed at {where}: HTTP "
                          f"{status} {content_type or 'without a content type'}")
        try:
            details = run_service_pb2.GetRunDetailsResponse.FromString(body).details
        except DecodeError:
            raise Refusal(TEMPORARILY_UNAVAILABLE, f"GetRunDetails at {where} answered with "
                          "a body that is not a GetRunDetailsResponse") from None
        identity = details.action.metadata.executed_by
        principal = identity.WhichOneof("principal")
        if principal == "user":
            spec = identity.user.spec
            # As OIDC names them: the runs service reads these claims from a bearer token
            # when it records who launched a child run, and asks userinfo only if one lacks.
            profile = {"email": spec.email, "given_name": spec.first_name,
                       "family_name": spec.last_name}
            return Launcher(str(identity.user.id.subject),
                            {k: str(v) for k, v in profile.items() if v})
        if principal == "application":
            return Launcher(str(identity.application.id.subject))
        return Launcher("")
