"""Surviving a killed driver: a durable submission ledger, driver markers, and recovery.

Every submission is appended (and fsynced) to ``.snakemake/gridengine/submissions.jsonl``
before Snakemake is told about it. A driver writes a marker naming its PID and the Snakemake
lock files it holds. :func:`recover`, run before a restart (``python -m
snakemake_executor_plugin_gridengine <workdir>``), removes the locks of dead drivers,
and for jobs that finished well while no driver watched, clears Snakemake's "incomplete" marks
so they are not run again. Every other job not seen to fail (queued, running, or not in
accounting yet) is adopted by the restarted driver (see ``Executor.run_jobs``) instead of being
submitted a second time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dcflow.plan import clear_incomplete_marks
from dcflow.states import JobState

from .status import JobOutcome, query_states

__all__ = [
    "DriverMarker",
    "RecoveryReport",
    "Submission",
    "SubmissionLedger",
    "adoptable_submissions",
    "main",
    "output_key",
    "recover",
    "state_dir",
]


def state_dir(workdir: Path) -> Path:
    """Directory of the plugin's durable state inside a workflow's working directory."""
    return Path(workdir) / ".snakemake" / "gridengine"


def output_key(outputs: Iterable[str]) -> tuple[str, ...]:
    """Identity of a job across drivers: its sorted output paths."""
    return tuple(sorted(str(o) for o in outputs))


@dataclass(frozen=True, slots=True)
class Submission:
    """One submitted job (or array task) as recorded in the ledger."""

    job_id: str
    rule: str
    outputs: tuple[str, ...]
    log: str
    name_pattern: str
    backend: str
    attempt: int = 1
    h_vmem_mb: int | None = None
    h_rt_s: int | None = None
    slots: int = 1
    submitted_at: float = field(default_factory=time.time)


class SubmissionLedger:
    """Append-only JSON-lines record of submissions and of how they finished."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, records: Sequence[dict], durable: bool) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())

    def record_submitted(self, submissions: Sequence[Submission]) -> None:
        """Record submissions durably (fsync) before they are reported to Snakemake."""
        self._append([{"event": "submitted", **asdict(s)} for s in submissions], durable=True)

    def record_finished(self, job_id: str, state: JobState, exit_status: int | None) -> None:
        """Record how a job ended (not fsynced: losing it only costs a re-query)."""
        record = {"event": "finished", "job_id": job_id, "state": state.value}
        self._append([{**record, "exit_status": exit_status, "time": time.time()}], False)

    def read(self) -> tuple[list[Submission], dict[str, str]]:
        """All submissions in order, and the final state of those that finished."""
        submissions: list[Submission] = []
        finished: dict[str, str] = {}
        if not self.path.exists():
            return submissions, finished
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write
            event = record.pop("event", None)
            if event == "submitted":
                record["outputs"] = tuple(record["outputs"])
                submissions.append(Submission(**record))
            elif event == "finished":
                finished[record["job_id"]] = record["state"]
        return submissions, finished

    def open_submissions(self) -> dict[tuple[str, ...], Submission]:
        """The latest submission of each output set that has no recorded end."""
        submissions, finished = self.read()
        latest: dict[tuple[str, ...], Submission] = {}
        for sub in submissions:
            latest[output_key(sub.outputs)] = sub
        return {k: s for k, s in latest.items() if s.job_id not in finished}


