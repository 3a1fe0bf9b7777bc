"""batchrun from Python: run a job file, or map a DataFrame's rows through a model.

The face beside `cli.py`, for scripts and notebooks. Both go through the same engine, limits,
retries and checkpoint as `batchrun run`. The core is async (`run_async`, `map_async`, awaited
on the caller's loop); `run` and `map` are its sync edge: with no loop running in the thread
they call `asyncio.run`; where one runs already (Jupyter, or sync code called from a
coroutine) they run the coroutine on a fresh loop in a worker thread and wait for it, relaying
a Ctrl-C (the KeyboardInterrupt the waiting thread gets) to the run as the signal would be.

What the user can get wrong raises `UserError` (`JobError`, `InputError`) with one sentence; a
run-wide stop (bad key, quota, budget, systematic failure) or an interrupt raises that
`BatchrunError` with `summary` set, where the command line would exit 3 or 130.

Heavy modules (the engine, polars, pydantic) are imported when a function is called, so that
`import batchrun` stays cheap. This module defines `map`: the builtin is not used in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .engine.interrupts import RouteInterrupts, block_on
from .errors import InputError, JobError, UserError

if TYPE_CHECKING:
    import polars as pl

    from .engine.lifecycle import RunSummary
    from .rows.plan import RunOptions

T = TypeVar("T")
FrameT = TypeVar("FrameT")  # a polars or a pandas DataFrame: map returns the same kind

MAP_JOB = Path("batchrun.map")  # what messages about a map's job name it
MAP_INPUT = "input.parquet"  # the frame, in the working folder
MAP_OUTPUT = "output.parquet"  # the results; the checkpoint is the folder beside it


@dataclass(frozen=True)
class RunResult:
    """Where a run ended: its rows by state, what this run used, and the output file."""

    total: int  # rows the run covers (the input, or `limit` of it)
    ok: int  # rows whose result is ok, from this run or an earlier one
    failed: int  # rows whose result is a failure
    pending: int  # rows without a final result (the run stopped first)
    ran: int  # rows finished by this run
    tokens: int  # tokens this run used
    spend: float  # USD this run spent, where the model's price is known
    elapsed_s: float  # how long this run took
    output_path: Path  # the output Parquet: the input's columns, then the results
    remapped: int = 0  # responses from another model than the one requested

    def read(self) -> pl.DataFrame:
        """The output Parquet as a polars DataFrame, in input order."""
        import polars as pl

        return pl.read_parquet(self.output_path)

    @classmethod
    def from_summary(cls, summary: RunSummary) -> RunResult:
        """The result of the engine's summary."""
        return cls(
            total=summary.total,
            ok=summary.ok,
            failed=summary.failed,
            pending=summary.pending,
            ran=summary.ran,
            tokens=summary.tokens,
            spend=summary.spend,
            elapsed_s=summary.elapsed_s,
            output_path=summary.output_path,
            remapped=summary.remapped,
        )


# -- run: a job file --------------------------------------------------------------------------


def run(
    job_path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    fresh: bool = False,
    retry_failed: bool = False,
    quiet: bool = False,
    engine: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    **keys: Any,
) -> RunResult:
    """Run or resume a job file, like `batchrun run`; blocks until the run ends.

    `limit` runs only the first rows; `fresh` ignores the checkpoint; `retry_failed` sends
    the failed rows again; `quiet` hides the progress display. The job runs on the engine
    its `[engine]` names, or on `engine` ("local" or "ray"), as with `--engine`. Job keys
    are overridden with typed values, as a mapping of dotted keys
    (`overrides={"limits.concurrency": 8}`) or as keywords with `__` for the dot
    (`limits__concurrency=8`); the keywords apply last. Raises `UserError` (nothing sent)
    or, when the run stops early, the `RunStopped` or `Interrupted` error with `summary`
    set. Safe where an event loop already runs (Jupyter).
    """
    options = _run_options(limit, fresh, retry_failed, quiet)
    values = _override_values(overrides, keys)
    environ = os.environ
    return block_on(
        lambda interrupts: _run_job(job_path, options, values, environ, engine, interrupts)
    )


async def run_async(
    job_path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    fresh: bool = False,
    retry_failed: bool = False,
    quiet: bool = False,
    engine: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    **keys: Any,
) -> RunResult:
    """`run`, awaited on the caller's event loop (a Ray run's driver on a worker thread)."""
    options = _run_options(limit, fresh, retry_failed, quiet)
    values = _override_values(overrides, keys)
    return await _run_job(job_path, options, values, os.environ, engine, None)


def _run_options(limit: int | None, fresh: bool, retry_failed: bool, quiet: bool) -> RunOptions:
    """The options of `batchrun run`, refused as its command line refuses them."""
    from .rows.plan import RunOptions

    if fresh and retry_failed:
        raise UserError("fresh=True already runs every row; drop retry_failed=True.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a whole number of rows, 1 or more (got {limit!r}).")
    return RunOptions(fresh=fresh, retry_failed=retry_failed, limit=limit, quiet=quiet)


