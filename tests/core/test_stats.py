"""The statistics helpers against values computed another way: exact fractions, published
examples, and the normal approximation."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import pytest

from batchrun.core.stats import (
    EXACT_LIMIT,
    mcnemar_exact,
    paired_difference_interval,
    wilson_interval,
)


def exact_mcnemar(b: int, c: int) -> float:
    """min(1, 2·P[X ≤ min(b, c)]) for X ~ Binomial(b + c, 1/2), in exact fractions."""
    n, k = b + c, min(b, c)
    term, tail = 1, 1  # C(n, 0), and the sum so far
    for i in range(k):
        term = term * (n - i) // (i + 1)
        tail += term
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def normal_mcnemar(b: int, c: int) -> float:
    """The continuity-corrected normal approximation, good for many discordant pairs."""
    z = (abs(b - c) - 1) / math.sqrt(b + c)
    return math.erfc(z / math.sqrt(2))


def test_mcnemar_known_value() -> None:
    # 2 · (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 · 79 / 4096
    assert mcnemar_exact(10, 2) == 0.03857421875
    assert mcnemar_exact(2, 10) == 0.03857421875
    assert mcnemar_exact(6, 16) == pytest.approx(0.0524788, abs=1e-7)  # Cavo et al. 2012


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (0, 1), (7, 7), (4, 5), (500, 500)])
def test_mcnemar_is_one_without_evidence(b: int, c: int) -> None:
    assert mcnemar_exact(b, c) == 1.0


@pytest.mark.parametrize(
    ("b", "c"), [(1, 1), (3, 0), (9, 1), (30, 12), (400, 350), (700, 600), (1200, 1100), (5, 2000)]
)
def test_mcnemar_matches_exact_fractions_and_is_symmetric(b: int, c: int) -> None:
    expected = exact_mcnemar(b, c)
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_large_counts_are_exact_fast_and_near_the_normal_approximation() -> None:
    assert EXACT_LIMIT < 5000 + 4800  # the floating-point path
    p = mcnemar_exact(5000, 4800)
    assert p == pytest.approx(exact_mcnemar(5000, 4800), rel=1e-9)
    assert p == pytest.approx(normal_mcnemar(5000, 4800), rel=1e-3)
    assert 0.04 < p < 0.05
    started = time.perf_counter()
    huge = mcnemar_exact(5_000_000, 4_995_000)
    assert time.perf_counter() - started < 1.0
    assert huge == pytest.approx(normal_mcnemar(5_000_000, 4_995_000), rel=1e-3)
    assert mcnemar_exact(3000, 0) == 0.0  # 2 · 2^-3000 is below the smallest float


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(81, 100)
    assert low == pytest.approx(0.7222, abs=1e-4) and high == pytest.approx(0.8749, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_paired_difference_interval_matches_newcombe() -> None:
    # Cavo et al. 2012 (Fagerland, Lydersen & Laake, ch. 8): 59 both, 6 first only, 16 second
    # only, 80 neither; Newcombe's interval for first - second is (-0.1186, -0.0046).
    low, high = paired_difference_interval(59, 6, 16, 80)
    assert (low, high) == pytest.approx((0.0046, 0.1186), abs=1e-4)
    # Swapping A and B mirrors the interval.
    assert paired_difference_interval(59, 16, 6, 80) == pytest.approx((-high, -low))


@pytest.mark.parametrize("cells", [(0, 10, 0, 0), (0, 0, 10, 0), (5, 0, 0, 5), (1, 2, 3, 4)])
def test_paired_difference_interval_holds_the_estimate_within_bounds(
    cells: tuple[int, int, int, int],
) -> None:
    _, b, c, _ = cells
    low, high = paired_difference_interval(*cells)
    estimate = (c - b) / sum(cells)
    assert -1.0 <= low <= estimate <= high <= 1.0
    assert paired_difference_interval(0, 0, 0, 0) == (-1.0, 1.0)
