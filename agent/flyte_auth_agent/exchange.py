"""One exchange: read the service-account token, POST it to the token endpoint, parse.

`build_form` is pure (RFC 8693 token exchange, or RFC 7523 client assertion);
`Exchanger.fetch` does the I/O and translates every transport failure into an AgentError.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import structlog

from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.discovery import AdminAuthInfo, discover
from flyte_auth_agent.errors import AgentError, DiscoveryError, UpstreamError
from flyte_auth_agent.source import Clock
from flyte_auth_agent.tokens import AccessToken, parse_token_response, read_subject_token
from flyte_auth_common import contract
from flyte_auth_common.agent_options import GRANT_CLIENT_ASSERTION
from flyte_auth_common.jwt import redact

log = structlog.get_logger("flyte_auth_agent")

#: The longest Retry-After obeyed: an upstream cannot park an agent for longer.
MAX_RETRY_AFTER = 300
_MAX_BODY = 256 * 1024


@dataclass(frozen=True)
class Request:
    """What to ask for, once config and discovery are merged."""

    grant: str
    subject_token_type: str
    audience: str | None
    scope: str | None
    resource: str | None
    client_id: str | None
    public_client: bool  # client_id goes in the form (RFC 6749 §3.2.1), no secret


def build_form(req: Request, subject_token: str) -> dict[str, str]:
    if req.grant == GRANT_CLIENT_ASSERTION:
        form = {
            "grant_type": contract.GRANT_TYPE_CLIENT_CREDENTIALS,
            "client_assertion_type": contract.CLIENT_ASSERTION_TYPE_JWT_BEARER,
            "client_assertion": subject_token,
        }
    else:
        form = {
            "grant_type": contract.GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": req.subject_token_type,
            "requested_token_type": contract.TOKEN_TYPE_ACCESS_TOKEN,
        }
    optional = {"audience": req.audience, "scope": req.scope, "resource": req.resource}
    if req.public_client or req.grant == GRANT_CLIENT_ASSERTION:
        optional["client_id"] = req.client_id
    form.update({k: v for k, v in optional.items() if v})
    return form


def basic_auth(client_id: str, secret: str) -> str:
    """client_secret_basic: both parts form-urlencoded first (RFC 6749 §2.3.1)."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def read_client_secret(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AgentError(f"client secret file {path} cannot be read ({type(exc).__name__}); "
                         "check --client-secret-file and the secret's volume mount") from None
    if not secret:
        raise AgentError(f"client secret file {path} is empty; check --client-secret-file")
    return secret


@dataclass(frozen=True)
class Upstream:
    """Where and how the agent exchanges: its config merged with what FlyteAdmin advertises.
    Fixed once known; the token source holds it, the handlers read it."""

    token_endpoint: str
    authorization_metadata_key: str
    request: Request
    discovered_from: str | None  # "grpc" or "http"; None when the config alone decided


def merge_upstream(c: AgentConfig, info: AdminAuthInfo | None) -> Upstream:
    """The config wins; FlyteAdmin's metadata (`info`) fills what it leaves unset."""
    endpoint = c.token_endpoint or (info.token_endpoint if info else None)
    if endpoint is None:
        raise DiscoveryError("FlyteAdmin's OAuth2 metadata names no token_endpoint; "
                             "set --token-endpoint")
    scope = c.scope or (" ".join(info.scopes) if info and info.scopes else None)
    request = Request(
        grant=c.grant,
        subject_token_type=c.subject_token_type,
        audience=c.audience or (info.audience if info else None),
        scope=scope,
        resource=c.resource,
        client_id=c.client_id,
        public_client=c.client_id is not None and c.client_secret_file is None,
    )
    key = (c.authorization_metadata_key or (info.authorization_metadata_key if info else None)
           or contract.DEFAULT_AUTHORIZATION_METADATA_KEY)
    return Upstream(endpoint, key, request, info.source if info else None)


