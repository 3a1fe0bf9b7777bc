"""The simulated gateway's limits: requests per minute, requests in flight, and a quota that
runs out (what batchrun's pacer, `batchrun.engine.pacing`, meets from the other side).

Per-minute limits are enforced per second, as the seed gateways do: at `rpm` ≥ 60, at most
`rpm // 60` requests are admitted in any sliding one-second window; below 60, one request per
`60 / rpm` seconds. Refused requests do not count, so a client that waits as told gets in.
The `x-ratelimit-*` headers describe the same limit per minute, with a token limit of
`TOKENS_PER_REQUEST` tokens for each request per minute.
"""

from __future__ import annotations

import math
from collections import deque

TOKENS_PER_REQUEST = 1000
# The request limit headers describe when no requests-per-minute limit is set.
NOMINAL_RPM = 10_000
_MINUTE = 60.0


class RequestRate:
    """Admits requests within a requests-per-minute limit and reports it in headers."""

    def __init__(self, rpm: int, enforce: bool = True) -> None:
        # Requests per minute, as the headers report it.
        self.rpm = rpm
        # Whether requests over the limit are refused, or only counted for the headers.
        self._enforce = enforce
        # Sliding window (seconds) and how many requests it admits.
        self._window = max(1.0, _MINUTE / rpm)
        self._capacity = max(1, rpm // 60) if rpm >= 60 else 1
        # Arrival times of admitted requests inside the enforcement window, oldest first.
        self._recent: deque[float] = deque()
        # Arrival times of admitted requests in the last minute, oldest first.
        self._minute: deque[float] = deque()
        # (time, tokens) of answers sent in the last minute, and their sum.
        self._tokens: deque[tuple[float, int]] = deque()
        self._token_sum = 0

    def admit(self, now: float) -> float | None:
        """None if the request may go ahead, else how many seconds until it could."""
        _expire(self._recent, now - self._window)
        if self._enforce and len(self._recent) >= self._capacity:
            return self._recent[0] + self._window - now
        self._recent.append(now)
        self._minute.append(now)
        return None

    def spend(self, now: float, tokens: int) -> None:
        """Counts an answer's tokens against the per-minute token limit."""
        self._tokens.append((now, tokens))
        self._token_sum += tokens

    def headers(self, now: float) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for this moment."""
        _expire(self._minute, now - _MINUTE)
        while self._tokens and self._tokens[0][0] <= now - _MINUTE:
            self._token_sum -= self._tokens.popleft()[1]
        tpm = self.rpm * TOKENS_PER_REQUEST
        requests_left = max(0, self.rpm - len(self._minute))
        tokens_left = max(0, tpm - self._token_sum)
        return {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-remaining-requests": str(requests_left),
            "x-ratelimit-reset-requests": format_duration(
                (self.rpm - requests_left) * _MINUTE / self.rpm
            ),
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-tokens": str(tokens_left),
            "x-ratelimit-reset-tokens": format_duration((tpm - tokens_left) * _MINUTE / tpm),
        }


def _expire(times: deque[float], before: float) -> None:
    while times and times[0] <= before:
        times.popleft()


class InFlight:
    """Counts requests being answered, refusing any beyond the cap."""

    def __init__(self, cap: int | None) -> None:
        # The most requests answered at once; None for no cap.
        self._cap = cap
        # Requests admitted and not yet finished.
        self.count = 0

    def enter(self) -> bool:
        if self._cap is not None and self.count >= self._cap:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1


class QuotaWindow:
    """The quota is gone for requests arriving in [start, end) seconds after the first one."""

    def __init__(self, window: tuple[float, float] | None) -> None:
        # (start, end) seconds after the first request; None when the quota never runs out.
        self._window = window
        # Arrival time of the server's first request, the origin of the window.
        self._origin: float | None = None

    def exhausted(self, now: float) -> bool:
        if self._origin is None:
            self._origin = now
        if self._window is None:
            return False
        start, end = self._window
        return start <= now - self._origin < end


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's reset headers write it: "120ms", "1s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text
