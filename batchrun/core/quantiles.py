"""Exact quantiles of a column too long to hold, found in a few passes over it.

A quantile with linear interpolation (polars' `quantile(q, "linear")`, whose arithmetic
`Quantiles.result` repeats to the bit) is made of one or two order statistics: the values at
given ranks of the column's sorted non-null values. They are found without sorting the
column, radix-select style, on the floats' bit patterns, which order as the floats do once
mapped (`_keys`). The first pass counts the values by the top 16 bits of their key, which
tells the bin each wanted rank falls in and its rank inside that bin. Each later pass, for
each bin still searched, either collects its values, once it holds at most COLLECT of them,
and sorts them, or counts them by their next 16 bits, narrowing the bin. Memory is a
65,536-bin count per bin searched and at most COLLECT values per bin collected, whatever
the column's length; MAX_PASSES (64 bits, 16 a pass) find any rank, and two usually do (one
for a column of at most COLLECT values).

Every pass must see the same values, in any order and any slicing (the report reads its
scratch copy of the current results again: `batchrun.report.tally`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

BITS = 16  # bits of the key a pass narrows a bin by
BINS = 1 << BITS
MAX_PASSES = 64 // BITS
COLLECT = 1 << 17  # values a bin may hold to be collected and sorted (1 MB)
_SIGN = np.uint64(1 << 63)
_ALL = 64  # the shift of the bin that holds every key


@dataclass
class _Bin:
    """Keys sharing their top `64 - shift` bits, and the wanted ranks that fall among them."""

    prefix: int  # the keys' common top bits
    shift: int  # how far a key is shifted right to give them
    size: int  # how many keys the bin holds
    collect: bool  # whether this pass collects the bin's keys
    count: bool  # whether this pass counts them by their next bits
    ranks: dict[int, int] = field(default_factory=dict)  # rank in the column -> in the bin
    keys: list[np.ndarray] = field(default_factory=list)  # the keys collected so far
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))  # by next bits

    def feed(self, keys: np.ndarray) -> None:
        mine = keys if self.shift == _ALL else keys[(keys >> np.uint64(self.shift)) == self.prefix]
        if self.collect:
            self.keys.append(mine)
        if self.count:
            low = (mine >> np.uint64(self.shift - BITS)) & np.uint64(BINS - 1)
            self.counts += np.bincount(low.astype(np.intp), minlength=BINS)


class Quantiles:
    """Linear quantiles of a column fed in passes (see the module docstring)."""

    def __init__(self, quantiles: Sequence[float]) -> None:
        self.quantiles = tuple(quantiles)
        self.count = 0  # non-null values
        self.nulls = 0
        self._found: dict[int, float] = {}  # rank -> the value at that rank
        # The bins the pass under way searches. The first pass counts every key, and
        # collects them too while they are few enough to be sorted.
        self._bins = [_Bin(0, _ALL, 0, collect=True, count=True)]
        self._first = True

    @property
    def done(self) -> bool:
        """Whether every wanted order statistic is found: no more passes are needed."""
        return not self._first and not self._bins

    def feed(self, values: pl.Series) -> None:
        """Take part of the column: each pass is fed the whole column, sliced in any way."""
        if self.done:
            return
        keys = _keys(values)
        for item in self._bins:
            item.feed(keys)
        if self._first:
            self.count += len(keys)
            self.nulls += values.null_count()
            root = self._bins[0]
            if root.collect and self.count > COLLECT:
                root.collect, root.keys = False, []

    def end_pass(self) -> None:
        """Find what the pass allows, and narrow the search for the rest."""
        if self._first:
            self._first = False
            root = self._bins[0]
            root.size = self.count
            root.ranks = {rank: rank for rank in self._ranks()} if self.count else {}
        searched: list[_Bin] = []
        for item in self._bins:
            if item.collect:
                ordered = np.sort(np.concatenate(item.keys)) if item.keys else np.empty(0)
                for rank, inside in item.ranks.items():
                    self._found[rank] = _value(int(ordered[inside]))
            else:
                searched += self._narrow(item)
        self._bins = searched

    def _narrow(self, item: _Bin) -> list[_Bin]:
        """The sub-bins of `item` (by its next bits) that hold wanted ranks."""
        ends = np.cumsum(item.counts)
        shift = item.shift - BITS
        bins: dict[int, _Bin] = {}
        for rank, inside in item.ranks.items():
            low = int(np.searchsorted(ends, inside, side="right"))
            before = int(ends[low - 1]) if low else 0
            prefix = (item.prefix << BITS) | low
            if shift == 0:
                self._found[rank] = _value(prefix)  # every bit of the key is known
                continue
            size = int(item.counts[low])
            small = size <= COLLECT
            sub = bins.setdefault(prefix, _Bin(prefix, shift, size, collect=small, count=not small))
            sub.ranks[rank] = inside - before
        return list(bins.values())

    def _ranks(self) -> set[int]:
        """The ranks (among non-null values) the quantiles are made of."""
        ranks: set[int] = set()
        for q in self.quantiles:
            index, _, top = self._index(q)
            ranks.add(index)
            if index != top:
                ranks.add(index + 1)
        return ranks

    def _index(self, q: float) -> tuple[int, float, int]:
        """polars' (from 2.2) `quantile_idx`, among the values alone: the rank below the
        quantile, the quantile's fractional rank, and the rank above. (Before 2.2 polars
        counted the nulls in the index, which changed the fraction's last bits.)"""
        float_index = (float(self.count) - 1.0) * q
        index = min(int(float_index), self.count - 1)
        return index, float_index, math.ceil(float_index)

    def result(self) -> tuple[float, ...] | None:
        """The quantiles, in the order asked, or None when the column has no values."""
        if not self.count:
            return None
        assert self.done, "a pass is still needed"
        values = []
        for q in self.quantiles:
            index, float_index, top = self._index(q)
            lower = self._found[index]
            if index == top:
                values.append(lower)
                continue
            upper = self._found[index + 1]
            values.append(
                lower if lower == upper else (float_index - index) * (upper - lower) + lower
            )
        return tuple(values)


def _keys(values: pl.Series) -> np.ndarray:
    """The non-null values as unsigned keys that sort as the floats do (NaN last, as in
    polars)."""
    floats = values.drop_nulls().cast(pl.Float64).to_numpy()
    floats = np.where(np.isnan(floats), np.nan, floats)  # one NaN pattern, a positive one
    bits = floats.view(np.uint64)
    return np.where((bits & _SIGN) != 0, ~bits, bits | _SIGN)


def _value(key: int) -> float:
    """The float a key stands for."""
    packed = np.array([key], dtype=np.uint64)
    bits = np.where((packed & _SIGN) != 0, packed ^ _SIGN, ~packed)
    return float(bits.view(np.float64)[0])
