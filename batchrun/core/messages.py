"""Another library's error, quoted inside one of batchrun's sentences.

An exception from pyarrow, polars, botocore or Ray can run to pages (a traceback from a
worker, a request's every header); batchrun's messages quote its first line only, so that
the sentence around it (what failed, what to do) stays readable.
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of `exc`'s message, cut to `limit` characters (None: whole); the
    exception's type name when its message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
