"""Snakemake executor plugin for Grid Engine (Son of Grid Engine, Altair/Univa, Open GS).

``snakemake --executor gridengine`` submits each job through DRMAA or the command line
(``--gridengine-backend drmaa|qsub``), maps threads/mem_mb/runtime to ``-pe``/``h_vmem``/``h_rt``,
submits many ready jobs of one rule as one array, reads success only from an exit status of 0,
and records every job id durably so that a restarted driver adopts the jobs a killed one left.
"""

import os
import stat
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase

from dcflow.remote_jobs import comma_safe_job_exec, shell_safe_job_exec
from dcflow.states import JobState

from .cancel import cancel_jobs
from .reattach import (
    DriverMarker,
    Submission,
    SubmissionLedger,
    adoptable_submissions,
    output_key,
    state_dir,
)
from .status import (
    SHARED_QSTAT_MAX_AGE_S,
    GridEngineCommandError,
    SharedQstat,
    describe_failure,
    read_log_tail,
)
from .submit import (
    ARRAY_CHUNK,
    JobRequest,
    SiteDefaults,
    array_dispatcher,
    h_vmem_per_slot_mb,
    job_log_path,
    job_name,
    job_script,
    native_args,
    noop_exec,
    requote_config_args,
    submit_qsub,
)
from .tracker import UNREPORTED_GRACE_S, StatusTracker

__all__ = ["Executor", "ExecutorSettings", "common_settings"]

BACKENDS = ("drmaa", "qsub")


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    """Settings of ``--executor gridengine`` (``--gridengine-<name>`` on the command line)."""

    backend: Optional[str] = field(  # noqa: UP045 (the settings parser needs typing.Optional)
        default="drmaa",
        metadata={
            "help": "How jobs are submitted and watched: 'drmaa' (python-drmaa over libdrmaa; "
            "needs DRMAA_LIBRARY_PATH) or 'qsub' (qsub/qstat/qacct/qdel). Default: drmaa.",
            "required": False,
        },
    )
    queue: Optional[str] = field(  # noqa: UP045 (the settings parser needs typing.Optional)
        default=None,
        metadata={
            "help": "Queue for every job (-q); a rule's sge_queue resource overrides it. "
            "Default: none (Grid Engine chooses).",
            "required": False,
        },
    )
    project: Optional[str] = field(  # noqa: UP045 (the settings parser needs typing.Optional)
        default=None,
        metadata={
            "help": "Project for every job (-P); a rule's sge_project resource overrides "
            "it. Default: none.",
            "required": False,
        },
    )
    pe: Optional[str] = field(  # noqa: UP045 (the settings parser needs typing.Optional)
        default="smp",
        metadata={
            "help": "Parallel environment for jobs with threads > 1 (-pe <pe> <threads>); "
            "a rule's sge_pe resource overrides it. Default: smp.",
            "required": False,
        },
    )
    extra_args: Optional[str] = field(  # noqa: UP045 (the settings parser needs typing.Optional)
        default=None,
        metadata={
            "help": "Extra qsub arguments for every job, e.g. '-l scratch=1G'; a rule's "
            "sge_extra resource adds to them. Default: none.",
            "required": False,
        },
    )
    min_mem_mb: Optional[int] = field(  # noqa: UP045
        default=1000,
        metadata={
            "help": "Least memory a job asks (mem_mb below it is raised to it): h_vmem limits "
            "every process of the job, its own Snakemake process too (~450 MB virtual). "
            "Default: 1000.",
            "required": False,
        },
    )
    array_min_jobs: Optional[int] = field(  # noqa: UP045
        default=2,
        metadata={
            "help": "Submit this many or more ready jobs of one rule with the same "
            "resources as one array job (0: never). Default: 2.",
            "required": False,
        },
    )
    noop_direct: Optional[bool] = field(  # noqa: UP045 (the settings parser needs typing.Optional)
        default=False,
        metadata={
            "help": "Only for campaigns with campaign.payload: noop (scale runs of the "
            "orchestration): each job writes its placeholder outputs from the job script "
            "instead of starting a Snakemake process (2-4 CPU s and ~150 MB each), so "
            "hundreds of slots fit on a small host. Default: off.",
            "required": False,
        },
    )
    noop_seconds: Optional[float] = field(  # noqa: UP045
        default=0.0,
        metadata={
            "help": "With noop-direct: seconds each job holds its slot before writing its "
            "outputs (a stand-in for work; sleeps, no CPU). Default: 0.",
            "required": False,
        },
    )

    unreported_grace_s: Optional[float] = field(  # noqa: UP045
        default=UNREPORTED_GRACE_S,
        metadata={
            "help": "Seconds a dispatched job may go without a usage report from its execution "
            "host before it is deleted and failed as lost (a job dispatched while sge_execd "
            f"was down, which Grid Engine may never run). Default: {UNREPORTED_GRACE_S:g}.",
            "required": False,
        },
    )

    def __post_init__(self):
        if self.unreported_grace_s is not None and self.unreported_grace_s <= 0:
            raise WorkflowError(
                f"--gridengine-unreported-grace-s must be > 0, not {self.unreported_grace_s}"
            )
        if self.noop_seconds is not None and self.noop_seconds < 0:
            raise WorkflowError(f"--gridengine-noop-seconds must be >= 0, not {self.noop_seconds}")
        if self.backend not in BACKENDS:
            raise WorkflowError(
                f"--gridengine-backend must be one of {BACKENDS}, not {self.backend!r}"
            )
        if self.array_min_jobs is not None and self.array_min_jobs < 0:
            raise WorkflowError(
                f"--gridengine-array-min-jobs must be >= 0, not {self.array_min_jobs}"
            )


