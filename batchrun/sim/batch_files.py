"""The simulator's files: batch input checked line by line as it arrives, kept on disk.

An upload is written to the store's folder chunk by chunk and checked a line at a time as
the chunks come, so a 200 MB file is never held in memory; only its custom_ids are kept
(for the ledger, and to refuse a repeated one). A batch's output and error files are
written to the same folder by the batch as it answers, and join the store when it ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchrun.core.tokens import counter_for

from .text import stable_hash

MAX_FILE_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
# The only endpoint a batch line may name, and its method.
LINE_URL = "/v1/chat/completions"
LINE_METHOD = "POST"
INPUT_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"


class BadFile(ValueError):
    """The upload is not a usable batch input file; the API answers 400 with this message."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file of the store, its bytes on disk at `path`."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int  # Unix seconds
    visible_at: float  # the store's clock from when the file is found
    path: Path
    # A batch input file's custom_ids, in line order.
    custom_ids: tuple[str, ...] = ()
    # A batch input file's prompt and max_tokens tokens per model, when they were counted.
    tokens: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class LineChecker:
    """Checks a batch input file as its bytes arrive, a whole line at a time."""

    def __init__(self, count_tokens: bool) -> None:
        self._count_tokens = count_tokens
        # The bytes after the last newline seen: the start of a line still arriving.
        self._partial = b""
        self._size = 0
        self._line_number = 0
        # The custom_ids seen so far, in order, and as a set to find a repeated one.
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._tokens: dict[str, int] = {}

    def feed(self, chunk: bytes) -> None:
        """Checks the lines `chunk` completes; raises BadFile at the first bad one."""
        self._size += len(chunk)
        if self._size > MAX_FILE_BYTES:
            raise BadFile(f"The file is larger than the maximum of {MAX_FILE_BYTES} bytes.")
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self._check(line)

    def finish(self) -> tuple[tuple[str, ...], dict[str, int]]:
        """The custom_ids and token counts of a file whose bytes have all been fed."""
        self._check(self._partial)
        self._partial = b""
        if not self._ids:
            raise BadFile("The file holds no requests.")
        return tuple(self._ids), self._tokens

    def _check(self, raw: bytes) -> None:
        self._line_number += 1
        if not raw.strip():
            return
        where = f"Line {self._line_number}"
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadFile(f"{where} is not valid JSON.") from None
        if not isinstance(line, dict):
            raise BadFile(f"{where} is not a JSON object.")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise BadFile(f"{where} has no custom_id string.")
        if custom_id in self._seen:
            raise BadFile(f"{where} repeats custom_id {custom_id!r}; custom_ids must be unique.")
        if line.get("method") != LINE_METHOD:
            raise BadFile(f"{where} has method {line.get('method')!r}; only 'POST' is supported.")
        if line.get("url") != LINE_URL:
            raise BadFile(f"{where} has url {line.get('url')!r}; only {LINE_URL!r} is supported.")
        body = line.get("body")
        if not isinstance(body, dict):
            raise BadFile(f"{where} has no body object.")
        if len(self._ids) == MAX_FILE_LINES:
            raise BadFile(f"The file holds more than the maximum of {MAX_FILE_LINES} requests.")
        self._ids.append(custom_id)
        self._seen.add(custom_id)
        if self._count_tokens:
            model, tokens = _enqueued_tokens(body)
            self._tokens[model] = self._tokens.get(model, 0) + tokens


def _enqueued_tokens(body: Mapping[str, Any]) -> tuple[str, int]:
    """A line's model and the tokens it enqueues: its prompt's, and its max_tokens."""
    model = body.get("model")
    messages = body.get("messages")
    if not isinstance(model, str) or not isinstance(messages, list):
        return str(model), 0
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    prompt = counter_for(model).chat(m for m in messages if isinstance(m, Mapping))
    return model, prompt + (limit if isinstance(limit, int) else 0)


class FileStore:
    """The files of one server: metadata in memory, bytes in `folder`."""

    def __init__(
        self,
        folder: Path,
        seed: int,
        visible_after_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self._seed = seed
        # How long after its upload a file is still not found.
        self._visible_after_s = visible_after_s
        self._clock = clock
        # Every file, in the order it was stored.
        self._files: dict[str, StoredFile] = {}
        # How many ids have been given out; the next id is made from it.
        self._ids_made = 0

    async def receive(
        self, filename: str, chunks: AsyncIterator[bytes], count_tokens: bool
    ) -> StoredFile:
        """Stores a batch input file from its chunks; raises BadFile (and keeps nothing) if
        it is not one."""
        file_id = self._new_id()
        path = self.folder / file_id
        checker = LineChecker(count_tokens)
        try:
            with path.open("wb") as out:
                async for chunk in chunks:
                    checker.feed(chunk)
                    out.write(chunk)
            custom_ids, tokens = checker.finish()
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return self._add(
            StoredFile(
                id=file_id,
                filename=filename,
                purpose=INPUT_PURPOSE,
                bytes=path.stat().st_size,
                created_at=int(self._clock()),
                visible_at=self._clock() + self._visible_after_s,
                path=path,
                custom_ids=custom_ids,
                tokens=tokens,
            )
        )

    def new_path(self) -> tuple[str, Path]:
        """An id for a file the server writes itself, and the path to write it at."""
        file_id = self._new_id()
        return file_id, self.folder / file_id

    def add_written(self, file_id: str, path: Path, filename: str) -> StoredFile:
        """Adds a batch's output or error file, written at `path`, to the store."""
        now = self._clock()
        return self._add(
            StoredFile(
                id=file_id,
                filename=filename,
                purpose=OUTPUT_PURPOSE,
                bytes=path.stat().st_size,
                created_at=int(now),
                visible_at=now,
                path=path,
            )
        )

    def get(self, file_id: str) -> StoredFile | None:
        """The file, if it exists and is old enough to be seen."""
        stored = self._files.get(file_id)
        if stored is None or self._clock() < stored.visible_at:
            return None
        return stored

    def listing(self, purpose: str | None) -> list[StoredFile]:
        """The visible files, oldest first, of one purpose or all."""
        files = (self.get(file_id) for file_id in list(self._files))
        return [f for f in files if f is not None and purpose in (None, f.purpose)]

    def delete(self, file_id: str) -> StoredFile | None:
        """Removes a visible file; a batch reading it keeps its open handle."""
        stored = self.get(file_id)
        if stored is not None:
            del self._files[file_id]
            with contextlib.suppress(FileNotFoundError):
                stored.path.unlink()
        return stored

    def _add(self, stored: StoredFile) -> StoredFile:
        self._files[stored.id] = stored
        return stored

    def _new_id(self) -> str:
        self._ids_made += 1
        return "file-" + stable_hash(str(self._seed), "file", str(self._ids_made))[:24]
