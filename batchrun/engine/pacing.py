"""Pacing request starts by requests per minute and tokens per minute.

Why not aiolimiter: its bucket starts empty, so `AsyncLimiter(600, 60)` lets 600 requests go
at once (and up to twice the rate in the first minute), while gateways enforce per-minute
limits per second; its waiters are a heap by amount, so token-weighted acquires starve large
requests; an amount above the bucket size raises; and an estimate cannot be corrected once
the real usage is known. Each of those is a requirement here.

The pacer is a generic cell-rate algorithm (GCRA) on two meters that share one FIFO queue:

- requests: each start moves the meter's *theoretical arrival time* (TAT) on by one
  interval (60 / rpm seconds); a start may happen once `now >= TAT - tolerance`. The
  tolerance is a tenth of a second's share, so no second ever carries more than about 1.1×
  its share, and a late start can catch up only that much.
- tokens: the same with a per-token interval (60 / tpm); a request costs its estimated
  tokens, so a request larger than a second's budget simply waits longer (it never raises).
  `reconcile` moves the meter by the difference between the estimate and the real usage.

The head of the queue holds the lock while it waits, so starts are strictly first come, first
served.

A gateway whose real limit is below the job's answers 429. `cool_down` pauses every start
until the gateway's reset and then sets the pace to what really got through: the requests
sent in the cycle since the previous reset (or the first start) that succeeded, over that
cycle up to the reset (counted when the pause ends, so that the answers in flight at the
429 are in), which for
a fixed window of L requests every W seconds is L / W whatever the pace that hit it. The
pace goes to SETTLE of that, at least 3% below where it was and at most half of it (a
sporadic 429 after a short cycle is not taken for a tight limit); only the first 429 of a
storm counts (429s of requests sent before it are its echo). Then the pace creeps back up
by PROBE_PER_MINUTE of that ceiling for each quiet minute, so a run settles just under the
limit, finding out now and then whether it was raised, instead of swinging up and down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Protocol

from ..protocol import ratelimit

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Fraction of one second's share that may go at once to catch up.
BURST_FRACTION = 0.1
# After a 429: the pace goes to SETTLE of what got through (at most DECREASE of where it was;
# SLOWDOWN_FACTOR of it when nothing got through), never under MIN_FACTOR of the job's.
SETTLE = 0.95
DECREASE = 0.97
SLOWDOWN_FACTOR = 0.5
MIN_FACTOR = 0.01
PROBE_PER_MINUTE = 0.02  # how fast the pace creeps up, per quiet minute, towards the limits
# A reset header asking for longer than this is not trusted further (quota logic handles outages).
MAX_HEADER_HOLD_S = 60.0


class LanePacer(Protocol):
    """What a lane needs of a pacer: `Pacer` on one machine, a Ray worker's
    `batchrun.ray.desk.LeasedPacer` in a cluster."""

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request estimated at `tokens` tokens may start."""

    @property
    def ready_at(self) -> float:
        """The earliest time the next start may happen (before those already waiting)."""

    @property
    def requests_per_second(self) -> float:
        """The pace now, in requests a second."""

    @property
    def allowed_rps(self) -> float | None:
        """What got through at the last 429 storm, a second; None before one."""

    def close(self) -> None:
        """Let every waiter through at once (the run is stopping)."""

    def recover(self, sent_at: float | None = None) -> None:
        """One success, of a request started at `sent_at`."""

    def reconcile(self, estimated: int, actual: int) -> None:
        """A request's real token usage, once known."""

    def cool_down(self, seconds: float, sent_at: float | None = None) -> None:
        """A 429 for a request started at `sent_at`: pause every start for `seconds`."""

    def follow_headers(
        self, headers: Mapping[str, str], in_flight: int, in_flight_tokens: int
    ) -> None:
        """Hold starts while the gateway's rate-limit headers say its budget is spent."""

    def settle(self) -> None:
        """The run ends: a 429 storm it ended in sets its figures."""


