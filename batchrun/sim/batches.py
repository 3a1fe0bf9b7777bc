"""Batches: each one's state, its moves, and the task that answers its lines.

A batch moves `validating` → `in_progress` → `finalizing` → `completed`; or from
`validating` to `failed` (beyond the enqueued-token cap); or from `in_progress` to
`expired` (under `batch_expire_after`); or from any status not ended to `cancelling` →
`cancelled`. Each move is one method of BatchDesk, which stamps its time.

Its lines are read from the input file one at a time, and each answer is written to the
output file (status 200) or the error file (any other status) as soon as it is made, so a
batch's memory does not grow with its size. A line left unanswered when the batch expired
goes to the error file as `{"id", "custom_id", "response": null, "error": {"code":
"batch_expired", "message"}}`, as OpenAI documents. Of a cancelled batch OpenAI says only
that its output file holds the results made before it stopped; its unanswered lines are
written like expired ones, with the code `batch_cancelled`, so that every line of every
batch that ends shows up in one of its two files. Unanswered lines count in neither
`completed` nor `failed`. A batch whose output or error file would be empty has none.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from .batch_files import LINE_URL, FileStore, StoredFile
from .batch_lines import LineAnswerer
from .config import SimConfig
from .holds import Holds
from .ledger import BatchEntry, BatchLedger
from .text import stable_hash

COMPLETION_WINDOW = "24h"
COMPLETION_WINDOW_S = 24 * 3600
# Statuses whose batches' tokens count against the enqueued-token cap.
ENQUEUED = frozenset({"validating", "in_progress", "finalizing"})
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# How many lines a batch answers between two turns it gives the event loop, when lines
# take no time of their own.
LINES_PER_TURN = 256
_UNANSWERED = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}


@dataclass
class Batch:
    """One batch as the API shows it; changed only by BatchDesk's moves."""

    id: str
    input_file_id: str
    metadata: Mapping[str, str] | None
    created_at: int
    total: int
    status: str = "validating"
    # When each status after `validating` began, by its field name (`in_progress_at`, …).
    stamps: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None

    def to_json(self, status: str) -> dict[str, Any]:
        """The Batch object, reporting `status` (the batch's own, or one put in its place)."""
        counted = self.status not in ("validating", "failed")
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": LINE_URL,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.stamps.get("in_progress_at"),
            "expires_at": self.created_at + COMPLETION_WINDOW_S,
            "finalizing_at": self.stamps.get("finalizing_at"),
            "completed_at": self.stamps.get("completed_at"),
            "failed_at": self.stamps.get("failed_at"),
            "expired_at": self.stamps.get("expired_at"),
            "cancelling_at": self.stamps.get("cancelling_at"),
            "cancelled_at": self.stamps.get("cancelled_at"),
            "request_counts": {
                "total": self.total if counted else 0,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": dict(self.metadata) if self.metadata is not None else None,
        }


class _Outputs:
    """A batch's output and error files, each opened when its first line comes."""

    def __init__(self, store: FileStore, batch_id: str) -> None:
        self._store = store
        self._batch_id = batch_id
        # Per kind ("output", "error"): the file's id, path and open handle.
        self._open: dict[str, tuple[str, Path, IO[bytes]]] = {}

    def write(self, kind: str, line: Mapping[str, Any]) -> None:
        if kind not in self._open:
            file_id, path = self._store.new_path()
            self._open[kind] = (file_id, path, path.open("wb"))
        self._open[kind][2].write(orjson.dumps(line) + b"\n")

    def publish(self) -> dict[str, str]:
        """Closes the files and adds them to the store; their ids by kind."""
        ids = {}
        for kind, (file_id, path, handle) in self._open.items():
            handle.close()
            self._store.add_written(file_id, path, f"{self._batch_id}_{kind}.jsonl")
            ids[kind] = file_id
        self._open.clear()
        return ids

    def discard(self) -> None:
        for _, path, handle in self._open.values():
            handle.close()
            path.unlink(missing_ok=True)
        self._open.clear()


