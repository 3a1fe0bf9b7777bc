"""One row's request as the engine carries it (`Item`): the row's identity, its request body
and token estimate, and asking again after an answer that does not parse.

The request body is made by `rows.render`; what each attempt comes back as is
`protocol.outcome`'s; the row's result, once it has one, is made by `protocol.result`.

`retry_invalid` sends a follow-up after an unparseable answer: the model's answer and why it
could not be used, so that even a model at temperature 0 has a reason to answer differently.
The row keeps its fingerprint (it is the same question) and its committed result is the last
answer. Until a better answer comes, the answer in hand is kept: a stop, a failure or running
out of retries while asking again never throws away an answer that was paid for, and every
answer's usage and cost add up in the row's result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.completion import Usage
from ..protocol.outcome import Outcome
from ..protocol.result import RowResult, plus_cost, success_result
from ..protocol.wire import Reply
from .parse import Parser

# What a follow-up message costs beyond its text's tokens (the chat format's framing).
MESSAGE_OVERHEAD_TOKENS = 4


@dataclass(slots=True)
class Item:
    """One row on its way: its identity, its request and the request's token estimate."""

    key: str
    position: int
    fingerprint: str
    body: dict[str, Any]
    prompt_tokens: int  # counted before sending (exactly, for OpenAI models)
    estimate: int  # prompt tokens plus the completion's ceiling, for pacing
    reasked: int = 0  # follow-up questions sent after answers that did not parse
    paid: Usage | None = None  # what those earlier answers used, summed
    paid_cost: float | None = 0.0  # and cost (None once one had no price)
    # The last answer that did not parse (its outcome, reply and whether its usage was
    # counted locally): kept as the row's result if asking again ends without a better one.
    kept: tuple[Outcome, Reply | None, bool] | None = None
    kept_at: str | None = None  # the endpoint that gave that answer

    def ask_again(
        self,
        parser: Parser,
        outcome: Outcome,
        reply: Reply | None,
        counted: tuple[Usage, bool],
        cost: float | None,
        count: Callable[[str], int],
    ) -> bool:
        """After an answer that does not parse, extend the request with a follow-up (up to
        `retry_invalid` times) and keep the answer; False when the answer stands."""
        if self.reasked >= parser.spec.retry_invalid:
            return False
        completion = outcome.completion
        assert completion is not None
        error = parser.parse(completion.response, completion.tool_calls).error
        if error is None:
            return False
        usage, estimated = counted
        self.reasked += 1
        self.paid = usage + self.paid if self.paid else usage
        self.paid_cost = plus_cost(cost, self.paid_cost)
        self.kept = (outcome, reply, estimated)
        said = completion.response or completion.tool_calls or "(no answer)"
        follow_up = [
            {"role": "assistant", "content": said},
            {"role": "user", "content": parser.reask(error)},
        ]
        self.body = {**self.body, "messages": [*self.body["messages"], *follow_up]}
        added = sum(count(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in follow_up)
        self.estimate += added
        self.prompt_tokens += added
        return True

    def kept_answer(
        self,
        attempts: int,
        json_mode: bool,
        counted: tuple[Usage, bool] | None = None,
        cost: float | None = None,
    ) -> RowResult | None:
        """The row's last unparseable answer as its result, with every answer's usage and
        cost (a billed failing follow-up's too); None when the row has no answer yet."""
        if self.kept is None or self.paid is None:
            return None
        outcome, reply, estimated = self.kept
        usage, total = self.paid, self.paid_cost
        if counted is not None:
            usage, total = usage + counted[0], plus_cost(cost, total)
        result = success_result(
            self.key,
            self.position,
            self.fingerprint,
            outcome,
            attempts=attempts,
            usage=usage,
            usage_estimated=estimated,
            cost=total,
            json_mode=json_mode,
            latency_s=reply.latency_s if reply else None,
            ttft_s=reply.ttft_s if reply else None,
        )
        result.endpoint = self.kept_at
        return result
