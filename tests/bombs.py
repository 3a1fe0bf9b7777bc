"""Decompression bombs on loopback: a gateway whose every answer is about a megabyte on the
wire (or much less) and inflates to 1 GiB, in gzip, deflate, br or zstd, as a JSON body or
as an event stream, with or without a `Content-Length` (the compressed size, as a real
gateway sends it).

The compressed body is built once per kind and kept (gzip and deflate: each mebibyte is
compressed after a full flush, which resets the compressor, so the same bytes stand for
every mebibyte and only one is compressed; br and zstd: the whole GiB through a streaming
compressor, about a second). It is sent in 64 KiB pieces from a
generator, so the test machine holds a few megabytes, never what the body inflates to.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import brotli
from aiohttp import web

try:  # Python 3.14 has it in the standard library
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd

MIB = 1 << 20
INFLATED_MIB = 1024  # what every answer inflates to: 1 GiB
_PIECE = 64 * 1024  # bytes per write on the wire

# What an answer inflates to: a head, then a mebibyte block again and again, then a tail;
# a valid completion (or event stream) whose one answer is a GiB long.
_JSON_HEAD = (
    b'{"id":"chatcmpl-bomb","object":"chat.completion","model":"gpt-4o-mini","choices":'
    b'[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"'
)
_JSON_TAIL = b'"}}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'
_EVENT = (
    b'data: {"id":"chatcmpl-bomb","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"content":"' + b"ha" * 2000 + b'"}}]}\n\n'
)
_SSE_TAIL = (
    b'data: {"id":"chatcmpl-bomb","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)


def shape(sse: bool) -> tuple[bytes, bytes, bytes]:
    """(head, the block repeated INFLATED_MIB times, tail) of what the answer inflates to."""
    if sse:
        return b"", _EVENT * (MIB // len(_EVENT)), _SSE_TAIL
    return _JSON_HEAD, b"ha" * (MIB // 2), _JSON_TAIL


@functools.cache
def _deflated(sse: bool) -> tuple[bytes, bytes, bytes, int, int, int]:
    """Raw deflate of the head, of one block after a full flush (the same bytes for every
    block), of the tail; then the CRC-32, Adler-32 and size of everything inflated."""
    head, block, tail = shape(sse)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = squeeze.compress(head) + squeeze.flush(zlib.Z_FULL_FLUSH)
    piece = squeeze.compress(block) + squeeze.flush(zlib.Z_FULL_FLUSH)
    last = squeeze.compress(tail) + squeeze.flush()
    crc, adler = zlib.crc32(head), zlib.adler32(head)
    for _ in range(INFLATED_MIB):
        crc = zlib.crc32(block, crc)
        adler = zlib.adler32(block, adler)
    crc, adler = zlib.crc32(tail, crc), zlib.adler32(tail, adler)
    return first, piece, last, crc, adler, len(head) + len(block) * INFLATED_MIB + len(tail)


@functools.cache
def _squeezed(encoding: str, sse: bool) -> bytes:
    """The whole compressed body for br or zstd."""
    head, block, tail = shape(sse)
    squeeze: Any = brotli.Compressor(quality=5) if encoding == "br" else zstd.ZstdCompressor()
    add = squeeze.process if encoding == "br" else squeeze.compress
    body = [add(head), *(add(block) for _ in range(INFLATED_MIB)), add(tail)]
    body.append(squeeze.finish() if encoding == "br" else squeeze.flush())
    return b"".join(body)


def parts(encoding: str, sse: bool) -> Iterator[bytes]:
    """The compressed body, in the order it goes on the wire."""
    if encoding in ("br", "zstd"):
        yield _squeezed(encoding, sse)
        return
    first, piece, last, crc, adler, size = _deflated(sse)
    if encoding == "gzip":
        yield b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no time
    else:
        yield b"\x78\xda"  # zlib's header, best compression
    yield first
    for _ in range(INFLATED_MIB):
        yield piece
    yield last
    if encoding == "gzip":
        yield crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")
    else:
        yield adler.to_bytes(4, "big")


def compressed_size(encoding: str, sse: bool) -> int:
    return sum(len(p) for p in parts(encoding, sse))


def pieces(encoding: str, sse: bool) -> Iterator[bytes]:
    """The compressed body in writes of at most 64 KiB."""
    pending = b""
    for part in parts(encoding, sse):
        pending += part
        while len(pending) >= _PIECE:
            yield pending[:_PIECE]
            pending = pending[_PIECE:]
    if pending:
        yield pending


@dataclass
class BombGateway:
    """Answers every request with a bomb of `encoding`; an event stream when the request
    asks to stream (and `sse`), else a JSON body."""

    encoding: str  # "gzip", "deflate", "br" or "zstd"
    content_length: bool  # send Content-Length (the compressed size) or not (chunked)
    requests: int = 0  # requests answered (or begun)
    ports: set[int] = field(default_factory=set)  # the client ports the requests came from

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.ports.add(peer[1])
        sse = body.get("stream") is True
        headers = {
            "Content-Type": "text/event-stream" if sse else "application/json",
            "Content-Encoding": self.encoding,
        }
        response = web.StreamResponse(headers=headers)
        if self.content_length:
            response.content_length = compressed_size(self.encoding, sse)
        await response.prepare(request)
        try:
            for piece in pieces(self.encoding, sse):
                await response.write(piece)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client closed the connection: what batchrun should do
        return response
