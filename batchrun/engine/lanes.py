"""Several endpoints behind one run: a lane for each, and the choice of a lane per attempt.

A lane is one endpoint of the job with everything a run keeps per gateway: its wire (and
key), its pacer (its own requests and tokens a minute), its quota gate, its circuit, its
prices and its concurrency. `Pool.take` gives every attempt of a row a lane:

- only a lane that is *serving*: not out for the run (a rejected key, a quota that did not
  come back), not paused on an exhausted quota, not behind an open circuit, and with a free
  request slot. A paused lane gets only its probes: when one is due, the first row to ask
  for a lane sends it there; a row that got the quota answer goes elsewhere at once (no row
  waits out a quota while another endpoint serves: see `batchrun.engine.retry.QuotaGate`);
- with `priority`, the first lane in the job's order where the request could start within
  PRIORITY_WAIT_S, by its pacer and the requests already waiting in it: the first endpoint
  takes all it can within its limits, the next ones the overflow (and everything while the
  first is out, paused or open); where none could start that soon, the soonest;
- with `spread`, the lane where the request could start soonest, the least busy for its
  concurrency among equals: a lane with a lower limit, or one a 429 slowed, takes less, so
  shares follow the endpoints' limits;
- after an attempt that failed on a lane, another lane where one is serving: a row whose
  attempt hit a 502 storm is retried elsewhere at once.

A circuit (only with several endpoints: with one there is nowhere else to go, and a row's
own backoff spaces its retries) opens after CIRCUIT_ERRORS server errors or timeouts in a
row: no traffic for CIRCUIT_FIRST_S, then one probe; a probe that fails opens it for twice
as long (at most CIRCUIT_MAX_S), one that succeeds closes it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..config.job import Endpoint, Job
from ..config.pricing import Pricer, job_pricer
from ..core.network import DIRECT, Route
from ..core.secrets import Secret
from ..protocol.wire import Wire
from .pacing import LanePacer, Pacer, Sleep
from .retry import QuotaGate

CIRCUIT_ERRORS = 5  # server errors or timeouts in a row that open an endpoint's circuit
CIRCUIT_FIRST_S = 5.0  # how long a circuit stays open before its first probe
CIRCUIT_MAX_S = 300.0  # the longest it stays open between probes
# With `priority`, a request waits this long at most at an earlier endpoint's pacer rather
# than go to a later one: a second's share of a fast endpoint is not overflow.
PRIORITY_WAIT_S = 0.25


class LaneState(enum.StrEnum):
    """Where a lane stands. Each is the word the progress line and the endpoints' note
    (JSON) show, as a string is: a worker's figures carry it to the desk, whose state of an
    endpoint is the first of these that any worker's lane is in, in this order (see
    `batchrun.ray.desk.Desk`)."""

    SERVING = "serving"
    PAUSED = "paused"  # its quota is exhausted and probed
    OPEN = "open"  # its circuit is open
    OUT = "out"  # it serves no more this run


class Circuit:
    """An endpoint's breaker over server errors and timeouts; see the module docstring."""

    def __init__(self, errors: int | None) -> None:
        self._errors = errors  # failures in a row that open it; None: never opens
        self._failures = 0  # in a row, since the last success
        self.open_until: float | None = None  # no traffic before this; None: closed
        self._wait_s = CIRCUIT_FIRST_S  # how long it opens next time
        self._probing = False  # the one request let through to test it is out
        self.opened = 0  # how many times it opened, this run

    def allows(self, now: float) -> bool:
        """Whether a request may go: closed, or open, due for its probe and none out."""
        if self.open_until is None:
            return True
        return now >= self.open_until and not self._probing

    def sending(self, now: float) -> None:
        """A request goes through it: where it is open, that request is the probe."""
        if self.open_until is not None and now >= self.open_until:
            self._probing = True

    def answered(self) -> None:
        """The endpoint answered (an answer or a refusal of the request, not a failure)."""
        self._failures, self.open_until, self._wait_s = 0, None, CIRCUIT_FIRST_S
        self._probing = False

    def failed(self, now: float) -> bool:
        """A server error or timeout; True when it opened the circuit."""
        if self._errors is None:
            return False
        if self._probing:  # the probe failed: open again, for longer
            self._probing = False
            self._wait_s = min(self._wait_s * 2, CIRCUIT_MAX_S)
            self.open_until = now + self._wait_s
            return True
        self._failures += 1
        if self.open_until is None and self._failures >= self._errors:
            self.open_until = now + self._wait_s
            self.opened += 1
            return True
        return False


@dataclass(eq=False)
class Lane:
    """One endpoint as a run sends to it."""

    endpoint: Endpoint
    model: str  # the model name requests carry here
    wire: Wire
    pacer: LanePacer
    quota: QuotaGate
    pricer: Pricer
    circuit: Circuit
    busy: int = 0  # attempts holding one of its request slots
    queued: int = 0  # of those, the ones still waiting in its pacer
    in_flight: int = 0  # requests sent and not yet answered
    in_flight_tokens: int = 0  # their estimated tokens
    out: str | None = None  # why it serves no more this run; None while it may
    requests: int = 0  # attempts sent here, this run
    answers: int = 0  # of those, with an answer
    rate_limited: int = 0  # 429s that were rate limits, this run
    errors: dict[str, int] = field(default_factory=dict)  # failed attempts by kind

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def concurrency(self) -> int:
        return self.endpoint.concurrency

    def state(self, now: float) -> LaneState:
        if self.out is not None:
            return LaneState.OUT
        if not self.quota.is_open:
            return LaneState.PAUSED
        if self.circuit.open_until is not None and not self.circuit.allows(now):
            return LaneState.OPEN
        return LaneState.SERVING

    def start_s(self, now: float) -> float:
        """How soon a request given to it now could start, by its pacer and its queue."""
        ready = max(self.pacer.ready_at, now)
        return ready - now + self.queued / max(self.pacer.requests_per_second, 1e-9)


