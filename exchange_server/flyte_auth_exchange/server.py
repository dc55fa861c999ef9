"""HTTP: thin handlers over ExchangeService. One audit line per decision, never a token; its
fields (who asked, about which pod and execution, for whom) are the request's structlog
contextvars, which the service binds as it learns them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
)
from structlog.contextvars import bind_contextvars

from flyte_auth_common import __version__, contract
from flyte_auth_common.probes import probe_routes
from flyte_auth_exchange.decision import Form
from flyte_auth_exchange.errors import (
    INVALID_REQUEST,
    SERVER_ERROR,
    TEMPORARILY_UNAVAILABLE,
    Refusal,
)
from flyte_auth_exchange.external import JWKS_PATH as EXTERNAL_JWKS_PATH
from flyte_auth_exchange.external import METADATA_PATHS as EXTERNAL_METADATA_PATHS
from flyte_auth_exchange.external import ExternalIdP, Unavailable
from flyte_auth_exchange.mint import Minter
from flyte_auth_exchange.service import ExchangeService
from flyte_auth_exchange.subject import IssuerKeys

log = structlog.get_logger("flyte_auth_exchange")
TOKEN_PATH = "/oauth2/token"
JWKS_PATH = "/jwks"
MAX_FORM_BYTES = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter("flyte_auth_exchange_decisions",
                                 "Exchange decisions, by outcome and error code",
                                 ["outcome", "code"], registry=self.registry)
        self.seconds = Histogram("flyte_auth_exchange_duration_seconds",
                                 "Time to decide one exchange", registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5, 1, 2.5))
        self.shed = Counter("flyte_auth_exchange_shed",
                            "Exchange requests answered 503 at once past --max-inflight",
                            registry=self.registry)
        self.idp_failures = Counter("flyte_auth_exchange_idp_fetch_failures",
                                    "External mode: fetches of the IdP's metadata or keys that "
                                    "failed (the last good copy was served)",
                                    registry=self.registry)
        self.upstream = Counter("flyte_auth_exchange_upstream_requests",
                                "Requests this server made to what it asks (upstream: "
                                "kubernetes, flyteadmin, runs; request: what it asked)",
                                ["upstream", "request"], registry=self.registry)
        self.skewed = Counter("flyte_auth_exchange_agent_skew",
                              "Exchange requests from agents further from this server's "
                              "version than the skew rule allows (README: Versions)",
                              registry=self.registry)


#: Agent versions already warned about (bounded: the header is the caller's to write).
MAX_SKEW_WARNINGS = 16


def _too_large() -> Refusal:
    return Refusal(INVALID_REQUEST, f"the body is larger than {MAX_FORM_BYTES} bytes",
                   status=413)


class ExchangeAPI:
    def __init__(self, service: ExchangeService, minter: Minter, keys: IssuerKeys | None,
                 public_url: str, *, max_inflight: int,
                 external: ExternalIdP | None = None, metrics: Metrics | None = None) -> None:
        self.service = service
        self.minter = minter
        self.keys = keys
        self.public_url = public_url
        self.metrics = metrics or Metrics()
        self._skew_warned: set[str] = set()
        self.max_inflight = max_inflight
        self.inflight = 0
        self.external = external

    async def token(self, request: web.Request) -> web.Response:
        """At most --max-inflight exchanges are decided at once; past that, shed."""
        if self.inflight >= self.max_inflight:
            return self._shed()
        self.inflight += 1
        try:
            return await self._decide(request)
        finally:
            self.inflight -= 1

    def _shed(self) -> web.Response:
        """Past --max-inflight: a quick 503 the agent retries (with jitter) beats a queue that
        makes every caller time out. Counted, not audited: nothing was decided."""
        self.metrics.shed.inc()
        return web.json_response(
            {"error": TEMPORARILY_UNAVAILABLE, "error_description": (
                f"this exchange server is deciding its --max-inflight ({self.max_inflight}) "
                "exchanges at once; retry in a second")},
            status=503, headers={**_NO_STORE, "Retry-After": "1"})

    async def _decide(self, request: web.Request) -> web.Response:
        """The one place every outcome becomes an answer and an audit line: a grant, a
        Refusal, or (a bug, never a caller's input) anything else as `server_error`."""
        started = time.perf_counter()
        # aiohttp runs each request in a task of its own, with a copy of the connection's
        # (empty) context: what this request binds stays with it.
        bind_contextvars(peer=request.remote)
        self._check_skew(request.headers.get("User-Agent", ""))
        try:
            form = await self._form(request)
            body = await self.service.exchange(form)
        except Refusal as refusal:
            return self._refused(refusal)
        except Exception as exc:
            log.error("exchange_failed", error_type=type(exc).__name__)
            return self._refused(Refusal(SERVER_ERROR, "the exchange server failed while "
                                         "deciding; its log has the error (exchange_failed)"))
        finally:
            self.metrics.seconds.observe(time.perf_counter() - started)
        self.metrics.decisions.labels("granted", "").inc()
        log.info("exchange_decision", outcome="granted", reason="")
        return web.json_response(body, headers=_NO_STORE)

    def _check_skew(self, user_agent: str) -> None:
        """An agent further from this server than the skew rule allows still gets its
        answer; it is counted, and each such version said once in the log."""
        product, _, version = user_agent.partition(" ")[0].partition("/")
        version = version[:32]
        if product != contract.AGENT_PRODUCT:
            return
        problem = contract.skew_problem(__version__, version, we="this exchange server",
                                        they="an agent")
        if problem is None:
            return
        self.metrics.skewed.inc()
        if version not in self._skew_warned and len(self._skew_warned) < MAX_SKEW_WARNINGS:
            self._skew_warned.add(version)
            log.warning("agent_version_skew", agent_version=version, reason=problem)

    def _refused(self, refusal: Refusal) -> web.Response:
        self.metrics.decisions.labels("refused", refusal.code).inc()
        if refusal.check is not None:
            bind_contextvars(check=refusal.check)
        log.info("exchange_decision", outcome="refused", error=refusal.code,
                 reason=refusal.description)
        return web.json_response({"error": refusal.code, "error_description": refusal.description},
                                 status=refusal.status, headers=_NO_STORE)

    @staticmethod
    async def _form(request: web.Request) -> Form:
        if request.content_type != "application/x-www-form-urlencoded":
            raise Refusal(INVALID_REQUEST, "the body must be application/x-www-form-urlencoded "
                          "(RFC 6749 §3.2)")
        if (request.content_length or 0) > MAX_FORM_BYTES:
            raise _too_large()
        try:
            fields = await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise _too_large() from None
        except LookupError:  # charset=bogus
            raise Refusal(INVALID_REQUEST, "the body's charset is unknown; send UTF-8 "
                          "(RFC 6749 appendix B)") from None
        except ValueError:  # includes UnicodeDecodeError
            raise Refusal(INVALID_REQUEST, "the body is not a valid form") from None
        grouped: dict[str, list[str]] = {}
        for key, value in fields.items():
            if not isinstance(value, str):
                raise Refusal(INVALID_REQUEST, f"parameter {key} must be a plain form value")
            grouped.setdefault(key, []).append(value)
        return Form(grouped)

    def _metadata(self) -> dict[str, object]:
        return {
            "issuer": self.public_url,
            "token_endpoint": self.public_url + TOKEN_PATH,
            "jwks_uri": self.public_url + JWKS_PATH,
            "grant_types_supported": [contract.GRANT_TYPE_TOKEN_EXCHANGE],
            "token_endpoint_auth_methods_supported": ["none"],
            "response_types_supported": [],
            "scopes_supported": ["all"],
        }

    async def metadata(self, _: web.Request) -> web.Response:
        """RFC 8414 authorization server metadata."""
        return web.json_response(self._metadata())

    async def openid_configuration(self, _: web.Request) -> web.Response:
        """The same as an OpenID Connect discovery document, so that JWT-validating proxies
        (oauth2-proxy's --extra-jwt-issuers, Envoy's jwt_authn) can trust the tokens this
        server mints as an issuer's: they find the keys through `jwks_uri`. This server
        issues no ID tokens; the fields OIDC requires say what its access tokens are."""
        return web.json_response(self._metadata() | {
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })

    async def jwks(self, _: web.Request) -> web.Response:
        return web.json_response(self.minter.jwks())

    async def external_metadata(self, _: web.Request) -> web.Response:
        """External mode: the IdP's metadata for FlyteAdmin, `jwks_uri` ours."""
        assert self.external is not None
        return await self._external(self.external.document)

    async def external_jwks(self, _: web.Request) -> web.Response:
        """External mode: the IdP's keys and this server's, in one key set."""
        assert self.external is not None
        return await self._external(self.external.key_set)

    @staticmethod
    async def _external(read: Callable[[], Awaitable[dict[str, Any]]]) -> web.Response:
        try:
            return web.json_response(await read(), headers={"Cache-Control": "no-cache"})
        except Unavailable as exc:
            return web.json_response(
                {"error": TEMPORARILY_UNAVAILABLE, "error_description": (
                    f"{exc}: check that this exchange server reaches the IdP (its log has "
                    "idp_unreachable)")}, status=503, headers={"Retry-After": "5"})

    def not_ready(self) -> str | None:
        if self.keys is not None and not self.keys.ready:
            return "the service-account issuer's keys are not loaded yet"
        return None


def app(api: ExchangeAPI) -> web.Application:
    application = web.Application(client_max_size=MAX_FORM_BYTES)
    application.router.add_post(TOKEN_PATH, api.token)
    application.router.add_get("/.well-known/oauth-authorization-server", api.metadata)
    application.router.add_get("/.well-known/openid-configuration", api.openid_configuration)
    application.router.add_get(JWKS_PATH, api.jwks)
    if api.external is not None:
        for path in EXTERNAL_METADATA_PATHS:
            application.router.add_get(path, api.external_metadata)
        application.router.add_get(EXTERNAL_JWKS_PATH, api.external_jwks)
    application.add_routes(probe_routes(api.metrics.registry, not_ready=api.not_ready))
    return application
