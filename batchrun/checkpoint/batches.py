"""The batch lane's ledger: every Batch file the lane means to submit, recorded before it
exists at the provider, and every id the provider gives, recorded as soon as it is given.

A checkpoint's `batches/` folder holds, for each **intent** (one Batch input file):

| file | what |
| --- | --- |
| `<key>.jsonl` | the file's lines, as uploaded: written first, atomically |
| `<key>.rows.parquet` | its rows: key, position, attempt (how many files held the row) |
| `<key>.json` | the intent's record (ids, the provider's status, what collecting did): |
| | written last (the commit point), then replaced after each provider call |

The **key** is a hash of the file's custom_ids (row key and request fingerprint each) and
of its rows' highest attempt: a file of the same rows sent again (their batch left them
pending) has a key of its own, as it has a batch of its own. It names the file at the provider
(`batchrun-<key>.jsonl`) and goes into the batch's metadata, so that a run killed between a
provider call and the record of its id finds what it created by listing the provider's
files and batches, and adopts it instead of creating it again (`batchrun.engine.batch`).

An intent is **live** from its record until it is collected (its answers committed into the
checkpoint) or handed over (the deadline sent its unanswered rows to the direct lanes). Rows
of a live intent are written into no other file and sent by no lane. A `.jsonl` or
`.rows.parquet` without its `.json` is what a kill left before the commit point: nothing was
uploaded, and `Ledger` removes it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import UserError
from ..storage.files import atomic_file, fsync_dir

LEDGER = "batches"  # the folder in the checkpoint
FILE_PREFIX = "batchrun-"  # the name of an uploaded file: batchrun-<key>.jsonl
METADATA_KEY = "batchrun_key"  # the batch's metadata field holding the key
KEY_CHARS = 24  # hex digits of the key: 96 bits
ROW_KEY, POSITION, ATTEMPT = "key", "position", "attempt"  # the columns of <key>.rows.parquet
ROWS_SCHEMA = {ROW_KEY: pl.String, POSITION: pl.Int64, ATTEMPT: pl.Int32}


@dataclass
class Intent:
    """One Batch input file the lane means to submit, and what became of it."""

    key: str
    endpoint: str  # the batch endpoint's name
    rows: int
    bytes: int
    tokens: int  # prompt + max_tokens × n of every line, as counted (0: not counted)
    reserved_usd: float  # the budget's worst case for the file (0: no budget)
    created_at: float
    file_id: str | None = None
    uploaded_at: float | None = None
    batch_id: str | None = None
    submitted_at: float | None = None
    # Batches of this file the provider would not start (token_limit_exceeded): known, so
    # that a search for the key after a kill does not adopt them.
    refused: list[str] = field(default_factory=list)
    status: str | None = None  # the provider's last word on the batch
    counts: dict[str, int] = field(default_factory=dict)  # total, completed, failed
    output_file_id: str | None = None
    error_file_id: str | None = None
    finished_at: float | None = None  # when the provider ended the batch
    cancel_requested_at: float | None = None
    handed_over_at: float | None = None  # the deadline sent its unanswered rows direct
    collected_at: float | None = None
    # What collecting did: ok, failed, already (a row answered elsewhere first), pending by
    # why, late (answers that came after the rows were handed over), cost, late_cost.
    collected: dict[str, Any] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        """Its name at the provider."""
        return f"{FILE_PREFIX}{self.key}.jsonl"

    @property
    def live(self) -> bool:
        """Its rows belong to it: no other file holds them, no lane sends them."""
        return self.collected_at is None and self.handed_over_at is None

    @property
    def open(self) -> bool:
        """Not collected yet (live, or handed over with a batch whose answers may still
        come)."""
        return self.collected_at is None


class Ledger:
    """The `batches/` folder of a checkpoint (see the module docstring). Used by the one
    process that holds the checkpoint's lock."""

    def __init__(self, checkpoint_folder: Path) -> None:
        self.folder = checkpoint_folder / LEDGER
        self._intents = {intent.key: intent for intent in read_intents(checkpoint_folder)}
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():  # what a kill left before an intent's record
            key = path.name.split(".", 1)[0]
            if key not in self._intents or path.name.startswith("."):
                path.unlink(missing_ok=True)

    # -- reading --------------------------------------------------------------------------

    def intents(self) -> list[Intent]:
        """Every intent, oldest first."""
        return sorted(self._intents.values(), key=lambda i: (i.created_at, i.key))

    def live(self) -> list[Intent]:
        return [i for i in self.intents() if i.live]

    def open(self) -> list[Intent]:
        return [i for i in self.intents() if i.open]

    def lines_path(self, intent: Intent) -> Path:
        return self.folder / f"{intent.key}.jsonl"

    def rows_path(self, intent: Intent) -> Path:
        return self.folder / f"{intent.key}.rows.parquet"

    def answers_path(self, intent: Intent, kind: str) -> Path:
        """Where a downloaded output ("output") or error ("errors") file is kept."""
        return self.folder / f"{intent.key}.{kind}.jsonl"

    def rows_of(self, intents: list[Intent], columns: list[str] | None = None) -> pl.DataFrame:
        """The rows of `intents` (key, position, attempt)."""
        paths = [self.rows_path(i) for i in intents if self.rows_path(i).exists()]
        if not paths:
            return pl.DataFrame(schema=ROWS_SCHEMA).select(columns or list(ROWS_SCHEMA))
        return pl.scan_parquet(paths).select(columns or list(ROWS_SCHEMA)).collect()

    def held_positions(self) -> pl.Series:
        """The positions of the rows live intents hold, sorted."""
        return self.rows_of(self.live(), [POSITION]).get_column(POSITION).sort()

    def attempts(self, keys: pl.Series) -> pl.DataFrame:
        """For each of `keys` some earlier intent held: (key, attempt) of its last one."""
        if not self._intents:
            return pl.DataFrame(schema={ROW_KEY: pl.String, ATTEMPT: pl.Int32})
        paths = [self.rows_path(i) for i in self.intents() if self.rows_path(i).exists()]
        if not paths:
            return pl.DataFrame(schema={ROW_KEY: pl.String, ATTEMPT: pl.Int32})
        return (
            pl.scan_parquet(paths)
            .filter(pl.col(ROW_KEY).is_in(keys.implode()))
            .group_by(ROW_KEY)
            .agg(pl.col(ATTEMPT).max())
            .collect()
        )

    # -- writing --------------------------------------------------------------------------

    def propose(self, lines: Path, rows: pl.DataFrame, intent: Intent) -> Intent:
        """Commit `intent`: its lines (a file written beside the ledger, moved in) and its
        rows first, then its record. Nothing is at the provider yet."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lines.replace(self.lines_path(intent))
        with atomic_file(self.rows_path(intent)) as tmp:
            rows.select(list(ROWS_SCHEMA)).cast(ROWS_SCHEMA).write_parquet(tmp)  # type: ignore[arg-type]
        self.record(intent)
        return intent

    def scratch(self) -> Path:
        """A hidden path in the ledger to write a file's lines to before its key is known."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f".lines.{time.monotonic_ns()}.tmp"

    def record(self, intent: Intent, **changes: Any) -> Intent:
        """Write the intent's record (with `changes`), atomically."""
        for name, value in changes.items():
            setattr(intent, name, value)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.folder / f"{intent.key}.json") as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(intent)))
        self._intents[intent.key] = intent
        return intent

    def drop_files(self, intent: Intent) -> None:
        """Once collected: the lines and downloaded answers go; the record and rows stay
        (the report's figures, and how many batches held each row)."""
        for path in (
            self.lines_path(intent),
            self.answers_path(intent, "output"),
            self.answers_path(intent, "errors"),
        ):
            path.unlink(missing_ok=True)
        fsync_dir(self.folder)


