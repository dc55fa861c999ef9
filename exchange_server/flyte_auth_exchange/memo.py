"""A small async memo: concurrent callers for one key share one lookup (single flight);
successful results are reused for `ttl` seconds, unless `keep` says otherwise (e.g. an
object not found yet). Failures are never cached."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")
MAX_ENTRIES = 10_000


class Memo(Generic[V]):
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic,
                 keep: Callable[[V], bool] = lambda _: True) -> None:
        self._ttl = ttl
        self._keep = keep
        self._clock = clock
        self._done: dict[Hashable, tuple[float, V]] = {}
        self._inflight: dict[Hashable, asyncio.Future[V]] = {}
        self.hits = 0
        self.misses = 0

    async def get(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        now = self._clock()
        cached = self._done.get(key)
        if cached is not None and cached[0] > now:
            self.hits += 1
            return cached[1]
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(value)
            if self._ttl > 0 and self._keep(value):
                if len(self._done) >= MAX_ENTRIES:
                    self._done.clear()
                self._done[key] = (self._clock() + self._ttl, value)
            return value
        finally:
            del self._inflight[key]
