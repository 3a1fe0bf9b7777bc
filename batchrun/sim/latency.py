"""How long the simulated upstream takes to answer: a seeded draw per request."""

from __future__ import annotations

import math
import random

from .config import LatencyDist

LOGNORMAL_SIGMA = 0.5


class Latency:
    """Seconds before answering, drawn from a fixed, uniform or lognormal distribution."""

    def __init__(self, mean_ms: float, dist: LatencyDist, seed: int) -> None:
        # The mean delay in seconds; every distribution keeps this mean.
        self._mean = mean_ms / 1000
        self._dist = dist
        # Seeded by config and drawn once per request, so runs repeat their timing.
        self._rng = random.Random(f"latency:{seed}")

    def sample(self) -> float:
        if self._mean <= 0:
            return 0.0
        if self._dist == "uniform":
            return self._rng.uniform(0, 2 * self._mean)
        if self._dist == "lognormal":
            # mu is chosen so that the lognormal's mean, exp(mu + sigma²/2), is the mean asked.
            mu = math.log(self._mean) - LOGNORMAL_SIGMA**2 / 2
            return self._rng.lognormvariate(mu, LOGNORMAL_SIGMA)
        return self._mean
