"""Loopback network scaffolding for the proxy and certificate tests: a forward HTTP proxy, a
SOCKS5 proxy and a recording (optionally TLS) front for a gateway. Test servers, not
clients: batchrun's own proxy client is aiohttp's and aiohttp-socks'.

Each runs on 127.0.0.1 (a free port) in a daemon thread with its own event loop and
records what it did:

- `Front` relays every connection to an upstream host:port, terminating TLS when given a
  context, and records each connection's peer port: where a connection came from.
- `HttpProxy` speaks CONNECT (a tunnel, for https) and absolute-URI forwarding (for http,
  one request at a time, bodies framed by Content-Length or chunked), and with `login` set
  answers 407 to a request without that Proxy-Authorization. It records every request line
  and the local port of each upstream connection it opened.
- `Socks5Proxy` speaks SOCKS5 CONNECT (no auth, or user/password with `login`), to IPv4
  addresses and to names (socks5h), which it resolves itself (only "localhost" and IP
  addresses, so nothing leaves loopback); it records each target and each upstream port.

So "every request went through the proxy" is checked from both ends: each connection the
gateway's front accepted came from a port the proxy opened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
from collections.abc import Iterator
from typing import TypeVar


class _Server:
    """A loopback TCP server on a loop of its own, in a daemon thread."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.port = 0
        self._context = context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._open_writers: set[asyncio.StreamWriter] = set()  # closed at once on stop
        self.lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._guarded, "127.0.0.1", 0, ssl=self._context)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
        for writer in list(self._open_writers):
            writer.transport.abort()
        for _ in range(3):  # the aborts close their sockets on the next turns of the loop
            await asyncio.sleep(0)

    def keep(self, writer: asyncio.StreamWriter) -> asyncio.StreamWriter:
        """Track `writer` until it closes, so that stopping the server closes it."""
        self._open_writers.add(writer)
        return writer

    async def _guarded(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.keep(writer)
        try:
            await self.handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            pass
        finally:
            writer.close()
            self._open_writers.discard(writer)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, ssl.SSLError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if sink.can_write_eof():
            sink.write_eof()


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
    finally:
        up_writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await up_writer.wait_closed()


class Front(_Server):
    """A gateway's front door: relays to `upstream`, records each connection's peer port."""

    def __init__(self, upstream: tuple[str, int], context: ssl.SSLContext | None = None):
        super().__init__(context)
        self.upstream = upstream
        self.peers: list[int] = []  # the peer port of each connection accepted

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.lock:
            self.peers.append(writer.get_extra_info("peername")[1])
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.keep(up_writer)
        await _splice(reader, writer, up_reader, up_writer)


class _Proxy(_Server):
    def __init__(self, login: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.login = login
        self.upstream_ports: list[int] = []  # the local port of each upstream connection
        self.refused = 0  # requests refused for their credentials

    def url(self, scheme: str, login: tuple[str, str] | None = None) -> str:
        user = f"{login[0]}:{login[1]}@" if login else ""
        return f"{scheme}://{user}127.0.0.1:{self.port}"

    async def _open(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if host not in ("127.0.0.1", "localhost"):
            raise OSError(f"the test proxy only reaches loopback, not {host}")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        self.keep(up_writer)
        with self.lock:
            self.upstream_ports.append(up_writer.get_extra_info("sockname")[1])
        return up_reader, up_writer


class HttpProxy(_Proxy):
    """A forward HTTP proxy: CONNECT tunnels and absolute-URI forwarding."""

    def __init__(self, login: tuple[str, str] | None = None) -> None:
        super().__init__(login)
        self.requests: list[str] = []  # "CONNECT host:port" or "POST http://host:port/path"
        self.connect_heads: list[str] = []  # each CONNECT's whole head, to look for leaks

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.login is None:
            return True
        wanted = base64.b64encode(f"{self.login[0]}:{self.login[1]}".encode()).decode()
        return headers.get("proxy-authorization") == f"Basic {wanted}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamWriter, asyncio.Task[None]] | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head.decode("latin-1").split("\r\n")
                method, target, version = line.split(" ")
                headers = {}
                for field in filter(None, fields):
                    name, _, value = field.partition(":")
                    headers[name.strip().lower()] = value.strip()
                with self.lock:
                    self.requests.append(f"{method} {target}")
                    if method == "CONNECT":
                        self.connect_heads.append(head.decode("latin-1"))
                if not self._authorized(headers):
                    with self.lock:
                        self.refused += 1
                    writer.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="test"\r\n'
                        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    await writer.drain()
                    return
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    up_reader, up_writer = await self._open(host.strip("[]"), int(port))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await _splice(reader, writer, up_reader, up_writer)
                    return
                _, _, rest = target.partition("://")
                authority, slash, path = rest.partition("/")
                host, _, port = authority.rpartition(":")
                if upstream is None:
                    up_reader, up_writer = await self._open(host, int(port or 80))
                    upstream = (up_writer, asyncio.create_task(_pump(up_reader, writer)))
                kept = [
                    f
                    for f in fields
                    if f
                    and f.split(":")[0].strip().lower()
                    not in ("proxy-authorization", "proxy-connection")
                ]
                out = [f"{method} {slash}{path} {version}", *kept, "", ""]
                upstream[0].write("\r\n".join(out).encode("latin-1"))
                await self._body(reader, upstream[0], headers)
                await upstream[0].drain()
        except asyncio.IncompleteReadError:
            return
        finally:
            if upstream is not None:
                with contextlib.suppress(asyncio.TimeoutError, OSError):
                    await asyncio.wait_for(asyncio.shield(upstream[1]), 0.2)
                upstream[0].close()
                upstream[1].cancel()

    @staticmethod
    async def _body(
        reader: asyncio.StreamReader, sink: asyncio.StreamWriter, headers: dict[str, str]
    ) -> None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readuntil(b"\r\n")
                sink.write(size_line)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                        sink.write(trailer)
                    sink.write(b"\r\n")
                    return
                sink.write(await reader.readexactly(size + 2))
        length = int(headers.get("content-length", "0") or 0)
        if length:
            sink.write(await reader.readexactly(length))


class Socks5Proxy(_Proxy):
    """A SOCKS5 proxy (RFC 1928, RFC 1929 user/password), CONNECT only."""

    def __init__(self, login: tuple[str, str] | None = None) -> None:
        super().__init__(login)
        self.targets: list[str] = []  # "host:port" as the client named it (an IP or a name)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        wanted = 2 if self.login else 0
        if version != 5 or wanted not in methods:
            writer.write(b"\x05\xff")
            return
        writer.write(bytes([5, wanted]))
        if self.login:
            _, ulen = await reader.readexactly(2)
            user = (await reader.readexactly(ulen)).decode()
            (plen,) = await reader.readexactly(1)
            password = (await reader.readexactly(plen)).decode()
            if (user, password) != self.login:
                with self.lock:
                    self.refused += 1
                writer.write(b"\x01\x01")
                return
            writer.write(b"\x01\x00")
        _, command, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = ".".join(str(b) for b in await reader.readexactly(4))
        elif kind == 3:
            (size,) = await reader.readexactly(1)
            host = (await reader.readexactly(size)).decode()
        else:
            writer.write(b"\x05\x08\x00\x01" + bytes(6))  # address type not supported
            return
        port = int.from_bytes(await reader.readexactly(2), "big")
        with self.lock:
            self.targets.append(f"{host}:{port}")
        if command != 1:
            writer.write(b"\x05\x07\x00\x01" + bytes(6))
            return
        try:
            up_reader, up_writer = await self._open(host, port)
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + bytes(6))  # connection refused
            return
        writer.write(b"\x05\x00\x00\x01" + bytes(4) + bytes(2))
        await writer.drain()
        await _splice(reader, writer, up_reader, up_writer)


S = TypeVar("S", bound=_Server)


@contextlib.contextmanager
def running(server: S) -> Iterator[S]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