class Pool:
    """The run's lanes and the choice among them; see the module docstring."""

    def __init__(
        self,
        lanes: Sequence[Lane],
        strategy: str,
        *,
        clock: Callable[[], float],
        sleep: Sleep,
        stopping: asyncio.Event,
    ) -> None:
        self.lanes = list(lanes)
        self.strategy = strategy
        self._clock = clock
        self._sleep = sleep
        self._stopping = stopping
        self._changed = asyncio.Event()  # set (and replaced) whenever a lane may have freed

    @property
    def single(self) -> bool:
        return len(self.lanes) == 1

    @property
    def all_out(self) -> bool:
        return all(lane.out is not None for lane in self.lanes)

    def serving_elsewhere(self, lane: Lane) -> bool:
        """Whether a lane other than `lane` is serving now (busy or not)."""
        now = self._clock()
        return any(o is not lane and o.state(now) is LaneState.SERVING for o in self.lanes)

    async def take(self, row: object, avoid: Lane | None = None) -> Lane | None:
        """A lane for `row`'s next attempt, one of its request slots held (give it back with
        `release`); None when the run stops or no lane is left."""
        while True:
            if self._stopping.is_set() or self.all_out:
                return None
            now = self._clock()
            lane = self._choose(row, avoid, now)
            if lane is not None:
                lane.busy += 1
                lane.circuit.sending(now)
                return lane
            await self._wait(now)

    def release(self, lane: Lane) -> None:
        lane.busy -= 1
        self.poke()

    def poke(self) -> None:
        """Wake the rows waiting for a lane: one may have freed or changed state."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _choose(self, row: object, avoid: Lane | None, now: float) -> Lane | None:
        serving = [lane for lane in self.lanes if lane.state(now) is LaneState.SERVING]
        elsewhere = avoid is not None and any(lane is not avoid for lane in serving)
        for lane in self.lanes:
            if lane.out is not None or (lane is avoid and elsewhere):
                continue
            if lane.quota.probing(row) or lane.quota.claim(row, now):
                return lane  # the prober of a paused lane probes it
        if elsewhere:
            serving = [lane for lane in serving if lane is not avoid]
        free = [lane for lane in serving if lane.busy < lane.concurrency]
        if not free:
            return None
        if self.strategy == "spread":
            return min(free, key=lambda lane: (lane.start_s(now), lane.busy / lane.concurrency))
        for lane in free:
            if lane.start_s(now) <= PRIORITY_WAIT_S:
                return lane
        return min(free, key=lambda lane: lane.start_s(now))

    async def _wait(self, now: float) -> None:
        """Until a lane frees or changes, or the next circuit or quota is due for its probe."""
        due = [
            until
            for lane in self.lanes
            if lane.out is None
            for until in (lane.circuit.open_until, lane.quota.probe_at)
            if until is not None and until > now
        ]
        waits: set[asyncio.Future[object]] = {
            asyncio.ensure_future(self._changed.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        }
        if due:
            waits.add(asyncio.ensure_future(self._sleep(max(min(due) - now, 0.0))))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def describe(self) -> str:
        """Each lane's name and state, for the progress line: "a serving, b paused"."""
        now = self._clock()
        return ", ".join(f"{lane.name} {lane.state(now).value}" for lane in self.lanes)


@dataclass(frozen=True)
class SharedLanes:
    """What a Ray worker's lanes share with the whole cluster, by endpoint name (see
    `batchrun.ray.worker`): the pace leased from the desk, and who hears a quota's pause."""

    pacers: Mapping[str, LanePacer]
    quota_paused: Mapping[str, Callable[[float], None]]


def build_pool(
    job: Job,
    urls: Mapping[str, str],
    keys: Mapping[str, Secret | None],
    routes: Mapping[str, Route],
    *,
    clock: Callable[[], float],
    sleep: Sleep,
    stopping: asyncio.Event,
    shared: SharedLanes | None = None,
) -> Pool:
    """The job's lanes, each complete: `urls`, `keys` and `routes` give each endpoint's base
    URL, key and route (absent: direct) by name; `sleep` is cut short by `stopping`. With
    `shared`, a Ray worker's, each lane is paced by the desk and its quota's pauses are told
    to it; otherwise each has a pacer of its own."""
    limits = job.limits
    several = len(job.endpoints) > 1
    lanes = []
    for endpoint in job.endpoints:
        name = endpoint.name
        pacer: LanePacer
        if shared is not None:
            pacer = shared.pacers[name]
        else:
            pacer = Pacer(
                endpoint.requests_per_minute, endpoint.tokens_per_minute, clock=clock, sleep=sleep
            )
        wire = Wire(
            urls[name],
            keys.get(name),
            headers=endpoint.headers,
            pool_size=endpoint.concurrency,
            timeout_s=limits.request_timeout_s,
            idle_timeout_s=limits.idle_timeout_s,
            route=routes.get(name, DIRECT),
        )
        quota = QuotaGate(
            limits.quota_wait_s,
            clock,
            sleep,
            hand_off=several,
            on_pause=shared.quota_paused[name] if shared is not None else None,
        )
        lanes.append(
            Lane(
                endpoint=endpoint,
                model=job.model_at(endpoint),
                wire=wire,
                pacer=pacer,
                quota=quota,
                pricer=job_pricer(job, endpoint),
                circuit=Circuit(CIRCUIT_ERRORS if several else None),
            )
        )
    return Pool(lanes, job.strategy, clock=clock, sleep=sleep, stopping=stopping)
