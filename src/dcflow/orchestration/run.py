"""`dcflow run`: a ledger-backed Snakemake run, and its progress bars while it goes."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

from dcflow.campaign.driver_lock import DriverBusyError, sharded_driver_running
from dcflow.layout import Layout
from dcflow.ledger import Attempt, Ledger
from dcflow.orchestration.campaign_files import load_campaign_config, open_ledger
from dcflow.orchestration.profiles import (
    failure_policy,
    memory_policy,
    profile_backend,
    profile_dir,
    resource_override_args,
    rule_defaults,
)
from dcflow.orchestration.snakemake_cli import snakemake_argv
from dcflow.states import ACTIVE_STATES, JobState
from dcflow.status import marker_jobid

__all__ = ["ProgressPrinter", "progress_lines", "run_campaign"]

log = logging.getLogger(__name__)


def _quiet_hides_progress(snakemake_args: list[str]) -> bool:
    if "--quiet" not in snakemake_args and "-q" not in snakemake_args:
        return False
    flag = "--quiet" if "--quiet" in snakemake_args else "-q"
    following = snakemake_args[snakemake_args.index(flag) + 1 :]
    values = [v for v in following[:3] if not v.startswith("-")]
    return not values or any(v in ("all", "progress") for v in values)


def run_campaign(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: list[str],
    targets: list[str] | None = None,
    workdir: str | Path | None = None,
    shard: str | None = None,
    mem_factor: float | None = None,
    mem_cap_mb: int | None = None,
    progress: bool = True,
    progress_seconds: float = 2.0,
) -> int:
    """Run the campaign through Snakemake with the run ledger; return Snakemake's exit code.

    Every job attempt is written to the campaign's ledger by the ``dcflow`` logger plugin;
    tiles whose last attempt failed for memory ask for more (`MemoryPolicy`); a progress bar
    per stage is printed while it runs. ``snakemake_args`` pass through untouched (a
    ``--quiet`` that hides progress also hides job completions from the ledger: warned).

    Raises
    ------
    DriverBusyError
        If ``shard`` is None and a sharded driver runs in ``workdir``.
    """
    config = load_campaign_config(config_path)
    layout = Layout.from_config(config)
    workdir = Path(workdir or os.getcwd()).resolve()
    backend = profile_backend(profile) if profile else "local"
    policy = memory_policy(profile, factor=mem_factor, cap_mb=mem_cap_mb)
    ledger_file = Path(layout.path("ledger"))
    if not ledger_file.is_absolute():
        ledger_file = workdir / ledger_file
    if _quiet_hides_progress(snakemake_args):
        log.warning("--quiet hides job completions: the ledger will not see jobs succeed")
    holder = None if shard else sharded_driver_running(workdir)
    if holder:
        # its shards run without Snakemake's lock (dcflow.campaign.driver_lock)
        raise DriverBusyError(
            f"a sharded driver ({holder}) runs in {workdir}: a plain run beside it could "
            "write the same outputs; wait for it to end"
        )
    with open_ledger(ledger_file) as ledger:
        ledger.reap_dead_runs()
        locks = workdir / ".snakemake" / "locks"
        stale_lock = (
            locks.is_dir()
            and any(locks.iterdir())
            and not any(r.finished is None for r in ledger.runs())
        )
        requests = ledger.memory_requests(policy)
        defaults = rule_defaults(profile)
        runtimes = ledger.runtime_requests(
            failure_policy(profile), {rule: d["runtime"] for rule, d in defaults.items()}
        )
        extra = resource_override_args(requests, runtimes, defaults)
        for (rule, tile), mem_mb in sorted(requests.items()):
            log.info("memory escalation: %s %s asks for mem_mb=%d", rule, tile, mem_mb)
        for (rule, tile), minutes in sorted(runtimes.items()):
            log.info("run time escalation: %s %s asks for runtime=%d min", rule, tile, minutes)
        run_id = ledger.start_run(
            campaign=config["campaign"]["name"],
            shard=shard or "all",
            profile=profile,
            backend=backend,
            argv=[*snakemake_args, *(targets or [])],
        )
    argv = snakemake_argv(config_path, profile=None, workdir=workdir)
    if stale_lock:
        # no run of this campaign is alive (dead drivers were closed above): a killed driver
        # left its Snakemake lock behind
        log.info("stale Snakemake lock in %s (no live run in the ledger): unlocking", workdir)
        subprocess.run([*argv, "--unlock"], check=False, capture_output=True)
    if profile:
        argv += ["--profile", str(profile_dir(profile))]
    argv += [
        "--logger",
        "dcflow",
        "--logger-dcflow-ledger",
        str(ledger_file),
        "--logger-dcflow-run-id",
        str(run_id),
        "--logger-dcflow-backend",
        backend,
        "--logger-dcflow-shard",
        shard or "all",
    ]
    # targets first and our --set-resources (nargs +) last, so neither swallows the other
    argv += list(targets or []) + list(snakemake_args) + extra
    log.info("running (ledger run %d): %s", run_id, shlex.join(argv))
    child = subprocess.Popen(argv)
    with open_ledger(ledger_file) as ledger:
        ledger.set_run_pid(run_id, child.pid)
        watcher = ProgressPrinter(
            ledger_file, run_id, period_s=progress_seconds, workdir=workdir, show=progress
        )
        watcher.start()
        try:
            code = child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            code = child.wait()
        finally:
            watcher.stop()
        ledger.finish_run(run_id, code)
    return code


class ProgressPrinter:
    """Watches a run from the ledger while it goes.

    Prints one progress bar per stage whenever counts change, and fills in the backend job
    ids that Snakemake stored in its incomplete markers (for executors that do not log them).
    """

    def __init__(
        self,
        ledger_path: str | Path,
        run_id: int,
        *,
        period_s: float = 2.0,
        workdir: str | Path | None = None,
        show: bool = True,
    ) -> None:
        self.ledger_path = str(ledger_path)
        self.run_id = run_id
        self.period_s = period_s
        self.workdir = workdir
        self.show = show
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._last: tuple = ()

    def start(self) -> None:
        """Start printing in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Print a last time and stop."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.print_once()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.print_once()

    def print_once(self) -> None:
        """Print the bars if anything changed since the last call."""
        try:
            with Ledger(self.ledger_path) as ledger:
                run = ledger.run(self.run_id)
                attempts = ledger.attempts(run_id=self.run_id)
                if self.workdir is not None:
                    for a in attempts:
                        if a.state in ACTIVE_STATES and not a.backend_jobid and a.outputs:
                            jobid = marker_jobid(self.workdir, a.outputs[0])
                            if jobid:
                                ledger.set_attempt_backend_id(a.attempt_id, jobid)
        except (sqlite3.Error, KeyError) as exc:
            log.debug("progress: ledger not readable yet: %s", exc)
            return
        if not self.show:
            return
        lines = progress_lines(run.planned, attempts)
        key = tuple(lines)
        if lines and key != self._last:
            self._last = key
            print("\n".join(lines), flush=True)


def progress_lines(planned: dict[str, int], attempts: list[Attempt], width: int = 30) -> list[str]:
    """Text progress bars, one per stage: done/planned, running and failed counts."""
    lines = []
    for rule, total in planned.items():
        mine = [a for a in attempts if a.rule == rule]
        done = sum(a.state is JobState.SUCCEEDED for a in mine)
        failed = sum(a.state is JobState.FAILED for a in mine)
        running = sum(a.state in (JobState.RUNNING, JobState.SUBMITTED) for a in mine)
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        lines.append(
            f"  {rule:<20} [{bar}] {done:>5}/{total:<5} running {running:<4} failed {failed}"
        )
    return ["progress:", *lines] if lines else []
