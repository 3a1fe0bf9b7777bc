"""The command line: parses arguments, runs the command, turns errors into sentences.

Exit codes: 0 every row reached a final state; 2 the job or its input is wrong (nothing was
sent, or a path cannot be used); 3 a run-wide stop (bad key, quota, budget, a disk that
stayed full, S3 out of reach past storage_wait_s), progress kept; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BatchrunError, Interrupted, RunStopped, UserError
from .launch import ENGINES
from .sim.cli import positive_int
from .storage.space import disk_full, what_is_full
from .version import __version__

if TYPE_CHECKING:
    from .config.job import Job
    from .engine.lifecycle import RunSummary

# pyarrow's default allocator (mimalloc) keeps freed memory: a walk over a million-row
# checkpoint (a report) peaked at 385 MB with it and at 320 MB with the system's allocator,
# which gives memory back. Read once, when pyarrow loads, which no import above does; the
# command owns its process (the Python API leaves the caller's process alone).
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

_EPILOG = (
    "exit codes: 0 every row reached a final state (ok or failed); 2 the job or its input is "
    "wrong, nothing was sent; 3 the run stopped on a run-wide error (bad key, quota, budget, "
    "a disk that stayed full), progress kept; 130 interrupted, progress kept."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `batchrun` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.log_level:
        logging.basicConfig(
            level=args.log_level.upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    if hasattr(signal, "SIGXFSZ"):
        # Past a file size limit (ulimit -f) a write fails with EFBIG, which the run waits
        # out like a full disk, instead of the process being killed.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        code: int = args.handler(args)
        return code
    except BatchrunError as exc:
        _say(str(exc))
        return exc.exit_code
    except OSError as exc:
        # The machine's doing, not batchrun's (a full disk outside a run's commits, a file
        # that cannot be written): one sentence naming the file, never a traceback.
        where = f" {exc.filename}" if exc.filename else ""
        if disk_full(exc):
            _say(
                f"Could not write{where}: the disk is {what_is_full(exc)}; free some space "
                f"and run the same command again."
            )
            return RunStopped.exit_code
        _say(
            f"Could not use{where}: {exc.strerror or exc}; fix the path or its permissions "
            f"and run the same command again."
        )
        return UserError.exit_code
    except KeyboardInterrupt:
        _say(str(Interrupted("Interrupted: finished rows are saved; run again to resume.")))
        return Interrupted.exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchrun",
        description=(
            "Run a table of prompts through an OpenAI-compatible chat-completions endpoint "
            "into Parquet: paced, retried, resumable, exactly once per row."
        ),
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"batchrun {__version__}")
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        choices=["debug", "info", "warning", "error"],
        help="log to stderr at this level (debug, info, warning, error); keys are never logged",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run or resume a job",
        description=(
            "Run the job, or resume it: rows with a committed result for the same request are "
            "not sent again. Writes output.path in input order when the run ends or stops."
        ),
        epilog=_EPILOG,
    )
    _job_arguments(run)
    run.add_argument("--limit", type=positive_int, metavar="N", help="run only the first N rows")
    run.add_argument(
        "--fresh", action="store_true", help="ignore the checkpoint and run every row again"
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="also send again the rows whose committed result is a failure",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    run.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="run in this process (local), or on a Ray cluster ([engine] in the job says "
        "which cluster and how many workers)",
    )
    run.add_argument(
        "--detach",
        action="store_true",
        help="with a batch endpoint: submit the batches and exit; run again to collect them",
    )
    run.set_defaults(handler=_run)

    cancel = commands.add_parser(
        "cancel-batches",
        help="cancel the job's batches still running, and collect what they finished",
        description=(
            "Cancel every batch of the job's batch endpoint still running, wait for the "
            "provider to end them, and commit the lines they finished; the rows they did not "
            "answer stay pending for the next run."
        ),
        epilog=_EPILOG,
    )
    _job_arguments(cancel)
    cancel.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    cancel.set_defaults(handler=_cancel_batches)

    estimate = commands.add_parser(
        "estimate",
        help="tokens, cost and time before running; sends nothing",
        description=(
            "Count the prompt tokens of the rows a run would send (exactly for OpenAI models), "
            "bound the output tokens by max_tokens, price both, and say how long the rate "
            "limits make it take. Reads the input in batches; sends nothing."
        ),
    )
    _job_arguments(estimate)
    estimate.add_argument("--limit", type=positive_int, metavar="N", help="only the first N rows")
    estimate.add_argument("--json", action="store_true", help="print JSON for scripts")
    estimate.set_defaults(handler=_estimate)

    status = commands.add_parser(
        "status",
        help="rows done, failed, pending; spend so far",
        description="Where the job stands, from its checkpoint: during a run or after it.",
    )
    _job_arguments(status)
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(handler=_status)

    report = commands.add_parser(
        "report",
        help="usage, cost, finish reasons, errors, latency, throughput",
        description=(
            "Report on a job from its checkpoint, during a run or after it: totals, cost by "
            "model, finish reasons, errors by class, retries, latency and time to first "
            "token, throughput over time, rows that hit max_tokens."
        ),
    )
    _job_arguments(report)
    report.add_argument("--json", action="store_true", help="print JSON for scripts")
    report.add_argument(
        "--html", metavar="PATH", help="also write a self-contained HTML page with charts"
    )
    report.set_defaults(handler=_report)

    export = commands.add_parser(
        "export-batch",
        help="write the pending rows as OpenAI Batch input files",
        description=(
            "Write the rows a run would send now as OpenAI Batch input files (JSONL, "
            "batch-0001.jsonl, …, at most 50,000 requests and 200 MB each) into DIR, to "
            "upload to the Batch API (half price, answered within 24 h) or to a local vLLM "
            "run-batch. Bring the answers back with import-batch. Sends nothing."
        ),
    )
    _job_arguments(export)
    export.add_argument("folder", metavar="DIR", help="the folder to write the files into")
    export.add_argument(
        "--limit", type=positive_int, metavar="N", help="only the first N rows of the input"
    )
    export.add_argument(
        "--retry-failed",
        action="store_true",
        help="also export the rows whose committed result is a failure",
    )
    export.add_argument(
        "--force", action="store_true", help="replace the Batch files an earlier export left in DIR"
    )
    export.add_argument(
        "--endpoint",
        metavar="NAME",
        help="the endpoint of [[endpoints]] the batch is for (default: the first)",
    )
    export.set_defaults(handler=_export_batch)

    import_ = commands.add_parser(
        "import-batch",
        help="commit the answers of OpenAI Batch output and error files",
        description=(
            "Read the output and error files of a batch made by export-batch, commit each "
            "answer to the row and request it belongs to, as a run would, and rewrite "
            "output.path; what is still pending (errors to retry, expired requests) is left "
            "for run. Use the same --set options as for the export."
        ),
    )
    _job_arguments(import_)
    import_.add_argument("files", nargs="+", metavar="FILE", help="Batch output or error files")
    import_.add_argument(
        "--price-factor",
        type=_price_factor,
        default=None,
        metavar="F",
        help="the share of the list price the batch was billed at (default 0.5, the OpenAI "
        "Batch API's; 1 for a local vLLM run-batch)",
    )
    import_.add_argument(
        "--endpoint",
        metavar="NAME",
        help="the endpoint of [[endpoints]] the batch ran at: its prices, its name in the "
        "output (default: the first)",
    )
    import_.set_defaults(handler=_import_batch)

    compare = commands.add_parser(
        "compare",
        help="two runs over the same rows side by side: disagreements, accuracy, McNemar test",
        description=(
            "Compare two outputs over the same rows (e.g. two models labeling one dataset): "
            "rows, ok and failed, accuracy, cost, tokens and latency side by side, with B minus A; "
            "the rows whose answers or scores differ; and, with a score column in both, "
            "McNemar's exact test of whether one is more accurate. Rows are joined by --id, "
            "else by the id column the runs' metadata names, else by position."
        ),
    )
    compare.add_argument("a", metavar="A", help="the first output (Parquet)")
    compare.add_argument("b", metavar="B", help="the second output (Parquet)")
    compare.add_argument(
        "--id", dest="id_column", metavar="COLUMN", help="join the rows on this column"
    )
    compare.add_argument(
        "--out",
        metavar="PATH",
        help="write every disagreeing row to PATH (Parquet, or CSV if it ends in .csv)",
    )
    compare.add_argument("--json", action="store_true", help="print JSON for scripts")
    compare.set_defaults(handler=_compare)

    sim = commands.add_parser(
        "sim",
        help="serve the embedded OpenAI-compatible simulator",
        description=(
            "Serve the embedded simulator on loopback: deterministic OpenAI-shaped answers, "
            "streaming, n, tools and JSON mode, and on request the faults of real gateways."
        ),
    )
    from .sim import add_sim_arguments

    add_sim_arguments(sim)
    sim.set_defaults(handler=_sim)
    return parser


def _run(args: argparse.Namespace) -> int:
    from .config.job import load_job
    from .launch import launch, with_engine
    from .rows.plan import RunOptions

    if args.fresh and args.retry_failed:
        raise UserError("--fresh already runs every row; drop --retry-failed.")
    job = with_engine(load_job(args.job, args.overrides, os.environ), args.engine)
    options = RunOptions(
        fresh=args.fresh,
        retry_failed=args.retry_failed,
        limit=args.limit,
        quiet=args.quiet,
        detach=args.detach,
    )
    if args.detach and job.batch_endpoint is None:
        raise UserError('--detach goes with a batch endpoint (kind = "batch"): this job has none.')
    summary = asyncio.run(launch(job, options, os.environ))
    return _summed_up(job, summary)


def _cancel_batches(args: argparse.Namespace) -> int:
    from .config.job import load_job
    from .launch import launch
    from .rows.plan import RunOptions

    job = load_job(args.job, args.overrides, os.environ)
    if job.batch_endpoint is None:
        raise UserError(
            'cancel-batches goes with a batch endpoint (kind = "batch"): this job has none.'
        )
    options = RunOptions(quiet=args.quiet, cancel_batches=True)
    return _summed_up(job, asyncio.run(launch(job, options, os.environ)))


def _summed_up(job: Job, summary: RunSummary) -> int:
    """Print where a run ended; its stop raised (the caller's exit code)."""
    parts = [
        f"{summary.ok:,} ok",
        f"{summary.failed:,} failed",
        f"{summary.pending:,} pending",
    ]
    print(
        f"{job.name}: {summary.total:,} rows: {', '.join(parts)} · this run {summary.ran:,} rows, "
        f"{summary.tokens:,} tokens, ${summary.spend:,.4f}, {summary.elapsed_s:,.1f} s"
    )
    if summary.remapped:
        print(f"note: {summary.remapped:,} responses came from another model than requested")
    if summary.allowed_rpm is not None:
        from .report.text import allowed_rate_line

        rpm = job.limits.requests_per_minute
        print(f"rate limits: {allowed_rate_line(summary.allowed_rpm, summary.rate_limited, rpm)}")
    where = job.output_url or summary.output_path  # an S3 output by its URL, not its copy
    if summary.rows_written is None:
        print(f"output: {where} not rewritten; run again to write it")
    elif summary.not_uploaded is not None:
        print(
            f"output: {summary.output_path} ({summary.rows_written:,} rows; not uploaded to "
            f"{summary.not_uploaded})"
        )
    else:
        print(f"output: {where} ({summary.rows_written:,} rows)")
        if job.parse is not None or job.eval is not None:
            from .report.evaluation import output_line

            line = output_line(summary.output_path)
            if line:
                print(line)
    running = summary.in_batches or {}
    if running.get("rows") and summary.stopped is None:
        print(
            f"batches: {running['rows']:,} rows are in {running['batches']} batches still "
            f"running; run the same command to collect them, or `batchrun cancel-batches` to "
            f"cancel them"
        )
    if summary.stopped is not None:
        raise summary.stopped
    return 0


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="the job file (TOML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a job key, e.g. --set limits.concurrency=8 (repeatable)",
    )


