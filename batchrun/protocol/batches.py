"""A batch endpoint's Files and Batches API: upload, find, create, poll, cancel, download.

One `BatchClient` per batch endpoint, over a session built as the chat wire builds its own
(`batchrun.protocol.wire.open_session`: the endpoint's proxy, TLS trust, headers and key),
with aiohttp's errors translated by the wire's `translated`. Files go both ways as streams:
an upload is read from disk as it is sent, a download written to disk as it arrives (through
`atomic_file`), so a 200 MB file is never whole in memory.

What passes is retried, for at most `max_retry_s` from a call's first failure, with capped
exponential backoff (full jitter; a Retry-After is a floor): a 5xx, a 429, a timeout or a
cut connection. A 404 `file_not_found` naming a file uploaded moments ago is retried for
MISSING_FILE_WAIT_S, as a provider's storage may show a new file late. A retried upload or
batch creation first looks for what the failed attempt may have made (a file of the same
name, a batch of the same input file) and adopts it, so that a retry never creates a second
one. What does not pass raises: a 401 or 403 `BadKey`, a refused certificate or proxy login
`BadRoute`, any other 4xx (or a call out of reach past its bound) `BatchApiFailed`, each one
sentence that never holds the key.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import orjson

from ..core.network import DIRECT, Route
from ..core.secrets import Secret
from ..errors import BadKey, BadRoute, BatchApiFailed
from ..storage.files import atomic_file
from ..version import __version__
from .wire import TransportFailure, open_session, translated

PURPOSE = "batch"  # the purpose of a batch input file
LINE_URL = "/v1/chat/completions"  # the endpoint every line of a batch goes to
PAGE_SIZE = 100  # objects asked for per listing page (the most /batches gives)
MISSING_FILE_WAIT_S = 60.0  # how long a file the provider cannot find yet is asked for again
MISSING_FILE_RETRY_S = 2.0  # ... asking every this many seconds
_DOWNLOAD_CHUNK = 1024 * 1024
_BACKOFF_BASE_S = 1.0  # the first backoff is drawn from [0, this]
_BACKOFF_CAP_S = 30.0  # no backoff is drawn from a wider range than [0, this]
_PASSING_STATUSES = frozenset((408, 429)) | frozenset(range(500, 600))
_PASSING_FAILURES = frozenset(("timeout", "connection"))  # TransportFailure kinds

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class BatchState(enum.Enum):
    """Where a batch stands, whatever the provider calls it."""

    WAITING = "waiting"  # validating: not started
    RUNNING = "running"  # in_progress
    FINALIZING = "finalizing"  # every line done; the output files are being written
    COMPLETED = "completed"
    FAILED = "failed"  # refused as a whole (e.g. token_limit_exceeded); no line was run
    EXPIRED = "expired"  # the window passed; what it finished is in its files
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"  # what it finished before the cancel is in its files
    UNKNOWN = "unknown"  # a status no provider documents (SiliconFlow's in_queue): running

    @property
    def ended(self) -> bool:
        """Whether the batch will change no more (its files, if any, are final)."""
        return self in _ENDED


_ENDED = frozenset(
    (BatchState.COMPLETED, BatchState.FAILED, BatchState.EXPIRED, BatchState.CANCELLED)
)
_STATES = {
    "validating": BatchState.WAITING,
    "in_progress": BatchState.RUNNING,
    "finalizing": BatchState.FINALIZING,
    "completed": BatchState.COMPLETED,
    "failed": BatchState.FAILED,
    "expired": BatchState.EXPIRED,
    "cancelling": BatchState.CANCELLING,
    "cancelled": BatchState.CANCELLED,
}


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """A batch's lines as the provider counts them."""

    total: int
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A Batch object, as the provider last reported it."""

    id: str
    status: str  # the provider's own word for it
    state: BatchState  # what `status` means
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    request_counts: RequestCounts
    metadata: Mapping[str, str]
    error_codes: tuple[str, ...]  # why a failed batch failed (`errors.data[].code`)
    created_at: int | None  # Unix seconds, as every stamp below; None where not reached
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    expires_at: int | None

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> BatchInfo:
        """The Batch object a provider sent; missing fields are empty, never an error."""
        status = str(document.get("status") or "")
        counts = document.get("request_counts") or {}
        errors = (document.get("errors") or {}).get("data") or []
        stamps = {name: _stamp(document.get(name)) for name in _STAMPS}
        return cls(
            id=str(document["id"]),
            status=status,
            state=_STATES.get(status, BatchState.UNKNOWN),
            input_file_id=document.get("input_file_id"),
            output_file_id=document.get("output_file_id"),
            error_file_id=document.get("error_file_id"),
            request_counts=RequestCounts(
                int(counts.get("total") or 0),
                int(counts.get("completed") or 0),
                int(counts.get("failed") or 0),
            ),
            metadata=dict(document.get("metadata") or {}),
            error_codes=tuple(str(e.get("code")) for e in errors if e.get("code")),
            **stamps,
        )


_STAMPS = (
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "expires_at",
)


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A File object, as the provider reported it."""

    id: str
    filename: str
    bytes: int
    created_at: int | None  # Unix seconds
    status: str | None  # "uploaded", "processed", "error" (deprecated by OpenAI, often absent)

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> FileInfo:
        return cls(
            id=str(document["id"]),
            filename=str(document.get("filename") or ""),
            bytes=int(document.get("bytes") or 0),
            created_at=_stamp(document.get("created_at")),
            status=document.get("status"),
        )


