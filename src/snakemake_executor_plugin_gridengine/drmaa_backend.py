"""The DRMAA backend: one DRMAA session, jobs and bulk (array) jobs, finished jobs reaped in bulk.

Python ``drmaa`` is imported only when this backend is chosen: Snakemake imports every executor
plugin at start-up, and ``import drmaa`` needs SGE_ROOT, SGE_CELL and DRMAA_LIBRARY_PATH, and,
with Debian's libdrmaa, its libjemalloc preloaded (LD_PRELOAD) from process start: loaded late it
needs GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096 and then mixes with glibc's malloc (a
later ``import scipy.optimize`` aborted with "free(): invalid pointer").
"""

from __future__ import annotations

import contextlib
import shlex
import threading
from typing import Any

from snakemake_interface_common.exceptions import WorkflowError

from dcflow.states import JobState

from .status import JobOutcome
from .submit import JobRequest

__all__ = ["NO_RUSAGE", "DrmaaBackend", "outcome_from_job_info"]

NO_RUSAGE = 24
"""DRMAA_ERRNO_NO_RUSAGE: the job finished (id and status filled in) but has no usage record."""


def outcome_from_job_info(info: Any) -> JobOutcome:
    """Judge a DRMAA JobInfo: success only when the job exited with status 0.

    SGE's DRMAA reports a job that exited non-zero as done, not failed, so the exit status
    decides; a deleted job (qdel) is ``wasAborted``.
    """
    usage = info.resourceUsage or {}
    maxvmem_b = float(usage.get("maxvmem", 0) or 0)
    wallclock_s = float(usage.get("ru_wallclock", 0) or 0)
    exited = bool(info.hasExited)
    exit_status = int(info.exitStatus) if exited else None
    signal = str(info.terminatedSignal) if info.hasSignal else None
    ok = exited and exit_status == 0 and not info.wasAborted
    return JobOutcome(
        job_id=str(info.jobId),
        state=JobState.SUCCEEDED
        if ok
        else (JobState.CANCELLED if info.wasAborted else JobState.FAILED),
        exit_status=exit_status,
        signal=signal,
        aborted=bool(info.wasAborted),
        maxvmem_mb=maxvmem_b / 2**20,
        wallclock_s=wallclock_s,
    )


