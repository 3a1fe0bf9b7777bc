"""The answer to one line of a batch: what /chat/completions would answer its body.

A line gets the completion the chat handler would give the same body (the same id, content
and usage), or an error body with its status, through the same request checks and fault
replies. Its faults are drawn from `batch_line_faults` in line order, seeded by the config
(so a line sent again in a later batch draws again, as a retried request does), or forced
by a `[[sim:KIND]]` marker naming one of BATCH_LINE_FAULTS.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson

from batchrun.core.tokens import counter_for

from .answers import complete
from .config import BATCH_LINE_FAULTS, SimConfig
from .faults import CONTENT_FAULTS, MISSING_MODEL, FaultPicker, fault_reply, marked_fault
from .request import InvalidRequest, parse_request


class LineAnswerer:
    """Answers batch lines for one server; its fault draws follow the lines it answers."""

    def __init__(self, config: SimConfig) -> None:
        self._config = config
        self._faults = FaultPicker(config.batch_line_faults, config.seed)
        # How often each fault kind has been served, to rotate its variants.
        self._turns: Counter[str] = Counter()

    def answer(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body /chat/completions would answer `body` with."""
        try:
            chat = parse_request(body)
        except InvalidRequest as exc:
            error = {
                "message": str(exc),
                "type": "invalid_request_error",
                "param": exc.param,
                "code": None,
            }
            return 400, {"error": error}
        drawn = self._faults.pick(chat.key)
        marked = marked_fault(chat.last_user_text)
        kind = marked if marked in BATCH_LINE_FAULTS else drawn
        if chat.model == MISSING_MODEL and marked is None:
            kind = "model_not_found"
        if kind is not None and kind not in CONTENT_FAULTS:
            turn = self._turns[kind]
            self._turns[kind] += 1
            prompt_tokens = counter_for(chat.model).chat(chat.messages)
            reply = fault_reply(kind, self._config.dialect, chat.model, turn, prompt_tokens)
            return reply.status, orjson.loads(reply.body)
        completion = complete(
            chat,
            self._config.dialect,
            with_usage=not self._config.no_usage,
            style=None if kind == "bad_json" and chat.json_mode is None else kind,
            noise=self._config.noise_for(chat.model),
        )
        return 200, completion.to_json()
