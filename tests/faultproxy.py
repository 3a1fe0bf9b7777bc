"""A loopback TCP proxy that breaks HTTP responses on the wire, for tests.

`fault_proxy(upstream_url, rates, seed)` listens on 127.0.0.1 (a free port) in a daemon
thread with its own event loop and forwards every client connection to the upstream
host:port. Requests pass through untouched. Responses are framed (by Content-Length or
chunked encoding, so keep-alive connections carrying many requests work) and each one is
read whole from upstream; then, for a seeded random share of them, something goes wrong
at a cut point inside the response (right after the headers, or anywhere in the body, which
for a stream is the middle of the event stream):

- `reset`: the bytes before the cut are sent, then the client connection is aborted with a
  TCP RST (SO_LINGER 0);
- `close`: the bytes before the cut are sent, then the connection is closed cleanly (FIN);
- `stall`: the bytes before the cut are sent, then nothing more, the connection held open
  until the client gives up (or `stall_s` passes);
- `trickle`: the rest arrives a few bytes at a time with short sleeps: slow but whole, so
  the request must succeed.

After reset, close or stall the connection (and its upstream side) is finished; after a
trickle it carries on. `Proxy.injected` counts each fault, `Proxy.responses` every response.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit

FAULTS = ("reset", "close", "stall", "trickle")
# A trickle sends pieces of 1 to TRICKLE_BYTES bytes, TRICKLE_SLEEP_S apart.
TRICKLE_BYTES = 16
TRICKLE_SLEEP_S = 0.001


class Proxy:
    """The running proxy: where to send requests, and what it has done to the answers."""

    def __init__(
        self, upstream: tuple[str, int], rates: Mapping[str, float], seed: int, stall_s: float
    ) -> None:
        unknown = set(rates) - set(FAULTS)
        if unknown or sum(rates.values()) > 1 or min(rates.values(), default=0) < 0:
            raise ValueError(f"rates must be shares of {FAULTS} adding up to 1 or less: {rates}")
        self.upstream = upstream
        self.rates = dict(rates)
        self.stall_s = stall_s
        self.port = 0  # the listening port, once started
        self.responses = 0  # responses seen from upstream, broken or not
        self.injected: Counter[str] = Counter(dict.fromkeys(FAULTS, 0))
        # Drawn only by the proxy's loop: one decision per response, in the order they come
        # (so the first n decisions are the same in every run), and apart from it where to
        # cut and how to trickle.
        self._decide = random.Random(seed)
        self._rng = random.Random(seed + 1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self._thread.start()
        self.port = self._ready.result(timeout=10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            # Swallowing the cancellation at stop spares asyncio's stream callback a traceback.
            with suppress(asyncio.CancelledError):
                await self._connection(reader, writer)
            connections.discard(task)

        try:
            server = await asyncio.start_server(accept, "127.0.0.1", 0)
        except OSError as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(server.sockets[0].getsockname()[1])
        await self._stop.wait()
        server.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        """Relays one client connection until either side is done with it."""
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        tasks = [
            asyncio.create_task(_pump(client_reader, upstream_writer)),
            asyncio.create_task(self._responses(upstream_reader, client_writer)),
        ]
        try:
            # The client hanging up (or timing out) ends the relay, even in a stall.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            upstream_writer.transport.abort()
            client_writer.close()

    async def _responses(
        self, upstream: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        """Forwards responses one by one, breaking some; returns when the connection ends."""
        with suppress(ConnectionError, asyncio.IncompleteReadError):
            while (response := await _read_response(upstream)) is not None:
                head_len, data = response
                self.responses += 1
                fault = self._choose()
                if fault is None:
                    client.write(data)
                    await client.drain()
                    continue
                self.injected[fault] += 1
                # Right after the headers (a quarter of the time), or inside the body.
                cut = head_len
                if len(data) > head_len + 1 and self._rng.random() >= 0.25:
                    cut = self._rng.randint(head_len + 1, len(data) - 1)
                client.write(data[:cut])
                await client.drain()
                if fault == "trickle":
                    while cut < len(data):
                        step = self._rng.randint(1, TRICKLE_BYTES)
                        client.write(data[cut : cut + step])
                        await client.drain()
                        cut += step
                        await asyncio.sleep(TRICKLE_SLEEP_S)
                    continue
                if fault == "reset":
                    await asyncio.sleep(0.01)  # let the first part reach the client
                    sock = client.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.transport.abort()
                elif fault == "stall":
                    await asyncio.sleep(self.stall_s)
                return  # a broken response ends the connection ("close" by the caller's FIN)

    def _choose(self) -> str | None:
        draw = self._decide.random()
        for fault in FAULTS:
            draw -= self.rates.get(fault, 0.0)
            if draw < 0:
                return fault
        return None


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copies bytes until the source ends or either side fails."""
    with suppress(ConnectionError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """One whole HTTP/1.1 response: (length of its head, its bytes); None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    body = bytearray()
    if "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size_line = await reader.readuntil(b"\r\n")
            body += size_line
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    body += trailer
                body += trailer
                break
            body += await reader.readexactly(size + 2)
    elif "content-length" in headers:
        body += await reader.readexactly(int(headers["content-length"]))
    else:
        body += await reader.read()  # the body runs to the end of the connection
    return len(head), head + bytes(body)


@contextmanager
def fault_proxy(
    upstream_url: str, rates: Mapping[str, float], seed: int, *, stall_s: float = 30.0
) -> Iterator[Proxy]:
    """A proxy to `upstream_url`'s host and port breaking `rates` of the responses."""
    parts = urlsplit(upstream_url)
    assert parts.hostname is not None and parts.port is not None, upstream_url
    proxy = Proxy((parts.hostname, parts.port), rates, seed, stall_s)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
