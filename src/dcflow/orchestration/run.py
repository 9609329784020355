"""`dcflow run`: a ledger-backed Snakemake run, its live progress, and stopping it cleanly.

Snakemake runs in the driver's process group (a kill of the group stops everything), its
output in a log file (``logs/snakemake/run=<id>.log`` under the output root); the terminal
shows one progress display updated in place (plain lines when not a terminal), repeated
warnings once with a count, and Snakemake's own lines only with ``verbose``. SIGINT or
SIGTERM to the driver stops Snakemake and every process under it
(`dcflow.orchestration.cancel.stop_process_tree`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from dcflow.campaign.driver_lock import DriverBusyError, sharded_driver_running
from dcflow.layout import Layout
from dcflow.ledger import Attempt, Ledger
from dcflow.orchestration.campaign_files import load_campaign_config, open_ledger
from dcflow.orchestration.cancel import stop_process_tree
from dcflow.orchestration.profiles import (
    failure_policy,
    memory_policy,
    profile_backend,
    profile_dir,
    resource_override_args,
    rule_defaults,
)
from dcflow.orchestration.snakemake_cli import snakemake_argv
from dcflow.states import JobState
from dcflow.status import marker_jobid

__all__ = [
    "PLAIN_PERIOD_S",
    "ProgressPrinter",
    "RunOutcome",
    "SnakemakeOutput",
    "launch_campaign",
    "progress_lines",
    "run_campaign",
    "start_recorded",
]

log = logging.getLogger(__name__)

PLAIN_PERIOD_S = 30.0
"""Off a terminal (CI logs), a progress line at most this often, unless a job failed."""


def _quiet_hides_progress(snakemake_args: list[str]) -> bool:
    if "--quiet" not in snakemake_args and "-q" not in snakemake_args:
        return False
    flag = "--quiet" if "--quiet" in snakemake_args else "-q"
    following = snakemake_args[snakemake_args.index(flag) + 1 :]
    values = [v for v in following[:3] if not v.startswith("-")]
    return not values or any(v in ("all", "progress") for v in values)


_TIMESTAMP = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+\]?\s*")
_WARNING = re.compile(r"\bwarn(ing)?\b", re.I)
_DIGITS = re.compile(r"\d+")
_ERROR = re.compile(r"(\berror\b|Exception\b|^\w+Error:)", re.I)


@dataclass
class SnakemakeOutput:
    """Snakemake's output, read line by line: written to its log, warnings counted once.

    With ``echo`` each line is also shown (a repeated warning only the first time).
    """

    log_path: Path
    echo: TextIO | None = None
    warnings: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def pump(self, stream: TextIO) -> None:
        """Copy ``stream`` to the log until it ends."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log_file:
            for line in stream:
                log_file.write(line)
                log_file.flush()
                self._take(line)

    def follow(self, offset: int, finished: Callable[[], bool], period_s: float = 0.5) -> None:
        """Read the log from ``offset`` as Snakemake writes it, until ``finished()`` and its end.

        Snakemake writes its log itself, not through a pipe to the driver: a driver killed
        alone (SIGKILL of its main process) must leave its shard Snakemakes a stdout that
        still works, or their next print dies of a broken pipe and the shard hangs.
        """
        with open(self.log_path, errors="replace") as log_file:
            log_file.seek(offset)
            partial = ""
            while True:
                ended = finished()
                for line in iter(log_file.readline, ""):
                    if not line.endswith("\n") and not ended:
                        partial += line
                        continue
                    self._take(partial + line)
                    partial = ""
                if ended:
                    if partial:
                        self._take(partial)
                    return
                time.sleep(period_s)

    def _take(self, line: str) -> None:
        text = _TIMESTAMP.sub("", line.rstrip())
        repeated = False
        if _WARNING.search(text):
            repeated = text in self.warnings
            self.warnings[text] += 1
        elif _ERROR.search(text):
            self.errors.append(text)
        if self.echo is not None and not repeated:
            self.echo.write(line)
            self.echo.flush()

    def repeated_warnings(self) -> list[tuple[str, int]]:
        """Warnings and how often each came, most frequent first."""
        return self.warnings.most_common()

    def warning_kinds(self) -> list[tuple[str, int, int]]:
        """Warnings that differ only in their numbers (visit, CCD...) as one kind.

        ``(first text seen, times in all, variants)`` per kind, most frequent first.
        """
        kinds: dict[str, list] = {}
        for text, count in self.warnings.items():  # insertion order: first seen first
            kind = kinds.setdefault(_DIGITS.sub("N", text), [text, 0, 0])
            kind[1] += count
            kind[2] += 1
        return sorted((tuple(k) for k in kinds.values()), key=lambda k: -k[1])


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended, and where to look."""

    run_id: int
    exit_code: int
    interrupted: str | None
    """The signal that stopped the run (``"SIGINT"``, ``"SIGTERM"``), None if it ended."""
    log_path: str
    warnings: tuple[tuple[str, int, int], ...]
    """Kinds of warning: first text, times in all, variants (`SnakemakeOutput.warning_kinds`)."""
    errors: tuple[str, ...]
    n_done: int
    n_failed: int
    seconds: float


class _StopRequestedError(Exception):
    """A signal asked the driver to stop its run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.name = signal.Signals(signum).name


