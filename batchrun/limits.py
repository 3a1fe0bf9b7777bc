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
served. `cool_down` (a 429) pauses every start until a deadline and lowers the pace, which
then recovers step by step with each success.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Fraction of one second's share that may go at once to catch up.
BURST_FRACTION = 0.1
# After a 429 the pace drops to this fraction, and recovers by RECOVERY_STEP per success.
SLOWDOWN_FACTOR = 0.5
MIN_FACTOR = 0.05
RECOVERY_STEP = 0.02
# A reset header asking for longer than this is not trusted further (quota logic handles outages).
MAX_HEADER_HOLD_S = 60.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


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
            self._requests.charge(1, now, self._factor)
            if self._tokens is not None:
                self._tokens.charge(tokens, now, self._factor)

    def close(self) -> None:
        """Let every waiter through at once (the run is stopping; they will not send)."""
        self._closed = True

    def reconcile(self, estimated: int, actual: int) -> None:
        """Correct the token meter once a request's real usage is known."""
        if self._tokens is not None and actual != estimated:
            self._tokens.tat += (actual - estimated) / (self._tokens.per_second * self._factor)

    def cool_down(self, seconds: float) -> None:
        """Pause every start for `seconds` and lower the pace (a 429 was received)."""
        now = self._clock()
        if now >= self._paused_until:
            # The first 429 of a storm lowers the pace; the others only extend the pause.
            self._factor = max(MIN_FACTOR, self._factor * SLOWDOWN_FACTOR)
        self._paused_until = max(self._paused_until, now + seconds)

    def hold(self, until: float) -> None:
        """Allow no start before the monotonic time `until` (a gateway's reset header)."""
        self._paused_until = max(self._paused_until, until)

    def follow_headers(
        self, headers: Mapping[str, str], in_flight: int, in_flight_tokens: int
    ) -> None:
        """Hold starts until the gateway's reset when its remaining budget is nearly spent.

        `x-ratelimit-remaining-*` is what was left when this answer was made; the requests
        still in flight may use that much again, so starts stop once it is no more than
        them, until `x-ratelimit-reset-*` says the window refills. This avoids the 429.
        """
        for kind, using in (("requests", in_flight), ("tokens", in_flight_tokens)):
            remaining = _int_header(headers.get(f"x-ratelimit-remaining-{kind}"))
            if remaining is None or remaining > using:
                continue
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if reset:
                self.hold(self._clock() + min(reset, MAX_HEADER_HOLD_S))

    def recover(self) -> None:
        """One success: move the pace a step back towards the configured limits."""
        if self._factor < 1.0:
            self._factor = min(1.0, self._factor + RECOVERY_STEP)


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset durations: "1s", "6m0s", "20ms", "1h2m3.5s", or plain seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


def _int_header(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
