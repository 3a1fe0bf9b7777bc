"""Prices per million tokens, from the table that ships in the package.

A model with no known price (a custom `gpt-4-gizmo-*`, a gateway's own model) has no cost:
`cost_usd` is null, never a made-up number.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from ..core.completion import Usage
from .job import Endpoint, Job
from .presets import priced_model

BUDGET_SLICES = 64  # a Ray worker takes at most this share of the money left at a time
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

    model: str  # the model whose price applies
    price: Price | None  # None when the model has no known price
    factor: float = 1.0  # the gateway's multiplier (0.5 for bcwhkj non-streaming, or a batch)
    source: str = "table"  # where the price came from: "job", "table" or "none"

    def cost(self, usage: Usage) -> float | None:
        """USD for one request's usage, or None when the price is unknown."""
        return None if self.price is None else self.price.cost(usage) * self.factor

    def worst_case(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The most a request can cost: no cache discount, every completion token used."""
        if self.price is None:
            return None
        usd = prompt_tokens * self.price.input + completion_tokens * self.price.output
        return usd / 1_000_000 * self.factor


def job_pricer(job: Job, endpoint: Endpoint | None = None) -> Pricer:
    """The pricer of a job's answers from `endpoint` (by default the first direct one, else
    the batch one): the job's own [cost.prices] first, then the shipped table, for the
    model the endpoint is asked for and with its billing rules (`price_as`, and
    `batch_price_factor` for a batch endpoint, else `non_stream_price_factor`)."""
    endpoint = endpoint or (job.direct_endpoints or job.endpoints)[0]
    requested = job.model_at(endpoint)
    model = priced_model(requested, endpoint.price_as)
    factor = _billing_factor(job, endpoint)
    # A gateway's own name for the model (`model` of the endpoint) may be unknown to the
    # tables: the job's name for it is tried after.
    own = str(job.request["model"])
    for name in dict.fromkeys((requested, model, own)):
        spec = job.cost.prices.get(name)
        if spec is not None:
            return Pricer(name, Price(spec.input, spec.cached_input, spec.output), factor, "job")
    for name in dict.fromkeys((model, priced_model(own, endpoint.price_as))):
        price = default_table().lookup(name)
        if price is not None:
            return Pricer(name, price, factor, "table")
    return Pricer(model, None, factor, "none")


def _billing_factor(job: Job, endpoint: Endpoint) -> float:
    """The share of the list price an answer from `endpoint` is billed at. Every answer of a
    batch endpoint is a batch answer, billed as the provider bills batches (the batch
    factor alone: a batch line is never streamed, and its discount is the whole rule)."""
    if endpoint.is_batch:
        return endpoint.batch_price_factor
    return 1.0 if job.request.get("stream") is True else endpoint.non_stream_price_factor


class Budget:
    """Spend committed and reserved against `budget_usd`.

    Each request reserves its worst case before it starts and settles with what it really
    cost when it ends, so committed plus in-flight spend never passes the limit.
    """

    def __init__(self, limit: float, spent: float) -> None:
        self.limit = limit  # USD the job may spend in all
        self.spent = spent  # USD spent by finished requests, earlier runs included
        self.reserved = 0.0  # worst cases of the requests in flight

    def reserve(self, worst_case: float) -> bool:
        """Reserve room for a request; False if it could take spend past the limit."""
        if self.spent + self.reserved + worst_case > self.limit:
            return False
        self.reserved += worst_case
        return True

    def settle(self, reserved: float, cost: float | None) -> None:
        """A request ended: release its reservation and count what it cost."""
        self.reserved = max(self.reserved - reserved, 0.0)
        self.spent += cost or 0.0


class SharedBudget:
    """The budget as one Ray worker keeps it: `Budget`'s interface, against money taken from
    the cluster's desk in slices (see `batchrun.ray.desk`). Here, not in the desk's module, so
    that the engine, which takes either budget, needs nothing of Ray's."""

    def __init__(self, allow: Callable[[float], float], limit: float, spent: float) -> None:
        self._allow = allow  # asks the desk for money (blocking: about a millisecond)
        self.limit = limit  # the job's budget, for messages
        self.spent = spent  # spent before this run and by this worker since
        self.reserved = 0.0  # worst cases of this worker's requests in flight
        self._held = 0.0  # money taken from the desk and not yet spent or reserved
        self._slice = max((limit - spent) / BUDGET_SLICES, 0.0)

    def reserve(self, worst_case: float) -> bool:
        if worst_case > self._held:
            self._held += self._allow(max(worst_case - self._held, self._slice, worst_case * 8))
        if worst_case > self._held:
            return False
        self._held -= worst_case
        self.reserved += worst_case
        return True

    def settle(self, reserved: float, cost: float | None) -> None:
        self.reserved = max(self.reserved - reserved, 0.0)
        spent = cost or 0.0
        self.spent += spent
        self._held += reserved - spent  # the part of the worst case not spent

    def unspent(self) -> float:
        """Money held and not reserved: given back when the worker ends."""
        held, self._held = self._held, 0.0
        return held


@cache
def default_table() -> PriceTable:
    """The price table that ships with batchrun (`batchrun/data/prices.toml`)."""
    raw = tomllib.loads(resources.files("batchrun").joinpath("data/prices.toml").read_text())
    prices = {
        name: Price(p["input"], p.get("cached_input"), p["output"])
        for name, p in raw["models"].items()
    }
    return PriceTable(raw["taken"], raw["currency"], prices)
