"""Which HTTP client can keep up: requests/s of each transport against the simulator.

    .venv/bin/pip install httpx httpx-aiohttp   # the contenders batchrun does not depend on
    .venv/bin/python benchmarks/transports.py [--quick]

Starts `batchrun sim` in its own process on loopback (so client and server each get a core)
and sends the same small chat request N times with C in flight through: bare aiohttp, httpx
with its default transport (pool sized to C), and httpx on an aiohttp transport. Prints one
line per (scenario, client) with requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from bench import sim_process  # benchmarks/bench.py, beside this file

BODY = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Review: works great, love it"}],
        "max_tokens": 8,
    }
)
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}


async def drive(send: Callable[[], Awaitable[None]], total: int, in_flight: int) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return total / (time.perf_counter() - start)


async def bare_aiohttp(url: str, total: int, in_flight: int) -> float:
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                orjson.loads(await resp.read())

        return await drive(send, total, in_flight)


async def httpx_default(url: str, total: int, in_flight: int) -> float:
    import httpx

    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def send() -> None:
            resp = await client.post(url, content=BODY, headers=HEADERS)
            orjson.loads(resp.content)

        return await drive(send, total, in_flight)


async def httpx_on_aiohttp(url: str, total: int, in_flight: int) -> float:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    transport = AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(transport=transport, timeout=120) as client:

        async def send() -> None:
            resp = await client.post(url, content=BODY, headers=HEADERS)
            orjson.loads(resp.content)

        return await drive(send, total, in_flight)


CLIENTS = {"aiohttp": bare_aiohttp, "httpx": httpx_default, "httpx-aiohttp": httpx_on_aiohttp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks it runs")
    args = parser.parse_args()
    scenarios = [(0.0, 64, 3000), (0.0, 256, 4000), (1000.0, 1000, 4000)]
    if args.quick:
        scenarios = [(0.0, 16, 100)]
    for latency, in_flight, total in scenarios:
        with sim_process(latency) as base_url:
            url = base_url + "/chat/completions"
            for name, client in CLIENTS.items():
                try:
                    rate = asyncio.run(client(url, total, in_flight))
                except ImportError:
                    print(f"{name}: not installed")
                    continue
                print(
                    f"latency {latency:>5.0f} ms  in flight {in_flight:>5}  {total:>5} requests  "
                    f"{name:<14} {rate:>8,.0f} req/s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
