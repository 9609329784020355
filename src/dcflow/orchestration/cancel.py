"""`dcflow cancel`: stop a campaign's live runs on this host (signals through /proc)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from dcflow.errors import CancelTimeoutError
from dcflow.layout import Layout
from dcflow.ledger import pid_start_time
from dcflow.orchestration.campaign_files import (
    campaign_ledger_path,
    load_campaign_config,
    open_ledger,
)

__all__ = [
    "INTERRUPT_GRACE_S",
    "TERMINATE_GRACE_S",
    "cancel_campaign",
    "cancel_runs",
    "stop_process_tree",
]

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


INTERRUPT_GRACE_S = 30.0
"""Seconds a run has after SIGINT (Snakemake cancels its jobs through the executor: qdel,
a DIRAC kill, local processes) before it and the processes under it get SIGTERM."""

TERMINATE_GRACE_S = 10.0
"""Seconds after SIGTERM before they get SIGKILL."""

KILL_WAIT_S = 5.0
"""Seconds allowed for the kernel to remove processes after SIGKILL."""


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and _same_group(int(p.name), pgid)
        and pid_start_time(int(p.name)) is not None
    ]


def _same_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except OSError:
        return False


def _wait(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def stop_process_tree(
    pid: int,
    *,
    leader_gone: Callable[[], bool],
    interrupt_grace_s: float = INTERRUPT_GRACE_S,
    terminate_grace_s: float = TERMINATE_GRACE_S,
) -> str:
    """Stop a Snakemake process and everything it started; return the signal that did it.

    SIGINT first, as Ctrl-C in a terminal sends it to the whole foreground group (Snakemake
    cancels its jobs through its executor and exits; local jobs stop), SIGTERM after
    ``interrupt_grace_s``, SIGKILL after another ``terminate_grace_s``. Each signal goes to
    ``pid`` and its descendants (from /proc, again at each step) and, when ``pid`` leads its
    own process group, to the group, which must then be empty at the end. ``leader_gone``
    says whether ``pid`` has exited (its parent reaps it; a zombie counts as gone).

    Raises
    ------
    CancelTimeoutError
        If something is still alive after SIGKILL.
    """
    group = pid if _same_group(pid, pid) and pid != os.getpgrp() else None
    known = set(_descendants(pid))

    def send(sig: signal.Signals) -> None:
        known.update(_descendants(pid))
        if group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
        for target in [pid, *known]:  # also processes that left the group (setsid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)

    def all_gone() -> bool:
        alive = [p for p in known if pid_start_time(p) is not None]
        return leader_gone() and not alive and (group is None or not _group_members(group))

    for sig, grace in (
        (signal.SIGINT, interrupt_grace_s),
        (signal.SIGTERM, terminate_grace_s),
        (signal.SIGKILL, KILL_WAIT_S),
    ):
        if leader_gone() and sig == signal.SIGINT:
            sig = signal.SIGTERM  # Snakemake is gone: only its leftovers remain
        log.info("stopping pid %d%s with %s", pid, " and its group" if group else "", sig.name)
        send(sig)
        if _wait(all_gone, grace):
            return sig.name
    raise CancelTimeoutError(f"pid {pid} or one of its processes survived SIGKILL")


def cancel_runs(
    ledger_path: str | Path,
    *,
    interrupt_grace_s: float = INTERRUPT_GRACE_S,
    terminate_grace_s: float = TERMINATE_GRACE_S,
) -> tuple[list[int], int]:
    """Cancel the live runs of a ledger on this host.

    Returns the ids of the runs stopped and the number of attempts cancelled. Each run's
    Snakemake process (with every process under it) gets SIGINT, as for Ctrl-C: Snakemake cancels
    its jobs through its executor (qdel for Grid Engine, a kill for DIRAC) and exits; what
    is alive ``interrupt_grace_s`` later gets SIGTERM, and SIGKILL ``terminate_grace_s``
    after that (`stop_process_tree`). The run's unfinished attempts are recorded as
    cancelled.

    Raises
    ------
    CancelTimeoutError
        If a run's processes survive SIGKILL.
    """
    stopped: list[int] = []
    n_cancelled = 0
    with open_ledger(ledger_path) as ledger:
        ledger.reap_dead_runs()
        for run in ledger.runs():
            if run.finished is not None or run.pid is None or run.host != socket.gethostname():
                continue
            signalled = time.time()
            log.info("cancel: run %d, Snakemake pid %d", run.run_id, run.pid)
            stop_process_tree(
                run.pid,
                leader_gone=lambda run=run: pid_start_time(run.pid) != run.pid_start,
                interrupt_grace_s=interrupt_grace_s,
                terminate_grace_s=terminate_grace_s,
            )
            n_cancelled += ledger.cancel_run(run.run_id, since=signalled)
            stopped.append(run.run_id)
    return stopped, n_cancelled


def cancel_campaign(
    config_path: str | Path,
    *,
    workdir: str | Path | None = None,
    interrupt_grace_s: float = INTERRUPT_GRACE_S,
    terminate_grace_s: float = TERMINATE_GRACE_S,
) -> tuple[list[int], int]:
    """`cancel_runs` on the campaign's ledger."""
    config = load_campaign_config(config_path)
    workdir = Path(workdir or os.getcwd()).resolve()
    return cancel_runs(
        campaign_ledger_path(Layout.from_config(config), workdir),
        interrupt_grace_s=interrupt_grace_s,
        terminate_grace_s=terminate_grace_s,
    )
