"""Peak memory and CPU of a measured process, without the parent's memory in the figure.

On Linux a child's ``ru_maxrss`` starts from the parent's resident size at ``fork`` (exec keeps
the larger high-water mark): a benchmark that generated a big campaign in-process and then
started the measured command would report its own size. So `run_measured` starts the command
under a tiny Python wrapper (a fresh exec, ~10 MB) whose ``RUSAGE_CHILDREN`` is the command's
own, and `own_peak_mb` reads the process's ``VmHWM`` (reset at exec).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Measured", "own_peak_mb", "run_measured"]

_WRAPPER = (
    "import json, resource, subprocess, sys; "
    "out = open(sys.argv[1], 'w'); "
    "p = subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "sys.stderr.write(json.dumps({'code': p.returncode, 'cpu_s': u.ru_utime + u.ru_stime, "
    "'user_s': u.ru_utime, 'sys_s': u.ru_stime, 'peak_kb': u.ru_maxrss}) + '\\n')"
)


@dataclass(frozen=True, slots=True)
class Measured:
    """Wall and CPU seconds, peak RSS and exit code of one measured command."""

    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    peak_mb: float
    returncode: int


def run_measured(
    argv: Sequence[str],
    *,
    log: Path,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Measured:
    """Run ``argv`` with its stdout and stderr written to ``log``; return a `Measured`."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(log), *argv],
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    usage = json.loads(proc.stderr.strip().splitlines()[-1])
    return Measured(
        wall_s=wall,
        cpu_s=usage["cpu_s"],
        user_s=usage["user_s"],
        sys_s=usage["sys_s"],
        peak_mb=usage["peak_kb"] / 1024.0,
        returncode=usage["code"],
    )


def own_peak_mb() -> float:
    """This process's peak resident size since its exec (``VmHWM``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")
