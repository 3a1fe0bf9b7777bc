"""HTTP to the gateway: one pooled aiohttp session per run.

Why aiohttp and not httpx: measured on this machine against one loopback server
(`benchmarks/transports.py`, figures in docs/design.md), httpx's connection pool rescans every
connection per request and falls far behind at hundreds of requests in flight; aiohttp kept
up with the floor. aiohttp never retries on its own, so the engine's retry layer is the only
one. Every aiohttp and socket error is translated here, in `translated`, into a
`TransportFailure`; nothing above this module sees aiohttp's exceptions.

The connection's route (`batchrun.core.network.Route`) is fixed when the wire opens, so a request
pays nothing for it: a direct route is today's plain connector; an HTTP(S) proxy is the
session's own (aiohttp speaks CONNECT for https and absolute URIs for http); a SOCKS5 proxy
is `aiohttp-socks`' connector. Its credentials go to the proxy only: a Proxy-Authorization
header on the CONNECT (never inside the tunnel) or on each request to an http gateway, or
the SOCKS5 handshake.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

import aiohttp
import orjson
from aiohttp_socks import ProxyConnectionError, ProxyConnector, ProxyError, ProxyType

from ..core.completion import ChunkAssembler
from ..core.network import DIRECT, SOCKS, ProxyURL, Route
from ..core.secrets import Secret
from ..core.sse import EventTooLarge, SSEDecoder
from ..version import __version__

# Caps that turn a misbehaving gateway into a failed row instead of a run out of memory.
MAX_BODY_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 64 * 1024


class TransportFailure(Exception):
    """The exchange did not produce an HTTP response we can classify."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        # "timeout", "connection" or "too_large"; "certificate" (the gateway's certificate is
        # not trusted) or "proxy_auth" (the proxy refused its credentials): no retry mends them
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole HTTP response, read within the caps; a stream arrives reassembled."""

    status: int
    headers: Mapping[str, str]
    body: bytes  # empty when the answer was a stream
    latency_s: float
    stream: ChunkAssembler | None = None  # the reassembled event stream, if it was one
    ttft_s: float | None = None  # when the first choice chunk of a stream arrived


class Wire:
    """Sends request bodies to `{base_url}/chat/completions` over one connection pool."""

    def __init__(
        self,
        base_url: str,
        key: Secret | None,
        *,
        headers: Mapping[str, str] | None = None,
        pool_size: int = 64,
        timeout_s: float = 120.0,
        idle_timeout_s: float = 60.0,
        route: Route = DIRECT,
    ) -> None:
        self.url = f"{base_url}/chat/completions"
        self.route = route
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"batchrun/{__version__}",
            **(headers or {}),
        }
        if key is not None:
            self._headers["Authorization"] = f"Bearer {key.reveal()}"
        self._pool_size = pool_size  # connections kept alive: one per request in flight
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 30))
        # A stream that goes quiet for idle_timeout_s is dead even within the total timeout.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(timeout_s, 30), sock_read=idle_timeout_s
        )
        # What each request passes besides its body (precomputed: nothing for a direct
        # route; the headers and the proxy's login through an HTTP(S) proxy, see
        # `open_session`).
        self._plain_extra: dict[str, Any] = {}
        self._stream_extra: dict[str, Any] = {"timeout": self._stream_timeout}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Wire:
        self._session, extra = open_session(
            self.url, self.route, self._headers, self._pool_size, self._timeout
        )
        if extra:
            self._plain_extra = extra
            self._stream_extra = {**extra, "timeout": self._stream_timeout}
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, body: Mapping[str, Any]) -> Reply:
        """Send one request body; raise TransportFailure when no response could be read."""
        assert self._session is not None, "use Wire as an async context manager"
        data = orjson.dumps(body)
        streaming = body.get("stream") is True
        started = time.monotonic()
        with translated(self.route.proxy):
            # Headers and the plain timeout are the session's where the route allows it:
            # passing them again per request costs a merge and a timeout object each time.
            extra = self._stream_extra if streaming else self._plain_extra
            async with self._session.post(self.url, data=data, **extra) as resp:
                if streaming and resp.content_type == "text/event-stream":
                    stream, ttft = await _read_stream(resp, started)
                    elapsed = time.monotonic() - started
                    return Reply(resp.status, resp.headers, b"", elapsed, stream, ttft)
                if resp.status == 407 and self.route.proxy is not None:
                    raise _proxy_refused(self.route.proxy)
                payload = await _read_capped(resp)
                return Reply(resp.status, resp.headers, payload, time.monotonic() - started)


def open_session(
    url: str,
    route: Route,
    headers: Mapping[str, str],
    pool_size: int,
    timeout: aiohttp.ClientTimeout,
) -> tuple[aiohttp.ClientSession, dict[str, Any]]:
    """A session to the gateway serving `url` along `route`, sending `headers`, and what each
    request passes besides its body (nothing for a direct or SOCKS5 route). Through an
    HTTP(S) proxy the headers go with each request, not as the session's: aiohttp copies a
    session's headers into a CONNECT and turns their Authorization into
    Proxy-Authorization, which would hand the key to the proxy."""
    proxy = route.proxy
    options: dict[str, Any] = {"headers": headers}
    per_request: dict[str, Any] = {}
    if proxy is not None and proxy.scheme not in SOCKS:
        per_request = _through_http_proxy(url, proxy, headers)
        # Never the URL with the login: aiohttp names its proxy in some messages.
        options = {"proxy": proxy.shown}
    session = aiohttp.ClientSession(
        connector=_connector(url, route, pool_size),
        timeout=timeout,
        auto_decompress=True,
        trust_env=False,  # the route is chosen from the job's variables, not here
        **options,
    )
    return session, per_request


def _connector(url: str, route: Route, pool_size: int) -> aiohttp.TCPConnector:
    """The pool: a plain one, or aiohttp-socks' through a SOCKS5 proxy; verifying TLS
    against the route's trust (a plain-http gateway builds no context)."""
    proxy = route.proxy
    tls = url.startswith("https:") or (proxy is not None and proxy.scheme == "https")
    context: ssl.SSLContext | bool = route.ssl_context() if tls else True
    pool: dict[str, Any] = {"limit": pool_size, "limit_per_host": pool_size}
    if proxy is None or proxy.scheme not in SOCKS:
        return aiohttp.TCPConnector(ttl_dns_cache=300, ssl=context, **pool)
    return ProxyConnector(
        proxy.host,
        proxy.port,
        ProxyType.SOCKS5,
        username=proxy.user or None,
        password=proxy.reveal_password() or None,
        rdns=proxy.scheme == "socks5h",  # socks5h: the proxy resolves the name
        ssl=context,
        **pool,
    )


