"""The run ledger: one SQLite database per campaign recording every job attempt as it happens.

Written by the Snakemake logger plugin (``snakemake --logger dcflow``) while a run goes, and
by the driver (`dcflow run`) for the runs themselves; read by ``dcflow status / failed / rerun``
and by memory escalation. The database is in WAL mode and every event is its own committed
transaction, so a driver killed with SIGKILL leaves a ledger that is true up to the kill
(``synchronous=NORMAL``: a process crash loses nothing committed; a power cut may lose the last
transactions but never corrupts the file).

Tables
------
runs
    One row per Snakemake invocation: campaign, shard, profile, backend, host, pid, argv,
    start / end times, exit code, the planned job counts per rule and the progress.
attempts
    One row per job attempt: rule, data id (tile), wildcards, shard, backend and backend job
    id, `JobState`, exit code, error class and reason, failure class (`dcflow.failures`),
    memory asked and used, runtime, CPU time, I/O, log and benchmark paths, outputs,
    timestamps. A ledger written before failure classes existed gains the column, and its
    failed attempts their class, when it is first opened.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcflow.configs import check_fields, config_field
from dcflow.dataids import DATA_ID_KEYS, format_data_id
from dcflow.failures import FailureClass, FailurePolicy, classify, escalated_runtime
from dcflow.states import ACTIVE_STATES, TERMINAL_STATES, JobState

__all__ = [
    "Attempt",
    "BenchmarkRecord",
    "Ledger",
    "MemoryPolicy",
    "Run",
    "escalated_memory",
    "parse_tile",
    "pid_start_time",
    "read_benchmark",
    "tile_of",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign TEXT,
    shard TEXT,
    profile TEXT,
    backend TEXT,
    host TEXT,
    pid INTEGER,
    pid_start TEXT,
    argv TEXT,
    started REAL NOT NULL,
    finished REAL,
    exit_code INTEGER,
    planned TEXT,
    n_done INTEGER,
    n_total INTEGER
);
CREATE TABLE IF NOT EXISTS attempts (
    attempt_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    jobid INTEGER NOT NULL,
    rule TEXT,
    data_id TEXT,
    wildcards TEXT,
    shard TEXT,
    backend TEXT,
    backend_jobid TEXT,
    state TEXT NOT NULL,
    exit_code INTEGER,
    error_class TEXT,
    reason TEXT,
    failure_class TEXT,
    memory_failure INTEGER NOT NULL DEFAULT 0,
    mem_mb_requested INTEGER,
    mem_mb_used REAL,
    threads INTEGER,
    runtime_s REAL,
    cpu_s REAL,
    io_in_mb REAL,
    io_out_mb REAL,
    log_path TEXT,
    benchmark_path TEXT,
    outputs TEXT,
    submitted REAL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS attempts_by_tile ON attempts (rule, data_id, attempt_id);
CREATE INDEX IF NOT EXISTS attempts_by_run ON attempts (run_id, jobid);
CREATE INDEX IF NOT EXISTS attempts_by_state ON attempts (state);
CREATE INDEX IF NOT EXISTS attempts_by_state_time ON attempts (state, finished);
"""


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    """How a job that failed for memory asks for more on its next attempt."""

    factor: float = config_field(
        2.0, "Multiplier applied to mem_mb after a memory failure, dimensionless", minimum=1.0
    )
    cap_mb: int = config_field(64000, "Largest mem_mb escalation may ask for, MB", minimum=1)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class Run:
    """One Snakemake invocation recorded in the ledger."""

    run_id: int
    campaign: str | None
    shard: str | None
    profile: str | None
    backend: str | None
    host: str | None
    pid: int | None
    pid_start: str | None
    argv: str | None
    started: float
    finished: float | None
    exit_code: int | None
    planned: Mapping[str, int]
    n_done: int | None
    n_total: int | None

    def is_alive(self) -> bool:
        """True if the run's driver process still runs (same host, same pid and start time)."""
        if self.finished is not None or self.pid is None:
            return False
        if self.host != socket.gethostname():
            return True  # cannot tell from here: trust the ledger
        return pid_start_time(self.pid) == self.pid_start and self.pid_start is not None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of one job, as stored in the ledger."""

    attempt_id: int
    run_id: int
    jobid: int
    rule: str | None
    data_id: str | None
    wildcards: Mapping[str, str]
    shard: str | None
    backend: str | None
    backend_jobid: str | None
    state: JobState
    exit_code: int | None
    error_class: str | None
    reason: str | None
    memory_failure: bool
    mem_mb_requested: int | None
    mem_mb_used: float | None
    threads: int | None
    runtime_s: float | None
    cpu_s: float | None
    io_in_mb: float | None
    io_out_mb: float | None
    log_path: str | None
    benchmark_path: str | None
    outputs: tuple[str, ...]
    submitted: float | None
    started: float | None
    finished: float | None
    failure_class: str | None = None
    """`dcflow.failures.FailureClass` value of a failed or lost attempt."""

    @property
    def tile(self) -> tuple[str | None, str | None]:
        """``(rule, data_id)``: the key of a tile across attempts and runs."""
        return (self.rule, self.data_id)


@dataclass(frozen=True, slots=True)
class BenchmarkRecord:
    """The measurements of one Snakemake ``benchmark:`` file (first repeat)."""

    runtime_s: float
    max_rss_mb: float | None
    cpu_s: float | None
    io_in_mb: float | None
    io_out_mb: float | None
    extra: Mapping[str, float] = field(default_factory=dict)


def pid_start_time(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot, from /proc), or None if it is gone.

    A zombie (exited, not yet reaped) counts as gone.

    With the pid it identifies a process even after pid reuse.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited: nobody watches its jobs any more
        return None
    return fields[19]


def tile_of(wildcards: Mapping[str, object]) -> str:
    """The data id text naming a job's tile: `format_data_id` of its wildcards.

    Wildcards that are not data id keys are appended in name order; a job without wildcards
    (a campaign-wide job) is ``"campaign"``.
    """
    if not wildcards:
        return "campaign"
    known = {k: v for k, v in wildcards.items() if k in DATA_ID_KEYS}
    other = sorted((k, v) for k, v in wildcards.items() if k not in DATA_ID_KEYS)
    parts = [format_data_id(known)] if known else []
    parts += [f"{k}={v}" for k, v in other]
    return "_".join(parts)


_TILE_KEY = re.compile(r"(?:^|_)(" + "|".join(DATA_ID_KEYS) + r")=")


def parse_tile(tile: str) -> dict[str, str]:
    """The data id of a tile name (`tile_of`'s inverse; ``campaign`` is the empty data id)."""
    if tile == "campaign":
        return {}
    marks = list(_TILE_KEY.finditer(tile))
    return {
        m.group(1): tile[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(tile)]
        for i, m in enumerate(marks)
    }


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "", "NA", "-") else None
    except ValueError:
        return None
    return number if number is None or math.isfinite(number) else None