def _raise_stop(signum: int, frame: object) -> None:
    raise _StopRequestedError(signum)


def run_campaign(config_path: str | Path, **options: Any) -> int:
    """Run the campaign through Snakemake with the run ledger; return Snakemake's exit code.

    The options are `launch_campaign`'s, which also says how the run ended.
    """
    return launch_campaign(config_path, **options).exit_code


def launch_campaign(
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
    verbose: bool = False,
    exclusive: bool | None = None,
) -> RunOutcome:
    """Run the campaign through Snakemake with the run ledger; return how it ended.

    Every job attempt is written to the campaign's ledger by the ``dcflow`` logger plugin;
    tiles whose last attempt failed for memory ask for more (`MemoryPolicy`); a progress
    display per stage is kept while it runs. Snakemake's output goes to the run's log
    (shown too with ``verbose``). ``snakemake_args`` pass through untouched (a ``--quiet``
    that hides progress also hides job completions from the ledger: warned). From the main
    thread, SIGINT and SIGTERM stop Snakemake and every process under it (`stop_process_tree`).

    Parameters
    ----------
    exclusive : bool, optional
        Refuse to start while another run of the campaign is alive (default: when ``shard``
        is None; shards of one sharded driver run side by side).

    Raises
    ------
    DriverBusyError
        If ``exclusive`` and another run of the campaign is alive, or if ``shard`` is None
        and a sharded driver runs in ``workdir``.
    """
    started_at = time.monotonic()
    config = load_campaign_config(config_path)
    layout = Layout.from_config(config)
    workdir = Path(workdir or os.getcwd()).resolve()
    backend = profile_backend(profile) if profile else "local"
    policy = memory_policy(profile, factor=mem_factor, cap_mb=mem_cap_mb)
    ledger_file = Path(layout.path("ledger"))
    if not ledger_file.is_absolute():
        ledger_file = workdir / ledger_file
    exclusive = shard is None if exclusive is None else exclusive
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
        live = [r for r in ledger.runs() if r.finished is None]
        if exclusive and live:
            other = live[-1]
            raise DriverBusyError(
                f"run {other.run_id} of this campaign is still running (pid {other.pid} on "
                f"{other.host}); wait for it to end, or stop it with `dcflow cancel --config "
                f"{config_path}`"
            )
        locks = workdir / ".snakemake" / "locks"
        stale_lock = locks.is_dir() and any(locks.iterdir()) and not live
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
    log_path = Path(layout.path("log", rule="snakemake", tile=f"run={run_id}"))
    log_path = log_path if log_path.is_absolute() else workdir / log_path
    if verbose:
        print(f"snakemake (ledger run {run_id}): {shlex.join(argv)}", flush=True)
    output = SnakemakeOutput(log_path, echo=sys.stdout if verbose else None)
    watcher = ProgressPrinter(
        ledger_file,
        run_id,
        period_s=progress_seconds,
        workdir=workdir,
        show=progress and not verbose,
    )
    watcher.start()  # before Snakemake: a display that cannot start leaves nothing running
    previous: dict[int, object] = {}
    interrupted = None
    code: int | None = None
    child = pump = None
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            offset = log_file.tell()
            child = start_recorded(argv, log_file, ledger_file, run_id)
        started = child
        pump = threading.Thread(
            target=output.follow, args=(offset, lambda: started.poll() is not None), daemon=True
        )
        pump.start()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, _raise_stop)
        try:
            code = child.wait()
        except _StopRequestedError as stop:
            interrupted = stop.name
            watcher.pause()
            print(f"\n{stop.name}: stopping the run (Snakemake cancels its jobs)", flush=True)
            for signum in previous:  # a second Ctrl-C must not break the stop
                signal.signal(signum, signal.SIG_IGN)
            stop_process_tree(child.pid, leader_gone=lambda: child.poll() is not None)
            code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if child is not None and child.poll() is None:  # the driver itself failed: stop all
            stop_process_tree(child.pid, leader_gone=lambda: child.poll() is not None)
        watcher.stop()
        if pump is not None:
            pump.join(timeout=10)
        with open_ledger(ledger_file) as ledger:
            ledger.finish_run(run_id, code)
            attempts = ledger.attempts(run_id=run_id)
    return RunOutcome(
        run_id=run_id,
        exit_code=code,
        interrupted=interrupted,
        log_path=str(log_path),
        warnings=tuple(output.warning_kinds()),
        errors=tuple(dict.fromkeys(output.errors)),
        n_done=sum(a.state is JobState.SUCCEEDED for a in attempts),
        n_failed=sum(a.state is JobState.FAILED for a in attempts),
        seconds=time.monotonic() - started_at,
    )