common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    pass_envvar_declarations_to_cmd=False,  # jobs get the submitting environment (-V)
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=1,
)


class Executor(RemoteExecutor):
    """Run Snakemake jobs on Grid Engine."""

    def __post_init__(self):
        settings = self.workflow.executor_settings or ExecutorSettings()
        self.tag = uuid.uuid4().hex[:8]
        self.name_pattern = f"{job_name(self.tag, '')}*"
        self.workdir = Path(self.workflow.workdir_init).resolve()
        self.logdir = self.workdir / ".snakemake" / "gridengine_logs"
        self.state = state_dir(self.workdir)
        self.ledger = SubmissionLedger(self.state / "submissions.jsonl")
        self.defaults = SiteDefaults(
            pe=settings.pe or "smp",
            min_mem_mb=settings.min_mem_mb or 0,
            queue=settings.queue,
            project=settings.project,
            extra_args=settings.extra_args,
        )
        self.array_min_jobs = settings.array_min_jobs or 0
        self.noop_seconds = settings.noop_seconds or 0.0
        self.noop_direct = bool(settings.noop_direct)
        payload = (self.workflow.config.get("campaign") or {}).get("payload", "full")
        if self.noop_direct and payload != "noop":
            raise WorkflowError(
                "--gridengine-noop-direct skips each job's stage: it is only for campaigns "
                f"with campaign.payload: noop, and this one has payload {payload!r}"
            )
        self.backend = None
        if settings.backend == "drmaa":
            from .drmaa_backend import DrmaaBackend

            self.backend = DrmaaBackend()
        self.state.mkdir(parents=True, exist_ok=True)
        snapshot = SharedQstat(self.state / "qstat.json", max_age_s=SHARED_QSTAT_MAX_AGE_S)
        self.tracker = StatusTracker(
            self.backend,
            self.name_pattern,
            snapshot,
            unreported_grace_s=settings.unreported_grace_s or UNREPORTED_GRACE_S,
        )
        self.open_ids: set[str] = set()  # submitted (or adopted) and not seen to end
        self.submission_stats = [0, 0.0]  # jobs submitted, seconds spent in run_jobs
        self.adoptable = adoptable_submissions(self.ledger)
        lockfiles = getattr(getattr(self.workflow, "persistence", None), "_lockfile", {}) or {}
        locks = [str(self.workdir / lock) for lock in lockfiles.values()]
        marker = DriverMarker.for_this_process(self.tag, locks)
        self.marker_path = marker.write(self.state)

    # ---- submission --------------------------------------------------------------------------

    def run_jobs(self, jobs: list[JobExecutorInterface]):
        """Adopt jobs a killed driver left running; submit the rest, in arrays where possible."""
        started = time.monotonic()
        batches: dict[tuple, list[tuple[JobExecutorInterface, JobRequest, Submission]]] = {}
        for job in jobs:
            self.run_job_pre(job)
            if self._adopt(job):
                continue
            request, submission = self._prepare(job)
            key = (request.name, request.native, job.is_group())
            batches.setdefault(key, []).append((job, request, submission))
        units = []
        for (_, _, is_group), batch in batches.items():
            if is_group or self.array_min_jobs == 0 or len(batch) < self.array_min_jobs:
                units += [([job], request, [sub], None) for job, request, sub in batch]
            else:
                units += [
                    self._array(batch[i : i + ARRAY_CHUNK])
                    for i in range(0, len(batch), ARRAY_CHUNK)
                ]
        self._submit(units)
        self.submission_stats[0] += sum(len(u[0]) for u in units)
        self.submission_stats[1] += time.monotonic() - started

    def run_job(self, job: JobExecutorInterface):
        """Submit one job (Snakemake calls run_jobs; this serves single submissions)."""
        if not self._adopt(job):
            request, submission = self._prepare(job)
            self._submit([([job], request, [submission], None)])

    def _prepare(self, job: JobExecutorInterface) -> tuple[JobRequest, Submission]:
        if job.is_group():
            rule, wildcards = f"group_{job.name}", {"jobid": str(job.jobid)}
        else:
            rule, wildcards = job.name, dict(job.wildcards)
        log = job_log_path(self.logdir, rule, wildcards)
        log.parent.mkdir(parents=True, exist_ok=True)
        script = Path(self.get_jobscript(job))
        if self.noop_direct:
            members = job.jobs if job.is_group() else [job]
            benchmarks = [str(self.workdir / m.benchmark) for m in members if m.benchmark]
            outputs = [str(self.workdir / o) for o in job.output]
            exec_job = noop_exec(outputs, self.noop_seconds, benchmarks)
        else:
            exec_job = requote_config_args(
                shell_safe_job_exec(self, job), self.workflow.config_settings.config_args
            )
            exec_job = comma_safe_job_exec(exec_job, job.get_target_spec(), list(job.output))
        script.write_text(job_script(self.jobscript, job.properties(), exec_job, log, job.attempt))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        native = native_args(job.threads, job.resources, self.defaults)
        runtime = job.resources.get("runtime")
        request = JobRequest(
            name=job_name(self.tag, rule),
            command=("/bin/sh", str(script)),
            workdir=str(self.workdir),
            log=str(log),
            native=native,
        )
        submission = Submission(
            job_id="",
            rule=rule,
            outputs=output_key(job.output),
            log=str(log),
            name_pattern=self.name_pattern,
            backend=self.backend_name,
            attempt=job.attempt,
            h_vmem_mb=h_vmem_per_slot_mb(job.threads, job.resources, self.defaults),
            h_rt_s=int(runtime) * 60 if isinstance(runtime, int) and runtime else None,
            slots=job.threads,
        )
        return request, submission

    def _array(self, batch):
        jobs, requests, submissions = zip(*batch, strict=True)
        dispatcher = Path(self.tmpdir) / f"array-{uuid.uuid4().hex[:12]}.sh"
        dispatcher.write_text(array_dispatcher([Path(r.command[1]) for r in requests]))
        request = replace(requests[0], command=("/bin/sh", str(dispatcher)), log=os.devnull)
        return list(jobs), request, list(submissions), len(jobs)

    def _submit(self, units):
        """Submit (jobs, request, submissions, n_tasks) units; record every id durably.

        All ids are written with one fsync before Snakemake hears of any of them, so the
        successor of a killed driver finds them.
        """
        submitted = []
        for jobs, request, submissions, n_tasks in units:
            try:
                if self.backend is not None:
                    ids = self.backend.submit(request, n_tasks)
                else:
                    ids = submit_qsub(request, n_tasks)
            except WorkflowError as err:
                for job in jobs:
                    self.report_job_error(SubmittedJobInfo(job), msg=f"submission failed: {err}")
                continue
            now = time.time()
            recorded = [
                replace(s, job_id=i, submitted_at=now)
                for s, i in zip(submissions, ids, strict=True)
            ]
            submitted += zip(jobs, recorded, strict=True)
        if not submitted:
            return
        self.ledger.record_submitted([sub for _, sub in submitted])
        self.open_ids.update(sub.job_id for _, sub in submitted)
        for job, sub in submitted:
            self.report_job_submission(
                SubmittedJobInfo(job, external_jobid=sub.job_id, aux={"sub": sub})
            )

    def _adopt(self, job: JobExecutorInterface) -> bool:
        submission = self.adoptable.pop(output_key(job.output), None)
        if submission is None:
            return False
        self.logger.info(
            f"Adopting Grid Engine job {submission.job_id} ({submission.rule}), submitted by a "
            "previous driver and not seen to fail, instead of submitting it again."
        )
        self.open_ids.add(submission.job_id)
        self.report_job_submission(
            SubmittedJobInfo(job, external_jobid=submission.job_id, aux={"sub": submission})
        )
        return True

    @property
    def backend_name(self) -> str:
        """'drmaa' or 'qsub'."""
        return "qsub" if self.backend is None else "drmaa"

    # ---- status ------------------------------------------------------------------------------

    async def check_active_jobs(
        self, active_jobs: list[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        """One bulk query per cycle; report finished jobs, yield the others again."""
        async with self.status_rate_limiter:
            outcomes = self.tracker.poll({i.external_jobid: i.aux["sub"] for i in active_jobs})
        for info in active_jobs:
            outcome = outcomes.get(info.external_jobid)
            if outcome is None or not outcome.finished:
                yield info
                continue
            submission: Submission = info.aux["sub"]
            self.open_ids.discard(submission.job_id)
            self.ledger.record_finished(submission.job_id, outcome.state, outcome.exit_status)
            if outcome.state is JobState.SUCCEEDED:
                self.report_job_success(info)
                continue
            if outcome.in_error_state:
                cancel_jobs([submission.job_id])  # an Eqw job would sit in the queue forever
            msg = describe_failure(
                outcome,
                log=submission.log,
                h_vmem_mb=submission.h_vmem_mb,
                h_rt_s=submission.h_rt_s,
                slots=submission.slots,
                log_tail=read_log_tail(submission.log),
            )
            self.report_job_error(info, msg=msg, aux_logs=[submission.log])

    # ---- cancel and shutdown -----------------------------------------------------------------

    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]):
        """Delete every active job with one qdel, and those submitted but not yet reported."""
        ids = {info.external_jobid for info in active_jobs if info.external_jobid}
        ids |= self.open_ids
        if ids:
            try:
                cancel_jobs(ids)
            except GridEngineCommandError as err:
                self.logger.error(f"cancelling Grid Engine jobs failed: {err}")

    def shutdown(self):
        """Stop polling, close the DRMAA session and remove the driver marker."""
        super().shutdown()
        n_jobs, seconds = self.submission_stats
        if n_jobs:
            self.logger.info(
                f"Grid Engine ({self.backend_name}): {n_jobs} jobs submitted in {seconds:.2f} s "
                f"({n_jobs / max(seconds, 1e-6):.0f} jobs/s, preparing scripts included)"
            )
        if self.backend is not None:
            self.backend.close()
        self.marker_path.unlink(missing_ok=True)