def read_benchmark(path: str | os.PathLike | None) -> BenchmarkRecord | None:
    """Read a Snakemake benchmark TSV; None if it is missing or unreadable.

    Columns used: ``s`` (wall time, s), ``max_rss`` (MB), ``io_in`` / ``io_out`` (MB),
    ``cpu_time`` (s).
    """
    if not path:
        return None
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except OSError:
        return None
    if not rows:
        return None
    row = rows[0]
    runtime = _float(row.get("s"))
    if runtime is None:
        return None
    extra = {k: v for k, v in ((k, _float(x)) for k, x in row.items() if k) if v is not None}
    return BenchmarkRecord(
        runtime_s=runtime,
        max_rss_mb=_float(row.get("max_rss")),
        cpu_s=_float(row.get("cpu_time")),
        io_in_mb=_float(row.get("io_in")),
        io_out_mb=_float(row.get("io_out")),
        extra=extra,
    )


def escalated_memory(
    attempts: Iterable[Attempt], policy: MemoryPolicy
) -> dict[tuple[str, str], int]:
    """Memory each tile must ask for next, from its attempt history.

    Walking a tile's attempts in order: a memory failure raises the need to
    ``min(cap, ceil(requested * factor))`` (never lowers it); a later success keeps what it
    was given (so a rerun days later does not fall back to the failing default). Tiles with
    no memory failure are absent.

    Parameters
    ----------
    attempts : iterable of Attempt
        Attempts in ledger order (``attempt_id``).
    policy : MemoryPolicy
        Factor and cap.

    Returns
    -------
    dict
        ``(rule, data_id) -> mem_mb``.
    """
    need: dict[tuple[str, str], int] = {}
    for attempt in sorted(attempts, key=lambda a: a.attempt_id):
        if attempt.rule is None or attempt.data_id is None or attempt.mem_mb_requested is None:
            continue
        key = (attempt.rule, attempt.data_id)
        if attempt.state is JobState.FAILED and attempt.memory_failure:
            # a retry that ran with the same request (Snakemake's own --retries) does not
            # compound: the need grows only from what the failing attempt was given
            grown = min(policy.cap_mb, math.ceil(attempt.mem_mb_requested * policy.factor))
            need[key] = max(need.get(key, 0), grown)
        elif attempt.state is JobState.SUCCEEDED and key in need:
            need[key] = max(attempt.mem_mb_requested, 1)
    return need