def _estimate(args: argparse.Namespace) -> int:
    from .config.job import load_job
    from .report.estimate import estimate, render_estimate

    job = load_job(args.job, args.overrides, os.environ)
    _warn_damaged(job)
    result = estimate(job, args.limit)
    print(json.dumps(result.as_dict(), indent=2) if args.json else render_estimate(result))
    return 0


def _status(args: argparse.Namespace) -> int:
    from .config.job import load_job
    from .report.status import job_status, render_status

    job = load_job(args.job, args.overrides, os.environ)
    _warn_damaged(job)
    result = job_status(job)
    print(json.dumps(result.as_dict(), indent=2) if args.json else render_status(result))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .config.job import load_job
    from .report.figures import build_report, report_json
    from .report.html import render_html
    from .report.text import render_text

    job = load_job(args.job, args.overrides, os.environ)
    _warn_damaged(job)
    result = build_report(job)
    if args.html:
        try:
            Path(args.html).write_text(render_html(result), encoding="utf-8")
        except OSError as exc:
            message = f"Cannot write {args.html} ({exc.strerror or exc}): choose another path."
            raise UserError(message) from None
    print(json.dumps(report_json(result), indent=2) if args.json else render_text(result))
    if args.html:
        print(f"report page: {args.html}", file=sys.stderr)
    return 0


