"""How long to wait before trying again: per-row backoff, and the run-wide quota pause."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .pacing import Clock, Sleep

# Probing an exhausted quota: the first wait is a tenth of quota_wait_s (at most this), and
# each next wait doubles, up to QUOTA_MAX_PROBE_S.
QUOTA_FIRST_PROBE_S = 5.0
QUOTA_MAX_PROBE_S = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, and the bounds of retrying one row."""

    max_attempts: int = 6
    base_s: float = 0.5  # the first backoff is drawn from [0, base_s]
    cap_s: float = 30.0  # no backoff is drawn from a wider range than [0, cap_s]
    max_retry_s: float = 900.0  # total time one row may spend being retried

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """How long to wait after failed attempt number `attempt` (1-based).

        Full jitter (uniform over [0, min(cap, base * 2^(attempt-1))]) spreads retries of
        rows that failed together; a gateway's Retry-After is a floor, never shortened.
        """
        backoff = rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
        return max(backoff, retry_after or 0.0)

    def gives_up(self, tries: int, retried_s: float) -> bool:
        """Whether a row stops being retried: `tries` of its own attempts made (see
        `batchrun.engine.attempt`), or `retried_s` spent since its first."""
        return tries >= self.max_attempts or retried_s > self.max_retry_s


class QuotaGate:
    """The pause while an exhausted quota is probed (run-wide with one endpoint, the
    endpoint's own with several).

    The first row to get a quota answer becomes the prober: every other row waits at the
    gate while the prober re-sends its own request at growing intervals. Any other answer
    opens the gate and everyone carries on at full speed; no such answer within `wait_s`
    ends the wait (`exhausted` returns False) and the run stops.

    With `hand_off` (an endpoint among several) no row waits for the quota: a row that got
    the quota answer goes to another endpoint, and when the next probe is due (`probe_at`)
    whichever row asks for an endpoint first sends it (`claim`). So a quota that never comes
    back holds no row for `wait_s`: the run ends when the other endpoints have answered
    every row, whether or not this one's wait is over.
    """

    def __init__(
        self,
        wait_s: float,
        clock: Clock,
        sleep: Sleep,
        *,
        hand_off: bool = False,
        on_pause: Callable[[float], None] | None = None,
    ) -> None:
        """`on_pause` hears until when each probe pauses the quota: a Ray worker tells the
        desk, so that the other workers pause too."""
        self._wait_s = wait_s  # how long the quota may stay exhausted
        self._clock = clock
        self._sleep = sleep
        self._hand_off = hand_off  # rows go elsewhere while it is paused (see above)
        self._on_pause = on_pause
        self._paused = False  # the quota is being probed (a stop wakes waiters, not this)
        self._prober: object | None = None  # the row whose request is the probe
        self._deadline = 0.0  # when waiting stops
        self._first_wait = max(0.05, min(QUOTA_FIRST_PROBE_S, wait_s / 10))
        self._next_wait = self._first_wait  # wait before the next probe
        self._probe_at = 0.0  # with hand_off: when a row may claim the next probe

    def probing(self, row: object) -> bool:
        """Whether `row` is the prober (which does not wait at the gate)."""
        return self._prober is row

    @property
    def is_open(self) -> bool:
        """Whether requests may go (no quota is being probed)."""
        return not self._paused

    @property
    def probe_at(self) -> float | None:
        """With hand_off, while paused and no probe is out: when the next one is due."""
        if not self._hand_off or not self._paused or self._prober is not None:
            return None
        return self._probe_at

    def claim(self, row: object, now: float) -> bool:
        """With hand_off: whether `row` is to send the probe that is due (it becomes the
        prober); False when none is due or one is out."""
        due = self.probe_at
        if due is None or now < due:
            return False
        self._prober = row
        return True

    def passed(self, row: object) -> None:
        """`row` got an answer that is not about quota: if it was probing, open the gate."""
        if self._prober is row:
            self._prober = None
            self._paused = False

    async def exhausted(self, row: object) -> bool:
        """`row` got a quota answer: wait until it should try again (with hand_off, set when
        the next probe is due instead, and return at once); False once time is up."""
        now = self._clock()
        if self._prober is None and not self._paused:
            self._prober = row
            self._paused = True
            self._deadline = now + self._wait_s
            self._next_wait = self._first_wait
        if self._prober is not row:
            return True  # back to the gate (with hand_off: to another endpoint)
        left = self._deadline - now
        if left <= 0:
            self._prober = None
            return False
        wait = min(self._next_wait, left)
        self._next_wait = min(self._next_wait * 2, QUOTA_MAX_PROBE_S)
        if self._on_pause is not None:
            self._on_pause(now + wait)
        if self._hand_off:
            self._prober, self._probe_at = None, now + wait
            return True
        await self._sleep(wait)
        return True
