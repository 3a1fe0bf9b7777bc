"""Small statistics for evaluation: an interval for a proportion, and for comparing two
models on the same rows, McNemar's exact test and an interval for the paired difference."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
# Up to this many discordant pairs McNemar's tail is summed exactly in integers; beyond it,
# in floating point from the largest term down (see `_log_lower_tail`).
EXACT_LIMIT = 1000


@dataclass(frozen=True)
class Accuracy:
    """Mean score over the scored rows, with its 95% Wilson interval."""

    scored: int
    correct: float
    accuracy: float
    low: float
    high: float

    @classmethod
    def of(cls, correct: float, scored: int) -> Accuracy:
        """The accuracy of `correct` right answers out of `scored`."""
        low, high = wilson_interval(correct, scored)
        return cls(scored, correct, correct / scored if scored else 0.0, low, high)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) when n is 0.

    Unlike the textbook p ± z·sqrt(p(1-p)/n), it stays inside [0, 1] and keeps its coverage
    for proportions near 0 or 1 and for small n, which is where evaluation sets often live.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """The two-sided exact McNemar p-value of b and c discordant pairs.

    Under the null hypothesis (both models equally accurate) each of the b + c pairs where
    exactly one model is right goes either way with probability 1/2, so with X ~ Binomial(b + c,
    1/2) the p-value is min(1, 2·P[X ≤ min(b, c)]), and 1 when b + c is 0. It is exact up to
    `EXACT_LIMIT` pairs (integer arithmetic, one rounding at the end) and accurate to about
    1e-9 relative beyond, for any count a computer holds.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must not be negative, got b={b}, c={c}")
    n, k = b + c, min(b, c)
    if 2 * k >= n - 1:  # the tail holds half the mass or more
        return 1.0
    if n <= EXACT_LIMIT:
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return min(1.0, 2 * math.exp(_log_lower_tail(n, k)))


def _log_lower_tail(n: int, k: int) -> float:
    """log P[X ≤ k] for X ~ Binomial(n, 1/2) and k < n/2.

    The terms below k shrink by the factor i / (n - i + 1) < 1 from one to the next, so the
    sum is taken relative to P[X = k] (from lgamma) and stops once a term no longer changes
    it: about six standard deviations, a few thousand terms even for n in the millions.
    """
    log_top = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
    total = term = 1.0
    for i in range(k, 0, -1):
        term *= i / (n - i + 1)
        total += term
        if term < total * 1e-17:
            break
    return log_top + math.log(total)


def paired_difference_interval(
    both_right: int, b: int, c: int, both_wrong: int, z: float = Z95
) -> tuple[float, float]:
    """An interval for B's accuracy minus A's on the same rows (95% by default).

    Newcombe's square-and-add interval for paired proportions (Statistics in Medicine 1998,
    17:2635, method 10): the two accuracies' Wilson intervals combined with the correlation
    of the paired answers. Here b counts rows A got right and B wrong, c the reverse, so the
    difference is (c - b) / n. Unlike the Wald interval it behaves with few discordant pairs
    and near 0 or 1. (-1, 1) when there are no rows.
    """
    n = both_right + b + c + both_wrong
    if n == 0:
        return -1.0, 1.0
    p_a, p_b = (both_right + b) / n, (both_right + c) / n
    low_a, high_a = wilson_interval(both_right + b, n, z)
    low_b, high_b = wilson_interval(both_right + c, n, z)
    phi = _phi(both_right, b, c, both_wrong)
    # The lower end: B's accuracy as low and A's as high as their intervals allow, and the
    # upper end the reverse, each distance shrunk by the correlation of the pairs.
    down_b, up_a = p_b - low_b, high_a - p_a
    up_b, down_a = high_b - p_b, p_a - low_a
    low = (p_b - p_a) - math.sqrt(max(0.0, down_b**2 - 2 * phi * down_b * up_a + up_a**2))
    high = (p_b - p_a) + math.sqrt(max(0.0, up_b**2 - 2 * phi * up_b * down_a + down_a**2))
    return max(-1.0, low), min(1.0, high)


def _phi(both_right: int, b: int, c: int, both_wrong: int) -> float:
    """The correlation of the paired answers, with Newcombe's correction towards zero."""
    n = both_right + b + c + both_wrong
    margins = (both_right + b) * (c + both_wrong) * (both_right + c) * (b + both_wrong)
    if margins == 0:
        return 0.0
    cross: float = both_right * both_wrong - b * c
    if cross > n / 2:
        cross -= n / 2
    elif cross > 0:
        cross = 0
    return cross / math.sqrt(margins)
