# ruff: noqa: UP045 (settings need typing.Optional; see ExecutorSettings)
"""Snakemake executor plugin for DIRAC (``snakemake --executor dirac``).

Each Snakemake job (or group job) becomes a DIRAC job running its job script with ``/bin/sh``:
JobName from the rule, wildcards and an output digest, JobGroup from the working directory,
CPU time from ``runtime``, processors from threads, MaxRAM from ``mem_mb``, sites / banned
sites / tags from settings or the ``dirac_sites`` / ``dirac_banned_sites`` / ``dirac_tags``
resources. Several ready jobs of one rule go in one parametric submission, chunked to
MaxParametricJobs. One bulk state query per polling cycle; Failed, Stalled, Killed and Deleted
are failures, reported with DIRAC's minor and application status and the job's log from the
output sandbox. A restarted driver adopts the jobs of its JobGroup still alive for the same
outputs. Shared-filesystem mode: the job script runs in the workflow's directory on the
workers (here the pilots run on the same machine).

The DIRAC client (``scripts/install-dirac-client``) and its environment (``source
run/dirac/env.sh`` from ``scripts/dirac-up``) must be present.
"""

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase

from dcflow.states import JobState

from .cancel import cancel_jobs
from .jobs import prepare, submit_batches, tail_of_logs
from .status import REVIVABLE_STATES, JobOutcome, describe_failure, done_on_disk
from .submit import job_group
from .wms import DiracError, DiracWMS

__all__ = ["Executor", "ExecutorSettings", "common_settings"]


def _help(text: str) -> dict:
    return {"help": text, "required": False}


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    """Settings of ``--executor dirac`` (``--dirac-<name>`` on the command line)."""

    # typing.Optional[...], not `X | None` nor PEP 563 strings: snakemake-interface-common
    # unwraps only typing.Union origins into argparse types (a string or a types.UnionType
    # is not callable, and `snakemake --help` then fails for every plugin).
    sites: Optional[str] = field(
        default=None,
        metadata=_help(
            "Comma-separated DIRAC sites every job may run at (JDL Site); a rule's dirac_sites "
            "resource overrides it. Default: none (any site)."
        ),
    )
    banned_sites: Optional[str] = field(
        default=None,
        metadata=_help(
            "Comma-separated DIRAC sites no job may run at (BannedSites); a rule's "
            "dirac_banned_sites resource overrides it. Default: none."
        ),
    )
    tags: Optional[str] = field(
        default=None,
        metadata=_help(
            "Comma-separated tags every job requires (Tags); a rule's dirac_tags resource "
            "adds to them. Default: none."
        ),
    )
    job_group_prefix: Optional[str] = field(
        default="smk",
        metadata=_help(
            "Prefix of the JobGroup '<prefix>-<8 hex of the working directory>' that ties a "
            "run's jobs together (a restarted driver adopts them). Default: smk."
        ),
    )
    parametric_min_jobs: Optional[int] = field(
        default=2,
        metadata=_help(
            "Submit this many or more ready jobs of one rule with the same requirements as one "
            "parametric (bulk) DIRAC job; 0 never does. Default: 2."
        ),
    )
    max_parametric_jobs: Optional[int] = field(
        default=100,
        metadata=_help(
            "Largest parametric submission (the JobManager's MaxParametricJobs, 100 by "
            "default); bigger batches are chunked. Default: 100."
        ),
    )

    def __post_init__(self):
        for name in ("parametric_min_jobs", "max_parametric_jobs"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "parametric_min_jobs" else 1):
                flag = "--dirac-" + name.replace("_", "-")
                raise WorkflowError(
                    f"{flag} must be >= {int(name != 'parametric_min_jobs')}, not {value}"
                )
        job_group(".", self.job_group_prefix)  # raises WorkflowError on a bad prefix


common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    pass_envvar_declarations_to_cmd=True,
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=2,
)


