"""Seconds and peak memory of one command, seen from the command alone.

``os.wait4``'s ``ru_maxrss`` is the wrong number for a child of a large process: the
child's high-water mark starts at the parent's resident set when it is forked, before
it execs, and Linux keeps it across the exec. A benchmark holding 1 GB of buffers then
reports 1 GB for any command it runs. So every benchmark runs its commands through GNU
time (``/usr/bin/time -f %M``): a small process whose own child is forked from it, so
the peak it reports is the command's. Servers that run through a whole benchmark are
measured from ``/proc/<pid>/status`` ``VmHWM`` instead (the high-water mark of the
process's own address space since its exec), read before they stop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GNU_TIME = "/usr/bin/time"


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_kib: int
    returncode: int
    stdout: str
    stderr: str

    @property
    def peak_mb(self) -> float:
        return self.peak_kib / 1024


def run(cmd: list[str], **kw: object) -> Measured:
    """Run ``cmd`` (``subprocess.run`` keyword arguments allowed); its seconds, its
    peak RSS as GNU time reports it, its exit code and output."""
    if not shutil.which(GNU_TIME):
        raise SystemExit(f"{GNU_TIME} is missing (apt install time)")
    fd, report = tempfile.mkstemp(prefix="modelcar-bench-time-")
    os.close(fd)
    try:
        t = time.perf_counter()
        proc = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", report, *cmd],
            capture_output=True,
            text=True,
            check=False,
            **kw,  # type: ignore[arg-type]
        )
        seconds = time.perf_counter() - t
        lines = Path(report).read_text().split()
    finally:
        os.unlink(report)
    # GNU time writes "Command exited with non-zero status N" before the figure
    peak = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return Measured(seconds, peak, proc.returncode, proc.stdout, proc.stderr)


def checked(cmd: list[str], **kw: object) -> Measured:
    """:func:`run`, ending the benchmark with the command's stderr if it failed."""
    m = run(cmd, **kw)
    if m.returncode:
        raise SystemExit(f"{cmd[0]} failed: {m.stderr[-2000:]}")
    return m


def peak_of(pid: int) -> int:
    """A running process's peak RSS (KiB) since its exec (``VmHWM``); 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
