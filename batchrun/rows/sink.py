"""Writing the output Parquet: the input's columns, then the result columns, in input order."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..checkpoint.folder import Checkpoint
from ..config.job import Job
from ..core import sizes
from ..core.messages import first_line
from ..errors import StoreFailed, UserError
from ..protocol.result import FINGERPRINT, INPUT_ROW, KEY
from ..protocol.result import POSITION as RESULT_POSITION
from ..storage.files import atomic_file
from ..storage.space import disk_full, store_backoff
from ..storage.store import Remote, S3Error, upload_file
from . import render
from .render import Renderer
from .scoring import Annotator
from .source import POSITION, ROW_KEY, Source

_KEY, _FP = "__batchrun_result_key", "__batchrun_result_fp"  # a result's, beside the input's


class Written(NamedTuple):
    """What an output holds: its rows, and of them those ok and failed (every row written
    has its current request's result, so these are the job's standing)."""

    rows: int
    ok: int
    failed: int


def write_output(
    source: Source,
    checkpoint: Checkpoint,
    path: Path,
    columns: Sequence[str],
    renderer: Renderer,
    *,
    limit: int | None = None,
    annotator: Annotator | None = None,
    metadata: Mapping[str, object] | None = None,
) -> Written:
    """Write `path` atomically: the input with its latest committed results, in input order.

    The input and the checkpoint are walked together, a batch of positions at a time, and
    each batch is written as a row group: memory follows the batch, not the row count. Rows
    without a result, or whose result is for another request than the one the job sends
    now (its fingerprint differs), are left out, so after an early stop the file holds
    exactly the rows finished so far. Without an `id_column` the row's input position is
    written too (`input_row`), so that the rows of a partial output can be told apart. The
    annotator adds the `[parse]` and `[eval]` columns batch by batch; `metadata` is stored
    as JSON under the Parquet key `batchrun`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = [*source.columns, *([INPUT_ROW] if source.id_column is None else []), *columns]
    stored = {"batchrun": json.dumps(dict(metadata))} if metadata else None
    written = ok = failed = 0
    with atomic_file(path) as tmp, checkpoint.walk([FINGERPRINT, *columns]) as walk:
        writer: pq.ParquetWriter | None = None
        try:
            batches = source.batches(source.columns, sizes.OUTPUT_ROWS, limit)
            with contextlib.closing(batches):
                for batch in batches:
                    end = int(batch[POSITION][-1]) + 1 if batch.height else 0
                    frame = _joined(batch, walk.until(end), renderer, keep, annotator)
                    table = frame.to_arrow()
                    if writer is None:
                        writer = _writer(tmp, table.schema, stored)
                    writer.write_table(table.cast(writer.schema))
                    written += table.num_rows
                    ok += int((frame["status"] == "ok").sum())
                    failed += int((frame["status"] == "failed").sum())
            if writer is None:
                empty = source.scan().head(0).collect()
                batch = empty.with_columns(
                    pl.lit(None, pl.UInt32).alias(POSITION), pl.lit(None, pl.String).alias(ROW_KEY)
                )
                frame = _joined(batch, walk.until(0), renderer, keep, annotator)
                writer = _writer(tmp, frame.to_arrow().schema, stored)
        finally:
            if writer is not None:
                writer.close()
    return Written(written, ok, failed)


def _joined(
    batch: pl.DataFrame,
    results: pl.DataFrame,
    renderer: Renderer,
    keep: Sequence[str],
    annotator: Annotator | None,
) -> pl.DataFrame:
    """An input batch joined with the latest results of its positions, where a result is
    for the request the row makes now."""
    current = renderer.render_frame(batch, ROW_KEY, POSITION)[render.FP]
    rows = batch.with_columns(current, pl.col(POSITION).cast(pl.Int64).alias(INPUT_ROW))
    answers = results.drop(RESULT_POSITION).rename({KEY: _KEY, FINGERPRINT: _FP})
    joined = rows.join(answers, left_on=ROW_KEY, right_on=_KEY, how="inner", maintain_order="left")
    joined = joined.filter(pl.col(_FP) == pl.col(render.FP)).select(keep)
    return annotator(joined) if annotator is not None else joined