class BatchDesk:
    """The batches of one server and the tasks answering them; lives on its event loop."""

    def __init__(
        self,
        config: SimConfig,
        files: FileStore,
        ledger: BatchLedger | None,
        holds: Holds,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._files = files
        self._ledger = ledger
        # Where tests make a batch wait (`batchrun.sim.holds`).
        self._holds = holds
        self._clock = clock
        self._answerer = LineAnswerer(config)
        # Every batch, in the order it was created.
        self._batches: dict[str, Batch] = {}
        # The tokens each batch enqueues per model, while it counts against the cap.
        self._enqueued: dict[str, Mapping[str, int]] = {}
        # Why a batch will fail when its validation ends, for batches beyond the cap.
        self._refusals: dict[str, str] = {}
        # When each cancelling batch becomes cancelled, on the loop's clock.
        self._cancelled_due: dict[str, float] = {}
        # The task answering each batch not yet ended.
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Draws which polls of a batch get a 5xx, in poll order.
        self._polls = random.Random(f"batch-polls:{config.seed}")

    def create(self, input_file: StoredFile, metadata: Mapping[str, str] | None) -> Batch:
        """A new batch of `input_file`'s lines, validating; its task starts answering it."""
        batch = Batch(
            id="batch_"
            + stable_hash(str(self._config.seed), "batch", str(len(self._batches)))[:24],
            input_file_id=input_file.id,
            metadata=metadata,
            created_at=int(self._clock()),
            total=len(input_file.custom_ids),
        )
        self._batches[batch.id] = batch
        refusal = self._over_cap(input_file.tokens)
        if refusal is not None:
            self._refusals[batch.id] = refusal
        else:
            self._enqueued[batch.id] = input_file.tokens
        if self._ledger is not None:
            self._ledger.created(
                BatchEntry(
                    batch.id,
                    input_file.id,
                    dict(metadata or {}),
                    input_file.custom_ids,
                    self._clock(),
                    batch.status,
                )
            )
        self._tasks[batch.id] = asyncio.create_task(self._run(batch, input_file.path))
        return batch

    def get(self, batch_id: str) -> Batch | None:
        return self._batches.get(batch_id)

    def listing(self) -> list[Batch]:
        """Every batch, newest first."""
        return list(reversed(self._batches.values()))

    def shown_status(self, batch: Batch) -> str:
        """The status a poll reports: `batch_unknown_status` stands in for `validating`."""
        unknown = self._config.batch_unknown_status
        return unknown if batch.status == "validating" and unknown else batch.status

    def poll_fails(self) -> bool:
        """Whether this poll of the batches answers with a 5xx (`batch_poll_errors`)."""
        share = self._config.batch_poll_errors
        return share > 0 and self._polls.random() < share

    def cancel(self, batch: Batch) -> None:
        """Starts cancelling a batch not yet ended; its task stops at the next line."""
        due = asyncio.get_running_loop().time() + self._config.batch_delay_s
        self._cancelled_due[batch.id] = due
        self._move(batch, "cancelling")

    async def close(self) -> None:
        """Stops every batch task; their unfinished files are removed with the folder."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _over_cap(self, tokens: Mapping[str, int]) -> str | None:
        cap = self._config.batch_enqueued_tokens
        if cap is None:
            return None
        for model, count in tokens.items():
            enqueued = sum(t.get(model, 0) for t in self._enqueued.values())
            if enqueued + count > cap:
                return (
                    f"Enqueued token limit reached for {model} in organization org-sim. "
                    f"Limit: {cap:,} enqueued tokens. Please try again once some in_progress "
                    "batches have been completed."
                )
        return None

    async def _run(self, batch: Batch, input_path: Path) -> None:
        # Opened before the first wait, so before any request to delete the input file is
        # read: deleting it once the batch exists is harmless.
        lines = input_path.open("rb")
        outputs = _Outputs(self._files, batch.id)
        try:
            await asyncio.sleep(self._config.batch_delay_s)
            refusal = self._refusals.pop(batch.id, None)
            if batch.status == "validating" and refusal is not None:
                self._fail(batch, "token_limit_exceeded", refusal)
                return
            if batch.status == "validating":
                self._move(batch, "in_progress")
                await self._holds.at("answering")
            await self._answer(batch, _nonblank(lines), outputs)
            await self._end(batch, outputs)
        except asyncio.CancelledError:
            outputs.discard()
            raise
        finally:
            lines.close()
            self._tasks.pop(batch.id, None)
            self._enqueued.pop(batch.id, None)

    async def _answer(self, batch: Batch, lines: Iterable[bytes], outputs: _Outputs) -> None:
        """Answers each line until the batch expires or is cancelled, then writes the rest
        as unanswered."""
        share = self._config.batch_expire_after
        expire_at = None if share is None else int(share * batch.total)
        pause = self._config.batch_line_ms / 1000
        unanswered: str | None = None
        for index, raw in enumerate(lines):
            line = orjson.loads(raw)
            if unanswered is None and batch.status == "cancelling":
                unanswered = "batch_cancelled"
            elif unanswered is None and index == expire_at:
                unanswered = "batch_expired"
            if unanswered is not None:
                outputs.write("error", _unanswered_line(batch.id, line["custom_id"], unanswered))
            else:
                self._answer_line(batch, line, outputs)
            if pause > 0 and unanswered is None:
                await asyncio.sleep(pause)
            elif index % LINES_PER_TURN == LINES_PER_TURN - 1:
                await asyncio.sleep(0)

    def _answer_line(self, batch: Batch, line: Mapping[str, Any], outputs: _Outputs) -> None:
        custom_id = line["custom_id"]
        status, body = self._answerer.answer(line["body"])
        key = stable_hash(batch.id, custom_id)
        response = {"status_code": status, "request_id": "req_" + key[32:64], "body": body}
        answer = {"id": "batch_req_" + key[:24], "custom_id": custom_id, "response": response}
        outputs.write("output" if status == 200 else "error", {**answer, "error": None})
        if status == 200:
            batch.completed += 1
        else:
            batch.failed += 1

    async def _end(self, batch: Batch, outputs: _Outputs) -> None:
        if batch.status == "cancelling":
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, self._cancelled_due.pop(batch.id) - loop.time()))
            ending = "cancelled"
        elif self._config.batch_expire_after is not None:
            ending = "expired"
        else:
            self._move(batch, "finalizing")
            ending = "completed"
        files = outputs.publish()
        batch.output_file_id = files.get("output")
        batch.error_file_id = files.get("error")
        self._move(batch, ending)

    def _fail(self, batch: Batch, code: str, message: str) -> None:
        batch.errors = [{"code": code, "message": message, "param": None, "line": None}]
        self._move(batch, "failed")

    def _move(self, batch: Batch, status: str) -> None:
        """One move of a batch's state: its status, the time it began, the ledger's note."""
        batch.status = status
        batch.stamps[f"{status}_at"] = int(self._clock())
        if status not in ENQUEUED:
            self._enqueued.pop(batch.id, None)
        if self._ledger is not None:
            self._ledger.moved(batch.id, status)


def _nonblank(lines: Iterable[bytes]) -> Iterable[bytes]:
    return (line for line in lines if line.strip())


def _unanswered_line(batch_id: str, custom_id: str, code: str) -> dict[str, Any]:
    return {
        "id": "batch_req_" + stable_hash(batch_id, custom_id)[:24],
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": _UNANSWERED[code]},
    }