def read_intents(checkpoint_folder: Path) -> list[Intent]:
    """Every intent's record, oldest first, read as `status` and `report` read a checkpoint:
    without its lock, beside a run that may hold it, so nothing is removed (records are
    replaced atomically: each is read whole, old or new)."""
    folder = checkpoint_folder / LEDGER
    if not folder.is_dir():
        return []
    found = (_load(path) for path in sorted(folder.glob("*.json")))
    return sorted((i for i in found if i is not None), key=lambda i: (i.created_at, i.key))


def refuse_if_running(checkpoint_folder: Path, why: str) -> None:
    """A UserError when rows of the job are in batches still running: sending them another
    way (`why`: a run without the batch endpoint, an export) would pay for them twice."""
    live = [i for i in read_intents(checkpoint_folder) if i.live and i.batch_id is not None]
    if not live:
        return
    rows = sum(i.rows for i in live)
    raise UserError(
        f"{rows:,} rows of this job are in {len(live)} batch(es) still running at endpoint "
        f"{live[0].endpoint!r}, and {why} would pay for them twice: put that endpoint (kind = "
        f'"batch") back into the job and run it to collect them, or cancel them with '
        f"`batchrun cancel-batches`."
    )


def _load(path: Path) -> Intent | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    known = {f.name for f in dataclasses.fields(Intent)}
    return Intent(**{k: v for k, v in data.items() if k in known})