def _through_http_proxy(url: str, proxy: ProxyURL, headers: Mapping[str, str]) -> dict[str, Any]:
    """Each request's extras through an HTTP(S) proxy: the headers, and the proxy's login on
    the CONNECT (https) or on each request (http)."""
    per_request: dict[str, Any] = {"headers": headers, "proxy_headers": None}
    if proxy.has_credentials:
        login = f"{proxy.user}:{proxy.reveal_password()}".encode()
        auth = {"Proxy-Authorization": f"Basic {base64.b64encode(login).decode()}"}
        if url.startswith("https:"):
            per_request["proxy_headers"] = auth  # on the CONNECT only
        else:
            per_request["headers"] = {**headers, **auth}  # each request is the proxy's
    return per_request


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The body as decoded, within MAX_BODY_BYTES.

    `Content-Length` counts the bytes on the wire: a gzip, deflate, br or zstd answer may
    inflate a thousandfold past it, so the cap is held on what is read after decoding, in
    chunks, whatever the header says. aiohttp (from 3.13.3; 3.14.5 read) inflates a received
    chunk at most 256 KiB per step and stops reading the socket while 512 KiB wait to be read,
    so what one request holds beyond its chunks here is bounded too.
    """
    cap = MAX_BODY_BYTES
    length = resp.content_length
    if length is not None and length > cap:
        _too_large(resp, f"the response body is {length} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > cap:
            _too_large(resp, f"the response body exceeds {cap} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_stream(
    resp: aiohttp.ClientResponse, started: float
) -> tuple[ChunkAssembler, float | None]:
    """Decode and reassemble an event stream; a cut connection marks it, never raises.

    An event past the SSE decoder's cap, or a stream past MAX_BODY_BYTES once decoded,
    raises TransportFailure("too_large") instead: that stream was not cut, it was too big."""
    decoder = SSEDecoder()
    stream = ChunkAssembler()
    ttft: float | None = None
    size = 0
    cap = MAX_BODY_BYTES
    try:
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                _too_large(resp, f"the stream exceeds {cap} bytes")
            for data in decoder.feed(chunk):
                stream.feed(data)
                if ttft is None and stream.started:
                    ttft = time.monotonic() - started
    except EventTooLarge as exc:
        _too_large(resp, str(exc))
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError):
        stream.cut("the connection closed in the middle of the stream")
    if decoder.pending:
        stream.cut("the stream ended in the middle of an event")
    return stream, ttft


def _too_large(resp: aiohttp.ClientResponse, message: str) -> NoReturn:
    """Give up on an answer past a cap: close its connection at once, so the rest is never
    read and the connection never goes back to the pool (aiohttp's release would close an
    unfinished one too; this does not rely on it), and fail the attempt."""
    resp.close()
    raise TransportFailure("too_large", message)


def _proxy_refused(proxy: ProxyURL | None) -> TransportFailure:
    if proxy is not None and not proxy.has_credentials:
        return TransportFailure("proxy_auth", "the proxy asks for a user and password (407)")
    return TransportFailure(
        "proxy_auth", "the proxy refused the user and password it was given (407)"
    )


@contextmanager
def translated(proxy: ProxyURL | None) -> Iterator[None]:
    """Map aiohttp's, aiohttp-socks' and the socket's exceptions to TransportFailure, in
    this one place. No message repeats a proxy's URL: only its host and port are named."""
    try:
        yield
    except TransportFailure:
        raise
    except (aiohttp.ClientConnectorCertificateError, ssl.SSLCertVerificationError) as exc:
        cert = getattr(exc, "certificate_error", exc)
        reason = getattr(cert, "verify_message", None) or "verification failed"
        raise TransportFailure(
            "certificate", f"the gateway's TLS certificate is not trusted ({reason})"
        ) from None
    except TimeoutError:
        raise TransportFailure("timeout", "the request timed out") from None
    except aiohttp.ServerDisconnectedError:
        raise TransportFailure("connection", "the server closed the connection") from None
    except aiohttp.ClientPayloadError:
        raise TransportFailure("connection", "the response was cut off") from None
    except aiohttp.ClientHttpProxyError as exc:
        if exc.status == 407:
            raise _proxy_refused(proxy) from None
        raise TransportFailure(
            "connection", f"the proxy answered {exc.status} to the tunnel's CONNECT"
        ) from None
    except aiohttp.ClientProxyConnectionError as exc:
        raise TransportFailure(
            "connection", f"cannot connect to the proxy ({exc.os_error})"
        ) from None
    except ProxyConnectionError:
        raise TransportFailure("connection", "cannot connect to the SOCKS proxy") from None
    except ProxyError as exc:
        if exc.error_code is None and "authentication" in str(exc).lower():
            raise TransportFailure(
                "proxy_auth", "the SOCKS proxy refused the user and password it was given"
            ) from None
        raise TransportFailure("connection", f"the SOCKS proxy failed ({exc})") from None
    except aiohttp.ClientConnectorError as exc:
        raise TransportFailure("connection", f"cannot connect ({exc.os_error})") from None
    except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise TransportFailure("connection", f"connection error ({type(exc).__name__})") from None