def _writer(path: Path, schema: pa.Schema, stored: Mapping[str, str] | None) -> pq.ParquetWriter:
    return pq.ParquetWriter(
        path, schema.with_metadata(stored) if stored else schema, compression="zstd"
    )


def job_metadata(job: Job, input_rows: int) -> dict[str, object]:
    """What the output file says about the job that wrote it (read by `batchrun compare`):
    `input_rows` is how many rows the job covers, which a finished output holds."""
    return {
        "job": job.name,
        "input_rows": input_rows,
        "model": job.request["model"],
        "id_column": job.input.id_column,
        "parse": job.parse.format if job.parse is not None else None,
        "labels": job.parse.labels if job.parse is not None else None,
        "expected_column": job.eval.expected_column if job.eval is not None else None,
        "scorer": job.eval.scorer if job.eval is not None else None,
    }


def check_writable(path: Path) -> None:
    """Make the output's folder (where its checkpoint lives too) and write a file in it, or
    raise a UserError naming the path: found before any request, not after an hour of them."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{path.name}.{os.getpid()}.probe.tmp"
        probe.write_bytes(b"")
        probe.unlink()
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a folder", str(path))
    except OSError as exc:
        if disk_full(exc):
            raise  # the run waits for space, or says the disk is full
        where = Path(exc.filename) if exc.filename else folder
        raise UserError(
            f"The output {path} cannot be written ({where}: {exc.strerror or exc}): choose "
            f"another [output] path or fix that folder."
        ) from None


def remove_temporaries(path: Path) -> None:
    """Delete output files a killed run left half-written (only ever under a hidden .tmp name)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def upload(path: Path, remote: Remote) -> None:
    """Upload the output written at `path` to its S3 location, whole or not at all (see
    `batchrun.storage.store.upload_file`); an S3Error says it did not happen. The local file stays:
    it is the copy later commands read."""
    upload_file(remote.fs, remote.path, path)


def upload_waiting(
    path: Path,
    remote: Remote,
    wait_s: float,
    note: Callable[[str], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> S3Error | None:
    """`upload`, waiting S3 out for up to `wait_s` while it cannot be reached (saying so in
    one `note`), with the backoff a run's commits use; None once uploaded, else why not.
    For a caller with no requests to pause (a Ray run's driver, its workers done): a local
    run waits through its engine's gate instead."""
    since: float | None = None  # when the upload first failed
    tries = 0
    while True:
        try:
            upload(path, remote)
        except S3Error as exc:
            now = clock()
            if since is None:
                since = now
                if exc.transient and wait_s > 0:
                    note(
                        f"batchrun: S3 cannot be reached ({exc.why}): the output's upload is "
                        f"tried again for up to {wait_s:g} s (limits.storage_wait_s)."
                    )
            left = since + wait_s - now
            if not exc.transient or left <= 0:
                return exc
            sleep(min(store_backoff(tries), left))
            tries += 1
            continue
        if since is not None:
            note("batchrun: S3 answers again: the output is uploaded.")
        return None


def publish(path: Path, remote: Remote | None) -> None:
    """`upload`, for a caller all of whose answers are committed (an import), and that
    does not wait S3 out: a failure is a StoreFailed saying where the output is. Nothing
    for a local output."""
    if remote is None:
        return
    try:
        upload(path, remote)
    except OSError as exc:
        raise StoreFailed(
            f"The output could not be uploaded to {remote.url} ({_why(exc)}); every answer "
            f"is committed and the output is at {path}: run the same command again to "
            f"upload it."
        ) from None


def _why(exc: OSError) -> str:
    return exc.why if isinstance(exc, S3Error) else first_line(exc, 160)