_GATE = 'IFS= read -r go && [ "$go" = go ] || exit 75; exec "$@" </dev/null'
"""Run the command only once the driver wrote ``go`` on stdin (EOF: the driver died first)."""


def start_recorded(
    argv: list[str], log_file: BinaryIO, ledger_file: str | os.PathLike, run_id: int
) -> subprocess.Popen:
    """Start Snakemake (``argv``) once the ledger names its process as the run's.

    Until then the run carries the driver's pid: a driver killed between the start and that
    record would leave a Snakemake the ledger calls dead (its driver is), and the next driver
    would run the same jobs beside it. So the process starts as a shell waiting on a pipe and
    becomes Snakemake (same pid) only after the record; if the driver dies first, the pipe
    closes and the shell exits without starting it.
    """
    child = subprocess.Popen(
        ["/bin/sh", "-c", _GATE, "dcflow-run", *argv],
        stdin=subprocess.PIPE,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    assert child.stdin is not None
    try:
        with open_ledger(ledger_file) as ledger:
            ledger.set_run_pid(run_id, child.pid)
        with contextlib.suppress(BrokenPipeError):  # killed meanwhile: its exit code says so
            child.stdin.write(b"go\n")
    finally:
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
    return child


class ProgressPrinter:
    """Watches a run from the ledger while it goes.

    On a terminal, one progress display per stage updated in place (rich); elsewhere a
    compact line when counts change, at most every `PLAIN_PERIOD_S` unless a job failed.
    Also fills in the backend job ids that Snakemake stored in its incomplete markers (for
    executors that do not log them).
    """

    def __init__(
        self,
        ledger_path: str | Path,
        run_id: int,
        *,
        period_s: float = 2.0,
        workdir: str | Path | None = None,
        show: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.ledger_path = str(ledger_path)
        self.run_id = run_id
        self.period_s = period_s
        self.workdir = workdir
        self.show = show
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._last: tuple = ()
        self._last_plain = 0.0
        self._live = None
        self._ledger: Ledger | None = None  # one connection for the run: opening costs ~1 ms

    def start(self) -> None:
        """Start watching in a background thread."""
        if self.show and self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                console=Console(file=self.stream), auto_refresh=False, transient=False
            )
            self._live.start()
        self._thread.start()

    def pause(self) -> None:
        """Stop drawing (the run is being stopped; messages follow)."""
        self._paused.set()

    def stop(self) -> None:
        """Draw a last time and stop."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._paused.clear()
        self.print_once(final=True)
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        if self._live is not None:
            self._live.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            if not self._paused.is_set():
                self.print_once()

    def print_once(self, *, final: bool = False) -> None:
        """Show the progress if anything changed since the last call."""
        try:
            if self._ledger is None:
                self._ledger = Ledger(self.ledger_path)
            ledger = self._ledger
            if self.workdir is not None:
                # only the active attempts still without an id: a shard watched with no
                # display must not read its whole run every period
                for attempt_id, outputs in ledger.active_without_backend_id(self.run_id):
                    jobid = marker_jobid(self.workdir, outputs[0]) if outputs else None
                    if jobid:
                        ledger.set_attempt_backend_id(attempt_id, jobid)
            if not self.show and not final:
                return
            run = ledger.run(self.run_id)
            attempts = ledger.attempts(run_id=self.run_id)
        except (sqlite3.Error, KeyError) as exc:
            log.debug("progress: ledger not readable yet: %s", exc)
            return
        if not self.show or not run.planned:
            return
        counts = stage_counts(run.planned, attempts)
        key = tuple(counts)
        if key == self._last and not final:
            return
        if self._live is not None:
            self._last = key
            self._live.update(_progress_table(counts), refresh=True)
            return
        failed_now = sum(c[4] for c in counts) > sum(c[4] for c in self._last)
        due = time.monotonic() - self._last_plain >= PLAIN_PERIOD_S
        if final and key == self._last:
            return
        if final or failed_now or due or not self._last:
            self._last = key
            self._last_plain = time.monotonic()
            self.stream.write(plain_progress_line(counts) + "\n")
            self.stream.flush()


def stage_counts(
    planned: dict[str, int], attempts: list[Attempt]
) -> list[tuple[str, int, int, int, int]]:
    """Per planned stage: ``(stage, planned, done, running, failed)`` from its attempts."""
    out = []
    for rule, total in planned.items():
        mine = [a for a in attempts if a.rule == rule]
        out.append(
            (
                rule,
                total,
                sum(a.state is JobState.SUCCEEDED for a in mine),
                sum(a.state in (JobState.RUNNING, JobState.SUBMITTED) for a in mine),
                sum(a.state is JobState.FAILED for a in mine),
            )
        )
    return out


def plain_progress_line(counts: list[tuple[str, int, int, int, int]]) -> str:
    """One line for logs: totals, then the stages that are under way."""
    total = sum(c[1] for c in counts)
    done = sum(c[2] for c in counts)
    running = sum(c[3] for c in counts)
    failed = sum(c[4] for c in counts)
    busy = ", ".join(f"{s} {d}/{t}" for s, t, d, r, f in counts if r or (0 < d < t) or f)
    stamp = time.strftime("%H:%M:%S")
    text = f"{stamp} progress: {done}/{total} jobs done, {running} running, {failed} failed"
    return text + (f" ({busy})" if busy else "")


def _progress_table(counts: list[tuple[str, int, int, int, int]]):
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(box=None, pad_edge=False, title_justify="left")
    for name, justify in (
        ("stage", "left"),
        ("", "left"),
        ("done", "right"),
        ("running", "right"),
        ("failed", "right"),
    ):
        table.add_column(name, justify=justify)
    for stage, total, done, running, failed in counts:
        table.add_row(
            stage,
            ProgressBar(total=max(total, 1), completed=done, width=30),
            f"{done}/{total}",
            str(running),
            f"[red]{failed}[/red]" if failed else "0",
        )
    total = sum(c[1] for c in counts)
    done = sum(c[2] for c in counts)
    table.title = f"{done}/{total} jobs done ({time.strftime('%H:%M:%S')})"
    return table


def progress_lines(planned: dict[str, int], attempts: list[Attempt], width: int = 30) -> list[str]:
    """Text progress bars, one per stage: done/planned, running and failed counts."""
    lines = []
    for rule, total, done, running, failed in stage_counts(planned, attempts):
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        lines.append(
            f"  {rule:<20} [{bar}] {done:>5}/{total:<5} running {running:<4} failed {failed}"
        )
    return ["progress:", *lines] if lines else []
