"""A clock tests move by hand: sleepers wake only when `advance()` passes their deadline."""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._new_sleeper = asyncio.Event()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((when, fut))
        self._new_sleeper.set()
        await fut

    async def next_sleep(self) -> float:
        """Wait until something sleeps on this clock; return the earliest deadline."""
        while not self._sleepers:
            self._new_sleeper.clear()
            await self._new_sleeper.wait()
        return min(when for when, _ in self._sleepers)

    def advance(self, to: float) -> None:
        """Move time forward to `to`, waking every sleeper whose deadline has come."""
        assert to >= self._now, "time only moves forward"
        self._now = to
        due = [(w, f) for w, f in self._sleepers if w <= to]
        self._sleepers = [(w, f) for w, f in self._sleepers if w > to]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)

    async def run_next(self) -> float:
        """Jump to the earliest sleeper's deadline and wait until the woken code sleeps
        again (for the refresher: one attempt done). Returns the new earliest deadline."""
        self.advance(await self.next_sleep())
        return await self.next_sleep()

    async def run_until(self, when: float) -> None:
        """Let every sleeper due before `when` run (each wakes, works, sleeps again), then
        stand at `when`."""
        while (deadline := await self.next_sleep()) < when:
            self.advance(deadline)
        self.advance(max(self._now, when))
