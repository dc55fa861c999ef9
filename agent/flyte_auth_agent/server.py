"""The socket API (the fixed contract: flyte_auth_common.contract and the README): thin handlers
over a TokenSource."""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.exchange import Exchanger, Upstream
from flyte_auth_agent.metrics import AgentMetrics
from flyte_auth_agent.peercred import UNKNOWN, Peer, peer_of
from flyte_auth_agent.source import TokenSource
from flyte_auth_agent.tokens import AccessToken
from flyte_auth_common import __version__, contract
from flyte_auth_common.contract import rfc3339
from flyte_auth_common.probes import probe_routes

log = structlog.get_logger("flyte_auth_agent")
JSON = "application/json"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type=JSON,
                        headers=headers)


def _error(status: int, error: str, description: str, retry_after: int | None = None,
           ) -> web.Response:
    body: contract.ErrorBody = {"error": error, "error_description": description,
                                "retry_after": retry_after}
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return _json(body, status, headers)


def _wants_text(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/plain" in accept and JSON not in accept


def display_url(url: str | None) -> str | None:
    """A URL fit for status output: any user:password@ part removed."""
    if url is None or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


@dataclass
class _Connection:
    peer: Peer
    audited: str | None = None  # fingerprint of the last token logged for this connection


class AgentAPI:
    """Handlers. Each reads the source's snapshot; only the refresher talks upstream."""

    def __init__(self, config: AgentConfig, source: TokenSource[Upstream], exchanger: Exchanger,
                 metrics: AgentMetrics) -> None:
        self.config = config
        self.source = source
        self.exchanger = exchanger
        self.metrics = metrics
        self._counters: dict[tuple[str, int], Any] = {}
        self._connections: weakref.WeakKeyDictionary[Any, _Connection] = (
            weakref.WeakKeyDictionary())
        self._body_key: tuple[str, int] | None = None
        self._body = b""

    def _count(self, path: str, code: int) -> None:
        counter = self._counters.get((path, code))
        if counter is None:
            counter = self._counters[(path, code)] = self.metrics.requests.labels(path, str(code))
        counter.inc()

    def _connection(self, request: web.Request) -> _Connection:
        """Per-connection state; the peer's credentials are fixed at connect(), read once."""
        transport = request.transport
        if transport is None:
            return _Connection(UNKNOWN)
        conn = self._connections.get(transport)
        if conn is None:
            conn = self._connections[transport] = _Connection(
                peer_of(transport.get_extra_info("socket")))
        return conn

    def v1(self, path: str, handler: Callable[[web.Request], Awaitable[web.Response]],
           ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """What every /v1/* route does around its handler: refuse a request without the
        required header, and count each answer by path and status. The peer's uid is
        checked once, at accept (connections.ConnectionGuard)."""
        async def route(request: web.Request) -> web.Response:
            if request.headers.get(contract.REQUIRED_HEADER) != contract.REQUIRED_HEADER_VALUE:
                response = _error(400, contract.ERROR_MISSING_HEADER,
                                  f"requests to /v1/* must carry the header "
                                  f"'{contract.REQUIRED_HEADER}: {contract.REQUIRED_HEADER_VALUE}'")
            else:
                response = await handler(request)
            self._count(path, response.status)
            return response
        return route

    async def _upstream(self) -> Upstream | None:
        """Where tokens come from; before FlyteAdmin has been asked, wait for it as a token
        request waits for the first token (unless that attempt already failed)."""
        source = self.source
        if source.upstream is None and not source.failing():
            await source.wait_upstream(self.config.wait_timeout)
        return source.upstream

    def _unavailable(self) -> web.Response:
        reason = self.source.no_token_reason() or "no valid token"
        return _error(503, contract.ERROR_NO_TOKEN, reason,  # the error code says "no token"
                      self.source.retry_after())

    async def token(self, request: web.Request) -> web.Response:
        source = self.source
        tok = source.token() or (None if source.failing() else
                                 await source.wait(self.config.wait_timeout))
        if tok is None:
            return self._unavailable()
        conn = self._connection(request)
        if conn.audited != tok.fingerprint:
            # Audit: one line per token per connection. A keep-alive client re-reading the
            # same token adds no fact to the trail (the request counter still counts it).
            conn.audited = tok.fingerprint
            log.info("token_served", peer_pid=conn.peer.pid, peer_uid=conn.peer.uid,
                     fingerprint=tok.fingerprint, expires_at=int(tok.expires_at))
        if _wants_text(request):
            return web.Response(text=tok.value + "\n", content_type="text/plain")
        return web.Response(body=self._token_body(tok), content_type=JSON)

    def _token_body(self, tok: AccessToken) -> bytes:
        """The JSON answer; it changes only when the token or `expires_in` does, so it is
        built at most once a second (the hot path's biggest saving)."""
        expires_in = max(0, int(tok.expires_at - self.source.clock.now()))
        key = (tok.fingerprint, expires_in)
        if self._body_key != key:
            body: contract.TokenBody = {
                "access_token": tok.value,
                "token_type": "Bearer",
                "expires_at": rfc3339(tok.expires_at),
                "expires_in": expires_in,
                "scope": tok.scope,
            }
            self._body, self._body_key = json.dumps(body).encode(), key
        return self._body

    async def config_(self, _: web.Request) -> web.Response:
        upstream = await self._upstream()
        if upstream is None:
            return self._unavailable()
        c = self.config
        body: contract.ConfigBody = {
            "endpoint": c.admin.host_port if c.admin else None,
            "insecure": c.admin.insecure if c.admin else False,
            "ca_cert_file_path": str(c.ca_cert_file) if c.ca_cert_file else None,
            "authorization_metadata_key": upstream.authorization_metadata_key,
            "project": c.execution.project,
            "domain": c.execution.domain,
            "execution_id": c.execution.execution_id,
            "agent_version": __version__,
        }
        return _json(body)

    async def status(self, _: web.Request) -> web.Response:
        upstream = self.source.upstream
        body = self.source.status()
        body["token_endpoint_calls"] = self.exchanger.token_endpoint_calls
        body["upstream"] = {
            "token_endpoint": display_url(upstream.token_endpoint if upstream
                                          else self.config.token_endpoint),
            "grant": self.config.grant,
            "admin_endpoint": self.config.admin.host_port if self.config.admin else None,
            "discovered_from": upstream.discovered_from if upstream else None,
        }
        body["now"] = rfc3339(time.time())
        return _json(body)

    def probes(self) -> list[web.RouteDef]:
        """Alive while the refresher runs; ready while it holds a valid token."""
        def not_ready() -> str | None:
            if self.source.token() is not None:
                return None
            err = self.source.last_error
            return err.message if err else "waiting for the first token"
        return probe_routes(self.metrics.registry, ready="ready: holding a valid token",
                            not_ready=not_ready, broken=lambda: None if self.source.alive
                            else "token refresher stopped")


@web.middleware
async def _answer_every_error(request: web.Request, handler: Any) -> web.StreamResponse:
    """The one place an unexpected error in a handler becomes an answer: a JSON 500 and one
    log line naming the error type (its text may hold a token)."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.error("request_failed", path=request.path, error_type=type(exc).__name__)
        return _error(500, contract.ERROR_INTERNAL, "the agent failed answering this request; "
                      "its log has the error (request_failed)")
    return response


def health_app(api: AgentAPI, *middlewares: Middleware) -> web.Application:
    """For kubelet probes and Prometheus over TCP: never any /v1/* route."""
    app = web.Application(middlewares=[*middlewares, _answer_every_error])
    app.add_routes(api.probes())
    return app


def socket_app(api: AgentAPI, *middlewares: Middleware) -> web.Application:
    """The health routes, and the /v1/* API that only the socket serves; `middlewares` run
    before the rest (the connection guard's)."""
    app = health_app(api, *middlewares)
    for path, handler in ((contract.PATH_TOKEN, api.token), (contract.PATH_CONFIG, api.config_),
                          (contract.PATH_STATUS, api.status)):
        app.router.add_get(path, api.v1(path, handler))
    return app