def header_holds(
    headers: Mapping[str, str], in_flight: int, in_flight_tokens: int
) -> Iterator[float]:
    """How long to hold starts, for each of the gateway's budgets nearly spent.

    `x-ratelimit-remaining-*` is what was left when this answer was made; the requests
    still in flight may use that much again, so starts stop once it is no more than
    them, until `x-ratelimit-reset-*` says the window refills. This avoids the 429.
    """
    for kind, using in zip(ratelimit.KINDS, (in_flight, in_flight_tokens), strict=True):
        remaining = ratelimit.remaining(headers, kind)
        if remaining is None or remaining > using:
            continue
        reset = ratelimit.reset_after(headers, kind)
        if reset:
            yield min(reset, MAX_HEADER_HOLD_S)


class _Meter:
    """One GCRA meter: `per_second` units a second, with a tolerance of `tolerance_s`."""

    def __init__(self, per_second: float, tolerance_s: float, now: float) -> None:
        self.per_second = per_second  # units allowed per second at full pace
        self.tolerance_s = tolerance_s  # how far ahead of now the TAT may run and still start
        self.tat = now  # theoretical arrival time of the next unit

    @property
    def ready_at(self) -> float:
        """Earliest time the next start conforms."""
        return self.tat - self.tolerance_s

    def charge(self, units: float, now: float, factor: float) -> None:
        self.tat = max(self.tat, now) + units / (self.per_second * factor)