def _export_batch(args: argparse.Namespace) -> int:
    from .batchfiles.commands import export_batch, render_export
    from .config.job import load_job

    job = load_job(args.job, args.overrides, os.environ)
    _warn_damaged(job)
    folder = Path(args.folder)
    summary = export_batch(
        job,
        folder,
        limit=args.limit,
        retry_failed=args.retry_failed,
        force=args.force,
        endpoint=args.endpoint,
    )
    print(render_export(summary, _job_command(args), folder))
    return 0


def _import_batch(args: argparse.Namespace) -> int:
    from .batchfiles.commands import BATCH_PRICE_FACTOR, import_batch, render_import
    from .config.job import load_job

    job = load_job(args.job, args.overrides, os.environ)
    factor = BATCH_PRICE_FACTOR if args.price_factor is None else args.price_factor
    files = [Path(f) for f in args.files]
    summary = import_batch(job, files, os.environ, price_factor=factor, endpoint=args.endpoint)
    print(render_import(summary, _job_command(args)))
    return 0


def _warn_damaged(job: Job) -> None:
    """Name each damaged checkpoint segment a reading command skips."""
    from .checkpoint.folder import checkpoint_dir
    from .checkpoint.remote import refresh_copy
    from .checkpoint.segments import skipped_notices

    folder = checkpoint_dir(job.output_path)
    refresh_copy(folder, job.checkpoint_remote)  # the copy as S3 has it now
    for line in skipped_notices(folder):
        print(line, file=sys.stderr)


