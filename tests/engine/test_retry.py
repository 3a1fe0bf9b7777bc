"""Retry timing on a fake clock: backoff growth, jitter bounds, Retry-After, caps, quota probes."""

from __future__ import annotations

import asyncio
import random

import pytest

from batchrun.engine.pacing import Pacer
from batchrun.engine.retry import QUOTA_MAX_PROBE_S, QuotaGate, RetryPolicy
from batchrun.protocol.ratelimit import parse_duration

from .test_limits import FakeClock


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=8.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        draws = [policy.delay(attempt, None, rng) for _ in range(2000)]
        assert min(draws) >= 0.0 and max(draws) <= ceiling
        assert max(draws) > 0.9 * ceiling  # the whole range is used: full jitter
        assert min(draws) < 0.1 * ceiling
        assert sum(draws) / len(draws) == pytest.approx(ceiling / 2, rel=0.1)


def test_retry_after_is_a_floor_never_shortened() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=8.0)
    rng = random.Random(2)
    assert all(policy.delay(1, 3.0, rng) == 3.0 for _ in range(100))
    assert all(3.0 <= policy.delay(4, 3.0, rng) <= 4.0 for _ in range(100))


def test_quota_probes_wait_longer_each_time_and_give_up_at_the_deadline() -> None:
    clock = FakeClock()
    gate = QuotaGate(600, clock, clock.sleep)
    prober, other = object(), object()

    async def go() -> list[float]:
        waits = []
        start = clock.now
        while True:
            before = clock.now
            if not await gate.exhausted(prober):
                break
            waits.append(clock.now - before)
            assert not gate.probing(other)
        assert clock.now - start == pytest.approx(600)
        return waits

    waits = asyncio.run(go())
    assert waits[:5] == [5.0, 10.0, 20.0, 40.0, QUOTA_MAX_PROBE_S]
    assert len(waits) < 16  # a handful of probes in ten minutes, not a storm


def test_other_rows_wait_at_the_gate_until_the_probe_passes() -> None:
    clock = FakeClock()
    gate = QuotaGate(60, clock, clock.sleep)
    prober, other = object(), object()

    async def go() -> None:
        assert await gate.exhausted(prober)  # the prober waited its first interval
        assert await gate.exhausted(other)  # told to go back to the gate ...
        assert not gate.is_open and not gate.probing(other)  # ... which is shut
        gate.passed(other)  # another row's answer opens nothing
        assert not gate.is_open
        gate.passed(prober)
        assert gate.is_open and not gate.probing(prober)

    asyncio.run(go())


def test_handed_off_probes_go_with_any_row_when_due_one_at_a_time() -> None:
    """An endpoint among several: a quota answer never sleeps; the next probe is due after
    the same growing waits, any one row claims it, and the deadline still ends the wait."""
    clock = FakeClock()
    gate = QuotaGate(60, clock, clock.sleep, hand_off=True)
    first, echo, later, other = object(), object(), object(), object()

    async def go() -> None:
        start = clock.now
        assert await gate.exhausted(first) and clock.now == start  # no wait: elsewhere
        assert not gate.is_open and gate.probe_at == start + 5.0
        assert await gate.exhausted(echo)  # an answer to a request sent before the pause
        assert gate.probe_at == start + 5.0  # changes nothing
        assert not gate.claim(later, start + 4.9)  # not due yet
        assert gate.claim(later, start + 5.0) and gate.probing(later)
        assert not gate.claim(other, start + 5.0) and gate.probe_at is None  # one at a time
        clock.now = start + 5.0
        assert await gate.exhausted(later)  # still gone: the next probe 10 s on
        assert gate.probe_at == start + 15.0 and not gate.probing(later)
        clock.now = start + 15.0
        assert gate.claim(other, clock.now)
        gate.passed(other)  # back
        assert gate.is_open and gate.probe_at is None
        # Gone again, and never back: after 60 s the probe's quota answer ends the wait.
        assert await gate.exhausted(first)
        while True:
            due = gate.probe_at
            assert due is not None
            clock.now = due
            assert gate.claim(later, due)
            if not await gate.exhausted(later):
                break
        assert clock.now == pytest.approx(start + 15.0 + 60.0)

    asyncio.run(go())


def test_short_quota_waits_probe_proportionally() -> None:
    clock = FakeClock()
    gate = QuotaGate(2.0, clock, clock.sleep)
    row = object()

    async def go() -> int:
        probes = 0
        while await gate.exhausted(row):
            probes += 1
        return probes

    assert asyncio.run(go()) <= 5  # 0.2, 0.4, 0.8, then what is left


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("7", 7.0),
        ("0.5", 0.5),
        ("soon", None),
        ("", None),
        (None, None),
        ("5x", None),
    ],
)
def test_reset_durations(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_ratelimit_headers_hold_starts_until_the_reset() -> None:
    """Every start, recorded on the fake clock: none before the reset the headers name, the
    first one right at it, whether the request budget or the token budget ran low."""
    clock = FakeClock()
    pacer = Pacer(60_000, tokens_per_minute=10_000_000, clock=clock, sleep=clock.sleep)
    starts: list[float] = []

    async def start(n: int = 1) -> list[float]:
        """n concurrent starts; their times."""
        before = len(starts)

        async def one() -> None:
            await pacer.acquire(10)
            starts.append(clock.now)

        await asyncio.gather(*(one() for _ in range(n)))
        return starts[before:]

    async def go() -> None:
        await start()
        # 100 requests left with 4 in flight: no hold (the pace alone: 1,000 a second).
        told = clock.now
        pacer.follow_headers(
            {"x-ratelimit-remaining-requests": "100", "x-ratelimit-reset-requests": "9s"}, 4, 40
        )
        assert max(await start(3)) < told + 0.01
        # 3 left with 4 in flight: no start until the window resets in 2 s; plenty of tokens
        # left, so their reset (a minute) holds nothing.
        told = clock.now
        pacer.follow_headers(
            {
                "x-ratelimit-remaining-requests": "3",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "999999",
                "x-ratelimit-reset-tokens": "1m0s",
            },
            4,
            40,
        )
        held = await start(5)
        assert min(held) >= told + 2.0  # none before the reset ...
        assert held[0] == pytest.approx(told + 2.0, abs=0.001)  # ... the first at it
        assert max(held) < told + 2.01  # ... and the others at the pace after it
        # 30 tokens left with 40 in flight: held until the tokens' reset, 0.5 s.
        told = clock.now
        pacer.follow_headers(
            {"x-ratelimit-remaining-tokens": "30", "x-ratelimit-reset-tokens": "500ms"}, 2, 40
        )
        held = await start(2)
        assert min(held) >= told + 0.5
        assert held[0] == pytest.approx(told + 0.5, abs=0.001)

    asyncio.run(go())
    assert starts == sorted(starts) and len(starts) == 1 + 3 + 5 + 2
