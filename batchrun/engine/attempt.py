"""One row's attempts, as the engine's steps leave them (as tenacity's `RetryCallState`).

A row is sent until it has a final result: each attempt takes a lane and waits for its
pacer, reserves its worst case against the budget, is sent, and then what came back says
what follows (`batchrun.engine.local`). This object is all a row carries from one attempt
to the next; `batchrun.engine.retry.RetryPolicy` reads its bounds.

Two bounds hold a row's retries: `max_attempts` counts only the attempts that were the
row's own (`tries`): a quota, a rate limit, a rejected key or a refused route is the run's
or the endpoint's, not the row's, so it never uses one up; `max_retry_s` bounds the time
since `started` whatever the attempts were.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.completion import Usage
from ..protocol.outcome import Action, Outcome
from ..protocol.wire import Reply
from ..rows.request import Item
from .lanes import Lane

# The outcomes that count against a row's max_attempts (see the module docstring).
ROWS_OWN = frozenset({Action.OK, Action.RETRY, Action.FAIL})


@dataclass(eq=False, slots=True)
class Attempts:
    """One row's attempts so far, and what the last one brought."""

    item: Item
    started: float  # when its bounds began: its first attempt, or its last asking again
    attempts: int = 0  # requests sent for it (its result says how many)
    tries: int = 0  # of those since `started`, the ones that count toward max_attempts
    failed_on: Lane | None = None  # the lane the last attempt failed on: the next goes elsewhere
    worst: float = 0.0  # the budget's reservation for the attempt out
    sent_at: float = 0.0  # when the last attempt was sent
    outcome: Outcome | None = None  # what the last attempt came back with
    reply: Reply | None = None  # its reply, when the gateway answered
    usage: tuple[Usage, bool] | None = None  # what it used (and whether counted here), if billed
    cost: float | None = None  # and what that cost

    def sent(self, at: float) -> None:
        self.attempts += 1
        self.sent_at = at

    def came_back(self, outcome: Outcome, reply: Reply | None) -> None:
        self.outcome, self.reply = outcome, reply
        if outcome.action in ROWS_OWN:
            self.tries += 1

    def asked_again(self, at: float) -> None:
        """The answer did not parse and the row asks again: its bounds start over."""
        self.tries, self.started, self.failed_on = 0, at, None

    @property
    def last(self) -> Outcome:
        """The last attempt's outcome (there has been one)."""
        assert self.outcome is not None
        return self.outcome