def adoptable_submissions(ledger: SubmissionLedger) -> dict[tuple[str, ...], Submission]:
    """Submissions without a recorded end that are not seen to have failed, by outputs.

    Queued and running jobs, and also jobs that succeeded while no driver watched or that are
    in neither ``qstat`` nor accounting yet (accounting is written late): submitting any of
    them again would run a job twice. An adopted job that already succeeded is reported
    succeeded at the first status check; one that never shows up is failed by the tracker
    after `tracker.VANISHED_AFTER_S`.
    """
    pending = ledger.open_submissions()
    if not pending:
        return {}
    outcomes = query_states(
        [s.job_id for s in pending.values()], {s.name_pattern for s in pending.values()}
    )
    return {
        key: sub
        for key, sub in pending.items()
        if sub.job_id not in outcomes or outcomes[sub.job_id].state is not JobState.FAILED
    }


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True, slots=True)
class DriverMarker:
    """A live driver: its host, PID (with start time, against PID reuse) and lock files."""

    host: str
    pid: int
    start_ticks: int | None
    tag: str
    lockfiles: tuple[str, ...]

    @classmethod
    def for_this_process(cls, tag: str, lockfiles: Iterable[str]) -> DriverMarker:
        """Marker describing the calling process."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _start_ticks(pid), tag, tuple(lockfiles))

    def path(self, directory: Path) -> Path:
        """Where this marker lives under ``directory``."""
        return directory / "drivers" / f"{self.host}.{self.pid}.json"

    def write(self, directory: Path) -> Path:
        """Write the marker atomically and return its path."""
        path = self.path(directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)
        return path

    def alive(self) -> bool:
        """False only when this host can tell the driver is gone (another host: assume alive)."""
        if self.host != socket.gethostname():
            return True
        return _start_ticks(self.pid) == self.start_ticks and self.start_ticks is not None

    @classmethod
    def read_all(cls, directory: Path) -> list[tuple[Path, DriverMarker]]:
        """Every marker under ``directory``."""
        markers = []
        for path in sorted((directory / "drivers").glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            data["lockfiles"] = tuple(data.get("lockfiles", ()))
            markers.append((path, cls(**data)))
        return markers


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :func:`recover` found and did."""

    live_drivers: int
    removed_lockfiles: tuple[str, ...]
    still_active: tuple[str, ...]
    finished_ok: tuple[str, ...]
    finished_failed: tuple[str, ...]
    cleared_marks: int


def recover(workdir: Path) -> RecoveryReport:
    """Make a workflow directory restartable after its driver was killed.

    Removes the Snakemake lock files of dead drivers (all lock files when no driver of this
    plugin is alive), asks Grid Engine once about every submission without a recorded end, and
    for those that succeeded meanwhile records the end and clears their "incomplete" marks.
    Queued or running jobs are left for the restarted driver to adopt.
    """
    workdir = Path(workdir)
    directory = state_dir(workdir)
    markers = DriverMarker.read_all(directory)
    live = [m for _, m in markers if m.alive()]
    removed: list[str] = []
    dead = [(p, m) for p, m in markers if not m.alive()]
    lockdir = workdir / ".snakemake" / "locks"
    stale_locks = {workdir / f for _, m in dead for f in m.lockfiles}  # absolute stays so
    if not live and lockdir.is_dir():
        stale_locks.update(lockdir.glob("*.lock"))
    for lock in sorted(stale_locks):
        if lock.exists():
            lock.unlink()
            removed.append(str(lock))
    for path, _ in dead:
        path.unlink(missing_ok=True)

    ledger = SubmissionLedger(directory / "submissions.jsonl")
    pending = ledger.open_submissions()
    by_id = {s.job_id: s for s in pending.values()}
    outcomes: dict[str, JobOutcome] = {}
    if by_id and not live:
        outcomes = query_states(by_id, {s.name_pattern for s in by_id.values()})
    ok, failed, active = [], [], []
    cleared = 0
    for job_id, outcome in outcomes.items():
        if outcome.state is JobState.SUCCEEDED:
            ledger.record_finished(job_id, outcome.state, outcome.exit_status)
            cleared += clear_incomplete_marks(workdir, by_id[job_id].outputs)
            ok.append(job_id)
        elif outcome.finished:
            ledger.record_finished(job_id, outcome.state, outcome.exit_status)
            failed.append(job_id)
        else:
            active.append(job_id)
    return RecoveryReport(
        live_drivers=len(live),
        removed_lockfiles=tuple(removed),
        still_active=tuple(sorted(active)),
        finished_ok=tuple(sorted(ok)),
        finished_failed=tuple(sorted(failed)),
        cleared_marks=cleared,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m snakemake_executor_plugin_gridengine [WORKDIR]``."""
    parser = argparse.ArgumentParser(description=recover.__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", default=".", type=Path)
    args = parser.parse_args(argv)
    report = recover(args.workdir)
    print(json.dumps(asdict(report), indent=2))
    return 0
