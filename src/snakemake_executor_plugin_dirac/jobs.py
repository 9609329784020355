"""Glue between the Executor and DIRAC: prepare a Snakemake job, submit batches, fetch logs.

Kept out of ``__init__.py`` so that ``run_jobs`` and ``check_active_jobs`` stay one screen each.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface

from dcflow.remote_jobs import comma_safe_job_exec, shell_safe_job_exec

from .submit import DiracJobSpec, cpu_time_s, job_name, job_script, parametric_chunks
from .wms import DiracError

__all__ = [
    "LOG_TAIL_BYTES",
    "PreparedJob",
    "prepare",
    "split_list",
    "submit_batches",
    "tail_of_logs",
]

LOG_TAIL_BYTES = 3000
"""How much of a failed job's log goes into the error message."""


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """A Snakemake job with its written job script and DIRAC description."""

    job: JobExecutorInterface
    spec: DiracJobSpec
    script: str
    rule: str


def split_list(value: object) -> tuple[str, ...]:
    """Split a comma-separated setting or resource into a tuple of stripped, non-empty items."""
    if value is None:
        return ()
    return tuple(item.strip() for item in str(value).split(",") if item.strip())


def prepare(executor, job: JobExecutorInterface) -> PreparedJob:
    """Write the job script and build the DIRAC description of one Snakemake job.

    Parameters
    ----------
    executor : Executor
        The DIRAC executor (settings, group, working directory, Snakemake helpers).
    job : JobExecutorInterface
        A single or group job.

    Returns
    -------
    PreparedJob
        The job, its DIRAC spec and the script path.
    """
    if job.is_group():
        rule, wildcards = f"group_{job.name}", {}
    else:
        rule, wildcards = job.name, dict(job.wildcards)
    script = Path(executor.get_jobscript(job))
    script.write_text(
        job_script(
            job.properties(),
            comma_safe_job_exec(
                shell_safe_job_exec(executor, job), job.get_target_spec(), list(job.output)
            ),
            str(executor.workdir),
            os.environ.get("PATH", "/usr/bin:/bin"),
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IRUSR)
    settings = executor.settings
    resources = job.resources
    mem_mb = resources.get("mem_mb")
    tags = split_list(settings.tags) + split_list(resources.get("dirac_tags"))
    spec = DiracJobSpec(
        name=job_name(rule, wildcards, job.output),
        group=executor.group,
        arguments=(str(script),),
        cpu_time_s=cpu_time_s(resources.get("runtime"), job.threads),
        processors=max(1, int(job.threads)),
        max_ram_mb=int(mem_mb) if isinstance(mem_mb, (int, float)) and mem_mb > 0 else None,
        sites=split_list(resources.get("dirac_sites") or settings.sites),
        banned_sites=split_list(resources.get("dirac_banned_sites") or settings.banned_sites),
        tags=tuple(dict.fromkeys(tags)),
    )
    return PreparedJob(job=job, spec=spec, script=str(script), rule=rule)


def _batch_key(item: PreparedJob) -> tuple:
    spec = item.spec
    return (item.rule, item.job.is_group(), replace(spec, name="", arguments=()))


def submit_batches(executor, prepared: Sequence[PreparedJob]) -> None:
    """Submit prepared jobs: parametric batches for same-rule, same-requirement jobs.

    Jobs are reported to Snakemake only after DIRAC returned their ids (DIRAC records them
    server-side in the run's JobGroup, where a restarted driver finds them again).
    """
    batches: dict[tuple, list[PreparedJob]] = {}
    for item in prepared:
        batches.setdefault(_batch_key(item), []).append(item)
    minimum = executor.settings.parametric_min_jobs or 0
    chunk = executor.settings.max_parametric_jobs or 100
    for (_, is_group, _), batch in batches.items():
        if is_group or minimum == 0 or len(batch) < minimum:
            for item in batch:
                _submit(executor, [item])
            continue
        for indices in parametric_chunks(len(batch), chunk):
            _submit(executor, [batch[i] for i in indices])


def _submit(executor, items: list[PreparedJob]) -> None:
    try:
        if len(items) == 1:
            ids = [executor.wms.submit(items[0].spec)]
        else:
            ids = executor.wms.submit_parametric(
                items[0].spec, [i.script for i in items], [i.spec.name for i in items]
            )
    except DiracError as err:
        for item in items:
            executor.report_job_error(SubmittedJobInfo(item.job), msg=f"submission failed: {err}")
        return
    for item, job_id in zip(items, ids, strict=True):
        executor.report_job_submission(SubmittedJobInfo(item.job, external_jobid=job_id))


def tail_of_logs(executor, job_id: str) -> tuple[Path | None, str]:
    """Fetch a finished job's output sandbox; return its directory and the tail of its logs.

    Returns ``(None, "")`` when no sandbox came back (a job killed before it ran has none).
    """
    try:
        directory = executor.wms.fetch_output(job_id, executor.logdir)
    except DiracError as err:
        executor.logger.warning(f"no output sandbox for DIRAC job {job_id}: {err}")
        return None, ""
    parts = []
    for name in ("job.log", "std.out"):
        path = directory / name
        if path.is_file():
            text = path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
            parts.append(f"--- {name} ---\n{text}")
    return directory, "\n".join(parts)
