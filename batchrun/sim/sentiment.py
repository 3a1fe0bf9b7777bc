"""The labeler: answers sentiment-labeling prompts from a small English and Chinese lexicon.

A prompt asks for a label when its system or user text names a label set (positive/negative,
正面/负面, …). The review is the last user message (after a `Review:`-like marker when there
is one); each lexicon word adds or takes one point, a negation just before it flips it, and
words after "but"/"但是" count double, since the end of a review usually carries its verdict.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

# fmt: off
_POSITIVE_EN = frozenset((
    "love", "loved", "loves", "lovely", "great", "excellent", "perfect", "perfectly",
    "recommend", "recommended", "amazing", "awesome", "good", "nice", "happy", "best",
    "fantastic", "wonderful", "works", "work", "worked", "worth", "satisfied", "easy",
    "comfortable", "beautiful", "favorite", "favourite", "pleased", "solid", "reliable",
    "sturdy", "fast", "superb", "impressed", "impressive", "glad", "enjoy", "enjoyed",
    "brilliant", "helpful", "fine",
))
_NEGATIVE_EN = frozenset((
    "broken", "broke", "terrible", "refund", "disappointed", "disappointing", "disappointment",
    "worst", "bad", "awful", "poor", "poorly", "waste", "horrible", "useless", "returned",
    "returning", "defective", "flimsy", "hate", "hated", "stopped", "failed", "fails", "junk",
    "garbage", "problem", "problems", "issue", "issues", "missing", "damaged", "wrong",
    "cheaply", "scam", "fake", "leaks", "leaking", "unhappy", "annoying", "rude", "overpriced",
    "mediocre", "unreliable", "crap",
))
_NEGATORS_EN = frozenset((
    "not", "no", "never", "without", "hardly", "barely", "nothing", "nor", "cannot",
))
_CONTRASTS_EN = frozenset((
    "but", "however", "although", "though", "yet",
))
# Longest-match lexicon for Chinese: +1/-1 polarity, 0 for words that only look polar,
# None for negators and "x" for contrast words.
_CHINESE: dict[str, int | str | None] = {
    **dict.fromkeys((
        "好", "喜欢", "满意", "推荐", "不错", "很棒", "棒", "完美", "优秀", "值得", "舒服",
        "漂亮", "好用", "划算", "超值", "赞", "惊喜", "清晰", "耐用", "实惠", "方便", "开心",
        "好评", "没问题", "给力",
    ), 1),
    **dict.fromkeys((
        "差", "坏", "退货", "失望", "垃圾", "糟糕", "难用", "破", "退款", "假货", "后悔",
        "问题", "坑", "骗", "烂", "不值", "异味", "故障", "投诉", "差评", "损坏", "难受",
        "生气", "太慢",
    ), -1),
    **dict.fromkeys((
        "好像", "好几", "差不多", "不好意思", "只好", "最好",
    ), 0),
    **dict.fromkeys((
        "不", "没", "没有", "别", "未", "无", "不太", "不是",
    ), None),
    **dict.fromkeys((
        "但是", "但", "可是", "不过", "然而",
    ), "x"),
}
# fmt: on
_CHINESE_LONGEST = max(len(word) for word in _CHINESE)
_HAN = re.compile(r"[\u4e00-\u9fff]")
_WORD_EN = re.compile(r"[a-z]+(?:'[a-z]+)?")
_REVIEW_MARKER = re.compile(
    r"(?:review|text|comment|input|评论|评价|文本|内容)\s*[:：]", re.IGNORECASE
)
_SIM_MARKER = re.compile(r"\[\[sim:[a-z_]+\]\]")
# How many words (or characters in Chinese) a negation reaches forward.
_NEGATION_REACH = 3


@dataclass(frozen=True)
class LabelSet:
    """The words a prompt asks the answer to be chosen from."""

    positive: str
    negative: str
    neutral: str | None

    def pick(self, score: int, tie_break: int) -> str:
        """The label for a review score; a binary set breaks ties with `tie_break`."""
        if score > 0:
            return self.positive
        if score < 0:
            return self.negative
        if self.neutral is not None:
            return self.neutral
        return self.positive if tie_break % 2 else self.negative

    def words(self) -> tuple[str, ...]:
        return tuple(w for w in (self.positive, self.negative, self.neutral) if w)


# The label sets the labeler recognises, the most common first.
_LABEL_SETS = (
    LabelSet("positive", "negative", "neutral"),
    LabelSet("正面", "负面", "中性"),
    LabelSet("积极", "消极", "中性"),
    LabelSet("好评", "差评", "中评"),
    LabelSet("pos", "neg", "neu"),
)


def find_label_set(instructions: str) -> LabelSet | None:
    """The label set a prompt names, or None when it is not a sentiment-labeling prompt."""
    lowered = instructions.lower()
    for candidate in _LABEL_SETS:
        if _names(lowered, candidate.positive) and _names(lowered, candidate.negative):
            neutral = candidate.neutral
            if neutral is not None and not _names(lowered, neutral):
                neutral = None
            return LabelSet(candidate.positive, candidate.negative, neutral)
    return None


def _names(text: str, word: str) -> bool:
    return _word_regex(word).search(text) is not None


@functools.cache
def _word_regex(word: str) -> re.Pattern[str]:
    """A label word; a Latin one must stand alone, even next to Chinese text."""
    if word.isascii():
        return re.compile(rf"(?<![a-z]){word}(?![a-z])", re.IGNORECASE)
    return re.compile(re.escape(word))


def review_text(last_user: str, labels: LabelSet) -> str:
    """The part of the last user message to judge, without the label words themselves."""
    parts = _REVIEW_MARKER.split(last_user)
    text = _SIM_MARKER.sub(" ", parts[-1] if parts[-1].strip() else last_user)
    for word in labels.words():
        text = _word_regex(word).sub(" ", text)
    return text


def score(text: str) -> int:
    """Positive above zero, negative below, zero for neutral or mixed."""
    total = _score_english(_WORD_EN.findall(text.lower()))
    return total + _score_chinese(text) if _HAN.search(text) else total


def _score_english(words: Iterable[str]) -> int:
    total = 0
    weight = 1
    # Words left in which a negation still applies.
    negated = 0
    for word in words:
        if word in _NEGATORS_EN or word.endswith("n't"):
            negated = _NEGATION_REACH
            continue
        if word in _CONTRASTS_EN:
            weight, negated = 2, 0
            continue
        polarity = 1 if word in _POSITIVE_EN else -1 if word in _NEGATIVE_EN else 0
        if polarity:
            total += weight * (-polarity if negated else polarity)
            negated = 0
        else:
            negated = max(0, negated - 1)
    return total


def _score_chinese(text: str) -> int:
    total = 0
    weight = 1
    # Characters left in which a negation still applies.
    negated = 0
    i = 0
    while i < len(text):
        for size in range(min(_CHINESE_LONGEST, len(text) - i), 0, -1):
            word = text[i : i + size]
            if word in _CHINESE:
                break
        else:
            negated = max(0, negated - 1)
            i += 1
            continue
        value = _CHINESE[word]
        i += size
        if value is None:
            negated = _NEGATION_REACH
        elif value == "x":
            weight, negated = 2, 0
        elif isinstance(value, int) and value:
            total += weight * (-value if negated else value)
            negated = 0
    return total


def label(instructions: str, last_user: str, tie_break: int) -> str | None:
    """The labeler's one-word answer, or None when the prompt does not ask for a label."""
    labels = find_label_set(instructions)
    if labels is None:
        return None
    return labels.pick(score(review_text(last_user, labels)), tie_break)
