"""A small async memo: concurrent callers for one key share one lookup (single flight);
successful results are reused for `ttl` seconds, unless `keep` says otherwise (e.g. an
object not found yet). Failures are never cached. At most `max_entries` results are kept;
past that, the least recently used goes."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")
MAX_ENTRIES = 10_000


class Memo(Generic[V]):
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic,
                 keep: Callable[[V], bool] = lambda _: True,
                 max_entries: int = MAX_ENTRIES) -> None:
        self._ttl = ttl
        self._keep = keep
        self._clock = clock
        self._max = max_entries
        self._done: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[V]] = {}
        self.hits = 0
        self.misses = 0

    async def get(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        now = self._clock()
        cached = self._done.get(key)
        if cached is not None and cached[0] > now:
            self.hits += 1
            self._done.move_to_end(key)
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
                self._done[key] = (self._clock() + self._ttl, value)
                self._done.move_to_end(key)
                while len(self._done) > self._max:
                    self._done.popitem(last=False)
            return value
        finally:
            del self._inflight[key]

    def __len__(self) -> int:
        return len(self._done)
