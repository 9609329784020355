"""One sharded driver per working directory: an flock the kernel drops when the driver dies.

Shard Snakemakes run with ``--nolock``: Snakemake's unlock removes the whole
``.snakemake/locks`` directory, so two Snakemakes in one working directory race (one starting
while another ends fails with FileNotFoundError on ``0.input.lock``; seen once in 78 shards
with 8 running at once). Shards never share an output (`dcflow.campaign.shards.build_shards`),
so what Snakemake's lock would protect is the working directory against another driver: this
lock does that. A plain ``dcflow run`` checks it too (`sharded_driver_running`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from dcflow.errors import DriverBusyError

__all__ = ["DriverBusyError", "driver_lock_path", "hold_driver_lock", "sharded_driver_running"]


def driver_lock_path(workdir: str | Path) -> Path:
    """The lock file of the working directory's sharded driver."""
    return Path(workdir) / ".snakemake" / "dcflow-sharded.lock"


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip() or "unknown process"
    return "unknown process"


@contextlib.contextmanager
def hold_driver_lock(workdir: str | Path) -> Iterator[Path]:
    """Hold the sharded-driver lock of ``workdir`` while the block runs.

    Raises
    ------
    DriverBusyError
        If another process holds it; the message names the file and the holder.
    """
    path = driver_lock_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DriverBusyError(
                f"{path}: another `dcflow run --sharded` ({_holder(path)}) drives this working "
                "directory; wait for it to end or stop it (Ctrl-C, dcflow cancel)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield path


def sharded_driver_running(workdir: str | Path) -> str | None:
    """Who holds ``workdir``'s sharded-driver lock, or None if nobody does."""
    path = driver_lock_path(workdir)
    if not path.exists():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(path)
    return None
