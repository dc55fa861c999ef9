"""When to refresh, and how long to back off: pure functions of time and a random draw.

Anchors: SPIRE re-issues below half life, Azure refreshes 300 s before expiry with jitter,
Vault Agent backs off 1 s to 5 min. We refresh after half the lifetime plus up to 10 %
jitter (so a fleet started together spreads out), never later than 60 s before expiry.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RefreshPolicy:
    fraction: float = 0.5  # refresh after this share of the lifetime ...
    jitter: float = 0.1  # ... plus up to this share more, drawn at random
    margin: float = 60.0  # ... but at the latest this many seconds before expiry

    def refresh_at(self, issued_at: float, expires_at: float, draw: float) -> float:
        """The time to start the next exchange. `draw` is uniform in [0, 1)."""
        lifetime = expires_at - issued_at
        target = issued_at + lifetime * (self.fraction + self.jitter * draw)
        latest = expires_at - self.margin
        if latest <= issued_at + lifetime * self.fraction:
            # Too short-lived to keep the margin: refresh at half life, no later.
            return issued_at + lifetime * self.fraction
        return min(target, latest)


@dataclass
class Backoff:
    """Exponential backoff with full jitter (delay drawn in [0, min(cap, base * 2^n)])."""

    base: float = 1.0
    cap: float = 300.0
    floor: float = 0.05  # never spin: even a zero draw waits this long
    rand: Callable[[], float] = field(default=random.random)
    attempt: int = 0

    def next(self, *, retryable: bool = True) -> float:
        if not retryable:
            # Configuration or policy must change first: retry at the slowest pace.
            self.attempt += 1
            return self.cap * (0.5 + 0.5 * self.rand())
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return max(self.floor, ceiling * self.rand())

    def reset(self) -> None:
        self.attempt = 0
