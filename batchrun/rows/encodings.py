"""Naming the encoding of a text file that is not what the job says it is.

When a CSV is not valid UTF-8 and the job gives no encoding, the user is told which
encoding the file most likely is, so that one key fixes the job: the first invalid byte is
found by decoding the file in blocks (at disk speed; nothing is kept), and
charset-normalizer is asked about the text around it, where the file's non-ASCII
characters are (a file's first megabyte may well be all ASCII).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

import charset_normalizer

_BLOCK_BYTES = 1 << 20  # read and decoded at a time while looking for the first bad byte
_SAMPLE_BYTES = 1 << 16  # given to the detector from the first bad byte on, and as much before
# Encodings a detector names for Chinese text that GB18030 decodes too (it extends GBK,
# which extends GB2312): the superset is named, since a file may use characters beyond
# what its sample showed.
_WIDER = {"gb2312": "gb18030", "gbk": "gb18030", "hz": "gb18030"}


@dataclass(frozen=True)
class BadByte:
    """Where a file stops being valid UTF-8, and what it more likely is."""

    path: Path
    offset: int  # the first invalid byte's offset in the file
    byte: int  # its value
    likely: str | None  # the codec name the detector gives (Python's spelling); None: unsure


def first_bad_utf8(files: list[Path]) -> BadByte | None:
    """The first byte of `files` that is not UTF-8, with the likely encoding; None if all
    of them are valid UTF-8."""
    for path in files:
        offset = _first_invalid(path)
        if offset is not None:
            start = max(offset - _SAMPLE_BYTES, 0)
            with open(path, "rb") as handle:
                handle.seek(start)
                sample = handle.read(_SAMPLE_BYTES * 2)
            whole = _lines(sample, first=start == 0, last=len(sample) < _SAMPLE_BYTES * 2)
            return BadByte(path, offset, sample[offset - start], likely_encoding(whole))
    return None


def likely_encoding(sample: bytes) -> str | None:
    """The encoding `sample` is most likely in, as Python names it; None when unsure."""
    best = charset_normalizer.from_bytes(sample).best()
    if best is None:
        return None
    name = codecs.lookup(best.encoding).name
    return _WIDER.get(name, name)


def _lines(sample: bytes, *, first: bool, last: bool) -> bytes:
    """`sample` cut to whole lines (`first`: it starts the file; `last`: it ends it): a
    character cut in two at either end makes the detector rule out the right encoding. A
    line end is a 0x0A byte in every encoding it names but UTF-16, where it is followed
    (little-endian) by a zero byte, kept with it."""

    def after_line_end(at: int) -> int:
        return at + 2 if sample[at + 1 : at + 2] == b"\x00" else at + 1

    begin = 0 if first or b"\n" not in sample else after_line_end(sample.index(b"\n"))
    end = len(sample) if last or b"\n" not in sample else after_line_end(sample.rindex(b"\n"))
    return sample[begin:end] if begin < end else sample


def _first_invalid(path: Path) -> int | None:
    """The offset of the first byte of `path` that is not UTF-8; None if there is none."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file handed to the decoder so far
    with open(path, "rb") as handle:
        while True:
            block = handle.read(_BLOCK_BYTES)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                # The decoder's error counts from the bytes it still held from the last block.
                held = len(exc.object) - len(block)
                return offset - held + exc.start
            if not block:
                return None
            offset += len(block)
