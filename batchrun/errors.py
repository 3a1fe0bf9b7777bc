"""batchrun's exceptions: a small tree, each branch with one meaning for the user.

    BatchrunError                 anything batchrun raises on purpose; str() is one sentence
    ├── UserError                 exit 2: the job or its input is wrong; nothing was sent
    │   ├── JobError              the job file or a --set override
    │   └── InputError            the input table: missing file, column, bad CSV, duplicate ids
    ├── RunStopped                exit 3: a run-wide stop; committed progress is kept
    │   ├── BadKey                the gateway rejected the key (401, 403, codes 900)
    │   ├── BadRoute              the gateway's certificate is not trusted, or the proxy
    │   │                         refused its credentials
    │   ├── QuotaExhausted        the quota did not come back within quota_wait_s
    │   ├── NoEndpoint            every one of several endpoints is out, each for its reason
    │   ├── BudgetReached         the next request could take spend past budget_usd
    │   ├── SystematicFailure     the first rows all failed the same way (bad model, parameter)
    │   ├── DiskFull              the disk stayed full (or over quota) for disk_wait_s
    │   ├── StoreFailed           S3 stayed out of reach for storage_wait_s, or refused a write
    │   ├── BatchApiFailed        a Files and Batches API refused a request (a 4xx other than
    │   │                         the key's), or stayed out of reach for max_retry_s
    │   └── ClusterLost           Ray lost what the run needs: its desk, or workers that kept
    │                             dying or did not come back
    └── Interrupted               exit 130: Ctrl-C or SIGTERM; committed progress is kept

Per-row failures are not exceptions: they are outcomes (`batchrun.protocol.outcome`) recorded in the
row's `error` column. Transport errors are translated into outcomes in `batchrun.protocol.wire`.
From Python (`batchrun.run`, `batchrun.map`), a stop or an interrupt is raised with `summary`
set: where the run stood (a `batchrun.RunResult`).
"""

from __future__ import annotations

from typing import Any


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""

    exit_code = 1
    # Where the run stood (a `batchrun.RunResult`), when the Python API raised this. Typed
    # loosely so that this bottom layer imports nothing from the API above it.
    summary: Any = None


class UserError(BatchrunError):
    """The job or its input is wrong; nothing was sent."""

    exit_code = 2


class JobError(UserError):
    """The job file, or an override of it, is invalid."""


class InputError(UserError):
    """The input table cannot be used as it is."""


class RunStopped(BatchrunError):
    """A run-wide condition stopped the run; committed rows are kept."""

    exit_code = 3


class BadKey(RunStopped):
    """The gateway rejected the API key."""


class BadRoute(RunStopped):
    """The way to the gateway is refused: its TLS certificate is not trusted, or the proxy
    rejected the user and password it was given. No retry mends either."""


class QuotaExhausted(RunStopped):
    """The account's quota did not come back in time."""


class NoEndpoint(RunStopped):
    """Every endpoint of the job is out (each for its own reason)."""


class BudgetReached(RunStopped):
    """Starting another request could take spend past the budget."""


class SystematicFailure(RunStopped):
    """The first rows all failed with the same client error."""


class DiskFull(RunStopped):
    """The checkpoint's or the output's disk stayed full past disk_wait_s."""


class StoreFailed(RunStopped):
    """S3 (the checkpoint's or the output's) stayed out of reach past storage_wait_s, or
    refused a write (access denied, no such bucket)."""


class BatchApiFailed(RunStopped):
    """A batch endpoint's Files and Batches API refused a request (a 4xx other than the
    key's), or stayed out of reach past max_retry_s; batches already submitted run on."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of the refusal; None when out of reach
        self.code = code  # the provider's error code (e.g. "batch_not_found"), if it gave one


class ClusterLost(RunStopped):
    """The Ray cluster lost what the run needs (the desk's node, a worker that did not come
    back, workers that kept dying on one shard); committed rows are kept."""


class Interrupted(BatchrunError):
    """The user interrupted the run; committed rows are kept."""

    exit_code = 130
