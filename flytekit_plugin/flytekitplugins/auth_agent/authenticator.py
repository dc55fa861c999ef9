"""A flytekit Authenticator that takes its token from the flyte-auth agent in the pod.

flytekit's AuthUnaryInterceptor asks `fetch_grpc_call_auth_metadata()` before every call and
`refresh_credentials()` after an UNAUTHENTICATED one. Here the first ask fetches a token (so
no call goes out unauthenticated); later asks cost a clock read and a tuple while the token
is fresh; the agent is asked again once three quarters of the token's remaining life has
passed (the agent refreshed it by then) or 60 s before expiry, whichever is first; a token
past its expiry is never sent. Threads share one token; one of them fetches, under a lock.
Only the standard library and flytekit are used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from flytekit.clients.auth.authenticator import Authenticator
from flytekit.clients.auth.exceptions import AuthenticationError
from flytekit.clients.auth.keyring import Credentials

from flyte_auth_common import __version__, contract
from flyte_auth_common.client import (
    AgentClient,
    AgentClientError,
    AgentRefusedError,
)
from flyte_auth_common.jwt import fingerprint

log = logging.getLogger("flytekitplugins.auth_agent")
#: Never send a token with less than this many seconds left.
SAFETY = 5.0
#: Ask the agent again at the latest this long before the held token expires.
MARGIN = 60.0


class AgentAuthError(AuthenticationError):  # type: ignore[misc]
    """The flyte-auth agent could not supply a usable token; the message says what to check."""


class _Held(NamedTuple):
    header_value: str  # "Bearer <token>"
    fingerprint: str
    expires_at: float
    check_at: float


_NOTHING = _Held("", "", 0.0, 0.0)


_told: set[str] = set()


def explain(exc: AgentClientError) -> AgentAuthError:
    """Our error, said once plainly on stderr before flytekit wraps it in its traceback."""
    if isinstance(exc, AgentRefusedError) and exc.status == 503:
        message = (f"flyte-auth: the agent has no valid token: {exc.description}. "
                   f"Check `flyte-auth-agent status` and the agent's log")
    else:
        message = f"flyte-auth: {exc}"
    if message not in _told:
        _told.add(message)
        log.error("%s", message)
    return AgentAuthError(message)


class AgentAuthenticator(Authenticator):  # type: ignore[misc]
    def __init__(self, endpoint: str, header_key: str, *, client: AgentClient | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(endpoint, header_key)
        self._client = client or AgentClient()
        self._clock = clock
        self._lock = threading.Lock()
        self._held = _NOTHING
        self._rejected: str | None = None  # fingerprint FlyteAdmin last refused
        #: The agent said it has no token, and why: flytekit's retries within the agent's
        #: Retry-After get the same answer at once instead of asking again.
        self._failed: tuple[AgentAuthError, float] | None = None
        self.fetches = 0

    @property
    def header_key(self) -> str:
        return str(self._header_key)

    def _fetch(self, *, unless_fresh: bool) -> _Held:
        with self._lock:
            held = self._held
            if unless_fresh and self._clock() < held.check_at:
                return held  # another thread fetched while we waited for the lock
            if self._failed is not None and self._clock() < self._failed[1]:
                raise self._failed[0]
            try:
                body = self._client.token()
            except AgentRefusedError as exc:
                error = explain(exc)
                if exc.status == 503:
                    self._failed = (error, self._clock() + (exc.retry_after or 1))
                raise error from None
            except AgentClientError as exc:
                raise explain(exc) from None
            self._failed = None
            self.fetches += 1
            now = self._clock()
            expires_in = float(body["expires_in"])
            token = body["access_token"]
            held = _Held(f"Bearer {token}", fingerprint(token), now + expires_in,
                         now + max(1.0, min(expires_in * 0.75, expires_in - MARGIN)))
            self._held = held
            self._creds = Credentials(access_token=token, for_endpoint=self._endpoint,
                                      expires_in=int(expires_in))
            return held

    def fetch_grpc_call_auth_metadata(self) -> tuple[str, str]:
        held = self._held  # one atomic read: a consistent snapshot
        now = self._clock()
        if now >= held.check_at:
            held = self._fetch(unless_fresh=True)
        if now >= held.expires_at - SAFETY:
            raise AgentAuthError(f"flyte-auth: the agent's token {held.fingerprint} has expired "
                                 "and the agent has no newer one; check `flyte-auth-agent "
                                 "status`")
        return self.header_key, held.header_value

    def refresh_credentials(self) -> None:
        """FlyteAdmin said UNAUTHENTICATED: ask the agent again. The same token refused twice
        is a configuration problem, reported as such."""
        rejected = self._held.fingerprint
        held = self._fetch(unless_fresh=False)
        if held.fingerprint != rejected:
            return
        if self._rejected == rejected:
            raise AgentAuthError(
                f"flyte-auth: FlyteAdmin rejected the agent's token {rejected} twice, sent as "
                f"'{self.header_key}: Bearer ...'. Check that FlyteAdmin trusts the exchange "
                f"server's signing key, that its authorizedUris include the token's audience, "
                f"and that the header matches its grpcAuthorizationHeader")
        self._rejected = rejected
        log.warning("flyte-auth: FlyteAdmin rejected token %s; retrying once", rejected)


_skew_warned: set[str] = set()


def warn_on_skew(agent_version: str) -> None:
    """Say once per agent version, as a warning, that this plugin and the pod's agent break
    the skew rule; the call goes on (the token may still work)."""
    problem = contract.skew_problem(__version__, agent_version, we="this task's plugin",
                                    they="the pod's flyte-auth agent")
    if problem and agent_version not in _skew_warned:
        _skew_warned.add(agent_version)
        log.warning(problem)


def from_platform_config(cfg: Any, cfg_store: Any = None) -> AgentAuthenticator:
    """The `flytekit.auth` entry point: (PlatformConfig, ClientConfigStore) -> Authenticator.

    The header key comes from the agent's /v1/config (the agent read it from FlyteAdmin's
    client config), which spares flytekit's two anonymous metadata calls."""
    client = AgentClient()
    try:
        config = client.config()
    except AgentClientError as exc:
        raise explain(exc) from None
    warn_on_skew(config.get("agent_version", ""))
    key = config["authorization_metadata_key"]
    return AgentAuthenticator(cfg.endpoint, key or contract.DEFAULT_AUTHORIZATION_METADATA_KEY,
                              client=client)
