"""`dcflow cancel`: stop a campaign's live runs on this host (signals through /proc)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path

from dcflow.errors import CancelTimeoutError
from dcflow.layout import Layout
from dcflow.ledger import pid_start_time
from dcflow.orchestration.campaign_files import (
    campaign_ledger_path,
    load_campaign_config,
    open_ledger,
)

__all__ = ["cancel_campaign", "cancel_runs"]

log = logging.getLogger(__name__)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc children lists), deepest last."""
    out: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop(0)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out += children
            queue += children
    return out


def _wait_gone(pid: int, start: str | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid_start_time(pid) != start or start is None:
            return True
        time.sleep(0.2)
    return False


def cancel_runs(
    ledger_path: str | Path, *, timeout_s: float = 60.0, grace_s: float = 10.0
) -> tuple[list[int], int]:
    """Cancel the live runs of a ledger on this host.

    Returns the ids of the runs stopped and the number of attempts cancelled. Each run's
    Snakemake process gets SIGINT, as for Ctrl-C: Snakemake cancels its jobs through its
    executor (qdel for Grid Engine, a kill for DIRAC) and exits. Local job processes still
    running ``grace_s`` later (the local executor waits for them) get SIGTERM. The run's
    unfinished attempts are recorded as cancelled.

    Raises
    ------
    CancelTimeoutError
        If a run's Snakemake process is still alive ``timeout_s`` after the signal.
    """
    stopped: list[int] = []
    n_cancelled = 0
    with open_ledger(ledger_path) as ledger:
        ledger.reap_dead_runs()
        for run in ledger.runs():
            if run.finished is not None or run.pid is None or run.host != socket.gethostname():
                continue
            children = _descendants(run.pid)
            signalled = time.time()
            log.info("cancel: run %d, Snakemake pid %d gets SIGINT", run.run_id, run.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGINT)
            if not _wait_gone(run.pid, run.pid_start, min(grace_s, timeout_s)):
                # the local executor waits for its running jobs: stop them
                for child in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGTERM)
            if not _wait_gone(run.pid, run.pid_start, timeout_s):
                raise CancelTimeoutError(
                    f"run {run.run_id}: Snakemake (pid {run.pid}) still alive {timeout_s:.0f} s "
                    "after SIGINT"
                )
            for child in children:  # job processes that outlived Snakemake's cancel
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            n_cancelled += ledger.cancel_run(run.run_id, since=signalled)
            stopped.append(run.run_id)
    return stopped, n_cancelled


def cancel_campaign(
    config_path: str | Path, *, workdir: str | Path | None = None, timeout_s: float = 60.0
) -> tuple[list[int], int]:
    """`cancel_runs` on the campaign's ledger."""
    config = load_campaign_config(config_path)
    workdir = Path(workdir or os.getcwd()).resolve()
    return cancel_runs(
        campaign_ledger_path(Layout.from_config(config), workdir), timeout_s=timeout_s
    )
