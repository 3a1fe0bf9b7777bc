"""One run at a time on a location in S3 (`RunLock`), the checkpoint's lock there.

A local checkpoint is locked with flock; shared storage needs a lease object. Two protocols
were weighed, against moto 5.2 and pyarrow 26:

- a conditional create (`If-None-Match: *`), a conditional replace (`If-Match: <etag>`) for
  renewals and takeovers, and a conditional delete for release. S3, botocore and moto all
  have them (moto answers 412 PreconditionFailed to each, as S3 does); pyarrow has no API
  for any. Chosen: each step is one atomic request, and two runs racing for a lapsed lease
  both name the etag they saw, so exactly one wins.
- pyarrow alone: each contender writes a uniquely named claim, lists the claims, and the
  earliest unexpired one wins. Not chosen: "earliest" is the object's LastModified, which
  is not the moment the claim became visible (S3 stamps the start of an upload), so a claim
  begun first can land after a rival has listed and seen itself alone, and both believe
  they won; closing that hole needs waits tuned to the store.

So the lease talks to S3 through botocore, which comes with boto3: an optional dependency of
the S3 path only, imported when a lease is made, with the filesystem's own endpoint,
region and credentials. A lease's expiry is wall-clock time from the holder's clock:
the hosts of the runs that share a location must keep their clocks within a small part of
the lease's ttl (NTP does).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import pyarrow.fs as pafs

from ..errors import RunStopped, UserError
from .store import S3Settings, is_s3, s3_errors


@dataclass(frozen=True)
class _Held:
    """A lease object as read: who holds it, since and until when, and its etag."""

    holder: str
    since: float  # when the holder acquired it (wall-clock seconds)
    expires: float  # when it lapses unless renewed
    etag: str
    nonce: str = ""  # of the write that made it


class RunLock:
    """One run at a time on a location: an object at `path` on S3 that one holder holds for
    `ttl_s` seconds at a time, renewed before it lapses. A lease whose holder stopped
    renewing it (dead, or cut off) may be taken over once it lapsed. See the module's
    docstring for the protocol and why."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        path: str,
        holder: str,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.time,
        client: Any = None,
    ) -> None:
        if not is_s3(fs):
            raise TypeError(
                "A RunLock is for S3; a local checkpoint is locked by batchrun.checkpoint.folder "
                "(flock) instead."
            )
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        self.path = path
        self.holder = holder
        self.ttl_s = ttl_s
        self._clock = clock  # wall-clock seconds, compared with other holders' clocks
        self._bucket, _, self._key = path.partition("/")
        self._client = client if client is not None else S3Settings.of(fs).client()
        self._etag: str | None = None  # of the lease object as we last wrote it; None: not held
        self._since = 0.0  # when we acquired it
        self._nonce = ""  # of our last write
        self.renewed_at = 0.0  # when our last write landed (monotonic seconds)

    def __repr__(self) -> str:
        state = "held" if self._etag else "not held"
        return f"RunLock(s3://{self.path}, holder={self.holder!r}, ttl_s={self.ttl_s}, {state})"

    @property
    def held(self) -> bool:
        return self._etag is not None

    def acquire(self) -> RunLock:
        """Take the lease, or take it over when it lapsed; UserError when another holds it."""
        for _ in range(8):  # each turn, the lease changed hands under us: look again
            self._since = self._clock()
            body = self._body()
            etag = self._put(body, IfNoneMatch="*")
            if etag is not None:
                self._etag = etag
                return self
            held = self._read()
            if held is None:
                continue  # released between our create and our read
            if held.expires > self._since:
                raise UserError(
                    f"Another batchrun run ({held.holder}) has held s3://{self.path} since "
                    f"{_when(held.since)} (its lease lapses at {_when(held.expires)} unless "
                    f"renewed): wait for it to finish or stop it."
                )
            etag = self._put(body, IfMatch=held.etag)  # lapsed: take it over, if still so
            if etag is not None:
                self._etag = etag
                return self
        raise UserError(
            f"The lease s3://{self.path} kept changing hands while this run tried to take "
            f"it: another run is starting; wait for it to finish or stop it."
        )

    def renew(self) -> None:
        """Push the lease's expiry ttl_s past now; RunStopped when another took it over."""
        if self._etag is None:
            raise RuntimeError("renew() of a lease not held")
        etag = self._put(self._body(), IfMatch=self._etag)
        if etag is None:
            self._etag = None
            try:
                held = self._read()
            except OSError:  # lost all the same: only who took it is unknown
                held = None
            who = f"another run ({held.holder})" if held else "another run"
            raise RunStopped(
                f"This run lost its lease on s3://{self.path} to {who} after it lapsed, and "
                f"stopped so that the two runs do not interleave."
            )
        self._etag = etag

    def release(self) -> None:
        """Give the lease up (not if another took it over meanwhile)."""
        if self._etag is None:
            return
        etag, self._etag = self._etag, None
        self._call("delete_object", IfMatch=etag)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # -- the lease object ------------------------------------------------------------------

    def _body(self) -> bytes:
        self._nonce = uuid.uuid4().hex  # every write a new etag, even of the same figures
        figures = {
            "holder": self.holder,
            "since": self._since,
            "expires": self._clock() + self.ttl_s,
            "nonce": self._nonce,
        }
        return json.dumps(figures).encode()

    def _read(self) -> _Held | None:
        """The lease object as it stands, or None when there is none."""
        answer = self._call("get_object")
        if answer is None:
            return None
        with s3_errors(f"S3 get_object of s3://{self.path}"):
            data = answer["Body"].read()
        try:
            figures = json.loads(data)
            return _Held(
                str(figures["holder"]),
                float(figures["since"]),
                float(figures["expires"]),
                answer["ETag"],
                str(figures.get("nonce", "")),
            )
        except (ValueError, KeyError, TypeError):
            # Not a lease batchrun wrote: treated as lapsed long ago, so it can be replaced.
            return _Held("unknown", 0.0, 0.0, answer["ETag"])

    def _put(self, body: bytes, **condition: str) -> str | None:
        """Write the lease object on `condition`; its new etag, or None when the condition
        failed. A write whose answer was lost is sent again by botocore, and then fails
        its condition against itself: the object then carries this write's nonce, and it
        is taken for the success it was."""
        answer = self._call("put_object", Body=body, **condition)
        if answer is not None:
            self.renewed_at = time.monotonic()
            return str(answer["ETag"])
        held = self._read()
        if held is not None and held.nonce == self._nonce:
            self.renewed_at = time.monotonic()
            return held.etag
        return None

    def _call(self, operation: str, **arguments: Any) -> Any:
        """One S3 request on the lease object; None when S3 said its precondition failed,
        or that the object is not there; any other failure an `S3Error`."""
        from botocore.exceptions import ClientError

        with s3_errors(f"S3 {operation} of s3://{self.path}"):
            try:
                call = getattr(self._client, operation)
                return call(Bucket=self._bucket, Key=self._key, **arguments)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                # 409 ConditionalRequestConflict: S3 saw a concurrent conditional write win.
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                    return None
                raise


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
