"""Deterministic text: stable hashes, filler sentences, and cutting text to a token budget."""

from __future__ import annotations

import hashlib
import random
import re

from batchrun.core.tokens import estimate_text as count_text

# fmt: off
# Plausible words for English filler answers.
_WORDS = (
    "the", "a", "of", "to", "and", "in", "that", "it", "for", "on", "with", "as", "this", "is",
    "was", "be", "by", "at", "from", "or", "an", "can", "will", "data", "model", "result",
    "answer", "review", "value", "order", "table", "report", "price", "service", "team", "user",
    "system", "process", "quality", "support", "time", "design", "detail", "example", "method",
    "point", "case", "change", "clear", "simple", "useful", "careful", "short", "direct",
    "common", "likely", "overall", "main", "first", "next", "final", "good", "strong", "stable",
    "better", "typical", "reasonable", "specific", "general", "important", "relevant", "shows",
    "suggests", "means", "covers", "depends", "includes", "provides", "needs", "helps",
    "explains", "gives", "makes", "keeps", "follows", "reflects", "matches", "returns",
    "describes", "improves",
)
# Plausible phrases for Chinese filler answers.
_CN_PHRASES = (
    "总体来看", "这个问题", "需要考虑", "数据质量", "结果表明", "用户体验", "比较稳定",
    "可以看出", "一般来说", "主要原因", "具体情况", "建议使用", "效果不错", "相关信息",
    "进一步分析", "简单地说", "处理流程", "服务质量", "时间成本", "值得注意",
)
# fmt: on
# Tokens each filler word counts, worked out once.
_WORD_TOKENS = {word: count_text(word) for word in _WORDS}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
# A stream piece: a few non-space characters with the whitespace before them.
_PIECE = re.compile(r"\s*\S{1,5}|\s+")

MIN_TOKENS = 5
MAX_TOKENS = 80


def stable_hash(*parts: str | bytes) -> str:
    """Hex SHA-256 of the parts; the same on every run and every machine."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\x00")
    return h.hexdigest()


def rng_for(*parts: str | bytes) -> random.Random:
    """A random generator seeded from a stable hash of the parts."""
    return random.Random(int(stable_hash(*parts)[:16], 16))


def mostly_chinese(text: str) -> bool:
    """Whether the text is written mainly in Chinese characters."""
    return len(_CJK.findall(text)) * 2 > len(text.replace(" ", "")) > 0


def filler(rng: random.Random, chinese: bool = False) -> str:
    """Sentences of plausible words, between about 5 and 80 tokens long."""
    target = rng.randint(MIN_TOKENS, MAX_TOKENS)
    return _chinese_filler(rng, target) if chinese else _english_filler(rng, target)


def _english_filler(rng: random.Random, target: int) -> str:
    sentences: list[str] = []
    used = 0
    while used < target:
        length = rng.randint(4, 12)
        words: list[str] = []
        # Add words until the sentence is long enough or its full stop would fill the answer.
        while len(words) < length and (not words or used + 1 < target):
            word = rng.choice(_WORDS)
            words.append(word)
            used += _WORD_TOKENS[word]
        used += 1
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def _chinese_filler(rng: random.Random, target: int) -> str:
    sentences: list[str] = []
    used = 0
    while used < target:
        phrases = [rng.choice(_CN_PHRASES) for _ in range(rng.randint(2, 5))]
        sentence = "，".join(phrases) + "。"
        sentences.append(sentence)
        used += count_text(sentence)
    return "".join(sentences)


def fit_tokens(text: str, limit: int | None) -> tuple[str, int]:
    """The longest prefix of text counting at most `limit` tokens, and its token count."""
    tokens = count_text(text)
    if limit is None or tokens <= limit:
        return text, tokens
    # count_text never falls as a prefix grows, so the longest fitting prefix is found by bisection.
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count_text(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    cut = text[:low].rstrip()
    return cut, count_text(cut)


def pieces(text: str) -> list[str]:
    """Text split into stream deltas of a few characters each; they join back to the text."""
    return _PIECE.findall(text)
