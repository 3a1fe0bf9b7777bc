"""API keys that never show themselves: read from the variables a job names (by
`batchrun.config.job`), revealed only for the Authorization header (`batchrun.protocol.wire`).
"""

from __future__ import annotations


class Secret:
    """An API key that never shows itself in a repr, a log line or an exception."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself, for the Authorization header only."""
        return self._value

    def redact(self, text: str) -> str:
        """`text` with the key, and any prefix of it of 8 characters or more, masked."""
        for length in range(len(self._value), 7, -1):
            if self._value[:length] in text:
                text = text.replace(self._value[:length], "***")
        return text

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__