class DrmaaBackend:
    """Submit through one DRMAA session and reap finished jobs without one call per job."""

    def __init__(self) -> None:
        try:
            import drmaa
        except (ImportError, RuntimeError, OSError) as err:
            raise WorkflowError(
                "the DRMAA backend needs python-drmaa and libdrmaa: set SGE_ROOT, SGE_CELL, "
                "DRMAA_LIBRARY_PATH and LD_PRELOAD=<the libjemalloc libdrmaa links> before "
                f"Python starts (or use --gridengine-backend qsub): {err}"
            ) from err
        self._drmaa = drmaa
        self._session = drmaa.Session()
        self._session.initialize()
        self._lock = threading.Lock()
        self._own: set[str] = set()
        self._finished: dict[str, JobOutcome] = {}
        # One template, reused: creating and deleting one per job costs ~35 ms here.
        self._template = self._session.createJobTemplate()

    def owns(self, job_id: str) -> bool:
        """True for jobs submitted through this session (others are tracked via qstat/qacct)."""
        return job_id in self._own

    def submit(self, request: JobRequest, n_tasks: int | None = None) -> list[str]:
        """Submit one job, or an array of ``n_tasks`` tasks (DRMAA bulk job); return the ids."""
        try:
            with self._lock:
                jt = self._template
                jt.remoteCommand = request.command[0]
                jt.args = list(request.command[1:])
                jt.jobName = request.name
                jt.workingDirectory = request.workdir
                jt.outputPath = ":" + request.log
                jt.joinFiles = True
                # DRMAA takes the native arguments as one string that it splits itself.
                jt.nativeSpecification = shlex.join(["-V", *request.native])
                if n_tasks is None:
                    ids = [str(self._session.runJob(jt))]
                else:
                    ids = [str(i) for i in self._session.runBulkJobs(jt, 1, n_tasks, 1)]
                self._own.update(ids)
        except self._drmaa.errors.DrmaaException as err:
            raise WorkflowError(f"DRMAA submission of {request.name} failed: {err}") from err
        return ids

    def reap(self) -> None:
        """Collect every job of the session that has finished since the last call."""
        drmaa = self._drmaa
        while True:
            try:
                info = self._wait_any()
            except (drmaa.errors.ExitTimeoutException, drmaa.errors.InvalidJobException):
                return  # nothing finished yet / no job left in the session
            except Exception as err:  # NO_RUSAGE with no job id: python-drmaa raises it untyped
                if not str(err).startswith(f"code {NO_RUSAGE}:"):
                    raise
                # a job deleted before it ran, reaped without its id: the tracker finds it
                # gone from qstat (`tracker.StatusTracker`)
                continue
            outcome = outcome_from_job_info(info)
            with self._lock:
                self._finished[outcome.job_id] = outcome

    def _wait_any(self) -> Any:
        """``Session.wait(JOB_IDS_SESSION_ANY, TIMEOUT_NO_WAIT)``, also when SGE has no usage.

        A loaded qmaster may end a job without its usage record: ``drmaa_wait`` then returns
        DRMAA_ERRNO_NO_RUSAGE (24) after reaping the job and filling its id and status, and
        python-drmaa's ``Session.wait`` raised a bare Exception that lost both (seen at 700
        slots: the shard's Snakemake died and its finished job was never reported).
        """
        from ctypes import POINTER, byref, c_int, create_string_buffer, pointer, sizeof

        from drmaa.helpers import adapt_rusage, c
        from drmaa.wrappers import (
            drmaa_attr_values_t,
            drmaa_wait,
            drmaa_wexitstatus,
            drmaa_wifaborted,
            drmaa_wifexited,
            drmaa_wifsignaled,
            drmaa_wtermsig,
        )

        stat = c_int()
        jid_out = create_string_buffer(128)
        rusage = pointer(POINTER(drmaa_attr_values_t)())
        drmaa = self._drmaa
        try:
            c(drmaa_wait, drmaa.Session.JOB_IDS_SESSION_ANY, jid_out, sizeof(jid_out),
              byref(stat), drmaa.Session.TIMEOUT_NO_WAIT, rusage)  # fmt: skip
            usage = adapt_rusage(rusage)
        except Exception as err:  # python-drmaa maps code 24 to a bare Exception
            if not str(err).startswith(f"code {NO_RUSAGE}:") or not jid_out.value:
                raise
            usage = {}
        flags = {}
        for name, function in (
            ("exited", drmaa_wifexited),
            ("aborted", drmaa_wifaborted),
            ("signaled", drmaa_wifsignaled),
        ):
            value = c_int()
            c(function, byref(value), stat)
            flags[name] = bool(value.value)
        exit_status = c_int()
        if flags["exited"]:
            c(drmaa_wexitstatus, byref(exit_status), stat)
        term_signal = create_string_buffer(64)
        if flags["signaled"]:
            c(drmaa_wtermsig, term_signal, sizeof(term_signal), stat)
        return drmaa.JobInfo(
            jid_out.value.decode(),
            flags["exited"],
            flags["signaled"],
            term_signal.value.decode(),
            False,
            flags["aborted"],
            int(exit_status.value),
            usage,
        )

    def outcome(self, job_id: str) -> JobOutcome | None:
        """The outcome of a finished job (removed once read), or None while it is active."""
        with self._lock:
            return self._finished.pop(job_id, None)

    def close(self) -> None:
        """End the DRMAA session (jobs keep running)."""
        with contextlib.suppress(self._drmaa.errors.DrmaaException):
            self._session.deleteJobTemplate(self._template)
            self._session.exit()
