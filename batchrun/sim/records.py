"""The log of every request the simulator received and how it was answered."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Headers whose values are secrets, kept in the log only as a marker.
_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request: when it arrived and what the simulator did with it.

    `status` is 0 when no HTTP answer was sent (a reset or hang fault, or a client that
    went away); `fault` names the fault that shaped the answer, or the gateway's own refusal
    (`bad_key`, `quota`, `rate_limit`, `in_flight`), if any.
    """

    t: float  # time.monotonic() at arrival
    body: dict[str, Any] | None  # the decoded JSON body; None if it was not a JSON object
    model: str | None
    status: int
    fault: str | None
    stream: bool
    headers: Mapping[str, str] = field(default_factory=dict)  # secrets redacted


def redacted_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers safe to keep: key-bearing ones are replaced by a marker."""
    return {
        name: "<redacted>" if name.lower() in _SECRET_HEADERS else value
        for name, value in headers.items()
    }


class RequestLog:
    """Records appended by the server's thread and read by any other."""

    def __init__(self) -> None:
        # Guards _records: the server appends while tests read.
        self._lock = threading.Lock()
        # Records in the order requests finished.
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RequestRecord]:
        """A copy of the records so far, in arrival order."""
        with self._lock:
            records = list(self._records)
        return sorted(records, key=lambda r: r.t)
