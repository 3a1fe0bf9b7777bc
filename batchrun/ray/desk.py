"""One rate limit, one budget and one stop for all the workers of a distributed run.

A `Desk` holds, for each endpoint, the pacer of the whole cluster (`batchrun.engine.pacing.Pacer`,
on wall-clock time) and the run-wide state every worker must share: the stop (a bad key, an
exhausted quota, the budget, an interrupt), the pauses (a 429's cool-down, a quota being
probed, a reset header's hold), the budget's money and the checkpoint's commit numbers. The
Ray engine keeps one in a named actor (`batchrun.ray`); this module knows nothing of Ray.

Workers never ask for one request at a time (an actor call costs about a millisecond):

- A `LeasedPacer` takes start times in slices (`Desk.lease`): the desk charges its pacer for
  each start as if it happened then, so the cluster's starts are paced exactly as one
  process's would be, whichever worker makes them. A slice covers about LEASE_S of the
  cluster's pace shared among the workers that lease, so an idle worker holds little; a
  start not used within EXPIRE_S of its time is dropped rather than sent late in a burst.
- Successes (for the pace after a 429 storm) and the difference between estimated and real
  tokens travel with the next lease; a 429 or a reset header goes to the desk at once and
  every worker learns the pause at its next sync (SYNC_S).
- A `SharedBudget` (`batchrun.config.pricing`) takes money in slices (`Desk.allow`) and
  reserves each request's worst case against its slice, so the cluster's spend plus what is
  in flight never passes the budget. Money a worker holds unspent when it ends is given back;
  a worker that dies holds its slice to the end of the run (the budget may so stop short by
  up to a slice a worker lost, never go over).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..engine.lanes import LaneState
from ..engine.pacing import Clock, Pacer, Sleep, header_holds
from ..errors import (
    BadKey,
    BatchrunError,
    BudgetReached,
    DiskFull,
    Interrupted,
    NoEndpoint,
    QuotaExhausted,
    RunStopped,
    StoreFailed,
    SystematicFailure,
)

LEASE_S = 0.5  # a lease covers about this much of the cluster's pace, shared among workers
EXPIRE_S = 0.1  # a leased start not used this long after its time is dropped
EMPTY_LEASE_WAIT_S = 0.05  # after a lease that gave nothing (a stop), before asking again
SYNC_S = 0.25  # how often a worker syncs with the desk: stops and pauses reach it this fast
ACTIVE_S = 2.0  # a worker that leased within this long shares the pace
MAX_LEASE = 1024  # starts in one lease at most

# The stops a worker may hand on to the others, by name.
STOPS: dict[str, type[BatchrunError]] = {
    cls.__name__: cls
    for cls in (
        BadKey,
        QuotaExhausted,
        BudgetReached,
        SystematicFailure,
        DiskFull,
        StoreFailed,
        NoEndpoint,
        RunStopped,  # a lease on S3 lost to another run
        Interrupted,
    )
}


def stop_from(kind: str, message: str) -> BatchrunError:
    """The stop another worker or the driver raised, rebuilt from its name and message."""
    return STOPS.get(kind, BatchrunError)(message)


@dataclass
class Tally:
    """What one attempt at a shard has done so far, as a worker reports it."""

    settled_ok: int = 0  # rows found finished by earlier runs (or earlier attempts)
    settled_failed: int = 0
    ok: int = 0  # rows this attempt finished
    failed: int = 0
    tokens: int = 0
    spend: float = 0.0
    rate_limited: int = 0
    remapped: int = 0
    requests: int = 0  # starts this attempt took from its leases
    uncommitted: int = 0  # answers it holds that could not be committed (S3 out of reach)
    # Each endpoint's figures in the worker's engine (`batchrun.engine.local.lane_figures`: its
    # requests, answers, failed attempts by kind, circuit openings, why it went out, summed
    # over the workers by `add_lanes`; and its state, serving, paused, open or out, which
    # the desk's `_state` takes over the workers).
    lanes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.settled_ok + self.settled_failed + self.ok + self.failed


# What of an endpoint's figures the desk sums over workers (the rest it has itself: 429s,
# the rate that got through, the state).
_SUMMED = ("requests", "answers", "circuit_opened")


def add_lanes(into: dict[str, dict[str, Any]], lanes: Mapping[str, Mapping[str, Any]]) -> None:
    """Add one worker's endpoint figures (see `Tally.lanes`) to `into`: counts and failed
    attempts by kind summed, the first reason an endpoint went out kept."""
    for name, figures in lanes.items():
        total = into.setdefault(name, {**dict.fromkeys(_SUMMED, 0), "errors": {}, "out": None})
        for key in _SUMMED:
            total[key] += figures.get(key, 0)
        for kind, n in (figures.get("errors") or {}).items():
            total["errors"][kind] = total["errors"].get(kind, 0) + n
        total["out"] = total["out"] or figures.get("out")


@dataclass
class Sync:
    """What a worker learns at each sync."""

    stop: tuple[str, str] | None  # (kind, message) of the run-wide stop, once there is one
    paused_until: dict[str, float]  # per endpoint: no start before this wall-clock time


@dataclass
class _Endpoint:
    pacer: Pacer
    workers: dict[str, float] = field(default_factory=dict)  # worker -> when it last leased
    leases: int = 0  # lease calls
    granted: int = 0  # starts leased
    rate_limited: int = 0


class Desk:
    """The cluster's shared state; see the module docstring. Every method is quick and
    synchronous: the actor that holds the desk answers one call at a time."""

    def __init__(
        self,
        limits: Mapping[str, tuple[float, float | None]],
        *,
        budget_usd: float | None = None,
        spent: float = 0.0,
        next_commit: int = 1,
        clock: Clock = time.time,
    ) -> None:
        async def never(_: float) -> None:  # the desk's pacers schedule, they never wait
            raise AssertionError("a desk's pacer never sleeps")

        self._clock = clock
        self._endpoints = {
            name: _Endpoint(Pacer(rpm, tpm, clock=clock, sleep=never))
            for name, (rpm, tpm) in limits.items()
        }
        self._stop: tuple[str, str] | None = None
        self._next_commit = next_commit
        # Wall-clock time until which the driver's lease on an S3 checkpoint is sure to be
        # held (None: no lease, or not said yet): past it, no commit number is given.
        self._lease_until: float | None = None
        self._left = None if budget_usd is None else max(budget_usd - spent, 0.0)
        self._tallies: dict[int, tuple[str, Tally]] = {}  # shard -> (attempt, its tally)
        self._retired = Tally()  # what replaced attempts had done (their spend stays spent)
        self.commits = 0

    # -- pacing ----------------------------------------------------------------------------

    def lease(
        self,
        endpoint: str,
        worker: str,
        want: int,
        tokens_each: int = 0,
        successes: list[float] | None = None,
        token_delta: int = 0,
    ) -> tuple[list[float], float]:
        """Up to `want` start times for `worker`, and the endpoint's pause; first counts the
        successes (their start times) and the token correction the worker brings."""
        state = self._endpoints[endpoint]
        pacer = state.pacer
        for sent_at in successes or ():
            pacer.recover(sent_at)
        if token_delta:
            pacer.reconcile(0, token_delta)
        if self._stop is not None:
            return [], pacer.paused_until
        now = self._clock()
        state.workers[worker] = now
        sharing = sum(1 for t in state.workers.values() if now - t <= ACTIVE_S)
        share = math.ceil(pacer.requests_per_second * LEASE_S / max(sharing, 1))
        count = max(1, min(want, share, MAX_LEASE))
        state.leases += 1
        state.granted += count
        return pacer.schedule(count, tokens_each), pacer.paused_until

    def cool_down(self, endpoint: str, seconds: float, sent_at: float | None) -> float:
        """A worker's 429: every worker pauses; returns the pause's end."""
        state = self._endpoints[endpoint]
        state.rate_limited += 1
        state.pacer.cool_down(seconds, sent_at)
        return state.pacer.paused_until

    def hold(self, endpoint: str, until: float) -> float:
        """No start anywhere before `until` (a reset header; a quota being probed)."""
        pacer = self._endpoints[endpoint].pacer
        pacer.hold(until)
        return pacer.paused_until

    # -- the stop, the budget, the commits --------------------------------------------------

    def halt(self, kind: str, message: str) -> tuple[str, str]:
        """The run-wide stop; the first one stands. Returns the one that stands."""
        if self._stop is None:
            self._stop = (kind, message)
        return self._stop

    def allow(self, want: float) -> float:
        """Money for a worker's next requests: up to `want`, never more than is left."""
        if self._left is None:
            return want
        granted = min(want, self._left)
        self._left -= granted
        return granted

    def give_back(self, amount: float) -> None:
        if self._left is not None and amount > 0:
            self._left += amount

    def lease_until(self, until: float | None) -> None:
        """The driver says until when its lease on S3 is sure to be held (see
        `batchrun.checkpoint.folder.Checkpoint.lease_sure_until`)."""
        self._lease_until = until

    def commit_number(self) -> int:
        """A number for a worker's next checkpoint segment, never given twice; -1 while the
        driver's lease on S3 may have lapsed (S3 out of reach from the driver, or the lease
        lost): nothing is written under a lease that another run may hold."""
        if self._lease_until is not None and time.time() > self._lease_until:
            return -1
        number = self._next_commit
        self._next_commit += 1
        self.commits += 1
        return number

    # -- progress ----------------------------------------------------------------------------

    def sync(self, shard: int, attempt: str, tally: dict[str, Any]) -> Sync:
        """A worker's figures for its attempt at `shard`, and what it must know."""
        current = self._tallies.get(shard)
        if current is not None and current[0] != attempt:
            # A new attempt (the worker before died): its rows are counted by the new one,
            # as settled where they were committed; what the old one spent stays spent.
            old = current[1]
            for name in ("tokens", "spend", "rate_limited", "remapped", "requests"):
                setattr(self._retired, name, getattr(self._retired, name) + getattr(old, name))
            self._retired.ok += old.ok
            self._retired.failed += old.failed
            add_lanes(self._retired.lanes, old.lanes)
        self._tallies[shard] = (attempt, Tally(**tally))
        return Sync(
            self._stop,
            {name: state.pacer.paused_until for name, state in self._endpoints.items()},
        )

    def totals(self) -> dict[str, Any]:
        """The run's figures so far, over every shard (for the driver's progress)."""
        total = Tally(**asdict(self._retired))
        lanes: dict[str, dict[str, Any]] = {}
        add_lanes(lanes, self._retired.lanes)
        done = 0
        for _, tally in self._tallies.values():
            done += tally.done
            add_lanes(lanes, tally.lanes)
            for name, value in asdict(tally).items():
                if name != "lanes":
                    setattr(total, name, getattr(total, name) + value)
        figures = asdict(total)
        figures.pop("lanes")
        figures["done"] = done
        figures["stop"] = self._stop
        figures["commits"] = self.commits
        figures["endpoints"] = {
            name: {
                "leases": state.leases,
                "granted": state.granted,
                "rate_limited": state.rate_limited,
                "allowed_rps": state.pacer.allowed_rps,
                "state": self._state(name),
                "run": lanes.get(name, {}),  # the workers' figures, summed
            }
            for name, state in self._endpoints.items()
        }
        return figures

    def _state(self, endpoint: str) -> str:
        """An endpoint's state over the cluster: serving where any worker's engine serves
        it (or none has said), else the first of paused, open and out any worker has."""
        seen = {
            tally.lanes.get(endpoint, {}).get("state") for _, tally in self._tallies.values()
        } - {None}
        for state in LaneState:
            if state.value in seen:
                return state.value
        return LaneState.SERVING.value

    def settle(self) -> None:
        """The end of the run: a storm it ended in sets its figures."""
        for state in self._endpoints.values():
            state.pacer.settle()


