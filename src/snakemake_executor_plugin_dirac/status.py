"""DIRAC job states: the one table mapping them to dcflow's JobState, and their parsing.

A polling cycle makes one bulk ``getJobsStates`` call for all active jobs (see
:class:`~snakemake_executor_plugin_dirac.wms.DiracWMS`); :func:`parse_states` turns its answer
(recorded samples in tests/dirac/) into :class:`JobOutcome` values. A job the answer does not
mention yet is yielded again, not failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dcflow.states import JobState

__all__ = [
    "ALIVE_STATES",
    "KILL_MINOR_STATUS",
    "REVIVABLE_STATES",
    "STATE_MAP",
    "JobOutcome",
    "adoptable_jobs",
    "describe_failure",
    "done_on_disk",
    "parse_states",
]

STATE_MAP: dict[str, JobState] = {
    "Submitting": JobState.SUBMITTED,
    "Received": JobState.SUBMITTED,
    "Checking": JobState.SUBMITTED,
    "Staging": JobState.SUBMITTED,
    "Waiting": JobState.SUBMITTED,
    "Matched": JobState.SUBMITTED,
    "Rescheduled": JobState.SUBMITTED,
    "Running": JobState.RUNNING,
    "Completing": JobState.RUNNING,
    "Done": JobState.SUCCEEDED,
    "Completed": JobState.RUNNING,
    "Failed": JobState.FAILED,
    "Stalled": JobState.FAILED,
    "Killed": JobState.CANCELLED,
    "Deleted": JobState.CANCELLED,
}
"""DIRAC major status -> JobState. FAILED and CANCELLED are failures for Snakemake. Stalled
(the pilot stopped sending heartbeats) is final for the executor: a retry is a new job."""

ALIVE_STATES = tuple(
    s for s, js in STATE_MAP.items() if js in (JobState.SUBMITTED, JobState.RUNNING)
)
"""DIRAC states of a job that may still produce its outputs (adopted after a restart)."""

REVIVABLE_STATES = ("Stalled",)
"""Failure states DIRAC may leave again: a Stalled job (no heartbeat for a while: its pilot
died, or a service was unreachable) turns Running on its next heartbeat. The executor kills
such a job when it gives up on it, so a retry never runs beside it."""


def done_on_disk(workdir: str | os.PathLike, outputs: Iterable[str]) -> bool:
    """True when a job's outputs (relative to ``workdir`` or absolute) are all there and whole.

    DIRAC reschedules a job whose payload succeeded when its output sandbox upload fails (the
    services restarting, say): the job queues to run again, over outputs that a site's
    DIRAC (its MaxRescheduling is not the user's to set) would rewrite after the run took
    them as done. Outputs are written atomically; `dcflow.io.outputs_whole` also checks FITS
    checksums.
    """
    paths = [os.path.join(workdir, o) for o in outputs]
    if not paths or not all(os.path.exists(p) for p in paths):
        return False
    from dcflow.io import outputs_whole  # astropy: only once every output is there

    return outputs_whole(paths)


KILL_MINOR_STATUS = "Marked for termination"
"""Minor status of a killed job. DIRAC 9.1 shows a job killed while running as Killed, then
Running again (its JobWrapper still reports) until the wrapper ends it as Failed 'Received Kill
signal' about 15 s later, with this minor status throughout (measured on the test DIRAC)."""


def adoptable_jobs(summary: Mapping[object, Mapping[str, object]]) -> dict[str, str]:
    """Return ``{JobName: job id}`` of the jobs a restarted driver may adopt.

    Parameters
    ----------
    summary : mapping
        ``getJobsSummary`` value for the alive jobs of a JobGroup: ``{id: {"JobName": ...,
        "Status": ..., "MinorStatus": ...}}``.

    Returns
    -------
    dict
        Jobs whose status is alive and that were not killed (see KILL_MINOR_STATUS).
    """
    adoptable = {}
    for job_id, fields in summary.items():
        if fields.get("Status") in ALIVE_STATES and fields.get("MinorStatus") != KILL_MINOR_STATUS:
            adoptable[str(fields.get("JobName", ""))] = str(job_id)
    return adoptable


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What DIRAC says about one job.

    Attributes
    ----------
    job_id : str
        DIRAC job id.
    state : JobState
        Mapped state.
    status, minor_status, application_status : str
        DIRAC's major, minor and application status, verbatim.
    """

    job_id: str
    state: JobState
    status: str
    minor_status: str = ""
    application_status: str = ""

    @property
    def finished(self) -> bool:
        """True once DIRAC will not change the job's fate any more."""
        return self.state.is_terminal()


def parse_states(answer: Mapping[object, Mapping[str, object]]) -> dict[str, JobOutcome]:
    """Parse the value of ``JobMonitoringClient().getJobsStates(ids)``.

    Parameters
    ----------
    answer : mapping
        ``{job id (int or str): {"Status": ..., "MinorStatus": ..., "ApplicationStatus": ...}}``.

    Returns
    -------
    dict
        ``{job id as str: JobOutcome}``. An unknown DIRAC status maps to SUBMITTED (yielded
        again) rather than to a failure.
    """
    outcomes = {}
    for job_id, fields in answer.items():
        status = str(fields.get("Status", ""))
        outcomes[str(job_id)] = JobOutcome(
            job_id=str(job_id),
            state=STATE_MAP.get(status, JobState.SUBMITTED),
            status=status,
            minor_status=str(fields.get("MinorStatus", "") or ""),
            application_status=str(fields.get("ApplicationStatus", "") or ""),
        )
    return outcomes


def describe_failure(outcome: JobOutcome, log_text: str, log_dir: str | None) -> str:
    """Return the message Snakemake prints for a failed DIRAC job.

    Parameters
    ----------
    outcome : JobOutcome
        The failed job's DIRAC status.
    log_text : str
        Tail of the job's log from its output sandbox ("" if none came back).
    log_dir : str or None
        Where the output sandbox was unpacked.

    Returns
    -------
    str
        One paragraph: DIRAC status, minor and application status, where the logs are, and
        the log tail.
    """
    lines = [
        f"DIRAC job {outcome.job_id} {outcome.status}: minor status {outcome.minor_status!r}, "
        f"application status {outcome.application_status!r}."
    ]
    if log_dir:
        lines.append(f"Output sandbox: {log_dir}")
    if log_text:
        lines.append("Job log (tail):\n" + log_text)
    else:
        lines.append("No job log came back from the output sandbox.")
    return "\n".join(lines)
