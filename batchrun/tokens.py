"""Token counting without any download.

This is an *estimate* that is honest about Chinese, Japanese and Korean text: each CJK
character counts as one token (real BPE encodings give 0.7–1.5 per character), and other
text counts roughly a token per four characters of a word, at least one per word and one
per punctuation mark. Chat requests add the per-message overhead OpenAI documents
(3 tokens a message, 1 for a name, 3 to prime the reply).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

# A run of CJK ideographs, kana or hangul; each character is a token.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# Words (letters and digits) and single non-space symbols, after CJK is removed.
_PIECE = re.compile(r"[^\W_]+|[^\w\s]|_")

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3


def count_text(text: str) -> int:
    """Estimated tokens of one piece of text."""
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    rest = _CJK.sub(" ", text) if cjk else text
    total = cjk
    for piece in _PIECE.findall(rest):
        if piece[0].isalnum():
            total += max(1, math.ceil(len(piece) / 4))
        else:
            # Emoji and other symbols outside the BMP are usually several byte tokens.
            total += 2 if ord(piece[0]) > 0xFFFF else 1
    return total


def _content_text(content: Any) -> Iterable[str]:
    """The text parts of a message's content (a string or a list of content parts)."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    yield text
                elif part.get("type") == "image_url":
                    # OpenAI charges a fixed base for a low-detail image; count that much.
                    yield "x " * 85


def count_chat(messages: Iterable[Mapping[str, Any]]) -> int:
    """Estimated prompt tokens of a chat request's message list."""
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        role = message.get("role")
        if isinstance(role, str):
            total += 1
        for text in _content_text(message.get("content")):
            total += count_text(text)
        if message.get("name"):
            total += TOKENS_PER_NAME + count_text(str(message["name"]))
    return total
