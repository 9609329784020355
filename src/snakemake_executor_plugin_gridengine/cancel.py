"""Cancel jobs with one ``qdel`` for all ids (chunked only beyond a very long argv)."""

from __future__ import annotations

from collections.abc import Iterable

from .status import COMMAND_TIMEOUT_S, GridEngineCommandError, run_command

__all__ = ["QDEL_CHUNK", "cancel_jobs"]

QDEL_CHUNK = 2000
"""Most job ids on one qdel command line."""


def cancel_jobs(job_ids: Iterable[str], *, timeout_s: float = COMMAND_TIMEOUT_S) -> int:
    """Delete ``job_ids`` (``"123"`` or array task ``"123.4"``); return how many were asked.

    Jobs that already left the queue are not an error (qdel reports them and exits non-zero
    only for those); any other failure raises GridEngineCommandError with qdel's stderr.
    """
    ids = sorted(set(job_ids))
    for start in range(0, len(ids), QDEL_CHUNK):
        chunk = ids[start : start + QDEL_CHUNK]
        argv = ["qdel", *chunk]
        proc = run_command(argv, timeout_s=timeout_s, ok_codes=(0, 1))
        output = proc.stderr + proc.stdout
        if proc.returncode == 1 and "does not exist" not in output:
            raise GridEngineCommandError(argv, 1, output)
    return len(ids)