class Ledger:
    """The run ledger of one campaign (an SQLite file, created on first use).

    Parameters
    ----------
    path : path-like
        The database file (the layout's ``ledger`` dataset).
    timeout_s : float
        How long a writer waits for another writer's lock, s.
    read_only : bool
        Open an existing ledger for reading only (``mode=ro``): a watcher such as
        ``dcflow serve`` never takes a write lock, and WAL lets it read while runs write.

    Raises
    ------
    FileNotFoundError
        ``read_only`` and the file does not exist.
    """

    def __init__(
        self, path: str | os.PathLike, *, timeout_s: float = 30.0, read_only: bool = False
    ) -> None:
        self.path = str(path)
        if read_only:
            if not Path(self.path).is_file():
                raise FileNotFoundError(f"{self.path}: no run ledger")
            self._conn = sqlite3.connect(
                Path(self.path).resolve().as_uri() + "?mode=ro",
                uri=True,
                timeout=timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            self._conn.row_factory = sqlite3.Row
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        self._add_failure_class()

    def _add_failure_class(self) -> None:
        """Give a ledger written before failure classes the column, and its failures a class."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(attempts)")}
        if "failure_class" in columns:
            return
        try:
            with self._conn:
                self._conn.execute("ALTER TABLE attempts ADD COLUMN failure_class TEXT")
                rows = self._conn.execute(
                    "SELECT attempt_id, state, exit_code, error_class, reason, backend"
                    " FROM attempts WHERE state IN (?, ?)",
                    (JobState.FAILED.value, JobState.LOST.value),
                ).fetchall()
                self._conn.executemany(
                    "UPDATE attempts SET failure_class = ? WHERE attempt_id = ?",
                    [(_classify_row(row).value, row["attempt_id"]) for row in rows],
                )
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process migrated it first
                raise

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, args: tuple | list = ()) -> sqlite3.Cursor:
        with self._conn:  # one committed transaction per event
            return self._conn.execute(sql, args)

    # runs ------------------------------------------------------------------------------
    def start_run(
        self,
        *,
        campaign: str | None = None,
        shard: str | None = None,
        profile: str | None = None,
        backend: str | None = None,
        argv: list[str] | None = None,
        pid: int | None = None,
        when: float | None = None,
    ) -> int:
        """Record a new run and return its id; ``pid`` is the process that watches its jobs."""
        pid = os.getpid() if pid is None else pid
        cursor = self._write(
            "INSERT INTO runs (campaign, shard, profile, backend, host, pid, pid_start, argv,"
            " started) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                campaign,
                shard,
                profile,
                backend,
                socket.gethostname(),
                pid,
                pid_start_time(pid),
                json.dumps(argv) if argv is not None else None,
                time.time() if when is None else when,
            ),
        )
        return int(cursor.lastrowid)

    def set_run_pid(self, run_id: int, pid: int) -> None:
        """Record the process watching a run's jobs (the Snakemake process)."""
        self._write(
            "UPDATE runs SET pid = ?, pid_start = ? WHERE run_id = ?",
            (pid, pid_start_time(pid), run_id),
        )

    def set_run_plan(self, run_id: int, planned: Mapping[str, int]) -> None:
        """Record the job counts per rule that Snakemake planned for a run."""
        self._write(
            "UPDATE runs SET planned = ?, n_total = ? WHERE run_id = ?",
            (json.dumps(dict(planned)), int(sum(planned.values())), run_id),
        )

    def set_run_progress(self, run_id: int, done: int, total: int) -> None:
        """Record Snakemake's progress counter for a run."""
        self._write(
            "UPDATE runs SET n_done = ?, n_total = ? WHERE run_id = ?", (done, total, run_id)
        )

    def finish_run(self, run_id: int, exit_code: int | None, *, when: float | None = None) -> None:
        """Record the end of a run; attempts still active become `JobState.LOST`."""
        now = time.time() if when is None else when
        with self._conn:
            self._conn.execute(
                "UPDATE runs SET finished = ?, exit_code = ? WHERE run_id = ? AND finished IS NULL",
                (now, exit_code, run_id),
            )
            self._conn.execute(
                "UPDATE attempts SET state = ?, failure_class = ? WHERE run_id = ?"
                f" AND state IN ({_marks(ACTIVE_STATES)})",
                (
                    JobState.LOST.value,
                    FailureClass.NODE_LOST.value,
                    run_id,
                    *[s.value for s in ACTIVE_STATES],
                ),
            )

    def cancel_run(
        self, run_id: int, *, since: float | None = None, when: float | None = None
    ) -> int:
        """Mark a run's unfinished attempts cancelled and close the run.

        Submitted, running and lost attempts become `JobState.CANCELLED`, and so do attempts
        that failed at or after ``since`` (jobs killed by the cancel itself); returns how many.
        """
        now = time.time() if when is None else when
        states = [*(s.value for s in ACTIVE_STATES), JobState.LOST.value]
        killed = "" if since is None else " OR (state = ? AND finished >= ?)"
        extra: tuple = () if since is None else (JobState.FAILED.value, since)
        with self._conn:
            cursor = self._conn.execute(
                f"UPDATE attempts SET state = ?, finished = COALESCE(finished, ?)"
                f" WHERE run_id = ? AND (state IN ({_marks(states)}){killed})",
                (JobState.CANCELLED.value, now, run_id, *states, *extra),
            )
            self._conn.execute(
                "UPDATE runs SET finished = COALESCE(finished, ?) WHERE run_id = ?",
                (now, run_id),
            )
        return int(cursor.rowcount)

    def runs(self) -> list[Run]:
        """Every run, oldest first."""
        rows = self._conn.execute("SELECT * FROM runs ORDER BY run_id").fetchall()
        return [_run(row) for row in rows]

    def run(self, run_id: int) -> Run:
        """One run.

        Raises
        ------
        KeyError
            If the ledger has no such run.
        """
        row = self._conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"run {run_id} is not in the ledger {self.path}")
        return _run(row)

    def reap_dead_runs(self) -> list[int]:
        """Close runs whose driver died (SIGKILL, node crash); returns their ids.

        Their attempts still submitted or running become `JobState.LOST`.
        """
        dead = [r.run_id for r in self.runs() if r.finished is None and not r.is_alive()]
        for run_id in dead:
            self.finish_run(run_id, None)
        return dead

    # attempts --------------------------------------------------------------------------
    def _open_attempt(self, run_id: int, jobid: int) -> int | None:
        row = self._conn.execute(
            "SELECT attempt_id, state FROM attempts WHERE run_id = ? AND jobid = ?"
            " ORDER BY attempt_id DESC LIMIT 1",
            (run_id, jobid),
        ).fetchone()
        if row is None or JobState(row["state"]).is_terminal():
            return None
        return int(row["attempt_id"])

    def job_started(
        self,
        run_id: int,
        jobid: int,
        *,
        state: JobState = JobState.SUBMITTED,
        backend: str | None = None,
        shard: str | None = None,
        when: float | None = None,
    ) -> int:
        """Record that Snakemake handed a job to its executor; returns the attempt id."""
        now = time.time() if when is None else when
        attempt_id = self._open_attempt(run_id, jobid)
        started = now if state is JobState.RUNNING else None
        if attempt_id is not None:
            self._write(
                "UPDATE attempts SET state = ?, submitted = COALESCE(submitted, ?),"
                " started = COALESCE(started, ?) WHERE attempt_id = ?",
                (state.value, now, started, attempt_id),
            )
            return attempt_id
        cursor = self._write(
            "INSERT INTO attempts (run_id, jobid, state, backend, shard, submitted, started)"
            " VALUES (?,?,?,?,?,?,?)",
            (run_id, jobid, state.value, backend, shard, now, started),
        )
        return int(cursor.lastrowid)

    def job_info(
        self,
        run_id: int,
        jobid: int,
        *,
        rule: str,
        wildcards: Mapping[str, object],
        mem_mb: int | None,
        threads: int | None,
        log_path: str | None,
        benchmark_path: str | None,
        outputs: Iterable[str],
        backend: str | None = None,
        shard: str | None = None,
        state: JobState = JobState.SUBMITTED,
        when: float | None = None,
    ) -> int:
        """Record what a job is (rule, tile, resources, paths); returns the attempt id.

        Opens a new attempt unless the job has one that is not finished yet.
        """
        now = time.time() if when is None else when
        attempt_id = self._open_attempt(run_id, jobid)
        if attempt_id is None:
            attempt_id = self.job_started(
                run_id, jobid, state=state, backend=backend, shard=shard, when=now
            )
        self._write(
            "UPDATE attempts SET rule = ?, data_id = ?, wildcards = ?, mem_mb_requested = ?,"
            " threads = ?, log_path = ?, benchmark_path = ?, outputs = ?,"
            " backend = COALESCE(?, backend), shard = COALESCE(?, shard) WHERE attempt_id = ?",
            (
                rule,
                tile_of(wildcards),
                json.dumps({k: str(v) for k, v in wildcards.items()}),
                None if mem_mb is None else int(mem_mb),
                threads,
                log_path,
                benchmark_path,
                json.dumps(list(outputs)),
                backend,
                shard,
                attempt_id,
            ),
        )
        return attempt_id

    def job_backend_id(
        self, run_id: int, jobid: int, backend_jobid: str, *, state: JobState | None = None
    ) -> None:
        """Record the backend's id of a job (Grid Engine job number, DIRAC job id)."""
        attempt_id = self._open_attempt(run_id, jobid)
        if attempt_id is None:
            attempt_id = self.job_started(run_id, jobid)
        self._write(
            "UPDATE attempts SET backend_jobid = ?, state = COALESCE(?, state)"
            " WHERE attempt_id = ?",
            (str(backend_jobid), None if state is None else state.value, attempt_id),
        )

    def set_attempt_backend_id(self, attempt_id: int, backend_jobid: str) -> None:
        """Record the backend job id of one attempt found after the fact (incomplete markers)."""
        self._write(
            "UPDATE attempts SET backend_jobid = ? WHERE attempt_id = ? AND backend_jobid IS NULL",
            (str(backend_jobid), attempt_id),
        )

    def job_finished(
        self,
        run_id: int,
        jobid: int,
        *,
        state: JobState = JobState.SUCCEEDED,
        exit_code: int | None = None,
        error_class: str | None = None,
        reason: str | None = None,
        memory_failure: bool = False,
        benchmark: BenchmarkRecord | None = None,
        backend_jobid: str | None = None,
        when: float | None = None,
    ) -> int | None:
        """Record the end of a job's attempt (success or failure); returns the attempt id.

        Runtime, memory used, CPU time and I/O come from the job's benchmark file when given;
        otherwise runtime is the wall time since the attempt started. A failure gets its
        `dcflow.failures.FailureClass`; one classed out of memory counts as a memory failure
        (memory escalation).
        """
        now = time.time() if when is None else when
        attempt_id = self._open_attempt(run_id, jobid)
        if attempt_id is None:
            return None
        row = self._conn.execute(
            "SELECT started, submitted, backend FROM attempts WHERE attempt_id = ?",
            (attempt_id,),
        ).fetchone()
        began = row["started"] if row["started"] is not None else row["submitted"]
        runtime = benchmark.runtime_s if benchmark else (now - began if began else None)
        failure_class = None
        if state is JobState.FAILED:
            failure_class = classify(
                state=state,
                exit_code=exit_code,
                error_class=error_class,
                reason=reason,
                backend=row["backend"],
            )
            if memory_failure and failure_class is FailureClass.UNKNOWN:
                failure_class = FailureClass.MEMORY
            memory_failure = memory_failure or failure_class is FailureClass.MEMORY
        self._write(
            "UPDATE attempts SET state = ?, exit_code = ?, error_class = ?, reason = ?,"
            " failure_class = ?, memory_failure = ?, mem_mb_used = ?, runtime_s = ?, cpu_s = ?,"
            " io_in_mb = ?, io_out_mb = ?, backend_jobid = COALESCE(?, backend_jobid),"
            " finished = ? WHERE attempt_id = ?",
            (
                state.value,
                exit_code,
                error_class,
                reason,
                None if failure_class is None else failure_class.value,
                int(memory_failure),
                benchmark.max_rss_mb if benchmark else None,
                runtime,
                benchmark.cpu_s if benchmark else None,
                benchmark.io_in_mb if benchmark else None,
                benchmark.io_out_mb if benchmark else None,
                backend_jobid,
                now,
                attempt_id,
            ),
        )
        return attempt_id

    def record_found_complete(self, attempt_id: int, *, when: float) -> int:
        """Record a failed or lost attempt as succeeded: its job's outputs were found whole.

        The reason keeps what the attempt was recorded as; ``when`` is when the outputs were
        written. Returns 1 if the attempt was changed, 0 if it was not failed or lost.
        """
        cursor = self._write(
            "UPDATE attempts SET reason = 'settled from disk: outputs whole and not marked"
            " incomplete; recorded ' || state || COALESCE(': ' || reason, ''), state = ?,"
            " failure_class = NULL, memory_failure = 0, finished = ?"
            " WHERE attempt_id = ? AND state IN (?, ?)",
            (
                JobState.SUCCEEDED.value,
                when,
                attempt_id,
                JobState.FAILED.value,
                JobState.LOST.value,
            ),
        )
        return int(cursor.rowcount)

    def attempts(
        self,
        *,
        run_id: int | None = None,
        rule: str | None = None,
        data_id: str | None = None,
        states: Iterable[JobState] | None = None,
    ) -> list[Attempt]:
        """Attempts matching every given filter, in ledger order."""
        clauses, args = ["rule IS NOT NULL"], []
        for column, value in (("run_id", run_id), ("rule", rule), ("data_id", data_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if states is not None:
            wanted = [JobState(s).value for s in states]
            clauses.append(f"state IN ({_marks(wanted)})")
            args += wanted
        sql = f"SELECT * FROM attempts WHERE {' AND '.join(clauses)} ORDER BY attempt_id"
        return [_attempt(row) for row in self._conn.execute(sql, args)]

    def benchmark_path_of(self, run_id: int, jobid: int) -> str | None:
        """Benchmark file of a job's last attempt in a run (one indexed row, not the run's)."""
        row = self._conn.execute(
            "SELECT benchmark_path FROM attempts WHERE run_id = ? AND jobid = ?"
            " ORDER BY attempt_id DESC LIMIT 1",
            (run_id, jobid),
        ).fetchone()
        return None if row is None else row["benchmark_path"]

    def run_state_counts(self, run_id: int) -> dict[JobState, int]:
        """Attempts of a run per state (the ``all`` rule left out), from one aggregate query.

        What a driver watching many runs polls: no attempt rows are built.
        """
        rows = self._conn.execute(
            "SELECT state, COUNT(*) AS n FROM attempts WHERE run_id = ? AND rule IS NOT NULL"
            " AND rule != 'all' GROUP BY state",
            (run_id,),
        ).fetchall()
        return {JobState(row["state"]): int(row["n"]) for row in rows}

    def active_without_backend_id(self, run_id: int) -> list[tuple[int, list[str]]]:
        """``(attempt_id, outputs)`` of a run's queued or running attempts with no backend id."""
        active = [s.value for s in ACTIVE_STATES]
        rows = self._conn.execute(
            "SELECT attempt_id, outputs FROM attempts WHERE run_id = ? AND rule IS NOT NULL"
            " AND rule != 'all'"
            f" AND state IN ({_marks(active)}) AND (backend_jobid IS NULL"
            " OR backend_jobid = '')",
            (run_id, *active),
        ).fetchall()
        return [(int(r["attempt_id"]), json.loads(r["outputs"] or "[]")) for r in rows]

    def latest_attempts(self) -> dict[tuple[str, str], Attempt]:
        """The last attempt of every tile ``(rule, data_id)`` ever attempted."""
        rows = self._conn.execute(
            "SELECT a.* FROM attempts a JOIN (SELECT MAX(attempt_id) AS last FROM attempts"
            " WHERE rule IS NOT NULL GROUP BY rule, data_id) m ON a.attempt_id = m.last"
            " ORDER BY a.attempt_id"
        )
        out = {}
        for row in rows:
            attempt = _attempt(row)
            out[(str(attempt.rule), str(attempt.data_id))] = attempt
        return out

    def succeeded_since(self, when: float) -> dict[str, list[str]]:
        """Per rule, the tiles with an attempt that succeeded at or after ``when`` (Unix s).

        One indexed range query, the tiles of a rule concatenated by SQLite: what
        ``dcflow status`` reads of the (up to millions of) successes since its last plan.
        """
        rows = self._conn.execute(
            "SELECT rule, group_concat(data_id, char(10)) FROM attempts"
            " WHERE state = ? AND finished >= ? AND rule IS NOT NULL GROUP BY rule",
            (JobState.SUCCEEDED.value, when),
        )
        return {str(rule): str(text).split("\n") for rule, text in rows}

    def unsettled_tiles(self) -> list[tuple[str, str, str, int]]:
        """``(rule, data_id, state, run_id)`` of tiles whose last attempt is not a success.

        Active, failed and lost attempts found through the state index, kept when no later
        attempt of their tile exists (the tile index).
        """
        states = [*(s.value for s in ACTIVE_STATES), JobState.FAILED.value, JobState.LOST.value]
        return self._conn.execute(
            "SELECT a.rule, a.data_id, a.state, a.run_id FROM attempts a"
            f" WHERE a.state IN ({_marks(states)}) AND a.rule IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM attempts b WHERE b.rule = a.rule AND b.data_id = a.data_id"
            " AND b.attempt_id > a.attempt_id)",
            states,
        ).fetchall()

    def attempt_counts(self) -> dict[tuple[str, str], int]:
        """Number of attempts of every tile ever attempted."""
        rows = self._conn.execute(
            "SELECT rule, data_id, COUNT(*) FROM attempts WHERE rule IS NOT NULL"
            " GROUP BY rule, data_id"
        )
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    def failed_tiles(self) -> list[Attempt]:
        """Tiles whose last attempt failed (or was lost), in ledger order.

        Failed and lost attempts come through the state index and are kept when no later
        attempt of their tile exists: no pass over the whole ledger.
        """
        states = (JobState.FAILED.value, JobState.LOST.value)
        rows = self._conn.execute(
            f"SELECT a.* FROM attempts a WHERE a.state IN ({_marks(states)})"
            " AND a.rule IS NOT NULL AND NOT EXISTS (SELECT 1 FROM attempts b"
            " WHERE b.rule = a.rule AND b.data_id = a.data_id AND b.attempt_id > a.attempt_id)"
            " ORDER BY a.attempt_id",
            states,
        )
        return [_attempt(row) for row in rows]

    def tile_attempt_counts(self, tiles: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Number of attempts of the given tiles ``(rule, data_id)`` (indexed lookups)."""
        out: dict[tuple[str, str], int] = {}
        for rule, data_id in tiles:
            count = self._conn.execute(
                "SELECT COUNT(*) FROM attempts WHERE rule = ? AND data_id = ?", (rule, data_id)
            ).fetchone()[0]
            out[(rule, data_id)] = int(count)
        return out

    def memory_requests(self, policy: MemoryPolicy) -> dict[tuple[str, str], int]:
        """``(rule, data_id) -> mem_mb`` for tiles whose history needs more memory."""
        return escalated_memory(self.attempts(), policy)

    def runtime_requests(
        self, policy: FailurePolicy, defaults: Mapping[str, int]
    ) -> dict[tuple[str, str], int]:
        """``(rule, data_id) -> runtime`` (minutes) for tiles killed at their run-time limit.

        Only tiles with a failure of class ``walltime`` are read (`escalated_runtime`).
        """
        rows = self._conn.execute(
            "SELECT rule, data_id, state, failure_class FROM attempts WHERE (rule, data_id) IN"
            " (SELECT rule, data_id FROM attempts WHERE state = ? AND failure_class = ?)"
            " ORDER BY attempt_id",
            (JobState.FAILED.value, FailureClass.WALLTIME.value),
        )
        history = [(r[0], r[1], JobState(r[2]), r[3], None) for r in rows]
        return escalated_runtime(history, defaults, policy)

    def throughput_per_h(
        self, *, window_s: float = 3600.0, now: float | None = None
    ) -> float | None:
        """Jobs succeeded per hour over the last ``window_s`` of activity (None without any).

        The window ends now if a run is still going, else at the last success; it starts no
        earlier than the first attempt started within it (so a fresh campaign is not diluted).
        """
        last = self._conn.execute(
            "SELECT MAX(finished) FROM attempts WHERE state = ?", (JobState.SUCCEEDED.value,)
        ).fetchone()[0]
        if last is None:
            return None
        live = self._conn.execute("SELECT COUNT(*) FROM runs WHERE finished IS NULL").fetchone()[0]
        end = max(last, time.time() if now is None else now) if live else last
        begin = end - window_s
        n_done = self._conn.execute(
            "SELECT COUNT(*) FROM attempts WHERE state = ? AND finished >= ?",
            (JobState.SUCCEEDED.value, begin),
        ).fetchone()[0]
        first = self._conn.execute(
            "SELECT MIN(COALESCE(started, submitted)) FROM attempts"
            " WHERE COALESCE(started, submitted) >= ?",
            (begin,),
        ).fetchone()[0]
        span = max(end - max(begin, first if first is not None else begin), 1.0)
        return n_done / span * 3600.0

    def attempt_rows(
        self,
        *,
        after_id: int = 0,
        ids: Iterable[int] = (),
        finished_since: float | None = None,
        columns: Iterable[str] = ("*",),
    ) -> list[tuple]:
        """Raw rows of the attempts newer than ``after_id``, of ``ids``, and of those that ended.

        What a watcher reads to follow the ledger incrementally: new attempts by the primary
        key, and, with ``finished_since`` (Unix s), the attempts that reached a terminal state
        at or after it (the state-and-time index): the only change an older row goes through
        besides becoming lost when its run ends. A row may come twice. Plain tuples in the
        order of ``columns`` (10^6 rows read as `sqlite3.Row` cost twice the time).
        """
        select = ", ".join(columns)
        cursor = self._conn.cursor()
        cursor.row_factory = None
        rows = cursor.execute(
            f"SELECT {select} FROM attempts WHERE attempt_id > ? ORDER BY attempt_id", (after_id,)
        ).fetchall()
        if finished_since is not None:
            terminal = [s.value for s in TERMINAL_STATES]
            rows += cursor.execute(
                f"SELECT {select} FROM attempts WHERE state IN ({_marks(terminal)})"
                " AND finished >= ? AND attempt_id <= ?",
                (*terminal, finished_since, after_id),
            ).fetchall()
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows += cursor.execute(
                f"SELECT {select} FROM attempts WHERE attempt_id IN ({_marks(chunk)})", chunk
            ).fetchall()
        return rows

    def failure_counts(self, *, include_lost: bool = False) -> dict[str, dict[str, int]]:
        """Per stage, failed tiles per failure class: what dashboards and reports show.

        Only tiles whose last attempt failed count (a tile that later succeeded is not a
        failure any more), and with ``include_lost`` those whose last attempt was lost (class
        ``node_lost``); the state index keeps it from reading the whole ledger.
        """
        states = (JobState.FAILED.value, *([JobState.LOST.value] if include_lost else []))
        rows = self._conn.execute(
            "SELECT a.rule, COALESCE(a.failure_class, ?), COUNT(*) FROM attempts a"
            f" WHERE a.state IN ({_marks(states)}) AND a.rule IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM attempts b WHERE b.rule = a.rule AND b.data_id = a.data_id"
            " AND b.attempt_id > a.attempt_id) GROUP BY a.rule, 2",
            (FailureClass.UNKNOWN.value, *states),
        )
        out: dict[str, dict[str, int]] = {}
        for rule, name, count in rows:
            out.setdefault(str(rule), {})[str(name)] = int(count)
        return out

    def mean_runtimes(self) -> dict[str, tuple[float, int]]:
        """Per rule: mean measured runtime of succeeded attempts (s) and how many there were."""
        rows = self._conn.execute(
            "SELECT rule, AVG(runtime_s), COUNT(*) FROM attempts WHERE state = ?"
            " AND runtime_s IS NOT NULL GROUP BY rule",
            (JobState.SUCCEEDED.value,),
        )
        return {str(r[0]): (float(r[1]), int(r[2])) for r in rows}


def _marks(values: Iterable[object]) -> str:
    return ",".join("?" for _ in values)


def _run(row: sqlite3.Row) -> Run:
    data = dict(row)
    data["planned"] = json.loads(data["planned"]) if data["planned"] else {}
    return Run(**data)


def _classify_row(row: sqlite3.Row) -> FailureClass:
    return classify(
        state=JobState(row["state"]),
        exit_code=row["exit_code"],
        error_class=row["error_class"],
        reason=row["reason"],
        backend=row["backend"],
    )


def _attempt(row: sqlite3.Row) -> Attempt:
    data: dict[str, Any] = dict(row)
    data["state"] = JobState(data["state"])
    data["wildcards"] = json.loads(data["wildcards"]) if data["wildcards"] else {}
    data["outputs"] = tuple(json.loads(data["outputs"])) if data["outputs"] else ()
    data["memory_failure"] = bool(data["memory_failure"])
    return Attempt(**data)
