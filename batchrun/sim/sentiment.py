"""The labeler: answers sentiment-labeling prompts from a small English and Chinese lexicon.

A prompt asks for a label when its system or user text names a label set (positive/negative,
正面/负面, …). The review is the last user message (after a `Review:`-like marker when there
is one). Each lexicon word adds or takes a point; a negation just before it flips it ("not
good", "不好", "no issues"), a softener halves it ("a bit loud", "有点重"), and words after
"but"/"但是" count double, since a review's verdict usually comes last. Hedges ("fine",
"还行") pull a weak score to neutral.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

# Roles of the words that are not polar.
NEGATE = "negate"
CONTRAST = "contrast"
SOFTEN = "soften"
HEDGE = "hedge"
BOUNDARY = "boundary"
Role = float | str

# fmt: off
_POSITIVE_EN = (
    "love", "loved", "loves", "lovely", "great", "excellent", "perfect", "perfectly",
    "recommend", "recommended", "amazing", "awesome", "good", "nice", "happy", "best",
    "fantastic", "wonderful", "works", "work", "worked", "worth", "satisfied", "easy",
    "comfortable", "comfy", "cozy", "beautiful", "gorgeous", "pretty", "cute", "favorite",
    "favourite", "pleased", "solid", "reliable", "sturdy", "fast", "quick", "quickly", "superb",
    "impressed", "impressive", "glad", "enjoy", "enjoyed", "brilliant", "helpful", "smooth",
    "crisp", "soft", "accurate", "durable", "compliments", "handy", "convenient", "keeper",
    "fun", "blast", "delighted", "thrilled", "exceeded", "upgrade", "incredible", "outstanding",
    "flawless", "ideal", "lifesaver", "bargain", "snug", "snugly", "roomy", "clean", "special",
    "approved", "praise", "wow",
)
_NEGATIVE_EN = (
    "broken", "broke", "breaks", "terrible", "refund", "disappointed", "disappointing",
    "disappointment", "worst", "bad", "awful", "poor", "poorly", "waste", "wasted", "horrible",
    "useless", "returned", "returning", "defective", "flimsy", "hate", "hated", "stopped",
    "failed", "fails", "fail", "junk", "garbage", "problem", "problems", "issue", "issues",
    "missing", "damaged", "wrong", "cheaply", "cheap", "scam", "fake", "leak", "leaks",
    "leaking", "leaked", "unhappy", "annoying", "rude", "overpriced", "unreliable", "crap",
    "misleading", "frustrating", "frustrated", "unacceptable", "creepy", "grainy", "stiff",
    "itchy", "cracked", "rust", "rusted", "rusty", "dent", "dented", "warped", "blisters",
    "wobbly", "dull", "dulled", "snapped", "ripped", "torn", "froze", "crashes", "crashed",
    "disconnects", "disconnected", "stuck", "slippery", "shrunk", "shrank", "pilled", "faded",
    "bleed", "overpowering", "headache", "hurts", "hurt", "painful", "pain", "noisy", "rattles",
    "lags", "skips", "mess", "regret", "unfortunately", "complain", "complaint", "complaints",
    "bland", "boring", "dragged", "derails", "loses", "late", "smell", "stinks",
    "uncomfortable", "unusable", "nope", "avoid", "crooked", "blurry", "burnt", "burns",
    "soaked", "weak",
)
_ROLES_EN: dict[str, Role] = {
    **dict.fromkeys(_POSITIVE_EN, 1.0),
    **dict.fromkeys(_NEGATIVE_EN, -1.0),
    **dict.fromkeys((
        "not", "no", "never", "without", "hardly", "barely", "nothing", "nor", "cannot", "zero",
    ), NEGATE),
    **dict.fromkeys(("but", "however", "although", "yet", "except"), CONTRAST),
    **dict.fromkeys(("bit", "slightly", "little", "somewhat", "kinda"), SOFTEN),
    **dict.fromkeys((
        "fine", "okay", "ok", "average", "decent", "alright", "mediocre", "meh", "acceptable",
    ), HEDGE),
}
# Longest-match lexicon for Chinese.
_ROLES_ZH: dict[str, Role] = {
    **dict.fromkeys((
        "好", "喜欢", "满意", "推荐", "不错", "很棒", "棒", "完美", "优秀", "值得", "舒服",
        "舒适", "漂亮", "好看", "好用", "好玩", "划算", "超值", "赞", "惊喜", "清晰", "耐用",
        "实惠", "方便", "开心", "好评", "没问题", "给力", "精美", "精彩", "放心", "顺手", "爽",
        "柔软", "软", "细腻", "干净", "光滑", "扎实", "结实", "紧实", "透气", "必备", "欢乐",
        "实用", "惊艳", "流畅", "稳定", "快", "准", "精致", "贴心", "省心", "回购", "均匀",
    ), 1.0),
    **dict.fromkeys((
        "差", "坏", "退货", "失望", "垃圾", "糟糕", "难用", "破", "退款", "假货", "后悔",
        "问题", "坑", "骗", "烂", "不值", "异味", "故障", "投诉", "差评", "损坏", "难受",
        "生气", "慢", "卡顿", "断连", "掉色", "褪色", "生锈", "锈", "漏水", "漏", "噪音",
        "异响", "模糊", "麻烦", "闹心", "崩溃", "尴尬", "粗糙", "累", "乱", "错别字", "拖沓",
        "单薄", "烂尾", "浪费", "打水漂", "疼", "痛", "出血", "发黄", "费劲", "弯", "塌", "松",
        "散", "划花", "粘", "晃", "贵", "吓", "寂寞", "呵呵", "差距", "凉", "毛刺", "怕", "磨",
        "脏", "臭", "味道", "刺鼻", "变形", "开裂", "缩水", "起球", "硬", "重", "难", "不符",
        "失灵", "虚标",
    ), -1.0),
    **dict.fromkeys(("好像", "好几", "差不多", "不好意思", "只好", "最好", "难道"), 0.0),
    **dict.fromkeys((
        "不", "没", "没有", "别", "未", "无", "不太", "不是", "毫无", "从不", "并不",
        "一点都不", "一点也不",
    ), NEGATE),
    **dict.fromkeys(("但是", "但", "可是", "不过", "然而"), CONTRAST),
    **dict.fromkeys(("有点", "有些", "稍微", "稍", "略", "一点"), SOFTEN),
    **dict.fromkeys((
        "还行", "一般", "凑合", "还算", "能接受", "中规中矩", "马马虎虎", "将就", "普通",
        "还可以", "尚可",
    ), HEDGE),
}
_ROLES_SYMBOL: dict[str, Role] = {
    **dict.fromkeys(("👍", "😍", "💕", "😊", "❤", "♥", "🥰", "😀", "😄", "☺"), 1.0),
    **dict.fromkeys(("👎", "😤", "💔", "😡", "😠", "😞", "😢", "🙄", "🤬"), -1.0),
    **dict.fromkeys((".", "!", "?", ";", "。", "！", "？", "；"), BOUNDARY),
}
# fmt: on
_ZH_LONGEST = max(len(word) for word in _ROLES_ZH)
# English words, runs of Chinese characters, and single symbols, in text order.
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[\u4e00-\u9fff]+|\S")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_REVIEW_MARKER = re.compile(
    r"(?:review|text|comment|input|评论|评价|文本|内容)\s*[:：]", re.IGNORECASE
)
_SIM_MARKER = re.compile(r"\[\[sim:[a-z_]+\]\]")
# How many words (or Chinese characters) a negation or a softener reaches forward.
_REACH = 3
# A score this close to zero, with a hedge in the review, is neutral.
_HEDGED_BELOW = 1.5


@dataclass(frozen=True)
class LabelSet:
    """The words a prompt asks the answer to be chosen from."""

    positive: str
    negative: str
    neutral: str | None

    def pick(self, sentiment: Sentiment, tie_break: int) -> str:
        """The label for a review; a set without neutral breaks ties with `tie_break`."""
        value = sentiment.score
        if self.neutral is not None and (
            abs(value) < 0.5 or (sentiment.hedges and abs(value) < _HEDGED_BELOW)
        ):
            return self.neutral
        if value > 0:
            return self.positive
        if value < 0:
            return self.negative
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
    return _label_words_regex(labels).sub(" ", text)


@functools.cache
def _label_words_regex(labels: LabelSet) -> re.Pattern[str]:
    """Any of a label set's words, standing alone."""
    return re.compile("|".join(_word_regex(w).pattern for w in labels.words()), re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Sentiment:
    """A review's score (positive above zero) and how many hedges it contains."""

    score: float
    hedges: int


def score(text: str) -> Sentiment:
    """The sentiment of a review."""
    total = 0.0
    hedges = 0
    weight = 1.0
    # Tokens left in which a negation, or a softener, still applies.
    negated = softened = 0
    for role in _roles(text.lower()):
        if isinstance(role, float):
            if role:
                value = role * weight * (0.5 if softened else 1.0)
                total += -value if negated else value
                negated = softened = 0
                continue
        elif role == NEGATE:
            negated = _REACH
            continue
        elif role == SOFTEN:
            softened = _REACH
            continue
        elif role == CONTRAST:
            weight = 2.0
        elif role == HEDGE:
            hedges += 1
        elif role == BOUNDARY:
            negated = softened = 0
        negated, softened = max(0, negated - 1), max(0, softened - 1)
    return Sentiment(total, hedges)


def _roles(text: str) -> Iterator[Role]:
    """The role of each word of a lower-cased text, in order; 0.0 for plain words."""
    for token in _TOKEN.findall(text):
        if token[0].isascii() and token[0].isalpha():
            yield NEGATE if token.endswith("n't") else _ROLES_EN.get(token, 0.0)
        elif _HAN.match(token):
            yield from _chinese_roles(token)
        else:
            yield _ROLES_SYMBOL.get(token, 0.0)


def _chinese_roles(run: str) -> Iterator[Role]:
    """Roles of a run of Chinese characters, matching the longest lexicon word first."""
    i = 0
    while i < len(run):
        for size in range(min(_ZH_LONGEST, len(run) - i), 0, -1):
            role = _ROLES_ZH.get(run[i : i + size])
            if role is not None:
                yield role
                i += size
                break
        else:
            yield 0.0
            i += 1


def label(instructions: str, last_user: str, tie_break: int) -> str | None:
    """The labeler's one-word answer, or None when the prompt does not ask for a label."""
    labels = find_label_set(instructions)
    if labels is None:
        return None
    return labels.pick(score(review_text(last_user, labels)), tie_break)
