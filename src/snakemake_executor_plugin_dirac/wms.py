"""The few DIRAC client calls the executor makes, each raising DiracError on an S_ERROR.

DIRAC 9.1 over DISET. The client is configured by the environment (``DIRACSYSCONFIG``,
``X509_USER_PROXY``, ``X509_CERT_DIR``, ``DIRAC_ROOT_PATH``; scripts/dirac-up writes an
env.sh that sets them). Only calls served without OpenSearch are used: submit, bulk states,
job selection by group and summaries (JobDB attributes), output sandboxes, kill. Never
getJobParameters / peekJob / getJobOutputLFNs.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from snakemake_interface_common.exceptions import WorkflowError

from .status import ALIVE_STATES, JobOutcome, adoptable_jobs, parse_states
from .submit import DiracJobSpec, make_dirac_job

__all__ = ["CONNECT_RETRIES", "DiracError", "DiracWMS"]

_init_lock = threading.Lock()
_initialized = False


class DiracError(WorkflowError):
    """A DIRAC call answered S_ERROR (the message names the call, its arguments, the reason)."""


def _serialized(method):
    """Run the method under the client's lock.

    Snakemake submits from its main thread and polls from another; DIRAC's DISET clients are
    not documented as thread-safe, so one call at a time.
    """

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


CONNECT_RETRIES = 3
"""Attempts of a call whose connection failed (a loaded server drops TLS handshakes)."""


def _value(request, call: str, detail: object = ""):
    """Run ``request()`` (a DIRAC call) and return its Value, or raise DiracError.

    A "Can't connect" answer means the request never reached the service, so it is retried
    (at most CONNECT_RETRIES attempts, 1 s and 2 s apart); any other error is raised at once.
    """
    for attempt in range(CONNECT_RETRIES):
        result = request()
        if isinstance(result, dict) and result.get("OK"):
            return result["Value"]
        message = result.get("Message") if isinstance(result, dict) else result
        if "Can't connect" not in str(message) or attempt == CONNECT_RETRIES - 1:
            break
        time.sleep(1 + attempt)
    raise DiracError(f"DIRAC {call}({detail}) failed: {message}")


class DiracWMS:
    """A DIRAC WMS client for the executor: submission, bulk states, selection, logs, kill.

    Parameters
    ----------
    timeout_s : int
        RPC timeout of the job-manager calls (submit, kill), in seconds.
    """

    def __init__(self, *, timeout_s: int = 120) -> None:
        global _initialized
        with _init_lock:
            if not _initialized:
                import DIRAC
                from DIRAC.Core.Utilities.exceptions import DIRACInitError

                try:
                    DIRAC.initialize()
                except DIRACInitError as err:
                    raise DiracError(
                        f"DIRAC client initialisation failed: {err}. Is the proxy valid "
                        "(X509_USER_PROXY) and DIRACSYSCONFIG set (source run/dirac/env.sh)?"
                    ) from err
                # The client's own warnings (e.g. "Need to upload the proxy" on every submit:
                # the executor never uploads one) would flood Snakemake's output.
                DIRAC.gLogger.setLevel("ERROR")
                _initialized = True
        from DIRAC.Interfaces.API.Dirac import Dirac
        from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import (
            JobMonitoringClient,
        )
        from DIRAC.WorkloadManagementSystem.Client.WMSClient import WMSClient

        self._lock = threading.RLock()
        self._dirac = Dirac()
        self._monitoring = JobMonitoringClient(timeout=timeout_s)
        self._wms = WMSClient(timeout=timeout_s)

    @_serialized
    def submit(self, spec: DiracJobSpec) -> str:
        """Submit one job; return its DIRAC id."""
        value = _value(lambda: self._dirac.submitJob(make_dirac_job(spec)), "submitJob", spec.name)
        return str(value)

    @_serialized
    def submit_parametric(
        self, spec: DiracJobSpec, scripts: Sequence[str], names: Sequence[str]
    ) -> list[str]:
        """Submit one parametric job over ``scripts`` and ``names``; return the ids in order."""
        job = make_dirac_job(spec, scripts=scripts, names=names)
        detail = f"{spec.name}, {len(scripts)} jobs"
        value = _value(lambda: self._dirac.submitJob(job), "submitJob", detail)
        ids = [int(v) for v in (value if isinstance(value, list) else [value])]
        # Map ids to jobs by the JobName DIRAC recorded, not by the order of the answer.
        summary = _value(lambda: self._monitoring.getJobsSummary(ids), "getJobsSummary", ids)
        by_name = {str(fields.get("JobName")): str(job_id) for job_id, fields in summary.items()}
        missing = [name for name in names if name not in by_name]
        if missing or len(by_name) != len(names):
            raise DiracError(
                f"parametric submission returned jobs {sorted(by_name)} for names {list(names)}"
            )
        return [by_name[name] for name in names]

    @_serialized
    def states(self, job_ids: Iterable[str]) -> dict[str, JobOutcome]:
        """Return the outcome of each known job, with one bulk call."""
        ids = [int(j) for j in job_ids]
        if not ids:
            return {}
        answer = _value(lambda: self._monitoring.getJobsStates(ids), "getJobsStates", ids)
        return parse_states(answer)

    @_serialized
    def reschedule_counts(self, job_ids: Iterable[str]) -> dict[str, int]:
        """Return how many times DIRAC rescheduled each job (its RescheduleCounter), in one call."""
        ids = [int(j) for j in job_ids]
        if not ids:
            return {}
        summary = _value(lambda: self._monitoring.getJobsSummary(ids), "getJobsSummary", ids)
        return {
            str(job_id): int(fields.get("RescheduleCounter") or 0)
            for job_id, fields in summary.items()
        }

    @_serialized
    def alive_in_group(self, group: str) -> dict[str, str]:
        """Return ``{JobName: job id}`` of the group's jobs that may still finish (not killed)."""
        ids = _value(
            lambda: self._monitoring.getJobs({"JobGroup": group, "Status": list(ALIVE_STATES)}),
            "getJobs",
            group,
        )
        if not ids:
            return {}
        summary = _value(
            lambda: self._monitoring.getJobsSummary([int(i) for i in ids]), "getJobsSummary", group
        )
        return adoptable_jobs(summary)

    @_serialized
    def group_job_ids(self, group: str) -> list[str]:
        """Return the ids of every job of a group, whatever their state."""
        ids = _value(lambda: self._monitoring.getJobs({"JobGroup": group}), "getJobs", group)
        return [str(i) for i in ids or []]

    @_serialized
    def fetch_output(self, job_id: str, directory: Path) -> Path:
        """Download and unpack a job's output sandbox into ``directory/<job id>``."""
        from DIRAC.WorkloadManagementSystem.Client.SandboxStoreClient import SandboxStoreClient

        target = directory / str(job_id)
        target.mkdir(parents=True, exist_ok=True)
        # Not Dirac().getOutputSandbox: on a missing sandbox it falls back to getJobParameters,
        # which needs OpenSearch.
        _value(
            lambda: SandboxStoreClient().downloadSandboxForJob(int(job_id), "Output", str(target)),
            "downloadSandboxForJob",
            job_id,
        )
        return target

    @_serialized
    def kill(self, job_ids: Iterable[str]) -> None:
        """Kill the jobs, in one call."""
        ids = [int(j) for j in job_ids]
        if ids:
            _value(lambda: self._wms.killJob(ids), "killJob", ids)
