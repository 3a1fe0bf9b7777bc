"""Answers that inflate (issue 22): the body cap holds on the bytes after decoding.

A loopback gateway (`tests/bombs.py`) answers every request with about a megabyte (or less)
that inflates to 1 GiB, in gzip, deflate, br and zstd, with and without a Content-Length,
as a body and as an event stream. Through the `batchrun` command, every row fails
`too_large` after its attempts, the run ends with exit 0, and nothing inflates whole. One
event past the SSE decoder's cap is `too_large` too (it was `truncated_stream`, which
claimed a cut the gateway never made).
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiohttp import web

from batchrun.core.sse import MAX_EVENT_BYTES
from batchrun.protocol.wire import MAX_BODY_BYTES
from tests.bombs import BombGateway
from tests.conftest import Workspace, reviews
from tests.stingy import loopback_gateway

ROWS = 3
ATTEMPTS = 2


@contextmanager
def bomb_gateway(encoding: str, content_length: bool) -> Iterator[tuple[BombGateway, str]]:
    gateway = BombGateway(encoding, content_length)
    with loopback_gateway(gateway.handle) as url:
        yield gateway, url


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_against_bombs(ws: Workspace, encoding: str, content_length: bool, stream: bool) -> None:
    ws.write_input(reviews(ROWS))
    before = peak_mb()
    with bomb_gateway(encoding, content_length) as (gateway, url):
        request = {"stream": True} if stream else {}
        job = ws.job(url, request=request, limits={"max_attempts": ATTEMPTS, "concurrency": ROWS})
        result = ws.run("run", str(job), "--quiet")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    out = ws.read_output()
    assert out.height == ROWS
    assert out["status"].to_list() == ["failed"] * ROWS
    assert out["error"].to_list() == ["too_large"] * ROWS
    assert out["attempts"].to_list() == [ATTEMPTS] * ROWS
    assert out["response"].null_count() == ROWS
    assert all("bytes" in message for message in out["error_message"])
    assert gateway.requests == ROWS * ATTEMPTS
    # Every attempt came on a new connection: the one past the cap was closed, not drained
    # back into the pool for the next request.
    assert len(gateway.ports) == ROWS * ATTEMPTS
    # This process's peak grew by a few caps' worth, not by a GiB an answer (a peak set
    # earlier in the session can hide growth; it can never make this fail).
    assert peak_mb() - before < 40 * MAX_BODY_BYTES / (1 << 20)


@pytest.mark.parametrize("content_length", [True, False], ids=["length", "chunked"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_body_that_inflates_past_the_cap_fails_its_row_too_large(
    ws: Workspace, encoding: str, content_length: bool
) -> None:
    run_against_bombs(ws, encoding, content_length, stream=False)


@pytest.mark.parametrize("content_length", [True, False], ids=["length", "chunked"])
@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_stream_that_inflates_past_the_cap_fails_its_row_too_large(
    ws: Workspace, encoding: str, content_length: bool
) -> None:
    run_against_bombs(ws, encoding, content_length, stream=True)


async def one_endless_event(request: web.Request) -> web.StreamResponse:
    """An event stream whose first event never ends: 8 MiB of one `data:` line, plain."""
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: ")
    piece = b"a" * (1 << 20)
    with contextlib.suppress(ConnectionError, RuntimeError):
        for _ in range(8):
            await response.write(piece)
    return response


def test_one_event_past_the_sse_cap_fails_its_row_too_large(ws: Workspace) -> None:
    ws.write_input(reviews(2))
    with loopback_gateway(one_endless_event) as url:
        job = ws.job(url, request={"stream": True}, limits={"max_attempts": ATTEMPTS})
        result = ws.run("run", str(job), "--quiet")
    assert result.code == 0, result.err
    out = ws.read_output()
    assert out["error"].to_list() == ["too_large"] * 2
    assert all(str(MAX_EVENT_BYTES) in message for message in out["error_message"])