class Pacer:
    """Paces request starts evenly, first come first served; see the module docstring."""

    def __init__(
        self,
        requests_per_minute: float,
        tokens_per_minute: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._clock = clock  # monotonic seconds
        self._sleep = sleep  # awaitable sleep, injected so tests run on a fake clock
        now = clock()
        rps = requests_per_minute / 60
        self._requests = _Meter(rps, max(0.0, (rps * BURST_FRACTION - 1)) / rps, now)
        self._tokens = (
            _Meter(tokens_per_minute / 60, BURST_FRACTION, now) if tokens_per_minute else None
        )
        self._lock = asyncio.Lock()  # FIFO queue of waiting starts; the head waits holding it
        self._paused_until = now  # no start before this (a shared 429 cool-down)
        self._factor = 1.0  # current pace as a fraction of the configured limits
        self._closed = False  # the run is stopping: starts are no longer paced
        self._rps = rps  # the configured requests a second
        self._cycle_start: float | None = None  # since the last 429's reset, or the first start
        self._cycle_ok = 0  # successes since then
        self._storm_start = -float("inf")  # when the last counted 429 came
        self._storm_pending = False  # a storm's pace is set when its pause ends
        self._settled: float | None = None  # the factor set by the last 429, None before one
        self.allowed_rps: float | None = None  # what got through, measured at the last 429

    @property
    def factor(self) -> float:
        """The current pace as a fraction of the configured limits."""
        return self._factor

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request estimated at `tokens` tokens may start."""
        async with self._lock:
            while True:
                if self._closed:
                    return
                now = self._clock()
                ready = max(self._requests.ready_at, self._paused_until)
                if self._tokens is not None:
                    ready = max(ready, self._tokens.ready_at)
                if ready <= now:
                    break
                await self._sleep(ready - now)
            if self._storm_pending:
                self.settle()
            if self._cycle_start is None:
                self._cycle_start = now
            self._requests.charge(1, now, self._factor)
            if self._tokens is not None:
                self._tokens.charge(tokens, now, self._factor)

    def schedule(self, count: int, tokens_each: int = 0) -> list[float]:
        """Start times for `count` requests of `tokens_each` estimated tokens, charged now
        as if each started at its time, without waiting: what a cluster's limiter leases to
        a worker (see `batchrun.ray.desk`). Starts come no sooner than `acquire` would allow."""
        if self._storm_pending and self._clock() >= self._paused_until:
            self.settle()
        now = self._clock()
        starts = []
        for _ in range(count):
            ready = max(now, self._requests.ready_at, self._paused_until)
            if self._tokens is not None:
                ready = max(ready, self._tokens.ready_at)
            if self._cycle_start is None:
                self._cycle_start = ready
            self._requests.charge(1, ready, self._factor)
            if self._tokens is not None:
                self._tokens.charge(tokens_each, ready, self._factor)
            starts.append(ready)
        return starts

    @property
    def ready_at(self) -> float:
        """The earliest time the next start may happen (before those already waiting)."""
        ready = max(self._requests.ready_at, self._paused_until)
        return max(ready, self._tokens.ready_at) if self._tokens is not None else ready

    @property
    def paused_until(self) -> float:
        """No start before this time (a 429's cool-down, a reset header's hold)."""
        return self._paused_until

    @property
    def requests_per_second(self) -> float:
        """The pace now, in requests a second."""
        return self._rps * self._factor

    def close(self) -> None:
        """Let every waiter through at once (the run is stopping; they will not send)."""
        self._closed = True

    def reconcile(self, estimated: int, actual: int) -> None:
        """Correct the token meter once a request's real usage is known."""
        if self._tokens is not None and actual != estimated:
            self._tokens.tat += (actual - estimated) / (self._tokens.per_second * self._factor)

    def cool_down(self, seconds: float, sent_at: float | None = None) -> None:
        """A 429 for a request started at `sent_at`: pause every start for `seconds`, and
        set the pace to what got through (see the module docstring)."""
        now = self._clock()
        sent_at = now if sent_at is None else sent_at
        if now >= self._paused_until and sent_at >= self._storm_start:
            # The first 429 of a storm begins one; the others only extend the pause. The
            # pace is set when the pause ends (`settle`), once the answers of the requests
            # sent before the storm have come back and been counted for its cycle.
            self._storm_start = now
            self._storm_pending = True
        self._paused_until = max(self._paused_until, now + seconds)

    def settle(self) -> None:
        """Set the pace after a storm, from what got through in its cycle (see the module
        docstring); done by the first start after the pause, or at the end of a run."""
        if not self._storm_pending:
            return
        self._storm_pending = False
        reset = self._paused_until
        start = self._storm_start if self._cycle_start is None else self._cycle_start
        cycle = reset - start
        if self._cycle_ok and cycle > 0:
            self.allowed_rps = self._cycle_ok / cycle
            target = SETTLE * self.allowed_rps / self._rps
            # At most halved by one storm: a sporadic 429 (an upstream hiccup, not a limit)
            # after a short cycle would otherwise pass for a tight limit.
            self._factor = max(min(target, self._factor * DECREASE), self._factor * SLOWDOWN_FACTOR)
        else:
            self._factor *= SLOWDOWN_FACTOR
        self._factor = max(MIN_FACTOR, self._factor)
        self._settled = self._factor
        self._cycle_start, self._cycle_ok = reset, 0

    def hold(self, until: float) -> None:
        """Allow no start before the monotonic time `until` (a gateway's reset header)."""
        self._paused_until = max(self._paused_until, until)

    def follow_headers(
        self, headers: Mapping[str, str], in_flight: int, in_flight_tokens: int
    ) -> None:
        """Hold starts until the gateway's reset when its remaining budget is nearly spent
        (see `header_holds`)."""
        for seconds in header_holds(headers, in_flight, in_flight_tokens):
            self.hold(self._clock() + seconds)

    def recover(self, sent_at: float | None = None) -> None:
        """One success, of a request started at `sent_at`: counted for its cycle (an answer
        of a cycle already settled no longer counts), and the pace crept up for the time
        since the last 429 (see the module docstring)."""
        if sent_at is None or self._cycle_start is None or sent_at >= self._cycle_start:
            self._cycle_ok += 1
        if self._settled is not None and self._factor < 1.0:
            start = self._clock() if self._cycle_start is None else self._cycle_start
            quiet_min = max(self._clock() - start, 0.0) / 60
            grown = self._settled * (1 + PROBE_PER_MINUTE * quiet_min / SETTLE)
            self._factor = min(1.0, max(self._factor, grown))
