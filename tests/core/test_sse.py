"""The SSE decoder and the chunk assembler: any re-chunking gives the same completion."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.core.completion import ChunkAssembler, Completion, NotACompletion
from batchrun.core.sse import EventTooLarge, SSEDecoder

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[dict[str, object]], int]:
    """A valid chunk sequence: n choices of content pieces, maybe a tool call, then usage."""
    n = draw(st.integers(1, 3))
    chunks: list[dict[str, object]] = []
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    for i in range(n):
        chunks.append({**base, "choices": [{"index": i, "delta": {"role": "assistant"}}]})
    for piece, i in draw(st.lists(st.tuples(TEXT, st.integers(0, n - 1)), max_size=15)):
        chunks.append({**base, "choices": [{"index": i, "delta": {"content": piece}}]})
    if draw(st.booleans()):
        call = {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "label", "arguments": ""},
        }
        chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
        for part in draw(st.lists(TEXT, max_size=4)):
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": part}}]}
            chunks.append({**base, "choices": [{"index": 0, "delta": delta}]})
    for i in range(n):
        chunks.append({**base, "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]})
    chunks.append(
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
    )
    return chunks, n


def encode(chunks: list[dict[str, object]], newline: bytes, comments: bool) -> bytes:
    """SSE bytes; with `comments`, keep-alive comments and each event's JSON spread over
    several data lines (as the format allows)."""
    out = b""
    for chunk in chunks:
        if comments:
            out += b": keep-alive" + newline
            lines = orjson.dumps(chunk, option=orjson.OPT_INDENT_2).split(b"\n")
            out += b"".join(b"data: " + line + newline for line in lines) + newline
        else:
            out += b"data: " + orjson.dumps(chunk) + newline + newline
    return out + b"data: [DONE]" + newline + newline


def assemble(pieces: list[bytes]) -> Completion:
    decoder, stream = SSEDecoder(), ChunkAssembler()
    for piece in pieces:
        for data in decoder.feed(piece):
            stream.feed(data)
    assert not decoder.pending
    return stream.completion()


@settings(max_examples=300, deadline=None)
@given(
    streams(),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.booleans(),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_any_rechunking_of_a_valid_stream_gives_the_same_completion(
    stream: tuple[list[dict[str, object]], int], newline: bytes, comments: bool, cuts: list[int]
) -> None:
    chunks, n = stream
    raw = encode(chunks, newline, comments)
    whole = assemble([raw])
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert assemble(pieces) == whole
    assert assemble([raw[i : i + 1] for i in range(len(raw))]) == whole  # byte by byte
    assert len(whole.choices) == n and whole.finish_reason == "stop"
    assert whole.usage is not None and whole.usage.total_tokens == 12


def test_content_and_tool_calls_are_reassembled_per_choice() -> None:
    base = {"id": "c1", "model": "m", "system_fingerprint": "fp"}
    stream = ChunkAssembler()
    for chunk in [
        {**base, "choices": [{"index": 1, "delta": {"content": "Bon"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {
            **base,
            "choices": [{"index": 1, "delta": {"content": "jour"}, "finish_reason": "length"}],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]:
        stream.feed(orjson.dumps(chunk).decode())
    stream.feed("[DONE]")
    done = stream.completion()
    assert done.choices == ("Hello", "Bonjour") and done.response == "Hello"
    assert done.finish_reason == "stop" and done.usage is None
    assert (done.response_id, done.response_model, done.system_fingerprint) == ("c1", "m", "fp")


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        (['{"choices": [{"index": 0, "delta": {"content": "x"}}]}'], "before choice 0 finished"),
        (['{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'], "without [DONE]"),
        (['{"choices": [{"index": 0, "delta": {"content": "x"}', "[DONE]"], "not JSON"),
        (["[1, 2]", "[DONE]"], "not a JSON object"),
        (["[DONE]"], "no choices"),
    ],
)
def test_broken_streams_are_not_completions(events: list[str], reason: str) -> None:
    stream = ChunkAssembler()
    for data in events:
        stream.feed(data)
    with pytest.raises(NotACompletion, match=re.escape(reason)):
        stream.completion()


def test_an_error_event_is_kept_for_classification() -> None:
    stream = ChunkAssembler()
    stream.feed('{"error": {"type": "cf_bad_gateway", "code": 502}}')
    assert stream.error == {"error": {"type": "cf_bad_gateway", "code": 502}}


def test_decoder_rules() -> None:
    decoder = SSEDecoder()
    raw = b"event: x\ndata:a\ndata:  b\nid: 1\n\n: comment\n\ndata\n\nretry: 5\n\n"
    assert list(decoder.feed(raw)) == ["a\n b", ""]
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: 1\r")) == []
    assert list(decoder.feed(b"\n\r\n")) == ["1"]  # a CRLF split across chunks is one ending
    assert list(decoder.feed(b"data: cut")) == [] and decoder.pending


def test_an_oversized_event_raises() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(EventTooLarge):
        list(decoder.feed(b"data: " + b"x" * 200))
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(EventTooLarge):
        for _ in range(30):
            list(decoder.feed(b"data: xxxxxxxx\n"))
