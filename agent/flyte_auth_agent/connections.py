"""Who may hold a connection to the agent's socket, and for how long.

aiohttp accepts every connection and waits for a request forever, so a few hundred idle
clients (or one buggy one) would use up the agent's file descriptors and starve every task
in the pod. Each accepted connection passes through `ConnectionGuard` first:

- over `max_connections` open ones, the newest is closed at once (no handler, no parsing);
- with an allowlist of uids, a peer outside it is closed at accept (SO_PEERCRED), before it
  can send anything;
- a connection that sends nothing for `idle_timeout` seconds is closed.

Refusals are counted in a metric and logged at most once per LOG_EVERY seconds per reason,
with the count since the last line. asyncio's own "accept() out of system resource" report
gets the same treatment (`quiet_accept_errors`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from flyte_auth_agent.peercred import peer_of

log = structlog.get_logger("flyte_auth_agent")
LOG_EVERY = 10.0


@dataclass(frozen=True)
class Limits:
    max_connections: int
    idle_timeout: float
    allowed_uids: frozenset[int] | None


class RateLimitedLog:
    """One log line per event name every LOG_EVERY seconds, counting the ones in between."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, event: str, **fields: Any) -> None:
        now = self._clock()
        last = self._last.get(event)
        if last is not None and now - last < LOG_EVERY:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._last[event] = now
        log.warning(event, suppressed_since_last=self._suppressed.pop(event, 0), **fields)


class ConnectionGuard:
    """A protocol factory around aiohttp's: `loop.create_unix_server(guard, sock=...)`."""

    def __init__(self, inner: Callable[[], asyncio.Protocol], limits: Limits,
                 on_refused: Callable[[str], None] = lambda _: None) -> None:
        self._inner = inner
        self.limits = limits
        self._on_refused = on_refused
        self._log = RateLimitedLog()
        self.open = 0

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self)

    def refuse(self, transport: asyncio.BaseTransport, reason: str, **fields: Any) -> None:
        transport.close()  # nothing was read or written: closes at once
        self._on_refused(reason)
        self._log.warning("connection_refused", reason=reason, **fields)


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's handler once the connection is admitted."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0  # loop time of the last bytes received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard, limits = self._guard, self._guard.limits
        if guard.open >= limits.max_connections:
            guard.refuse(transport, "too_many_connections", limit=limits.max_connections)
            return
        if limits.allowed_uids is not None:
            peer = peer_of(transport.get_extra_info("socket"))
            if peer.uid not in limits.allowed_uids:
                guard.refuse(transport, "uid_not_allowed", peer_pid=peer.pid,
                             peer_uid=peer.uid)
                return
        assert isinstance(transport, asyncio.Transport)
        guard.open += 1
        self._transport = transport
        self._inner = guard._inner()
        self._inner.connection_made(transport)
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_later(self._guard.limits.idle_timeout, self._idle)

    def _idle(self) -> None:
        """Close the connection if it sent nothing for idle_timeout; else look again when it
        would be (one timer a connection, not one a request: the hot path only notes the
        time)."""
        loop = asyncio.get_running_loop()
        due = self._last + self._guard.limits.idle_timeout
        if loop.time() < due:
            self._timer = loop.call_at(due, self._idle)
        elif self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._last = asyncio.get_running_loop().time()
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._inner is not None:
            self._guard.open -= 1
            inner, self._inner, self._transport = self._inner, None, None
            inner.connection_lost(exc)


_EXHAUSTED = "socket.accept() out of system resource"


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """asyncio reports each failed accept() with a traceback (many per second when file
    descriptors run out); make that one rate-limited line, leave every other report as is.
    Returns the call that puts the loop's previous handler back."""
    limited = RateLimitedLog()
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _EXHAUSTED:
            exc = context.get("exception")
            limited.warning("accept_out_of_resources", error=getattr(exc, "strerror", None)
                            or type(exc).__name__)
        elif default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(default)
