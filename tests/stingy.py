"""A stingy gateway on loopback: a fixed window of `limit` requests every `window_s` seconds,
and a 429 for every request beyond it, whose wait is told the way some gateways do: in a
non-standard header (`x-ratelimit-retry-after-seconds`), only in the message text ("Please
try again in 1.2s"), or not at all. Admitted requests get a small valid completion."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Stingy:
    limit: int
    window_s: float
    hint: str  # "header", "message" or "none"
    latency_s: float = 0.02
    base_url: str = ""
    admitted: int = 0
    refused: int = 0
    _start: float = field(default_factory=time.monotonic)
    _window: int = -1  # the number of the current window
    _used: int = 0  # requests admitted in it

    @property
    def limit_rpm(self) -> float:
        return self.limit * 60 / self.window_s

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic() - self._start
        window = math.floor(now / self.window_s)
        if window != self._window:
            self._window, self._used = window, 0
        if self._used >= self.limit:
            self.refused += 1
            wait = (window + 1) * self.window_s - now
            message = "Rate limit reached for requests on this account."
            headers = {}
            if self.hint == "message":
                message += f" Please try again in {wait:.3f}s."
            elif self.hint == "header":
                headers["x-ratelimit-retry-after-seconds"] = f"{wait:.3f}"
            body = {
                "error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}
            }
            return web.json_response(body, status=429, headers=headers)
        self._used += 1
        self.admitted += 1
        await asyncio.sleep(self.latency_s)
        return web.json_response(
            {
                "id": f"chatcmpl-{self.admitted}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "positive"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
            }
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextmanager
def loopback_gateway(handle: Handler) -> Iterator[str]:
    """A chat-completions endpoint on 127.0.0.1 served by `handle` in a thread of its own;
    yields its base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    url: list[str] = []

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url.append(f"http://127.0.0.1:{runner.addresses[0][1]}/v1")
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@contextmanager
def stingy_gateway(limit: int, window_s: float, hint: str) -> Iterator[Stingy]:
    gateway = Stingy(limit, window_s, hint)
    with loopback_gateway(gateway.handle) as url:
        gateway.base_url = url
        yield gateway
