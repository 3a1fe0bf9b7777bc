"""Command-line options for `batchrun sim`: one per SimConfig field, plus where to listen."""

from __future__ import annotations

import argparse
import math

from .config import BATCH_LINE_FAULTS, DIALECTS, FAULT_KINDS, LATENCY_DISTS, SimConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --host, --port and an option for every SimConfig field to `parser`."""
    d = SimConfig()
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port to listen on; 0 picks a free port (default: %(default)s)",
    )
    parser.add_argument(
        "--dialect",
        choices=DIALECTS,
        default=d.dialect,
        help="which gateway to imitate: error shapes, usage details and model names "
        "(default: %(default)s)",
    )
    answers = parser.add_argument_group("timing and answers")
    answers.add_argument(
        "--latency-ms",
        type=_non_negative,
        default=d.latency_ms,
        metavar="MS",
        help="mean time before each answer starts (default: %(default)s)",
    )
    answers.add_argument(
        "--latency-dist",
        choices=LATENCY_DISTS,
        default=d.latency_dist,
        help="fixed, uniform over 0..2x the mean, or lognormal with sigma 0.5 "
        "(default: %(default)s)",
    )
    answers.add_argument(
        "--ttft-ms",
        type=_non_negative,
        default=d.ttft_ms,
        metavar="MS",
        help="extra delay before a stream's first chunk (default: %(default)s)",
    )
    answers.add_argument(
        "--chunk-delay-ms",
        type=_non_negative,
        default=d.chunk_delay_ms,
        metavar="MS",
        help="delay between stream chunks (default: %(default)s)",
    )
    answers.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of the latency and fault draws; answers depend only on the request "
        "(default: %(default)s)",
    )
    answers.add_argument(
        "--no-usage",
        action="store_true",
        help="send no usage in answers, like gateways that leave it out",
    )
    limits = parser.add_argument_group("keys and limits")
    limits.add_argument(
        "--api-key",
        default=d.api_key,
        metavar="KEY",
        help="the only key accepted (as 'Authorization: Bearer KEY'); by default any "
        "request is accepted",
    )
    limits.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=d.max_in_flight,
        metavar="N",
        help="answer HTTP 429 to requests beyond N being answered at once (default: no cap)",
    )
    limits.add_argument(
        "--rpm-limit",
        type=positive_int,
        default=d.rpm_limit,
        metavar="N",
        help="requests per minute, enforced per second: more than N/60 in any second get "
        "HTTP 429 with Retry-After (default: no limit)",
    )
    limits.add_argument(
        "--ratelimit-headers",
        action="store_true",
        help="send OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} headers",
    )
    limits.add_argument(
        "--quota-window",
        type=_window,
        default=d.quota_window,
        metavar="START:END",
        help="seconds after the first request during which the quota is exhausted; END may "
        "be 'inf' or empty for never coming back (default: never)",
    )
    faults = parser.add_argument_group(
        "faults",
        "A request whose last user message contains [[sim:KIND]] always gets fault KIND; "
        "a model named missing-model always gets model_not_found.",
    )
    kinds = "; ".join(f"{kind}: {text}" for kind, text in FAULT_KINDS.items())
    faults.add_argument(
        "--fault",
        dest="faults",
        type=_fault,
        action="append",
        default=[],
        metavar="KIND=RATE",
        help=f"give RATE (0..1) of requests fault KIND; repeatable, rates add up to at most 1. "
        f"Kinds: {kinds}.",
    )
    faults.add_argument(
        "--label-noise",
        dest="label_noise",
        type=_noise,
        action="append",
        default=[],
        metavar="MODEL=SHARE",
        help="MODEL (a name or a pattern like 'gpt-3.5*') gets SHARE (0..1) of sentiment labels "
        "wrong on purpose, so that two models' answers differ; repeatable",
    )
    faults.add_argument(
        "--hang-s",
        type=_positive,
        default=d.hang_s,
        metavar="S",
        help="how long a hang fault holds the request before dropping it (default: %(default)s)",
    )

    _add_batch_arguments(parser, d)


def _add_batch_arguments(parser: argparse.ArgumentParser, d: SimConfig) -> None:
    batches = parser.add_argument_group(
        "files and batches", "The Files and Batches API at /v1/files and /v1/batches."
    )
    batches.add_argument(
        "--batch-delay-s",
        type=_non_negative,
        default=d.batch_delay_s,
        metavar="S",
        help="how long a batch stays validating, and cancelling (default: %(default)s)",
    )
    batches.add_argument(
        "--batch-line-ms",
        type=_non_negative,
        default=d.batch_line_ms,
        metavar="MS",
        help="the time each line of a batch takes (default: %(default)s)",
    )
    batches.add_argument(
        "--batch-line-faults",
        type=_line_faults,
        default={},
        metavar="KIND=RATE[,KIND=RATE]",
        help=f"answer RATE of batch lines with fault KIND; kinds: {', '.join(BATCH_LINE_FAULTS)}",
    )
    batches.add_argument(
        "--batch-expire-after",
        type=_share,
        default=d.batch_expire_after,
        metavar="SHARE",
        help="every batch expires once SHARE (0..1) of its lines are answered (default: never)",
    )
    batches.add_argument(
        "--batch-enqueued-tokens",
        type=positive_int,
        default=d.batch_enqueued_tokens,
        metavar="N",
        help="a batch that would put a model's prompt and max_tokens tokens in batches not "
        "yet ended over N fails with token_limit_exceeded (default: no cap)",
    )
    batches.add_argument(
        "--batch-unknown-status",
        default=d.batch_unknown_status,
        metavar="STATUS",
        help="report STATUS (e.g. in_queue) instead of validating (default: none)",
    )
    batches.add_argument(
        "--batch-poll-errors",
        type=_share,
        default=d.batch_poll_errors,
        metavar="SHARE",
        help="answer SHARE (0..1) of GETs on batches with HTTP 500, 502, 503 or 504 "
        "(default: %(default)s)",
    )
    batches.add_argument(
        "--file-visible-after-s",
        type=_non_negative,
        default=d.file_visible_after_s,
        metavar="S",
        help="an uploaded file is not found for S seconds (default: %(default)s)",
    )


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    """The SimConfig the options of add_sim_arguments describe; raises ValueError if invalid."""
    return SimConfig(
        dialect=ns.dialect,
        latency_ms=ns.latency_ms,
        latency_dist=ns.latency_dist,
        ttft_ms=ns.ttft_ms,
        chunk_delay_ms=ns.chunk_delay_ms,
        seed=ns.seed,
        api_key=ns.api_key,
        max_in_flight=ns.max_in_flight,
        rpm_limit=ns.rpm_limit,
        ratelimit_headers=ns.ratelimit_headers,
        quota_window=ns.quota_window,
        faults=dict(ns.faults),
        hang_s=ns.hang_s,
        no_usage=ns.no_usage,
        label_noise=dict(ns.label_noise),
        batch_delay_s=ns.batch_delay_s,
        batch_line_ms=ns.batch_line_ms,
        batch_line_faults=ns.batch_line_faults,
        batch_expire_after=ns.batch_expire_after,
        batch_enqueued_tokens=ns.batch_enqueued_tokens,
        batch_unknown_status=ns.batch_unknown_status,
        batch_poll_errors=ns.batch_poll_errors,
        file_visible_after_s=ns.file_visible_after_s,
    )


def _noise(text: str) -> tuple[str, float]:
    model, sep, share = text.rpartition("=")
    try:
        value = float(share)
    except ValueError:
        value = -1.0
    if not sep or not model or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected MODEL=SHARE with SHARE in 0..1, got {text!r}")
    return model, value


def _line_faults(text: str) -> dict[str, float]:
    faults = {}
    for item in text.split(","):
        kind, sep, rate = item.partition("=")
        if not sep or kind not in BATCH_LINE_FAULTS:
            raise argparse.ArgumentTypeError(
                f"expected KIND=RATE with KIND one of {', '.join(BATCH_LINE_FAULTS)}, got {item!r}"
            )
        faults[kind] = _share(rate)
    return faults


def _share(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def _fault(text: str) -> tuple[str, float]:
    kind, sep, rate = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KIND=RATE, got {text!r}")
    if kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(
            f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}"
        )
    value = _number(rate)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"the rate of {kind} must be between 0 and 1")
    return kind, value


def _window(text: str) -> tuple[float, float]:
    start, sep, end = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected START:END seconds, got {text!r}")
    low = _number(start or "0")
    high = math.inf if end.strip().lower() in ("", "inf") else _number(end)
    if not 0 <= low < high:
        raise argparse.ArgumentTypeError("the quota window needs 0 <= START < END")
    return low, high


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("NaN is not a usable number")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be zero or more")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than zero")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value
