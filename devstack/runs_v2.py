"""Stand-in for Flyte 2's runs service: the one call the exchange server makes. We keep
`make test` fast; `make e2e` asks the real v2 backend the same questions
(tests/e2e/test_flyte2.py). It follows the real service (runs/service/run_service.go, served
by connect-go):

- POST /flyteidl2.workflow.RunService/GetRunDetails, Connect's unary protocol: the body is
  a GetRunDetailsRequest (Content-Type application/proto), the answer a
  GetRunDetailsResponse. The run is looked up by project, domain and name (org is ignored).
  Its root action's `metadata.executed_by` is the identity the run was created with: a user
  whose `id.subject` is the caller's `sub` and whose `spec` holds the `email`, `given_name`
  and `family_name` the service found (runs/service/identity.go), or nothing for a run
  created without one.
- A run that does not exist: HTTP 404, {"code": "not_found", "message": ...}
  (application/json). A request without run_id: 400 invalid_argument.
- The service authenticates nobody; the requests it got are kept in `requests`, headers and
  all, so a test can see what was sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from flyteidl2.common import identifier_pb2, identity_pb2
from flyteidl2.workflow import run_definition_pb2, run_service_pb2
from google.protobuf.message import DecodeError

from devstack.serving import serve
from flyte_auth_common.contract import V2_GET_RUN_DETAILS_PATH


def connect_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


@dataclass
class StubRuns:
    #: (project, domain, run name) -> the launcher's subject, or None: no executed_by
    runs: dict[tuple[str, str, str], str | None] = field(default_factory=dict)
    #: (project, domain, run name) -> the launcher's UserSpec fields (first_name, ...)
    profiles: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)
    #: When set, every answer is this body with status 200 (an upstream returning garbage).
    garbage: bytes | None = None
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post(V2_GET_RUN_DETAILS_PATH, self._get_run_details)
        self._runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _get_run_details(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        if self.garbage is not None:
            return web.Response(body=self.garbage, content_type="application/proto")
        if request.content_type != "application/proto":
            return connect_error(415, "unknown", f"unsupported content type "
                                 f"{request.content_type}")
        try:
            run_id = run_service_pb2.GetRunDetailsRequest.FromString(await request.read()).run_id
        except DecodeError:
            return connect_error(400, "invalid_argument", "cannot decode request")
        key = (run_id.project, run_id.domain, run_id.name)
        if not all(key):
            return connect_error(400, "invalid_argument", "validation error: run_id: required")
        if key not in self.runs:
            return connect_error(404, "not_found", "run not found: " + "/".join(key))
        metadata = run_definition_pb2.ActionMetadata()
        subject = self.runs[key]
        if subject is not None:
            metadata.executed_by.CopyFrom(identity_pb2.EnrichedIdentity(user=identity_pb2.User(
                id=identifier_pb2.UserIdentifier(subject=subject),
                spec=identity_pb2.UserSpec(**self.profiles.get(key, {})))))
        details = run_definition_pb2.RunDetails(action=run_definition_pb2.ActionDetails(
            id=identifier_pb2.ActionIdentifier(run=run_id, name=run_id.name),
            metadata=metadata))
        answer = run_service_pb2.GetRunDetailsResponse(details=details)
        return web.Response(body=answer.SerializeToString(), content_type="application/proto")