def _stamp(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


@dataclass(frozen=True, slots=True)
class _Answer:
    """A JSON answer: its status and its decoded body (None when it is not JSON)."""

    status: int
    document: Any


class _Retrying:
    """One call's retries: how many attempts failed and since when; the next wait."""

    def __init__(self, max_retry_s: float, clock: Clock, rng: random.Random) -> None:
        self._max_retry_s = max_retry_s  # the most time the call may spend being retried
        self._clock = clock
        self._rng = rng
        self.failures = 0  # attempts that failed in a way that passes
        self._first: float | None = None  # when the first of them failed
        self._missing_since: float | None = None  # when a file was first not found

    def wait(self, retry_after: float | None) -> float | None:
        """Seconds before the next attempt after one more failure, or None when the bound
        is reached."""
        now = self._clock()
        if self._first is None:
            self._first = now
        self.failures += 1
        ceiling = _BACKOFF_BASE_S * 2 ** (self.failures - 1)
        delay = self._rng.uniform(0, min(_BACKOFF_CAP_S, ceiling))
        delay = max(delay, retry_after or 0.0)
        left = self._first + self._max_retry_s - now
        return None if left <= 0 else min(delay, left)

    def wait_for_file(self) -> float | None:
        """Seconds before asking again for a file not found yet, or None after
        MISSING_FILE_WAIT_S."""
        now = self._clock()
        if self._missing_since is None:
            self._missing_since = now
        left = self._missing_since + MISSING_FILE_WAIT_S - now
        return None if left <= 0 else min(MISSING_FILE_RETRY_S, left)


class BatchClient:
    """The Files and Batches API at `{base_url}`: one connection pool, used as an async
    context manager. `name` and `key_env` name the endpoint and the key's variable in
    messages; `clock` and `sleep` time the retries (tests pass their own)."""

    def __init__(
        self,
        base_url: str,
        key: Secret | None,
        *,
        name: str,
        key_env: str,
        headers: Mapping[str, str] | None = None,
        route: Route = DIRECT,
        timeout_s: float = 120.0,
        max_retry_s: float = 900.0,
        page_size: int = PAGE_SIZE,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url
        self.route = route
        self.name = name
        self._key = key
        self._key_env = key_env
        # No Content-Type here: each call sets its own (JSON, or a multipart upload's).
        self._headers = {
            "Accept": "application/json",
            "User-Agent": f"batchrun/{__version__}",
            **(headers or {}),
        }
        if key is not None:
            self._headers["Authorization"] = f"Bearer {key.reveal()}"
        # Each call's whole time limit; an upload's or a download's is its socket's, per
        # read: a 200 MB file may take longer than any one request should.
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 30))
        self._transfer_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(timeout_s, 30), sock_read=timeout_s
        )
        self._max_retry_s = max_retry_s
        self._page_size = page_size
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._extra: dict[str, Any] = {}  # what each request passes (see `open_session`)

    async def __aenter__(self) -> BatchClient:
        self._session, self._extra = open_session(
            self.base_url, self.route, self._headers, 4, self._timeout
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def upload(self, path: Path, filename: str) -> FileInfo:
        """Upload the request lines at `path` as `filename`, read from disk as they are sent.

        `filename` should be unique (the lane's carries its intent's key): an upload whose
        answer was lost is found by it before the file is sent again."""

        def form(attempt: ExitStack) -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("purpose", PURPOSE)
            # Opened afresh for each attempt, and closed with it; aiohttp reads it in chunks
            # as it sends.
            handle = attempt.enter_context(path.open("rb"))
            data.add_field("file", handle, filename=filename, content_type="application/jsonl")
            return data

        async def sent_before() -> Mapping[str, Any] | None:
            return await self._find("list files", "/files", {"purpose": PURPOSE}, named)

        def named(document: Mapping[str, Any]) -> bool:
            return document.get("filename") == filename

        answer = await self._json(
            f"upload {filename}",
            "POST",
            "/files",
            form=form,
            made_before=sent_before,
            timeout=self._transfer_timeout,
        )
        return FileInfo.of(answer.document)

    async def find_file(self, filename: str) -> FileInfo | None:
        """The newest batch file called `filename`, or None: how a run that was killed after
        an upload finds the file."""
        document = await self._find(
            "list files",
            "/files",
            {"purpose": PURPOSE},
            lambda f: f.get("filename") == filename,
        )
        return None if document is None else FileInfo.of(document)

    async def create_batch(
        self, file_id: str, completion_window: str, metadata: Mapping[str, str]
    ) -> BatchInfo:
        """Create a batch of the lines in `file_id`, labelled with `metadata`."""
        body = {
            "input_file_id": file_id,
            "endpoint": LINE_URL,
            "completion_window": completion_window,
            "metadata": dict(metadata),
        }

        async def created_before() -> Mapping[str, Any] | None:
            return await self._find(
                "list batches", "/batches", {}, lambda b: b.get("input_file_id") == file_id
            )

        answer = await self._json(
            f"create a batch of {file_id}",
            "POST",
            "/batches",
            body=body,
            file_wait=True,
            made_before=created_before,
        )
        return BatchInfo.of(answer.document)

    async def find_batch(self, metadata_key: str, value: str) -> BatchInfo | None:
        """The newest batch whose metadata has `metadata_key` = `value`, or None: how a run
        that was killed after creating a batch finds it."""
        document = await self._find(
            "list batches",
            "/batches",
            {},
            lambda b: (b.get("metadata") or {}).get(metadata_key) == value,
        )
        return None if document is None else BatchInfo.of(document)

    async def get_batch(self, batch_id: str) -> BatchInfo:
        """The batch as it stands now."""
        answer = await self._json(f"look at batch {batch_id}", "GET", f"/batches/{batch_id}")
        return BatchInfo.of(answer.document)

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel a batch; the batch as it then stands (one that had
        already ended is returned as it ended: there is nothing left to cancel)."""
        answer = await self._json(
            f"cancel batch {batch_id}", "POST", f"/batches/{batch_id}/cancel", tolerate={409}
        )
        if answer.status == 409:
            return await self.get_batch(batch_id)
        return BatchInfo.of(answer.document)

    async def download(self, file_id: str, path: Path) -> int:
        """Write the contents of `file_id` to `path`, chunk by chunk as they arrive and
        atomically (never seen half-written); the bytes written."""

        async def save(resp: aiohttp.ClientResponse) -> int:
            size = 0
            with atomic_file(path) as tmp, tmp.open("wb") as handle:
                async for chunk in resp.content.iter_chunked(_DOWNLOAD_CHUNK):
                    handle.write(chunk)
                    size += len(chunk)
            return size

        return await self._send(
            f"download {file_id}",
            "GET",
            f"/files/{file_id}/content",
            save,
            file_wait=True,
            timeout=self._transfer_timeout,
        )

    async def delete_file(self, file_id: str) -> None:
        """Delete a file from the provider's storage; one already gone is no error."""
        await self._json(f"delete {file_id}", "DELETE", f"/files/{file_id}", tolerate={404})

    async def _find(
        self,
        what: str,
        path: str,
        params: Mapping[str, str],
        matches: Callable[[Mapping[str, Any]], bool],
    ) -> Mapping[str, Any] | None:
        """The newest object of a listing that `matches`, or None, looking through every
        page."""
        async for document in self._listing(what, path, params):
            if matches(document):
                return document
        return None

    async def _listing(
        self, what: str, path: str, params: Mapping[str, str]
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Every object of a listing, newest first, a page at a time (`after`, `limit`)."""
        after: str | None = None
        while True:
            query = {**params, "limit": str(self._page_size)}
            if after is not None:
                query["after"] = after
            answer = await self._json(what, "GET", path, params=query)
            page = answer.document if isinstance(answer.document, dict) else {}
            data = page.get("data") or []
            for document in data:
                yield document
            if not data or not page.get("has_more"):
                return
            after = page.get("last_id") or data[-1]["id"]

    async def _json(
        self,
        what: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        form: Callable[[ExitStack], aiohttp.FormData] | None = None,
        file_wait: bool = False,
        tolerate: frozenset[int] | set[int] = frozenset(),
        made_before: Callable[[], Awaitable[Mapping[str, Any] | None]] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> _Answer:
        """One call whose answer is a JSON document (see `_send`); `made_before`, for a call
        that creates something, finds the document of what a failed attempt may have
        created, which is then the answer."""

        async def decode(resp: aiohttp.ClientResponse) -> _Answer:
            return _Answer(resp.status, _decoded(await resp.read()))

        async def adopt() -> _Answer | None:
            assert made_before is not None
            document = await made_before()
            return None if document is None else _Answer(200, document)

        options: dict[str, Any] = {}
        if body is not None:
            options["data"] = orjson.dumps(body)
            options["headers"] = {"Content-Type": "application/json"}
        if params is not None:
            options["params"] = params
        if timeout is not None:
            options["timeout"] = timeout
        return await self._send(
            what,
            method,
            path,
            decode,
            form=form,
            file_wait=file_wait,
            tolerate=tolerate,
            before_retry=adopt if made_before is not None else None,
            **options,
        )

    async def _send(
        self,
        what: str,
        method: str,
        path: str,
        read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        *,
        form: Callable[[ExitStack], aiohttp.FormData] | None = None,
        file_wait: bool = False,
        tolerate: frozenset[int] | set[int] = frozenset(),
        before_retry: Callable[[], Awaitable[T | None]] | None = None,
        **options: Any,
    ) -> T:
        """Send one call, retried as the module docstring says, and `read` its answer (a
        2xx, or a status in `tolerate`). `what` names the call in messages ("upload x");
        `before_retry`, where given, is asked before each retry and its answer, if any,
        ends the call."""
        assert self._session is not None, "use BatchClient as an async context manager"
        retrying = _Retrying(self._max_retry_s, self._clock, self._rng)
        url = f"{self.base_url}{path}"
        while True:
            if retrying.failures and before_retry is not None:
                found = await before_retry()
                if found is not None:
                    return found
            request = {**self._extra, **options}
            if "headers" in self._extra and "headers" in options:
                request["headers"] = {**self._extra["headers"], **options["headers"]}
            try:
                with translated(self.route.proxy), ExitStack() as attempt:
                    if form is not None:
                        request["data"] = form(attempt)
                    async with self._session.request(method, url, **request) as resp:
                        if resp.status < 300 or resp.status in tolerate:
                            return await read(resp)
                        status, code, message = await self._refusal(resp)
            except TransportFailure as failure:
                if failure.kind not in _PASSING_FAILURES:
                    raise self._route_refused(what, failure) from None
                wait = retrying.wait(None)
                problem = failure.message
            else:
                if status in (401, 403):
                    raise BadKey(
                        f"The gateway rejected the API key in {self._key_env} ({message}): "
                        f"set it to a valid key and run again; finished rows are saved."
                    )
                if status == 404 and code == "file_not_found" and file_wait:
                    wait = retrying.wait_for_file()
                elif status in _PASSING_STATUSES:
                    wait = retrying.wait(_retry_after(resp.headers))
                else:
                    raise BatchApiFailed(
                        f"The batch endpoint {self.name!r} refused to {what}: {message} "
                        f"(HTTP {status}).",
                        status,
                        code,
                    )
                problem = f"HTTP {status}: {message}"
            if wait is None:
                raise BatchApiFailed(
                    f"The batch endpoint {self.name!r} could not {what} for "
                    f"{self._max_retry_s:g} s ({problem}); run again when it answers: "
                    f"submitted batches run on."
                )
            await self._sleep(wait)

    async def _refusal(self, resp: aiohttp.ClientResponse) -> tuple[int, str | None, str]:
        """A refusal's status, the provider's error code and its message (one line, without
        the key or a proxy's login)."""
        body = await resp.content.read(64 * 1024)
        document = _decoded(body)
        error = document.get("error") if isinstance(document, dict) else None
        code = None
        if isinstance(error, dict):
            code = error.get("code") or None
            text = str(error.get("message") or code or resp.reason or "")
        else:
            text = body.decode("utf-8", "replace") or str(resp.reason or "")
        lines = text.strip().splitlines() or [f"HTTP {resp.status}"]
        return resp.status, None if code is None else str(code), self._redact(lines[0][:300])

    def _route_refused(self, what: str, failure: TransportFailure) -> BadRoute | BatchApiFailed:
        message = self._redact(failure.message)
        if failure.kind == "too_large":
            return BatchApiFailed(f"The batch endpoint {self.name!r} could not {what}: {message}.")
        proxy = self.route.proxy
        if proxy is not None and failure.kind == "proxy_auth":
            fix = (
                f"fix the user and password of the proxy {proxy.shown} (in the proxy "
                f"variable or the endpoint's proxy setting)"
            )
        else:
            fix = (
                "trust its CA: give the CA's PEM file in the endpoint's ca_bundle or in "
                "SSL_CERT_FILE (a company's inspecting proxy brings its own)"
            )
        return BadRoute(
            f"Connecting to {self.base_url} {self.route.shown} failed: {message}; {fix}, "
            f"and run again; finished rows are saved."
        )

    def _redact(self, text: str) -> str:
        if self._key is not None:
            text = self._key.redact(text)
        proxy = self.route.proxy
        return proxy.redact(text) if proxy is not None else text


def _decoded(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """A Retry-After in seconds (the HTTP-date form is rare from these APIs: ignored)."""
    try:
        return max(float(headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return None