def retry_after_seconds(header: str) -> float | None:
    """A Retry-After header's delay in seconds (RFC 9110 §10.2.3), at most MAX_RETRY_AFTER;
    None if absent or given as a date (the backoff decides then)."""
    value = header.strip()
    return float(min(int(value), MAX_RETRY_AFTER)) \
        if value.isascii() and value.isdigit() else None


class Exchanger:
    """The I/O of a TokenSource: asks FlyteAdmin where to exchange, and exchanges."""

    def __init__(
        self,
        config: AgentConfig,
        session: aiohttp.ClientSession,
        clock: Clock,
        *,
        ssl_ctx: ssl.SSLContext | bool = True,
        ca_pem: bytes | None = None,
    ) -> None:
        self._config = config
        self._session = session
        self._clock = clock
        self._ssl = ssl_ctx
        #: Requests actually sent to the token endpoint (an attempt that fails before, on a
        #: missing token file say, sends none).
        self.token_endpoint_calls = 0
        self._ca_pem = ca_pem

    def configured_upstream(self) -> Upstream | None:
        """The upstream when the config alone decides it: no FlyteAdmin to ask, or the token
        endpoint and the header key both given (such an agent never loads grpc: 12.6 MiB
        less in every task pod). None when FlyteAdmin must be asked first."""
        c = self._config
        if c.admin is None or (c.token_endpoint is not None
                               and c.authorization_metadata_key is not None):
            return merge_upstream(c, None)
        return None

    async def resolve(self) -> Upstream:
        """Ask FlyteAdmin. Without an explicit endpoint a failure is an error (retried); with
        one, discovery only supplies defaults, so a failure is logged and the config decides."""
        admin = self._config.admin
        assert admin is not None  # configured_upstream() covers an agent without one
        try:
            info = await discover(admin, session=self._session, ssl_ctx=self._ssl,
                                  ca_pem=self._ca_pem, timeout=self._config.exchange_timeout)
        except DiscoveryError as exc:
            if self._config.token_endpoint is None:
                raise
            log.warning("discovery_skipped", error=str(exc))
            return merge_upstream(self._config, None)
        log.info("discovered", source=info.source, token_endpoint=info.token_endpoint,
                 authorization_metadata_key=info.authorization_metadata_key,
                 audience=info.audience, scopes=list(info.scopes))
        return merge_upstream(self._config, info)

    async def fetch(self, upstream: Upstream) -> AccessToken:
        """One exchange; an UpstreamError carries the endpoint's Retry-After, if any."""
        endpoint = upstream.token_endpoint
        subject = read_subject_token(self._config.token_file)
        headers = {"Accept": "application/json"}
        secrets = [subject]
        if self._config.client_secret_file is not None and self._config.client_id is not None:
            secret = read_client_secret(self._config.client_secret_file)
            secrets.append(secret)
            headers["Authorization"] = basic_auth(self._config.client_id, secret)
        form = build_form(upstream.request, subject)
        timeout = aiohttp.ClientTimeout(total=self._config.exchange_timeout)
        self.token_endpoint_calls += 1  # a request leaves for the token endpoint
        try:
            async with self._session.post(endpoint, data=form, headers=headers, ssl=self._ssl,
                                          timeout=timeout, allow_redirects=False) as resp:
                body = await resp.content.read(_MAX_BODY)
                status, ctype = resp.status, resp.headers.get("Content-Type", "")
                retry_after = resp.headers.get("Retry-After", "")
        except TimeoutError:
            raise UpstreamError(f"token endpoint {endpoint} did not answer within "
                                f"{self._config.exchange_timeout:g} s (--exchange-timeout)",
                                kind="timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"token endpoint {endpoint} unreachable: {type(exc).__name__} "
                                f"{redact(str(exc), *secrets)}".rstrip(),
                                kind="unreachable") from None
        try:
            return parse_token_response(status, ctype, body, now=self._clock.now(),
                                        secrets=tuple(secrets))
        except UpstreamError as exc:
            exc.retry_after = retry_after_seconds(retry_after)
            raise
