"""Server-sent events: bytes in whatever chunks the network gives, events out.

Follows the WHATWG event-stream rules that matter for chat completions: lines end in LF,
CRLF or CR (a CRLF split across two chunks is one line ending); `data:` lines of one event
are joined with LF; one space after the colon is dropped; lines starting with a colon are
comments; a blank line ends an event; an event with no data is not dispatched, and neither
is one the stream ends before its blank line (`pending` tells whether there was one). An event
larger than `max_event_bytes` raises, so a misbehaving gateway cannot fill memory.
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventTooLarge(ValueError):
    """One event grew past the cap."""


class SSEDecoder:
    """Incremental decoder: `feed(chunk)` yields the data of each complete event."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes  # the largest event accepted, in bytes
        self._buffer = b""  # bytes of the line being read
        self._data: list[bytes] = []  # data lines of the event being read
        self._size = 0  # bytes in _data
        self._after_cr = False  # the last chunk ended in CR: a leading LF is part of it

    def feed(self, chunk: bytes) -> Iterator[str]:
        """Decode a chunk; yield the data of every event it completes."""
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        buffer = self._buffer + chunk
        start = 0
        length = len(buffer)
        while start < length:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            end = lf if cr < 0 or (0 <= lf < cr) else cr
            step = 2 if buffer[end : end + 2] == b"\r\n" else 1
            event = self._line(buffer[start:end])
            if event is not None:
                yield event
            start = end + step
        self._buffer = buffer[start:]
        if len(self._buffer) + self._size > self._max:
            raise EventTooLarge(f"an event is larger than {self._max} bytes")

    @property
    def pending(self) -> bool:
        """Whether a partial event was left when the stream ended."""
        return bool(self._buffer or self._data)

    def _line(self, line: bytes) -> str | None:
        if not line:
            if not self._data:
                return None
            data = b"\n".join(self._data).decode("utf-8", "replace")
            self._data, self._size = [], 0
            return data
        if line.startswith(b":"):
            return None
        field, _, value = line.partition(b":")
        if field == b"data":
            value = value[1:] if value.startswith(b" ") else value
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max:
                raise EventTooLarge(f"an event is larger than {self._max} bytes")
        return None
