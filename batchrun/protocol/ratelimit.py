"""The rate-limit headers of an OpenAI-compatible gateway: what is left of its window
(`x-ratelimit-remaining-requests`, `-tokens`) and when the window refills
(`x-ratelimit-reset-requests`, `-tokens`, as durations like "1s", "6m0s", "20ms").

Read here for both who use them: the classifier (`batchrun.protocol.outcome`: how long a 429
waits) and the pacer (`batchrun.engine.pacing`: holding starts before the window runs out).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

KINDS = ("requests", "tokens")  # the two windows a gateway counts
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def remaining(headers: Mapping[str, str], kind: str) -> int | None:
    """What the gateway says is left of its `kind` window, if it says so readably."""
    text = headers.get(f"x-ratelimit-remaining-{kind}")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def reset_after(headers: Mapping[str, str], kind: str) -> float | None:
    """Seconds until the gateway's `kind` window refills, if it says so readably."""
    return parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))


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
