"""The sentences a run stopped on S3 ends with, the same for every engine: what S3 did, the
answers not committed, where the output is, and what to do."""

from __future__ import annotations

from ..config.job import Job
from ..errors import BatchrunError
from ..storage.store import S3Error


def store_cause(exc: S3Error, waited: bool, what: str, wait_s: float, where: str) -> str:
    """What S3 did to a `what` ("commit" or "upload") at `where`, in a few words: out of
    reach for `wait_s` (`waited`), or it refused."""
    if waited:
        return (
            f"S3 could not be reached for {wait_s:g} s (limits.storage_wait_s; the last try: "
            f"{exc.why})"
        )
    if what == "commit":
        return f"S3 refused a commit to {where} ({exc.why})"
    return f"S3 refused the output's upload to {where} ({exc.why})"


def with_uncommitted(stop: BatchrunError, lost: int, why: str) -> BatchrunError:
    """`stop`, its sentence saying too that `lost` answers could not be committed."""
    return type(stop)(
        f"{stop} But {lost:,} answers could not be committed ({why}): they will be asked "
        f"(and paid for) again when the run resumes."
    )


def store_sentence(cause: str, lost: int, where: str | None, waited: bool, what: str) -> str:
    """The sentence of a stop on S3: its `cause`, the `lost` answers not committed, `where`
    the rows committed so far are (None: not known yet), and what to do."""
    if lost:
        kept = (
            f"{lost:,} answers could not be committed and will be asked (and paid for) "
            f"again when the run resumes"
        )
    else:
        kept = "every answer of this run is committed"
    parts = [f"{cause}: {kept}", *([where] if where is not None else [])]
    fix = (
        "run the same command again to upload it"
        if what == "upload" and not lost
        else "run the same command to resume"
    )
    check = (
        "once S3 answers"
        if waited
        else "once the bucket, the credentials and the endpoint are right"
    )
    parts.append(f"{fix} {check}")
    return "; ".join(parts) + "."


def output_words(job: Job, written: bool, not_uploaded: str | None) -> str:
    """Where the rows committed so far can be read, once a run ended."""
    if not written:
        return "the output was not rewritten"
    if not_uploaded is not None:
        return (
            f"the rows committed so far are in {job.output_path} (not uploaded to {not_uploaded})"
        )
    return f"the output {job.output_url or job.output_path} holds the rows committed so far"
