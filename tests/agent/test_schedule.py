from __future__ import annotations

import itertools

import pytest

from flyte_auth_agent.schedule import Backoff, RefreshPolicy


@pytest.mark.parametrize(("lifetime", "draw", "expected_offset"), [
    pytest.param(3600, 0.0, 1800, id="1h-half-life"),
    pytest.param(3600, 0.999999, 2160, id="1h-max-jitter"),
    pytest.param(600, 0.0, 300, id="10min-half-life"),
    pytest.param(150, 0.999999, 90, id="150s-clamped-to-60s-before-expiry"),
    pytest.param(100, 0.5, 50, id="too-short-for-margin-half-life"),
    pytest.param(86400, 0.5, 47520, id="24h"),
])
def test_refresh_at(lifetime: int, draw: float, expected_offset: float) -> None:
    t0 = 1_000_000.0
    at = RefreshPolicy().refresh_at(t0, t0 + lifetime, draw)
    assert at - t0 == pytest.approx(expected_offset, abs=0.01)


@pytest.mark.parametrize("lifetime", [61, 120, 600, 3600, 86400])
def test_refresh_never_later_than_60s_before_expiry_when_possible(lifetime: int) -> None:
    policy = RefreshPolicy()
    for draw in (0.0, 0.5, 0.999):
        at = policy.refresh_at(0.0, lifetime, draw)
        assert at >= lifetime * 0.5
        assert at <= max(lifetime - 60, lifetime * 0.5)


def test_backoff_full_jitter_grows_to_the_cap() -> None:
    draws = itertools.cycle([0.999999])
    b = Backoff(base=1.0, cap=300.0, rand=lambda: next(draws))
    delays = [b.next() for _ in range(12)]
    assert delays[:5] == pytest.approx([1, 2, 4, 8, 16], rel=1e-3)
    assert max(delays) == pytest.approx(300, rel=1e-3)
    b.reset()
    assert b.next() == pytest.approx(1, rel=1e-3)


def test_backoff_full_jitter_draws_from_zero_but_never_spins() -> None:
    b = Backoff(rand=lambda: 0.0)
    assert [b.next() for _ in range(3)] == [0.05, 0.05, 0.05]


def test_non_retryable_errors_wait_the_slowest_pace() -> None:
    b = Backoff(cap=300.0, rand=lambda: 0.0)
    assert b.next(retryable=False) == 150.0
