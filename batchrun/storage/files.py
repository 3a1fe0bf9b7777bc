"""Files on a local disk that are never seen half-written, and the folders they live in.

`atomic_file` is how every file batchrun publishes locally is written (a checkpoint's
segments and notes, the output, a Batch file, a comparison): to a hidden temporary beside
it, fsynced, then renamed over it and the folder fsynced, so that a crash leaves either the
file as it was or the whole new one. On S3 the same promise is `batchrun.storage.store`'s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def remove_tree(folder: Path) -> None:
    """Delete a scratch folder and what it holds (files only), if it exists."""
    if not folder.exists():
        return
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


@contextmanager
def atomic_file(path: Path, publish: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a hidden temporary path to write; then fsync it, rename it to `path` and fsync
    the folder, so that `path` is either absent (or as before) or complete, never torn.
    The temporary is `.<name>.<pid>.<ns>.tmp`: what a kill leaves is recognisable.
    `publish`, if given, is called with the complete temporary before the rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if publish is not None:
            publish(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
