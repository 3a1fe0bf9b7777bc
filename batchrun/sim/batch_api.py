"""The HTTP face of the Files and Batches API: /v1/files and /v1/batches, as OpenAI has them.

Every request is checked for the API key as a chat request is (the same 401). File
contents are streamed from disk both ways. The faults of `[sim]` that touch this API act
here: a file younger than `file_visible_after_s` is not found (404 `file_not_found`) by a
GET or by a batch naming it, and `batch_poll_errors` of the GETs on batches answer a 5xx.
The server's files live in a temporary folder that is removed when the server stops.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from .batch_files import INPUT_PURPOSE, BadFile, FileStore
from .batches import COMPLETION_WINDOW, ENDED, BatchDesk
from .config import SimConfig
from .faults import ErrorReply, fault_reply, invalid_request, key_refusal
from .holds import Holds
from .ledger import BatchLedger, Cancel, Upload

UPLOAD_CHUNK_BYTES = 1024 * 1024
# How much of a file a download held at the `content` point sends before it waits.
HELD_CONTENT_BYTES = 100
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
# The default and largest `limit` of each listing, as OpenAI has them.
FILES_LIMIT = 10_000
BATCHES_LIMIT = (20, 100)
_JSON = "application/json"


class BatchApi:
    """The handlers of /files and /batches and the state they share; one per server."""

    def __init__(
        self,
        config: SimConfig,
        ledger: BatchLedger | None,
        holds: Holds,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._ledger = ledger
        # Where tests make a request wait (`batchrun.sim.holds`).
        self._holds = holds
        self._clock = clock
        # The folder holding every file's bytes; removed by close().
        self._folder = Path(tempfile.mkdtemp(prefix="batchrun-sim-"))
        self._files = FileStore(self._folder, config.seed, config.file_visible_after_s, clock)
        self._desk = BatchDesk(config, self._files, ledger, holds, clock)
        # How many polls have been answered with a 5xx, to rotate the status codes.
        self._poll_errors: Counter[str] = Counter()

    def add_routes(self, app: web.Application, prefix: str) -> None:
        app.router.add_post(f"{prefix}/files", self.upload_file)
        app.router.add_get(f"{prefix}/files", self.list_files)
        app.router.add_get(f"{prefix}/files/{{file_id}}", self.get_file)
        app.router.add_get(f"{prefix}/files/{{file_id}}/content", self.file_content)
        app.router.add_delete(f"{prefix}/files/{{file_id}}", self.delete_file)
        app.router.add_post(f"{prefix}/batches", self.create_batch)
        app.router.add_get(f"{prefix}/batches", self.list_batches)
        app.router.add_get(f"{prefix}/batches/{{batch_id}}", self.get_batch)
        app.router.add_post(f"{prefix}/batches/{{batch_id}}/cancel", self.cancel_batch)

    async def close(self, app: web.Application) -> None:
        """Stops the batches and removes the files (an aiohttp on_cleanup hook)."""
        await self._desk.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    async def upload_file(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if not request.content_type.startswith("multipart/"):
            return _invalid("Uploads must be multipart/form-data with 'purpose' and 'file'.")
        await self._holds.at("upload")
        purpose: str | None = None
        stored = None
        try:
            async for part in await request.multipart():
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "purpose":
                    purpose = await part.text()
                elif part.name == "file" and stored is None:
                    chunks = _chunks(part)
                    count_tokens = self._config.batch_enqueued_tokens is not None
                    filename = part.filename or "upload.jsonl"
                    stored = await self._files.receive(filename, chunks, count_tokens)
        except BadFile as exc:
            return _invalid(str(exc), "file")
        if stored is None:
            return _invalid("Missing required parameter: 'file'.", "file")
        if purpose != INPUT_PURPOSE:
            self._files.delete(stored.id)
            return _invalid(
                f"The simulator takes files of purpose 'batch' only, not {purpose!r}.", "purpose"
            )
        if self._ledger is not None:
            upload = Upload(stored.id, stored.filename, stored.custom_ids, self._clock())
            self._ledger.uploaded(upload)
        await self._holds.at("uploaded")
        return _json(stored.to_json())

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        query = request.query
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            return _invalid("'order' must be 'asc' or 'desc'.", "order")
        limit = _limit(query.get("limit"), FILES_LIMIT, FILES_LIMIT)
        if limit is None:
            return _invalid(f"'limit' must be a whole number from 1 to {FILES_LIMIT}.", "limit")
        files = self._files.listing(query.get("purpose"))
        if order == "desc":
            files.reverse()
        return _json(_page([f.to_json() for f in files], query.get("after"), limit))

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        stored = self._files.get(request.match_info["file_id"])
        if stored is None:
            return _file_not_found(request.match_info["file_id"])
        return _json(stored.to_json())

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        stored = self._files.get(request.match_info["file_id"])
        if stored is None:
            return _file_not_found(request.match_info["file_id"])
        if self._holds.armed("content"):
            return await self._stalled_content(request, stored.path)
        return web.FileResponse(stored.path, headers={"Content-Type": "application/octet-stream"})

    async def _stalled_content(self, request: web.Request, path: Path) -> web.StreamResponse:
        """A download while the `content` point is armed: its first bytes, the point, the
        rest."""
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = path.stat().st_size
        await response.prepare(request)
        with path.open("rb") as handle:
            await response.write(handle.read(HELD_CONTENT_BYTES))
            await self._holds.at("content")
            while chunk := handle.read(UPLOAD_CHUNK_BYTES):
                await response.write(chunk)
        await response.write_eof()
        return response

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        stored = self._files.delete(request.match_info["file_id"])
        if stored is None:
            return _file_not_found(request.match_info["file_id"])
        return _json({"id": stored.id, "object": "file", "deleted": True})

    async def create_batch(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _invalid("We could not parse the JSON body of your request.")
        problem = _batch_request_problem(body)
        if problem is not None:
            return _invalid(*problem)
        stored = self._files.get(body["input_file_id"])
        if stored is None:
            return _file_not_found(body["input_file_id"])
        if stored.purpose != INPUT_PURPOSE:
            return _invalid(
                f"File {stored.id} has purpose {stored.purpose!r}, not 'batch'.", "input_file_id"
            )
        batch = self._desk.create(stored, body.get("metadata"))
        await self._holds.at("created")
        return _json(batch.to_json(self._desk.shown_status(batch)))

    async def get_batch(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request) or self._poll_refusal()
        if refusal is not None:
            return refusal
        batch = self._desk.get(request.match_info["batch_id"])
        if batch is None:
            return _batch_not_found(request.match_info["batch_id"])
        return _json(batch.to_json(self._desk.shown_status(batch)))

    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request) or self._poll_refusal()
        if refusal is not None:
            return refusal
        default, most = BATCHES_LIMIT
        limit = _limit(request.query.get("limit"), default, most)
        if limit is None:
            return _invalid(f"'limit' must be a whole number from 1 to {most}.", "limit")
        shown = [b.to_json(self._desk.shown_status(b)) for b in self._desk.listing()]
        return _json(_page(shown, request.query.get("after"), limit))

    async def cancel_batch(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        batch = self._desk.get(request.match_info["batch_id"])
        if batch is None:
            return _batch_not_found(request.match_info["batch_id"])
        if batch.status in ENDED:
            reply = _openai_error(
                409,
                f"Cannot cancel a batch with status '{batch.status}'.",
                "invalid_request_error",
                None,
            )
            return _response(reply)
        if batch.status != "cancelling":
            self._desk.cancel(batch)
            if self._ledger is not None:
                self._ledger.cancelled(Cancel(batch.id, self._clock()))
        return _json(batch.to_json(self._desk.shown_status(batch)))

    def _refusal(self, request: web.Request) -> web.Response | None:
        authorization = request.headers.get("Authorization", "")
        reply = key_refusal(self._config.api_key, self._config.dialect, authorization)
        return None if reply is None else _response(reply)

    def _poll_refusal(self) -> web.Response | None:
        if not self._desk.poll_fails():
            return None
        turn = self._poll_errors["server_error"]
        self._poll_errors["server_error"] += 1
        return _response(fault_reply("server_error", "openai", "", turn, 0))


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(UPLOAD_CHUNK_BYTES):
        yield chunk


def _batch_request_problem(body: dict[str, Any]) -> tuple[str, str] | None:
    """What is wrong with a create-batch body (message, param), or None."""
    if not isinstance(body.get("input_file_id"), str):
        return "Missing required parameter: 'input_file_id'.", "input_file_id"
    if body.get("endpoint") != "/v1/chat/completions":
        return "The simulator batches '/v1/chat/completions' only.", "endpoint"
    if body.get("completion_window") != COMPLETION_WINDOW:
        return f"'completion_window' must be '{COMPLETION_WINDOW}'.", "completion_window"
    metadata = body.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_PAIRS:
        return f"'metadata' must be an object of at most {MAX_METADATA_PAIRS} pairs.", "metadata"
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY or not isinstance(value, str):
            return "'metadata' keys must be short strings and its values strings.", "metadata"
        if len(value) > MAX_METADATA_VALUE:
            return f"'metadata' values must be at most {MAX_METADATA_VALUE} long.", "metadata"
    return None


def _limit(text: str | None, default: int, most: int) -> int | None:
    """A listing's `limit`, or None when it is not a whole number from 1 to `most`."""
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 1 <= value <= most else None


