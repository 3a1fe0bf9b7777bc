"""Notes: a few figures about a job kept beside its segments, for its next run and its report."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..storage.files import atomic_file

GATEWAY_NOTE = "gateway.json"  # what rate the gateway let through when it rate-limited a run
ENDPOINTS_NOTE = "endpoints.json"  # what each of several endpoints did in the last run


def save_note(folder: Path, name: str, figures: Mapping[str, object]) -> None:
    """Keep a few figures about the job beside its segments (JSON, written atomically)."""
    with atomic_file(folder / name) as tmp:
        tmp.write_text(json.dumps(dict(figures)))


def load_note(folder: Path, name: str) -> dict[str, Any] | None:
    """The figures `save_note` kept, or None when there are none (or they cannot be read)."""
    try:
        figures = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None
    return figures if isinstance(figures, dict) else None
