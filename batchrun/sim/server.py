"""The simulator's HTTP face: aiohttp handlers for chat completions and the model list
(the Files and Batches API has its own, in `batch_api`).

A chat request goes through, in order: JSON decoding, the API key, the quota window, the
requests-per-minute limit, the in-flight cap (each answered at once, like a gateway's own
front door), then body checks, the fault draw, the simulated latency, and finally an error,
a dropped connection, or the completion, whole or streamed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from batchrun.core.tokens import counter_for

from .answers import Completion, complete
from .batch_api import BatchApi
from .config import SimConfig
from .faults import (
    CONTENT_FAULTS,
    DELIVERY_FAULTS,
    MISSING_MODEL,
    ErrorReply,
    FaultPicker,
    fault_reply,
    invalid_request,
    key_refusal,
    marked_fault,
    quota_exhausted,
    rate_limited,
    too_many_in_flight,
)
from .gateway_limits import NOMINAL_RPM, InFlight, QuotaWindow, RequestRate
from .holds import Holds
from .latency import Latency
from .ledger import BatchLedger
from .records import RequestLog, RequestRecord, redacted_headers
from .request import ChatRequest, InvalidRequest, parse_request
from .stream import plan_stream

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo", "o3-mini", "gpt-4-gizmo-g-B3hgivKK9")
# Streamed chunks are this many times slower under the slow_stream fault, from at least 5 ms.
SLOW_STREAM_FACTOR = 20
SLOW_STREAM_FLOOR_S = 0.005
MAX_BODY_BYTES = 64 * 1024 * 1024
_JSON = "application/json"


class _Trace:
    """What becomes a request's record, filled in as the request is handled."""

    __slots__ = ("body", "fault", "model", "status", "stream")

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.model: str | None = None
        self.status = 0
        self.fault: str | None = None
        self.stream = False


