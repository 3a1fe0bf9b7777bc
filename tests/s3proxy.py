"""A loopback TCP proxy in front of the moto S3 server that a test switches between
passing traffic and an outage, for tests of how a run waits S3 out.

`outage_proxy(upstream_url)` listens on 127.0.0.1 (a free port) in a daemon thread with its
own event loop and relays each client connection to the upstream host:port, byte for byte,
while its `mode` is "pass". Switched (`Proxy.set`) to:

- "refuse": every connection, new or already open, is reset (TCP RST): what a client sees of
  a server that went away;
- "drop": new connections are accepted and then nothing ever comes back (a network that
  swallows packets); open ones are cut;
- "slowdown": every request is answered `503 SlowDown` with S3's XML error body, as S3
  answers a client it throttles; open connections are cut first;
- "deny": every request is answered `403 AccessDenied` (a failure that does not pass: a
  policy changed, the credentials were revoked).

`Proxy.connections` counts the connections accepted, `Proxy.answered` the error answers sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit

MODES = ("pass", "refuse", "drop", "slowdown", "deny")
# The answer given to every request in a mode that answers: status line, S3's XML body.
ANSWERS = {
    "slowdown": (
        b"HTTP/1.1 503 Slow Down",
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message>"
        b"<RequestId>0000000000000000</RequestId></Error>",
    ),
    "deny": (
        b"HTTP/1.1 403 Forbidden",
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        b"<Message>Access Denied</Message>"
        b"<RequestId>0000000000000000</RequestId></Error>",
    ),
}


class Proxy:
    """The running proxy: where to point S3 clients, and the switch."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.port = 0  # the listening port, once started
        self.connections = 0  # client connections accepted
        self.answered = 0  # error answers sent ("slowdown", "deny")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._open: set[asyncio.StreamWriter] = set()  # client sides of the live relays
        self._ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self.port = self._ready.result(timeout=10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def set(self, mode: str) -> None:
        """Switch the proxy (from any thread); leaving "pass" cuts the open connections."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        assert self._loop is not None
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def switch() -> None:
            self.mode = mode
            if mode != "pass":
                for writer in list(self._open):
                    _reset(writer)
            done.set_result(None)

        self._loop.call_soon_threadsafe(switch)
        done.result(timeout=10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            self.connections += 1
            with suppress(asyncio.CancelledError, ConnectionError):
                await self._serve(reader, writer)
            tasks.discard(task)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self._ready.set_result(server.sockets[0].getsockname()[1])
        await self._stop.wait()
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "refuse":
            _reset(writer)
        elif mode == "drop":
            self._open.add(writer)
            try:
                await reader.read()  # until the client gives up
            finally:
                self._open.discard(writer)
                writer.transport.abort()
        elif mode in ANSWERS:
            await self._answer(reader, writer, *ANSWERS[mode])
        else:
            await self._relay(reader, writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        self._open.add(writer)
        pumps = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._open.discard(writer)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            up_writer.transport.abort()
            writer.close()

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: bytes,
        body: bytes,
    ) -> None:
        """Answer each request on the connection `status` with `body` (its own body read
        first)."""
        self._open.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip().lower()
                expecting = headers.get("expect") == "100-continue"
                length = int(headers.get("content-length") or 0)
                if length and not expecting:
                    await reader.readexactly(length)
                writer.write(
                    status
                    + b"\r\nContent-Type: application/xml\r\n"
                    + f"Content-Length: {len(body)}\r\n".encode()
                    + (b"Connection: close\r\n" if expecting else b"")
                    + b"\r\n"
                    + body
                )
                await writer.drain()
                self.answered += 1
                if expecting or "chunked" in headers.get("transfer-encoding", ""):
                    return  # the body was not read: the connection cannot go on
        finally:
            self._open.discard(writer)
            writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST."""
    sock = writer.get_extra_info("socket")
    with suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copies bytes until the source ends or either side fails."""
    with suppress(ConnectionError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()


@contextmanager
def outage_proxy(upstream_url: str) -> Iterator[Proxy]:
    """A switchable proxy to `upstream_url`'s host and port, passing traffic at first."""
    parts = urlsplit(upstream_url)
    assert parts.hostname is not None and parts.port is not None, upstream_url
    proxy = Proxy((parts.hostname, parts.port))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
