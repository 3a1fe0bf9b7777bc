"""The pacer on a fake clock: even pacing, token metering, FIFO, cool-downs."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from batchrun.engine.pacing import Pacer


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def start_times(pacer: Pacer, clock: FakeClock, costs: list[int]) -> list[float]:
    async def go() -> list[float]:
        times: list[float] = []

        async def one(cost: int) -> None:
            await pacer.acquire(cost)
            times.append(clock.now)

        await asyncio.gather(*(one(c) for c in costs))
        return times

    return asyncio.run(go())


def per_second(times: list[float]) -> Counter[int]:
    return Counter(int(t) for t in times)


def test_600_rpm_never_puts_more_than_a_second_share_in_any_second() -> None:
    clock = FakeClock()
    pacer = Pacer(600, clock=clock, sleep=clock.sleep)
    times = start_times(pacer, clock, [0] * 300)
    assert max(per_second(times).values()) <= 11
    # Evenly: 300 starts at 10 a second take about 30 s, not fewer (no initial burst).
    assert 29.0 <= times[-1] - times[0] <= 30.5
    # and every 1-second sliding window holds at most 11 starts
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 1.0) <= 11


def test_high_rates_allow_a_tenth_of_a_second_share_of_catch_up() -> None:
    clock = FakeClock()
    pacer = Pacer(30_000, clock=clock, sleep=clock.sleep)  # 500 a second
    times = start_times(pacer, clock, [0] * 5000)
    busiest = max(per_second(times).values())
    assert busiest <= 1.1 * 500 + 1
    assert 9.5 <= times[-1] - times[0] <= 10.1


def test_tokens_per_minute_paces_by_estimated_tokens() -> None:
    clock = FakeClock()
    pacer = Pacer(60_000, tokens_per_minute=6000, clock=clock, sleep=clock.sleep)  # 100 tok/s
    times = start_times(pacer, clock, [50] * 41)
    # 2 requests a second by tokens, although 1,000 a second are allowed by count
    assert 19.5 <= times[-1] - times[0] <= 20.5


def test_a_request_larger_than_a_second_of_tokens_waits_instead_of_raising() -> None:
    clock = FakeClock()
    pacer = Pacer(600, tokens_per_minute=600, clock=clock, sleep=clock.sleep)  # 10 tok/s
    times = start_times(pacer, clock, [100, 100])
    assert times[1] - times[0] == pytest.approx(10.0, abs=0.2)


def test_starts_are_first_come_first_served_whatever_their_size() -> None:
    clock = FakeClock()
    pacer = Pacer(60_000, tokens_per_minute=600, clock=clock, sleep=clock.sleep)

    async def go() -> list[str]:
        order: list[str] = []

        async def one(name: str, cost: int) -> None:
            await pacer.acquire(cost)
            order.append(name)

        tasks = [asyncio.create_task(one("first", 5))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(one("big", 200)))
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(one(f"small{i}", 1)) for i in range(5)]
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(go())
    assert order[:2] == ["first", "big"]


def test_reconcile_gives_back_an_overestimate() -> None:
    clock = FakeClock()
    pacer = Pacer(60_000, tokens_per_minute=600, clock=clock, sleep=clock.sleep)  # 10 tok/s

    async def go() -> float:
        await pacer.acquire(100)  # estimated 100 tokens: the next waits 10 s ...
        pacer.reconcile(100, 10)  # ... but only 10 were used: the next waits 1 s
        start = clock.now
        await pacer.acquire(10)
        return clock.now - start

    assert asyncio.run(go()) <= 1.1


def test_cool_down_pauses_everyone_once_and_lowers_the_pace() -> None:
    clock = FakeClock()
    pacer = Pacer(600, clock=clock, sleep=clock.sleep)

    async def go() -> float:
        await pacer.acquire()
        pacer.cool_down(5.0)
        pacer.cool_down(5.0)  # a second 429 of the same storm does not halve again
        start = clock.now
        await pacer.acquire()
        assert pacer.factor == 0.5  # nothing got through: halved, once the pause is over
        return clock.now - start

    assert asyncio.run(go()) == pytest.approx(5.0, abs=0.01)
    for _ in range(100):
        pacer.recover()
    assert pacer.factor == 0.5  # successes alone do not raise it: quiet time does
    clock.now += 10 * 60
    pacer.recover()
    assert pacer.factor == pytest.approx(0.5 * (1 + 0.02 * 10 / 0.95))


def test_a_429_sets_the_pace_to_what_got_through_and_its_echoes_do_not_count() -> None:
    """A fixed window of 100 requests every 10 s, hit at 6,000 a minute (100 a second):
    the 100 went in the first second, the 429 says the window resets in 9 s, so 100 got
    through in 10 s, the last 10 of them answered after the 429. The pace goes to 0.95 of
    10 a second (halfway there at once: one storm at most halves the pace), and 429s of
    requests sent before that (in flight when it came) change nothing."""
    clock = FakeClock()
    pacer = Pacer(6000, clock=clock, sleep=clock.sleep)

    async def go() -> None:
        start = clock.now
        sent = []
        for _ in range(100):
            await pacer.acquire()
            sent.append(clock.now)
        for at in sent[:90]:
            pacer.recover(at)
        await pacer.acquire()
        clock.now = start + 1.0
        pacer.cool_down(9.0, clock.now - 0.01)
        pacer.cool_down(8.99, clock.now - 0.01)  # the echo: sent before the storm
        for at in sent[90:]:  # answers that were in flight when the storm came
            pacer.recover(at)
        await pacer.acquire()  # after the pause: the pace is set
        clock.now = start + 10.5
        pacer.cool_down(0.5, start + 0.99)  # a late echo, after the pause: not a new storm
        pacer.recover(start + 0.5)  # a late answer of the settled cycle: not counted
        await pacer.acquire()

    asyncio.run(go())
    assert pacer.allowed_rps == pytest.approx(10.0, rel=0.02)
    # 0.95 of what got through is 0.095 of the job's pace, but one storm at most halves it
    assert pacer.factor == pytest.approx(0.5, rel=0.02)
