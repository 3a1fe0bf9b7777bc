"""Prices per million tokens, from the table that ships in the package.

A model with no known price (a custom `gpt-4-gizmo-*`, a gateway's own model) has no cost:
`cost_usd` is null, never a made-up number.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from .completion import Usage

# A dated snapshot suffix, e.g. gpt-4o-mini-2024-07-18 or o3-mini-2025-01-31.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    cached_input: float | None
    output: float

    def cost(self, usage: Usage) -> float:
        """The cost of one request's usage (reasoning tokens are billed as output)."""
        cached = usage.cached_tokens or 0
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        fresh = max(usage.prompt_tokens - cached, 0)
        return (
            fresh * self.input + cached * cached_rate + usage.completion_tokens * self.output
        ) / 1_000_000


@dataclass(frozen=True)
class PriceTable:
    """The shipped price list: its source date and currency, and a price per model."""

    taken: str
    currency: str
    prices: dict[str, Price]

    def lookup(self, model: str) -> Price | None:
        """The price of `model`, or of the model a dated snapshot name belongs to."""
        price = self.prices.get(model)
        if price is None:
            base = _SNAPSHOT.sub("", model)
            price = self.prices.get(base) if base != model else None
        return price


@dataclass(frozen=True)
class Pricer:
    """The cost of one job's requests: its model's price and the gateway's billing factor."""

    price: Price | None  # None when the model has no known price
    factor: float = 1.0  # the gateway's multiplier (e.g. 0.5 for bcwhkj non-streaming)

    def cost(self, usage: Usage) -> float | None:
        """USD for one request's usage, or None when the price is unknown."""
        return None if self.price is None else self.price.cost(usage) * self.factor


@cache
def default_table() -> PriceTable:
    """The price table that ships with batchrun (`batchrun/data/prices.toml`)."""
    raw = tomllib.loads(resources.files("batchrun").joinpath("data/prices.toml").read_text())
    prices = {
        name: Price(p["input"], p.get("cached_input"), p["output"])
        for name, p in raw["models"].items()
    }
    return PriceTable(raw["taken"], raw["currency"], prices)