class Executor(RemoteExecutor):
    """Run Snakemake jobs as DIRAC jobs."""

    def __post_init__(self):
        self.settings = self.workflow.executor_settings or ExecutorSettings()
        self.workdir = Path(self.workflow.workdir_init).resolve()
        self.group = job_group(self.workdir, self.settings.job_group_prefix)
        self.logdir = self.workdir / ".snakemake" / "dirac_logs"
        self.wms = DiracWMS()
        # A job an earlier driver saw fail or cancelled is never adopted, even while DIRAC
        # still shows it alive (a killed job reads Running again until its wrapper stops).
        self.ended_dir = self.workdir / ".snakemake" / "dirac_ended"
        self.adoptable = {
            name: job_id
            for name, job_id in self.wms.alive_in_group(self.group).items()
            if not (self.ended_dir / str(job_id)).exists()
        }

    def mark_ended(self, job_ids) -> None:
        """Record durably that these jobs are finished with, so no later driver adopts them."""
        self.ended_dir.mkdir(parents=True, exist_ok=True)
        for job_id in job_ids:
            (self.ended_dir / str(job_id)).touch()

    def run_jobs(self, jobs: list[JobExecutorInterface]):
        """Adopt jobs a previous driver left alive; submit the rest, in bulk where possible."""
        prepared = []
        for job in jobs:
            self.run_job_pre(job)
            item = prepare(self, job)
            job_id = self.adoptable.pop(item.spec.name, None)
            if job_id is not None:
                self.logger.info(f"Adopting DIRAC job {job_id} ({item.spec.name}), still alive.")
                self.report_job_submission(SubmittedJobInfo(job, external_jobid=job_id))
            else:
                prepared.append(item)
        submit_batches(self, prepared)

    def run_job(self, job: JobExecutorInterface):
        """Submit one job (Snakemake calls run_jobs; this serves single submissions)."""
        self.run_jobs([job])

    async def check_active_jobs(
        self, active_jobs: list[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        """One bulk state query per cycle; report finished jobs, yield the others again."""
        if not active_jobs or not hasattr(self, "wms"):
            # The interface starts polling before __post_init__ has finished (the DIRAC
            # client takes seconds to initialise); an exception here would end the polling
            # thread for good and hang the run.
            for info in active_jobs:
                yield info
            return
        async with self.status_rate_limiter:
            try:
                outcomes = self.wms.states(info.external_jobid for info in active_jobs)
            except DiracError as err:
                self.logger.warning(f"DIRAC state query failed, retrying next cycle: {err}")
                outcomes = {}
        done = self.rescheduled_done_on_disk(active_jobs, outcomes)
        for info in active_jobs:
            outcome = outcomes.get(info.external_jobid)
            if info.external_jobid in done:
                self.settle_done_on_disk(info, outcome)
            elif outcome is None or not outcome.finished:
                yield info
            elif outcome.state is JobState.SUCCEEDED:
                self.report_job_success(info)
            else:
                log_dir, log_text = tail_of_logs(self, info.external_jobid)
                msg = describe_failure(outcome, log_text, log_dir and str(log_dir))
                logs = [str(p) for p in sorted(log_dir.iterdir()) if p.is_file()] if log_dir else []
                self.mark_ended([info.external_jobid])
                if outcome.status in REVIVABLE_STATES:
                    self.kill_quietly(info.external_jobid, "given up as lost")
                self.report_job_error(info, msg=msg, aux_logs=logs)

    def rescheduled_done_on_disk(
        self, active_jobs: list[SubmittedJobInfo], outcomes: dict[str, JobOutcome]
    ) -> set[str]:
        """The queued jobs DIRAC rescheduled whose outputs are whole on disk: done.

        DIRAC reschedules a job whose output sandbox upload failed after a good payload (its
        services restarting, say): the job queues to run again. Its payload ended, and
        Snakemake removed its outputs before submitting it, so whole outputs (`done_on_disk`)
        are its own. Only queued jobs with every output on disk are asked about, in one call.
        A job killed or lost while its payload ran is not taken as done, even with its outputs
        whole: that payload may still be running, and may yet remove them.
        """
        queued = [
            info.external_jobid
            for info in active_jobs
            if (outcome := outcomes.get(info.external_jobid)) is not None
            and outcome.state is JobState.SUBMITTED
            and done_on_disk(self.workdir, info.job.output)
        ]
        if not queued:
            return set()
        try:
            counts = self.wms.reschedule_counts(queued)
        except DiracError as err:
            self.logger.warning(f"DIRAC reschedule counts not known, asking next cycle: {err}")
            return set()
        return {job_id for job_id, count in counts.items() if count > 0}

    def settle_done_on_disk(self, info: SubmittedJobInfo, outcome: JobOutcome) -> None:
        """Report a rescheduled job done from its whole outputs; kill it (see below).

        Killed, DIRAC does not run it again over finished outputs (`rescheduled_done_on_disk`).
        """
        job_id = info.external_jobid
        self.logger.info(
            f"DIRAC job {job_id} was rescheduled and is {outcome.status}, but its outputs are "
            "whole on disk: done; killed so that DIRAC does not run it again."
        )
        self.mark_ended([job_id])
        self.kill_quietly(job_id, "done on disk")
        self.report_job_success(info)

    def kill_quietly(self, job_id: str, why: str) -> None:
        """Kill a job the executor is finished with that DIRAC could still run.

        A Stalled job turns Running again on a late heartbeat, a rescheduled one runs again
        when a pilot matches it: killed, the run's own retry or result is the only one.
        """
        try:
            cancel_jobs(self.wms, [job_id])
        except DiracError as err:
            self.logger.warning(f"killing DIRAC job {job_id} ({why}): {err}")

    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]):
        """Kill every active job with one DIRAC call."""
        self.mark_ended(info.external_jobid for info in active_jobs)
        try:
            cancel_jobs(self.wms, [info.external_jobid for info in active_jobs])
        except DiracError as err:
            self.logger.error(f"cancelling DIRAC jobs failed: {err}")

    def shutdown(self):
        """Stop polling."""
        super().shutdown()