def _override_values(
    overrides: Mapping[str, Any] | None, keys: Mapping[str, Any]
) -> dict[str, Any]:
    """Dotted job keys and their values: the mapping's, then the keywords' (`__` is a dot)."""
    return {**(overrides or {}), **{key.replace("__", "."): v for key, v in keys.items()}}


async def _run_job(
    job_path: str | os.PathLike[str],
    options: RunOptions,
    values: Mapping[str, Any],
    environ: Mapping[str, str],
    engine: str | None,
    interrupts: RouteInterrupts | None,
) -> RunResult:
    from .config.job import load_job
    from .launch import launch

    job = load_job(os.fspath(job_path), environ=environ, values=values)
    summary = await launch(job, options, environ, engine=engine, interrupts=interrupts)
    return _finish(summary)


def _finish(summary: RunSummary, *, kept: bool = True) -> RunResult:
    """The run's result; its stop raised, with the result attached, if it stopped early."""
    result = RunResult.from_summary(summary)
    stop = summary.stopped
    if stop is None:
        return result
    stop.summary = result
    if not kept:
        stop.add_note(
            "batchrun.map kept nothing of this run: pass checkpoint=FOLDER to keep finished "
            "rows and resume instead of paying for them again."
        )
    raise stop


# -- map: a DataFrame -------------------------------------------------------------------------


async def map_async(
    frame: FrameT,
    *,
    prompt: str,
    model: str,
    system: str | None = None,
    endpoint: str | Mapping[str, Any] | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    request: Mapping[str, Any] | None = None,
    id_column: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    parse: Mapping[str, Any] | None = None,
    eval: Mapping[str, Any] | None = None,
    sim: Mapping[str, Any] | None = None,
    quiet: bool = False,
    **limits: Any,
) -> FrameT:
    """`map`, awaited on the caller's event loop."""
    tree = _map_tree(
        prompt, model, system, endpoint, api_key_env, request, id_column, parse, eval, sim
    )
    return await _map_frame(frame, tree, limits, checkpoint, quiet, os.environ, None)


