"""The token source: one background task keeps a token fresh; readers take a snapshot.

Only `run()` ever calls the upstream, so there is exactly one exchange in flight however
many clients ask (single flight by construction). Readers never wait on the upstream
unless no valid token exists yet, and then only for a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog

from flyte_auth_agent.errors import AgentError
from flyte_auth_agent.schedule import Backoff, RefreshPolicy
from flyte_auth_agent.tokens import AccessToken
from flyte_auth_common.contract import rfc3339

log = structlog.get_logger("flyte_auth_agent")

#: A token is served only while it has at least this many seconds left.
MIN_REMAINING = 5.0


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (token expiries are wall-clock)."""

    async def sleep_until(self, when: float) -> None:
        """Return once `now() >= when`."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - time.time()))


@dataclass(frozen=True)
class Failure:
    message: str
    kind: str
    retryable: bool
    at: float


class Observer(Protocol):
    """Receives the outcome of each exchange (metrics)."""

    def exchanged(self, outcome: str, seconds: float, token: AccessToken | None) -> None: ...


U = TypeVar("U")


class TokenSource(Generic[U]):
    """Keeps a token fresh from an upstream `U`: `resolve()` finds the upstream once (the first
    attempt, unless it is given), then `fetch(upstream)` exchanges on every attempt."""

    def __init__(
        self,
        fetch: Callable[[U], Awaitable[AccessToken]],
        resolve: Callable[[], Awaitable[U]],
        *,
        upstream: U | None = None,
        clock: Clock | None = None,
        policy: RefreshPolicy | None = None,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
        observer: Observer | None = None,
    ) -> None:
        self._fetch = fetch
        self._resolve = resolve
        #: Where tokens come from: an immutable snapshot, None until first resolved.
        self.upstream = upstream
        self._resolved = asyncio.Event()
        if upstream is not None:
            self._resolved.set()
        self.clock: Clock = clock or SystemClock()
        self._policy = policy or RefreshPolicy()
        self._backoff = backoff or Backoff(rand=rand)
        self._rand = rand
        self._observer = observer
        self._token: AccessToken | None = None
        self._arrived = asyncio.Event()
        self.last_refresh: float | None = None
        self.last_error: Failure | None = None
        self.next_attempt_at: float | None = None
        self.consecutive_failures = 0
        self.attempts = 0
        self._refresher: asyncio.Task[None] | None = None

    # --- readers -----------------------------------------------------------------------------

    def token(self) -> AccessToken | None:
        """The held token if it still has MIN_REMAINING seconds to live, else None."""
        tok = self._token
        if tok is not None and tok.expires_at - self.clock.now() >= MIN_REMAINING:
            return tok
        return None

    async def wait(self, timeout: float) -> AccessToken | None:
        """A valid token, waiting up to `timeout` seconds for one to arrive."""
        try:
            async with asyncio.timeout(timeout):
                while (tok := self.token()) is None:
                    await self._arrived.wait()
        except TimeoutError:
            return None
        return tok

    async def wait_upstream(self, timeout: float) -> U | None:
        """The upstream, waiting up to `timeout` seconds for the first attempt to resolve it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._resolved.wait()
        return self.upstream

    def no_token_reason(self) -> str | None:
        """Why the agent holds no valid token (the one wording its 503s, /v1/status, its
        termination message, the CLI and the plugin give); None if it holds one."""
        if self.token() is not None:
            return None
        err = self.last_error
        return err.message if err else "the first token exchange has not finished yet"

    def stopped_without_token(self) -> str | None:
        """Why the agent holds no valid token, for its termination message; None if it does."""
        reason = self.no_token_reason()
        return None if reason is None else f"the agent stopped without a valid token: {reason}"

    def failing(self) -> bool:
        """No valid token, and the last exchange failed (the first one, or a refresh after
        the token expired): a reader waiting for the next attempt, seconds away with back-off,
        would only wait, so it is answered at once with the reason."""
        return self.token() is None and self.last_error is not None

    def retry_after(self) -> int:
        """Whole seconds until the next exchange attempt (at least 1)."""
        if self.next_attempt_at is None:
            return 1
        return max(1, int(self.next_attempt_at - self.clock.now() + 0.999))

    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        tok = self.token()
        held = self._token
        state = "valid" if tok else ("expired" if held else "pending")
        err = self.last_error
        return {
            "state": state,
            "reason": self.no_token_reason(),
            "token": None if held is None else {
                "expires_at": rfc3339(held.expires_at),
                "expires_in": max(0, int(held.expires_at - now)),
                "issued_at": rfc3339(held.issued_at),
                "scope": held.scope,
                "fingerprint": held.fingerprint,
                "subject": held.subject,
            },
            "last_refresh": None if self.last_refresh is None else rfc3339(self.last_refresh),
            "next_attempt_at": None if self.next_attempt_at is None
            else rfc3339(self.next_attempt_at),
            "consecutive_failures": self.consecutive_failures,
            "attempts": self.attempts,
            "last_error": None if err is None else {
                "message": err.message,
                "kind": err.kind,
                "retryable": err.retryable,
                "at": rfc3339(err.at),
            },
        }

    # --- the refresher -----------------------------------------------------------------------

    def start(self) -> None:
        """Run the refresher as a task of the current loop, until stop()."""
        self._refresher = asyncio.create_task(self.run(), name="token-refresher")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    @property
    def alive(self) -> bool:
        """The refresher is running (False before start() and once it ended)."""
        return self._refresher is not None and not self._refresher.done()

    async def run(self) -> None:
        """Exchange, then sleep until the next refresh or retry; forever (cancel to stop)."""
        while True:
            try:
                self.next_attempt_at = await self._attempt()
            except Exception as exc:
                # Keep serving the held token; try again after a back-off. The type is
                # logged, not the text, which may hold data.
                delay = self._backoff.next(retryable=True)
                log.error("token_refresher_error", error_type=type(exc).__name__,
                          retry_in=round(delay, 3))
                self.next_attempt_at = self.clock.now() + delay
            await self.clock.sleep_until(self.next_attempt_at)

    async def _attempt(self) -> float:
        started = self.clock.now()
        t0 = time.perf_counter()
        self.attempts += 1
        try:
            if self.upstream is None:
                self.upstream = await self._resolve()
                self._resolved.set()
            tok = await self._fetch(self.upstream)
        except AgentError as exc:
            return self._failed(exc, started, time.perf_counter() - t0)
        except Exception as exc:  # a bug must not stop the refresher; its text may hold data
            log.error("token_refresh_crashed", error_type=type(exc).__name__)
            failure = AgentError(f"internal error {type(exc).__name__} during the exchange; "
                                 "see the agent log")
            failure.kind = "internal"
            return self._failed(failure, started, time.perf_counter() - t0)
        self._token = tok
        self.last_refresh = tok.issued_at
        self.last_error = None
        self.consecutive_failures = 0
        self._backoff.reset()
        self._arrived.set()
        self._arrived = asyncio.Event()
        if self._observer:
            self._observer.exchanged("success", time.perf_counter() - t0, tok)
        refresh_at = self._policy.refresh_at(tok.issued_at, tok.expires_at, self._rand())
        log.info("token_refreshed", fingerprint=tok.fingerprint,
                 expires_at=rfc3339(tok.expires_at), next_refresh_at=rfc3339(refresh_at))
        return refresh_at

    def _failed(self, exc: AgentError, started: float, seconds: float) -> float:
        self.consecutive_failures += 1
        self.last_error = Failure(str(exc), exc.kind, exc.retryable, started)
        if self._observer:
            self._observer.exchanged(exc.kind, seconds, None)
        delay = self._backoff.next(retryable=exc.retryable)
        if exc.retry_after is not None:
            # The upstream shed the request (503 + Retry-After): wait that long, and the
            # jittered backoff on top, so a burst of agents does not come back in step.
            delay += exc.retry_after
        tok = self.token()
        if tok is not None:
            # Still holding a valid token: retry at least twice more before it expires.
            delay = min(delay, max(self._backoff.base, (tok.expires_at - started) / 3))
        log.warning("token_refresh_failed", error=str(exc), kind=exc.kind,
                    retryable=exc.retryable, attempt=self.consecutive_failures,
                    retry_in=round(delay, 3), holding_valid_token=tok is not None)
        return started + delay