def _page(objects: Sequence[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """One page of a listing: up to `limit` objects after the one whose id is `after`."""
    start = 0
    if after is not None:
        ids = [o["id"] for o in objects]
        start = ids.index(after) + 1 if after in ids else len(ids)
    data = list(objects[start : start + limit])
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(objects),
    }


def _file_not_found(file_id: str) -> web.Response:
    message = f"No such File object: {file_id}"
    return _response(_openai_error(404, message, "invalid_request_error", "file_not_found"))


def _batch_not_found(batch_id: str) -> web.Response:
    message = f"No such Batch object: {batch_id}"
    return _response(_openai_error(404, message, "invalid_request_error", "batch_not_found"))


def _invalid(message: str, param: str | None = None) -> web.Response:
    return _response(invalid_request(message, param))


def _openai_error(status: int, message: str, type_: str, code: str | None) -> ErrorReply:
    error = {"message": message, "type": type_, "param": None, "code": code}
    return ErrorReply(status, orjson.dumps({"error": error}))


def _response(reply: ErrorReply) -> web.Response:
    return web.Response(
        status=reply.status, body=reply.body, content_type=reply.content_type, headers=reply.headers
    )


def _json(document: Any) -> web.Response:
    return web.Response(body=orjson.dumps(document), content_type=_JSON)