class DeskLink(Protocol):
    """How a worker reaches the desk: `batchrun.ray` over an actor handle; tests in-process."""

    def lease(
        self, want: int, tokens_each: int, successes: list[float], token_delta: int
    ) -> Awaitable[tuple[list[float], float]]: ...

    def cool_down(self, seconds: float, sent_at: float | None) -> None: ...

    def hold(self, until: float) -> None: ...

    def allow(self, want: float) -> float: ...  # blocking: the budget asks rarely


class LeasedPacer:
    """A worker's pacer (a `batchrun.engine.pacing.LanePacer`): starts only at times leased
    from the desk (see the module docstring). Pauses it learns (its own 429s, headers, the
    desk's syncs) hold it here at once, and go to the desk for the others. The pace itself,
    and what got through a 429 storm, are the desk's: here the pace is the job's."""

    def __init__(
        self,
        link: DeskLink,
        requests_per_minute: float,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._link = link
        self._clock = clock  # wall-clock seconds, as the desk's
        self._sleep = sleep
        self._lock = asyncio.Lock()  # FIFO queue of waiting starts; the head waits holding it
        self._closed = False  # the run is stopping: starts are no longer paced
        self._paused_until = clock()  # no start before this (a pause, here or the desk's)
        self._rps = requests_per_minute / 60  # the job's pace, for choosing among lanes
        self._starts: deque[float] = deque()  # leased start times, earliest first
        self._successes: list[float] = []  # start times of successes not yet reported
        self._token_delta = 0  # real minus estimated tokens, not yet reported
        self._appetite = 4  # starts to ask for next: grows while leases run out quickly
        self._leased_at = 0.0
        self._granted = 0  # starts the last lease gave
        self._used_at_lease = 0  # starts taken before it
        self.requests = 0  # starts taken
        self.leases = 0  # lease calls made

    async def acquire(self, tokens: int = 0) -> None:
        async with self._lock:
            while not self._closed:
                now = self._clock()
                while self._starts and (
                    self._starts[0] < self._paused_until or self._starts[0] < now - EXPIRE_S
                ):
                    self._starts.popleft()  # leased before a pause, or left unused too long
                if not self._starts:
                    await self._refill(tokens)
                    continue
                ready = self._starts[0]
                if ready <= now:
                    self._starts.popleft()
                    self.requests += 1
                    return
                await self._sleep(ready - now)

    async def _refill(self, tokens: int) -> None:
        now = self._clock()
        if self.leases:
            used = self.requests - self._used_at_lease
            if used < self._granted // 2 or now - self._leased_at > 4 * LEASE_S:
                self._appetite = max(self._appetite // 2, 1)  # starts expired unused
            elif now - self._leased_at < LEASE_S:
                self._appetite = min(self._appetite * 2, MAX_LEASE)  # all used, and fast
        successes, self._successes = self._successes, []
        delta, self._token_delta = self._token_delta, 0
        starts, paused_until = await self._link.lease(self._appetite, tokens, successes, delta)
        self.leases += 1
        self._leased_at = self._clock()
        self._granted, self._used_at_lease = len(starts), self.requests
        self._paused_until = max(self._paused_until, paused_until)
        self._starts.extend(starts)
        if not starts:  # the desk has a stop this worker learns at its next sync
            await self._sleep(EMPTY_LEASE_WAIT_S)

    @property
    def ready_at(self) -> float:
        """No start before the pause ends; when after it is the desk's to say."""
        return self._paused_until

    @property
    def requests_per_second(self) -> float:
        return self._rps

    @property
    def allowed_rps(self) -> float | None:
        """The desk measures what got through a storm, over the cluster."""
        return None

    def close(self) -> None:
        self._closed = True

    def learn_pause(self, until: float) -> None:
        """The desk says no start before `until` (another worker's 429 or hold)."""
        self._paused_until = max(self._paused_until, until)

    def cool_down(self, seconds: float, sent_at: float | None = None) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._link.cool_down(seconds, sent_at)

    def hold(self, until: float) -> None:
        if until > self._paused_until:
            self._paused_until = until
            self._link.hold(until)

    def follow_headers(
        self, headers: Mapping[str, str], in_flight: int, in_flight_tokens: int
    ) -> None:
        for seconds in header_holds(headers, in_flight, in_flight_tokens):
            self.hold(self._clock() + seconds)

    def recover(self, sent_at: float | None = None) -> None:
        self._successes.append(self._clock() if sent_at is None else sent_at)

    def reconcile(self, estimated: int, actual: int) -> None:
        self._token_delta += actual - estimated

    def settle(self) -> None:
        """The pace after a storm is the desk's to set."""