class SimHandlers:
    """The request handlers and the state they share; lives on one event loop."""

    def __init__(
        self,
        config: SimConfig,
        log: RequestLog | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        # Where each chat request's record goes; None to keep none (long-running servers).
        self._log = log
        # The clock arrival times and limits are measured on.
        self._clock = clock
        self._faults = FaultPicker(config.faults, config.seed)
        self._latency = Latency(config.latency_ms, config.latency_dist, config.seed)
        # The per-minute limit; also kept, not enforced, when only its headers are asked for.
        self._rate: RequestRate | None = None
        if config.rpm_limit is not None or config.ratelimit_headers:
            self._rate = RequestRate(config.rpm_limit or NOMINAL_RPM, config.rpm_limit is not None)
        self._in_flight = InFlight(config.max_in_flight)
        self._quota = QuotaWindow(config.quota_window)
        # How often each fault kind has been served, to rotate its variants.
        self._turns: Counter[str] = Counter()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        arrived = self._clock()
        trace = _Trace()
        try:
            return await self._chat(request, arrived, trace)
        finally:
            if self._log is not None:
                self._log.append(
                    RequestRecord(
                        t=arrived,
                        body=trace.body,
                        model=trace.model,
                        status=trace.status,
                        fault=trace.fault,
                        stream=trace.stream,
                        headers=redacted_headers(request.headers),
                    )
                )

    async def models(self, request: web.Request) -> web.Response:
        refusal = self._check_key(request)
        if refusal is not None:
            return self._reply(_Trace(), refusal)
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "batchrun-sim"}
            for m in MODELS
        ]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)

    async def _chat(
        self, request: web.Request, arrived: float, trace: _Trace
    ) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request."
            return self._reply(trace, invalid_request(message, None))
        trace.body = body
        model = body.get("model")
        trace.model = model if isinstance(model, str) else None
        trace.stream = body.get("stream") is True
        refusal = self._admit(request, arrived, trace)
        if refusal is not None:
            return self._reply(trace, refusal)
        if not self._in_flight.enter():
            trace.fault = "in_flight"
            return self._reply(trace, too_many_in_flight(trace.model or ""))
        try:
            return await self._answer(request, body, trace)
        finally:
            self._in_flight.leave()

    def _admit(self, request: web.Request, arrived: float, trace: _Trace) -> ErrorReply | None:
        """The gateway's own refusals, answered before any upstream work; named in the log."""
        refusal = self._check_key(request)
        if refusal is not None:
            trace.fault = "bad_key"
            return refusal
        if self._quota.exhausted(arrived):
            trace.fault = "quota"
            return quota_exhausted(self._config.dialect)
        if self._rate is not None:
            wait = self._rate.admit(arrived)
            if wait is not None:
                trace.fault = "rate_limit"
                return rate_limited(trace.model or "", self._rate.rpm, wait)
        return None

    def _check_key(self, request: web.Request) -> ErrorReply | None:
        authorization = request.headers.get("Authorization", "")
        return key_refusal(self._config.api_key, self._config.dialect, authorization)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], trace: _Trace
    ) -> web.StreamResponse:
        try:
            chat = parse_request(body)
        except InvalidRequest as exc:
            return self._reply(trace, invalid_request(str(exc), exc.param))
        # Drawn for every admitted request, so the fault sequence follows the request sequence.
        drawn = self._faults.pick(chat.key)
        kind = marked_fault(chat.last_user_text) or (
            "model_not_found" if chat.model == MISSING_MODEL else drawn
        )
        delay = self._latency.sample()
        if delay > 0:
            await asyncio.sleep(delay)
        if kind is not None and kind not in DELIVERY_FAULTS:
            trace.fault = kind
            reply = fault_reply(
                kind,
                self._config.dialect,
                chat.model,
                self._turn(kind),
                counter_for(chat.model).chat(chat.messages),
            )
            return self._reply(trace, reply)
        if kind == "reset":
            trace.fault = kind
            return self._drop(request)
        if kind == "hang":
            trace.fault = kind
            await asyncio.sleep(self._config.hang_s)
            return self._drop(request)
        style = kind if kind in CONTENT_FAULTS else None
        if style == "bad_json" and chat.json_mode is None:
            style = None
        if style is not None:
            trace.fault = style
        completion = complete(
            chat,
            self._config.dialect,
            with_usage=not self._config.no_usage,
            style=style,
            noise=self._config.noise_for(chat.model),
        )
        if self._rate is not None:
            self._rate.spend(self._clock(), _total_tokens(chat, completion))
        if chat.stream:
            return await self._stream(request, chat, completion, kind, trace)
        payload = orjson.dumps(completion.to_json())
        if kind == "truncated_stream":
            trace.fault = kind
            payload = payload[: len(payload) // 2]
        trace.status = 200
        return web.Response(body=payload, content_type=_JSON, headers=self._rate_headers())

    async def _stream(
        self,
        request: web.Request,
        chat: ChatRequest,
        completion: Completion,
        kind: str | None,
        trace: _Trace,
    ) -> web.StreamResponse:
        plan = plan_stream(completion, chat.include_usage)
        events = plan.body + plan.tail
        gap = self._config.chunk_delay_ms / 1000
        if kind == "slow_stream":
            trace.fault = kind
            gap = SLOW_STREAM_FACTOR * max(gap, SLOW_STREAM_FLOOR_S)
        cut = kind == "truncated_stream"
        if cut:
            trace.fault = kind
            events = plan.body[: max(1, len(plan.body) // 2)]
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        response = web.StreamResponse(headers={**headers, **self._rate_headers()})
        trace.status = 200
        try:
            await response.prepare(request)
            if self._config.ttft_ms > 0:
                await asyncio.sleep(self._config.ttft_ms / 1000)
            if gap > 0:
                for i, event in enumerate(events):
                    if i:
                        await asyncio.sleep(gap)
                    await response.write(event)
            else:
                await response.write(b"".join(events))
            # A cut stream ends cleanly without [DONE] one time, and drops the connection the next.
            if cut and self._turn(kind or "") % 2:
                return self._drop(request)
            await response.write_eof()
        except ConnectionResetError:
            # The client went away mid-stream; there is nobody left to answer.
            pass
        return response

    def _reply(self, trace: _Trace, reply: ErrorReply) -> web.Response:
        trace.status = reply.status
        headers = {**reply.headers, **self._rate_headers()}
        return web.Response(
            status=reply.status, body=reply.body, content_type=reply.content_type, headers=headers
        )

    def _drop(self, request: web.Request) -> web.Response:
        """Closes the connection with no answer; the response returned is never sent."""
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=204)

    def _rate_headers(self) -> dict[str, str]:
        if self._rate is None or not self._config.ratelimit_headers:
            return {}
        return self._rate.headers(self._clock())

    def _turn(self, kind: str) -> int:
        turn = self._turns[kind]
        self._turns[kind] += 1
        return turn


def _total_tokens(chat: ChatRequest, completion: Completion) -> int:
    if completion.usage is not None:
        return int(completion.usage["total_tokens"])
    return counter_for(chat.model).chat(chat.messages) + sum(c.tokens for c in completion.choices)


def build_app(
    config: SimConfig,
    log: RequestLog | None,
    clock: Callable[[], float] = time.monotonic,
    ledger: BatchLedger | None = None,
    holds: Holds | None = None,
) -> web.Application:
    """The simulator as an aiohttp application, at /v1/... and without the /v1 prefix: chat
    completions, the model list, and the Files and Batches API (noted in `ledger`, stopped
    where `holds` are armed)."""
    handlers = SimHandlers(config, log, clock)
    batch_api = BatchApi(config, ledger, holds or Holds())
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", handlers.chat)
        app.router.add_get(f"{prefix}/models", handlers.models)
        batch_api.add_routes(app, prefix)
    app.on_cleanup.append(batch_api.close)
    return app
