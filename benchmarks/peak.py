"""A command's own peak memory, measured so that the measuring process does not count.

    from peak import measure
    result = measure([sys.executable, "-m", "batchrun.cli", "status", "job.toml"])
    result.peak_mb, result.seconds, result.cpu_s, result.code

Linux carries a process's peak RSS across `exec`: a child forked (or vforked) from a process
holding 1.4 GB reports at least 1.4 GB in `wait4`'s `ru_maxrss`, whatever the program it runs
(a million-row resume "peaked" at 1,393 MB that way, and at 364 MB measured from outside).
So the command is started by this small launcher, a fresh Python holding almost nothing,
which waits for it and passes on its peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    code: int  # the command's exit code (negative: the signal that ended it)
    seconds: float  # wall time, from start to exit
    peak_mb: float  # the command's peak resident memory
    cpu_s: float  # its user and system CPU time
    stdout: str
    stderr: str


def start(
    argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start `argv` under the launcher; `finish` waits for it. Returns the launcher process
    and the file it writes the figures to."""
    fd, report = tempfile.mkstemp(prefix="peak-", suffix=".json")
    os.close(fd)
    proc = subprocess.Popen(
        [sys.executable, __file__, report, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    return proc, report


def finish(proc: subprocess.Popen[str], report: str, timeout: float | None = None) -> Measured:
    """Wait for a command `start` started and read its figures."""
    out, err = proc.communicate(timeout=timeout)
    try:
        with open(report) as handle:
            figures = json.load(handle)
    finally:
        os.unlink(report)
    return Measured(
        figures["code"], figures["seconds"], figures["peak_mb"], figures["cpu_s"], out, err
    )


def measure(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
) -> Measured:
    """Run `argv` to its end; its exit code, wall time, peak memory and output."""
    proc, report = start(argv, env, cwd)
    return finish(proc, report, timeout)


def _launch(report: str, argv: list[str]) -> int:
    started = time.monotonic()
    child = subprocess.Popen(argv)
    try:
        _, status, usage = os.wait4(child.pid, 0)
    except KeyboardInterrupt:
        child.kill()
        raise
    code = os.waitstatus_to_exitcode(status)
    figures = {
        "code": code,
        "seconds": time.monotonic() - started,
        "peak_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }
    with open(report, "w") as handle:
        json.dump(figures, handle)
    return 0


if __name__ == "__main__":
    sys.exit(_launch(sys.argv[1], sys.argv[2:]))