def _job_command(args: argparse.Namespace) -> str:
    """The job and its --set options as typed again on a command line."""
    return shlex.join([args.job, *(a for o in args.overrides for a in ("--set", o))])


def _price_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more (got {text!r})")
    return value


def _local_copy(path: str) -> str:
    """A path as it is, or an s3:// output copied into the cache ($BATCHRUN_CACHE, or
    ~/.cache/batchrun), reached as the standard AWS variables say."""
    if not path.startswith("s3://"):
        return path
    from .config.job import default_cache
    from .storage.store import Remote, S3Spec, stage_input

    return stage_input(Remote.of_url(path, S3Spec()), default_cache(os.environ), what="output")


def _compare(args: argparse.Namespace) -> int:
    from .compare.comparison import compare
    from .compare.text import render_text

    out = Path(args.out) if args.out else None
    a, b = (Path(_local_copy(path)) for path in (args.a, args.b))
    result = compare(a, b, id_column=args.id_column, out=out)
    # default=str: ids may be dates or other values JSON has no type for.
    print(json.dumps(result.as_dict(), indent=2, default=str) if args.json else render_text(result))
    return 0


def _sim(args: argparse.Namespace) -> int:
    from .sim import config_from_args, serve_forever

    try:
        config = config_from_args(args)
    except (TypeError, ValueError) as exc:
        raise UserError(f"batchrun sim: {exc}.") from None
    serve_forever(config, args.host, args.port)
    return 0


def _say(message: str) -> None:
    print(f"batchrun: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
