"""The ledger of the Files and Batches API: what was uploaded, batched and cancelled.

Tests of a batch lane read it to check exactly-once from the server's side: no row sent in
two batches, no file uploaded twice for one intent (its filename).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Upload:
    """One file uploaded: its id and name, the custom_ids its lines hold, and when."""

    file_id: str
    filename: str
    custom_ids: tuple[str, ...]
    t: float  # time.time() at upload


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One batch created; `status` is its latest, and its final once the batch has ended."""

    batch_id: str
    input_file_id: str
    metadata: Mapping[str, str]
    custom_ids: tuple[str, ...]
    t: float  # time.time() at creation
    status: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """One accepted request to cancel a batch."""

    batch_id: str
    t: float  # time.time() at the request


class BatchLedger:
    """Entries appended by the server's thread and read by any other."""

    def __init__(self) -> None:
        # Guards the three collections: the server writes while tests read.
        self._lock = threading.Lock()
        # Uploads in the order they were accepted.
        self._uploads: list[Upload] = []
        # Batches by id, in the order they were created.
        self._batches: dict[str, BatchEntry] = {}
        # Cancels in the order they were accepted.
        self._cancels: list[Cancel] = []

    def uploaded(self, upload: Upload) -> None:
        with self._lock:
            self._uploads.append(upload)

    def created(self, batch: BatchEntry) -> None:
        with self._lock:
            self._batches[batch.batch_id] = batch

    def moved(self, batch_id: str, status: str) -> None:
        """Notes a batch's new status."""
        with self._lock:
            self._batches[batch_id] = replace(self._batches[batch_id], status=status)

    def cancelled(self, cancel: Cancel) -> None:
        with self._lock:
            self._cancels.append(cancel)

    @property
    def uploads(self) -> list[Upload]:
        with self._lock:
            return list(self._uploads)

    @property
    def batches(self) -> list[BatchEntry]:
        with self._lock:
            return list(self._batches.values())

    @property
    def cancels(self) -> list[Cancel]:
        with self._lock:
            return list(self._cancels)

    def filenames_uploaded_twice(self) -> list[str]:
        """Filenames uploaded more than once, sorted."""
        counts = Counter(u.filename for u in self.uploads)
        return sorted(name for name, count in counts.items() if count > 1)

    def custom_ids_in_two_batches(self, statuses: Collection[str] | None = None) -> list[str]:
        """custom_ids held by more than one batch, sorted; with `statuses`, only batches whose
        latest status is one of them count (e.g. leave out `failed`, which answered nothing).
        """
        counts: Counter[str] = Counter()
        for batch in self.batches:
            if statuses is None or batch.status in statuses:
                counts.update(batch.custom_ids)
        return sorted(custom_id for custom_id, count in counts.items() if count > 1)