def _map_tree(
    prompt: str,
    model: str,
    system: str | None,
    endpoint: str | Mapping[str, Any] | None,
    api_key_env: str,
    request: Mapping[str, Any] | None,
    id_column: str | None,
    parse: Mapping[str, Any] | None,
    eval: Mapping[str, Any] | None,
    sim: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The raw job tree of a map, but for [limits]: what a job file would hold."""
    request = dict(request or {})
    if "model" in request:
        raise JobError("batchrun.map: give the model as model=..., not in request.")
    tree: dict[str, Any] = {
        "name": str(MAP_JOB),
        "input": {"path": MAP_INPUT},
        "prompt": {"user": prompt},
        "request": {"model": model, **request},
        "endpoint": _endpoint_section(endpoint, api_key_env),
        "output": {"path": MAP_OUTPUT},
    }
    if id_column is not None:
        tree["input"]["id_column"] = id_column
    if system is not None:
        tree["prompt"]["system"] = system
    for section, table in (("sim", sim), ("parse", parse), ("eval", eval)):
        if table is not None:
            tree[section] = dict(table)
    return tree


def _endpoint_section(endpoint: str | Mapping[str, Any] | None, api_key_env: str) -> dict[str, Any]:
    """The [endpoint] table: "sim", a base URL, a preset's name, or the table itself."""
    from .config.job import SIM
    from .config.presets import PRESETS

    if isinstance(endpoint, Mapping):
        return {"api_key_env": api_key_env, **endpoint}
    if endpoint is None:
        return {"api_key_env": api_key_env}
    if endpoint == SIM or (isinstance(endpoint, str) and "://" in endpoint):
        return {"base_url": endpoint, "api_key_env": api_key_env}
    if endpoint in PRESETS:
        return {"preset": endpoint, "api_key_env": api_key_env}
    # The value is never repeated: a key passed here by mistake must not be printed back.
    raise JobError(
        f'batchrun.map: endpoint must be "sim", a base URL (https://...), a preset '
        f"({', '.join(PRESETS)}) or a mapping of [endpoint] keys; the "
        f"{type(endpoint).__name__} given is none of these."
    )


async def _map_frame(
    frame: FrameT,
    tree: dict[str, Any],
    limits: Mapping[str, Any],
    checkpoint: str | os.PathLike[str] | None,
    quiet: bool,
    environ: Mapping[str, str],
    interrupts: RouteInterrupts | None,
) -> FrameT:
    from .config.job import build_job
    from .engine.local import run as run_engine
    from .rows.plan import RunOptions

    table = await asyncio.to_thread(_as_polars, frame)
    with _working_folder(checkpoint) as folder, _only_caller(folder):
        job = build_job({**tree, "limits": dict(limits)}, folder, path=MAP_JOB, environ=environ)
        await asyncio.to_thread(_write_input, table, folder / MAP_INPUT)
        summary = await run_engine(job, RunOptions(quiet=quiet), environ, interrupts=interrupts)
        _finish(summary, kept=checkpoint is not None)
        results = await asyncio.to_thread(_read_results, job.output_path, table.columns)
    return _with_results(frame, results)


@contextlib.contextmanager
def _only_caller(folder: Path) -> Iterator[None]:
    """Hold the folder for one `map` call: a second call on the same checkpoint folder is
    refused before it replaces the first one's input."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "map.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"Another batchrun.map call is using the checkpoint folder {folder}: wait for "
                f"it to finish, or give this call a folder of its own."
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _working_folder(checkpoint: str | os.PathLike[str] | None) -> Iterator[Path]:
    """The checkpoint folder as given (kept), or a temporary one removed afterwards."""
    if checkpoint is not None:
        yield Path(checkpoint).resolve()
        return
    with tempfile.TemporaryDirectory(prefix="batchrun-map-", ignore_cleanup_errors=True) as tmp:
        yield Path(tmp)


def _as_polars(frame: object) -> pl.DataFrame:
    """The frame as polars; a pandas frame is converted (pandas is never imported here)."""
    import polars as pl

    if isinstance(frame, pl.DataFrame):
        return frame
    pandas = sys.modules.get("pandas")  # a pandas frame means pandas is imported already
    if pandas is None or not isinstance(frame, pandas.DataFrame):
        raise InputError(
            f"batchrun.map takes a polars or pandas DataFrame, not {type(frame).__name__}: "
            f"convert it first."
        )
    try:
        return pl.from_pandas(frame)
    except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
        raise InputError(
            f"The pandas frame cannot be converted to polars ({exc}): give that column a "
            f"plain type (text, numbers, booleans, dates) or drop it."
        ) from None


def _write_input(table: pl.DataFrame, path: Path) -> None:
    """The frame as the job's input, replaced whole (a reader never sees half a file)."""
    import polars as pl

    partial = path.with_name(f".{path.name}.tmp")
    try:
        table.write_parquet(partial)
    except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
        partial.unlink(missing_ok=True)
        raise InputError(
            f"The frame cannot be stored as Parquet ({exc}): give that column a plain type "
            f"(text, numbers, booleans, dates) or drop it."
        ) from None
    partial.replace(path)


def _read_results(output: Path, input_columns: list[str]) -> pl.DataFrame:
    """The result columns of the output (those after the input's), in input order; the
    row's input position is the frame's own row order, so it is left out."""
    import polars as pl

    from .protocol.result import INPUT_ROW

    skip = {*input_columns, INPUT_ROW}
    names = [c for c in pl.read_parquet_schema(output) if c not in skip]
    return pl.read_parquet(output, columns=names)


def _with_results(frame: FrameT, results: pl.DataFrame) -> FrameT:
    """The caller's frame, untouched, with the result columns after its own."""
    import polars as pl
    import pyarrow as pa

    given: Any = frame  # polars or pandas, as _as_polars checked
    if isinstance(given, pl.DataFrame):
        return given.hstack(results.get_columns())  # type: ignore[return-value]
    pandas = sys.modules["pandas"]
    # Nullable pandas types, so a column's type does not depend on whether a row failed.
    nullable = {
        pa.int64(): pandas.Int64Dtype(),
        pa.int32(): pandas.Int32Dtype(),
        pa.bool_(): pandas.BooleanDtype(),
        pa.string(): pandas.StringDtype(),
        pa.large_string(): pandas.StringDtype(),
    }
    converted = results.to_arrow().to_pandas(types_mapper=nullable.get).set_axis(given.index)
    combined: FrameT = pandas.concat([given, converted], axis=1)
    return combined


def map(  # the builtin is shadowed in this module on purpose: batchrun.map is the name
    frame: FrameT,
    *,
    prompt: str,
    model: str,
    system: str | None = None,
    endpoint: str | Mapping[str, Any] | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    request: Mapping[str, Any] | None = None,
    id_column: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    parse: Mapping[str, Any] | None = None,
    eval: Mapping[str, Any] | None = None,
    sim: Mapping[str, Any] | None = None,
    quiet: bool = False,
    **limits: Any,
) -> FrameT:
    """Send every row of a polars or pandas frame through a model; the frame with its answers.

    Returns the same kind of frame: the input's columns unchanged, then the output columns
    (`response`, `status`, usage, cost, ...), one row per input row, in input order.
    `prompt` is the user template (`"Review: {text}"`, a `{column}` per placeholder) and
    `system` the system message; `request` holds extra body keys (`{"temperature": 0}`).
    `endpoint` is "sim" (the embedded simulator), a base URL, a preset's name or a mapping
    of `[endpoint]` keys; None: `OPENAI_BASE_URL`, else OpenAI. The key is read from the
    variable `api_key_env` names. `parse`, `eval` and `sim` are the job's `[parse]`,
    `[eval]` and `[sim]` tables; `**limits` are `[limits]` keys (`concurrency=8`).
    `checkpoint` is a folder that keeps progress: calling again with the same frame resumes
    and pays for no row twice; None works in a temporary folder removed afterwards.
    Raises like `run`. Safe where an event loop already runs (Jupyter).
    """
    tree = _map_tree(
        prompt, model, system, endpoint, api_key_env, request, id_column, parse, eval, sim
    )
    environ = os.environ
    return block_on(
        lambda interrupts: _map_frame(frame, tree, limits, checkpoint, quiet, environ, interrupts)
    )
