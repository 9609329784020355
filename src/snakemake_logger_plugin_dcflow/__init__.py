"""Snakemake logger plugin writing every job attempt to the dcflow run ledger as it happens.

Use: ``snakemake --logger dcflow --logger-dcflow-ledger results/demo/ledger.sqlite3``
(`dcflow run` adds these flags itself). Events handled (Snakemake 9 ``LogEvent``):

- ``RUN_INFO``: the job counts per rule this run plans;
- ``JOB_STARTED``: jobs handed to the executor (state submitted; running for local jobs);
- ``JOB_INFO``: rule, wildcards (the tile), resources (mem_mb, threads), log, benchmark, outputs;
- ``JOB_FINISHED``: success; runtime, memory used, CPU and I/O read from the benchmark file;
- ``JOB_ERROR``: failure; exit code, error class and reason (and whether it was a memory
  failure) read from the ``DCFLOW-FAILURE`` line of the job log or given by the executor;
- ``PROGRESS``: done / total.

Executor plugins report a backend job id by logging any record with the extra fields
``dcflow_backend_jobid`` (text) and ``jobid`` (Snakemake's job id), optionally
``dcflow_state`` (a `dcflow.states.JobState` value, e.g. ``"running"``); see `backend_job_extra`.
Failure details may come in ``report_job_error(job_info, msg, exit_code=..., reason=...)``
keyword arguments, which Snakemake passes on as the error record's ``aux``.

A write that fails for a reason that passes (the disk holding the ledger is full, another
writer holds the database past the timeout) keeps the event, and every later one, in order,
and writes them at the next event or at the end of the run: a full output disk for a minute
must not leave a finished job "running" (then "lost") in the ledger while its outputs exist.
Times are the events' own, so a late write records when things happened.
"""

import errno
import logging
import os
import sqlite3
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

from dcflow.joblog import is_memory_text, read_failure
from dcflow.ledger import Ledger, read_benchmark
from dcflow.states import JobState

__all__ = ["LogHandler", "LogHandlerSettings", "backend_job_extra", "is_transient_write_error"]

DEFAULT_LEDGER = os.path.join(".snakemake", "dcflow", "ledger.sqlite3")

TRANSIENT_SQLITE_CODES = frozenset({5, 6, 10, 13})
"""SQLite result codes of a write worth retrying: BUSY, LOCKED, IOERR, FULL."""

CLOSE_RETRY_S = 120.0
"""How long the end of a run waits for the ledger to take the events it still holds, s."""


def is_transient_write_error(exc: BaseException) -> bool:
    """True if a ledger write failed for a reason that passes (full disk, locked database)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return (code & 0xFF) in TRANSIENT_SQLITE_CODES
        text = str(exc).lower()
        return any(w in text for w in ("full", "locked", "busy", "disk i/o"))
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def backend_job_extra(jobid: int, backend_jobid: str, state: str | None = None) -> dict[str, Any]:
    """The ``extra=`` mapping an executor logs to tell the ledger a job's backend id.

    Example: ``self.logger.info(msg, extra=backend_job_extra(job.jobid, "4711", "submitted"))``.
    """
    extra: dict[str, Any] = {"jobid": jobid, "dcflow_backend_jobid": str(backend_jobid)}
    if state is not None:
        extra["dcflow_state"] = str(state)
    return extra


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    """Settings of the dcflow ledger logger (``--logger-dcflow-<name>``)."""

    ledger: Optional[str] = field(  # noqa: UP045 -- Snakemake reads the annotation at runtime
        default=None,
        metadata={
            "help": "Run ledger SQLite file (default: .snakemake/dcflow/ledger.sqlite3); "
            "`dcflow run` passes the campaign's ledger.",
            "env_var": False,
            "required": False,
            "type": str,
        },
    )
    run_id: Optional[int] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "Ledger run id opened by `dcflow run` (default: the plugin opens a run).",
            "env_var": False,
            "required": False,
            "type": int,
        },
    )
    backend: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "Backend name recorded with each attempt (default: local).",
            "env_var": False,
            "required": False,
            "type": str,
        },
    )
    shard: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "Shard label recorded with each attempt (default: all).",
            "env_var": False,
            "required": False,
            "type": str,
        },
    )
    campaign: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "Campaign name recorded with the run (default: none).",
            "env_var": False,
            "required": False,
            "type": str,
        },
    )


def _files(value: Any) -> list[str]:
    """File names of an event as absolute paths (Snakemake runs in its workdir)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [os.path.abspath(value)]
    return [os.path.abspath(str(v)) for v in value]


