"""Who may hold a connection to the agent's socket, and for how long.

aiohttp accepts every connection and waits for a request forever, so a few hundred idle
clients (or one buggy one) would use up the agent's file descriptors and starve every task
in the pod. Each accepted connection passes through `ConnectionGuard` first:

- at `max_connections` open ones, the one silent longest with no request in progress is
  closed to make room (idle keep-alive connections, or ones that never finished a request:
  whoever opens them, in whatever number, only ever pushes out each other); only when every
  open connection has a request in progress is the newest closed at once;
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

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
    """Wraps aiohttp's protocol factory: `loop.create_unix_server(guard.around(factory),
    sock=...)`, with `guard.middleware` in the application so that it knows which
    connections have a request in progress."""

    def __init__(self, limits: Limits,
                 on_refused: Callable[[str], None] = lambda _: None) -> None:
        self.limits = limits
        self._on_refused = on_refused
        self._log = RateLimitedLog()
        self._open: dict[asyncio.BaseTransport, _Guarded] = {}
        self.middleware = self._middleware()

    @property
    def open(self) -> int:
        return len(self._open)

    @property
    def busy(self) -> int:
        """Open connections with a request in progress."""
        return sum(1 for c in self._open.values() if c.busy)

    def around(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, inner)

    def _middleware(self) -> Middleware:
        @web.middleware
        async def busy_while_handled(
                request: web.Request,
                handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            """Marks the request's connection busy while its handler runs."""
            conn = self._open.get(request.transport) if request.transport else None
            if conn is None:
                return await handler(request)
            conn.busy += 1
            try:
                return await handler(request)
            finally:
                conn.busy -= 1
        return busy_while_handled

    def make_room(self) -> bool:
        """Close the connection silent longest with no request in progress; False if every
        open one has a request in progress."""
        idle = [c for c in self._open.values() if not c.busy]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.last)
        oldest.close()
        self._on_refused("evicted_idle")
        self._log.warning("connection_evicted", reason="too_many_connections",
                          limit=self.limits.max_connections,
                          silent_for=round(asyncio.get_running_loop().time() - oldest.last, 3))
        return True

    def admitted(self, transport: asyncio.BaseTransport, conn: _Guarded) -> None:
        self._open[transport] = conn

    def closed(self, transport: asyncio.BaseTransport) -> None:
        self._open.pop(transport, None)

    def refuse(self, transport: asyncio.BaseTransport, reason: str, **fields: Any) -> None:
        transport.close()  # nothing was read or written: closes at once
        self._on_refused(reason)
        self._log.warning("connection_refused", reason=reason, **fields)


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's handler once the connection is admitted."""

    def __init__(self, guard: ConnectionGuard, inner: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make_inner = inner
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.last = 0.0  # loop time of the last bytes received
        self.busy = 0  # requests in progress (ConnectionGuard.middleware)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard, limits = self._guard, self._guard.limits
        if guard.open >= limits.max_connections and not guard.make_room():
            guard.refuse(transport, "too_many_connections", limit=limits.max_connections)
            return
        if limits.allowed_uids is not None:
            peer = peer_of(transport.get_extra_info("socket"))
            if peer.uid not in limits.allowed_uids:
                guard.refuse(transport, "uid_not_allowed", peer_pid=peer.pid,
                             peer_uid=peer.uid)
                return
        assert isinstance(transport, asyncio.Transport)
        guard.admitted(transport, self)
        self._transport = transport
        self._inner = self._make_inner()
        self._inner.connection_made(transport)
        loop = asyncio.get_running_loop()
        self.last = loop.time()
        self._timer = loop.call_later(self._guard.limits.idle_timeout, self._idle)

    def _idle(self) -> None:
        """Close the connection if it sent nothing for idle_timeout; else look again when it
        would be (one timer a connection, not one a request: the hot path only notes the
        time)."""
        loop = asyncio.get_running_loop()
        due = self.last + self._guard.limits.idle_timeout
        if loop.time() < due:
            self._timer = loop.call_at(due, self._idle)
        elif self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self.last = asyncio.get_running_loop().time()
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
        if self._inner is not None and self._transport is not None:
            self._guard.closed(self._transport)
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