def _mem_mb(resources: Any) -> int | None:
    for getter in (lambda r: r.get("mem_mb"), lambda r: r["mem_mb"], lambda r: r.mem_mb):
        try:
            value = getter(resources)
        except (AttributeError, KeyError, TypeError):
            continue
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return None


class LogHandler(LogHandlerBase):
    """Writes job attempts to the run ledger; prints nothing and filters nothing out."""

    def __post_init__(self) -> None:
        settings = self.settings or LogHandlerSettings()
        self._dryrun = bool(getattr(self.common_settings, "dryrun", False))
        self._backend = settings.backend or "local"
        self._shard = settings.shard or "all"
        self._ledger: Ledger | None = None
        self._run_id: int | None = settings.run_id
        self._held: deque[logging.LogRecord] = deque()  # events a failed write kept, in order
        self._owns_run = False
        if self._dryrun:
            return
        self._ledger = Ledger(settings.ledger or DEFAULT_LEDGER)
        if self._run_id is None:
            self._run_id = self._ledger.start_run(
                campaign=settings.campaign,
                shard=self._shard,
                backend=self._backend,
                argv=list(sys.argv),
            )
            self._owns_run = True

    @property
    def writes_to_stream(self) -> bool:
        """False: the ledger is a database, not a stream."""
        return False

    @property
    def writes_to_file(self) -> bool:
        """False: no ``baseFilename`` log file (Snakemake would list it as the run's log)."""
        return False

    @property
    def has_filter(self) -> bool:
        """True: quiet settings must not hide job events from the ledger."""
        return True

    @property
    def has_formatter(self) -> bool:
        """True: records are stored, not formatted."""
        return True

    @property
    def needs_rulegraph(self) -> bool:
        """False."""
        return False

    def emit(self, record: logging.LogRecord) -> None:
        """Store one Snakemake log record in the ledger if it is a job event."""
        if self._ledger is None or self._run_id is None:
            return
        self._held.append(record)
        self._write_held()

    def _write_held(self) -> bool:
        """Write the held events in order; stop at one that fails for a passing reason.

        Returns True when none is left.
        """
        while self._held:
            record = self._held[0]
            try:
                self._handle(record)
            except (sqlite3.Error, OSError) as exc:
                if is_transient_write_error(exc):
                    return False
                self.handleError(record)  # a handler never stops the workflow: say it, go on
            except (ValueError, TypeError, KeyError, AttributeError):
                self.handleError(record)
            self._held.popleft()
        return True

    @property
    def held_events(self) -> int:
        """Events not written yet (their write failed for a passing reason)."""
        return len(self._held)

    def _handle(self, record: logging.LogRecord) -> None:
        assert self._ledger is not None and self._run_id is not None
        ledger, run_id, now = self._ledger, self._run_id, record.created
        event = getattr(record, "event", None)
        backend_jobid = getattr(record, "dcflow_backend_jobid", None)
        if backend_jobid is not None and getattr(record, "jobid", None) is not None:
            state = getattr(record, "dcflow_state", None)
            ledger.job_backend_id(
                run_id,
                int(record.jobid),
                str(backend_jobid),
                state=JobState(state) if state else None,
            )
            return
        if event == LogEvent.RUN_INFO:
            stats = getattr(record, "stats", None) or {}
            planned = {str(k): int(v) for k, v in stats.items() if str(k) != "total"}
            ledger.set_run_plan(run_id, planned)
        elif event == LogEvent.JOB_STARTED:
            state = JobState.RUNNING if self._backend == "local" else JobState.SUBMITTED
            for jobid in getattr(record, "jobs", None) or []:
                ledger.job_started(
                    run_id,
                    int(jobid),
                    state=state,
                    backend=self._backend,
                    shard=self._shard,
                    when=now,
                )
        elif event == LogEvent.JOB_INFO:
            state = JobState.RUNNING if self._backend == "local" else JobState.SUBMITTED
            logs = _files(getattr(record, "log", None))
            ledger.job_info(
                run_id,
                int(record.jobid),
                rule=str(record.rule_name),
                wildcards=dict(getattr(record, "wildcards", None) or {}),
                mem_mb=_mem_mb(getattr(record, "resources", None)),
                threads=getattr(record, "threads", None),
                log_path=logs[0] if logs else None,
                benchmark_path=(_files(getattr(record, "benchmark", None)) or [None])[0],
                outputs=_files(getattr(record, "output", None)),
                backend=self._backend,
                shard=self._shard,
                state=state,
                when=now,
            )
        elif event == LogEvent.JOB_FINISHED:
            jobid = int(record.job_id)
            bench = self._benchmark_of(jobid)
            ledger.job_finished(
                run_id, jobid, state=JobState.SUCCEEDED, exit_code=0, benchmark=bench, when=now
            )
        elif event == LogEvent.JOB_ERROR:
            self._job_error(record, now)
        elif event == LogEvent.PROGRESS:
            ledger.set_run_progress(run_id, int(record.done), int(record.total))

    def _benchmark_of(self, jobid: int):
        assert self._ledger is not None and self._run_id is not None
        # one indexed row: reading the run's attempts per finished job was O(jobs^2)
        path = self._ledger.benchmark_path_of(self._run_id, jobid)
        return read_benchmark(path) if path else None

    def _job_error(self, record: logging.LogRecord, now: float) -> None:
        assert self._ledger is not None and self._run_id is not None
        aux = dict(getattr(record, "aux", None) or {})
        logs = _files(getattr(record, "log", None))
        failure = read_failure(logs[0]) if logs else None
        exit_code = aux.get("exit_code", failure.exit_code if failure else None)
        reason = aux.get("reason") or (failure.message if failure else None)
        error_class = failure.error_class if failure else aux.get("error_class")
        memory = bool(failure and failure.memory) or bool(aux.get("memory_failure"))
        memory = memory or (reason is not None and is_memory_text(str(reason)))
        if reason is None:
            reason = str(getattr(record, "rule_msg", None) or record.getMessage())
        jobid = int(record.jobid)
        self._ledger.job_finished(
            self._run_id,
            jobid,
            state=JobState.FAILED,
            exit_code=None if exit_code is None else int(exit_code),
            error_class=error_class,
            reason=reason,
            memory_failure=memory,
            benchmark=self._benchmark_of(jobid),
            backend_jobid=aux.get("external_jobid"),
            when=now,
        )

    def close(self) -> None:
        """Close the run the plugin opened itself (the driver closes its own) and the ledger."""
        if self._ledger is not None:
            deadline = time.monotonic() + CLOSE_RETRY_S
            while not self._write_held() and time.monotonic() < deadline:
                time.sleep(1.0)
            if self._held:
                print(
                    f"dcflow ledger: {len(self._held)} event(s) could not be written to "
                    f"{self._ledger.path} in {CLOSE_RETRY_S:.0f} s (disk full or locked)",
                    file=sys.stderr,
                )
            if self._owns_run and self._run_id is not None:
                self._ledger.finish_run(self._run_id, None, when=time.time())
            self._ledger.close()
            self._ledger = None
        super().close()
