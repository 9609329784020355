"""How a batch job names the Snakemake job it runs, safely for every wildcard value and path.

Snakemake tells a remote job what to run with ``--target-jobs rule:key=value,...``; its parser
splits that list at every comma, so a wildcard value holding one (a patch "3,4") cannot be
read back ("Invalid target wildcards definition"). Such jobs are named by their output files
instead, the older form Snakemake still accepts (``--allowed-rules`` already limits the DAG
to the job's rules).

Snakemake also quotes the paths in that command (``--wait-for-files``) with Python's
``repr``, which a POSIX shell misreads; `shell_safe_job_exec` re-quotes them.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from snakemake_interface_executor_plugins.utils import (
    encode_target_jobs_cli_args,
    format_cli_arg,
)

__all__ = ["comma_safe_job_exec", "requote_file_args", "shell_safe_job_exec"]


def comma_safe_job_exec(exec_job: str, target_specs: Sequence, outputs: Sequence[str]) -> str:
    """Replace ``--target-jobs`` by the job's output files when a wildcard value has a comma.

    Parameters
    ----------
    exec_job : str
        Snakemake's command for the job (``format_job_exec``).
    target_specs : sequence of TargetSpec
        ``job.get_target_spec()``.
    outputs : sequence of str
        The job's output files (``job.output``), relative to the job's working directory.

    Raises
    ------
    ValueError
        If a value has a comma and the command has no ``--target-jobs`` argument to replace,
        or the job has no output to name it by.
    """
    if not any("," in str(v) for spec in target_specs for v in spec.wildcards_dict.values()):
        return exec_job
    argument = format_cli_arg("--target-jobs", encode_target_jobs_cli_args(list(target_specs)))
    if argument not in exec_job or not outputs:
        raise ValueError(
            f"cannot name the job {target_specs} by its outputs {list(outputs)}: "
            f"no {argument!r} in its command"
        )
    return exec_job.replace(argument, " ".join(shlex.quote(str(o)) for o in outputs), 1)


def requote_file_args(exec_job: str, flag: str, files: Sequence[str] | str) -> str:
    r"""Make a file argument of Snakemake's job command (``--wait-for-files``...) shell-safe.

    Snakemake quotes each path with Python's ``repr``: a path holding a single quote ends up
    in ``"..."``, where the shell expands ``$(...)``, backquotes and ``$`` and misreads
    ``\"``, so the job script fails ("Unterminated quoted string") or runs what the path
    spells. Each path is re-quoted with ``shlex.quote``; a command without the argument is
    returned unchanged.
    """
    broken = format_cli_arg(flag, files)
    if not broken or broken not in exec_job:
        return exec_job
    items = [files] if isinstance(files, str) else [str(f) for f in files]
    return exec_job.replace(broken, f"{flag} {shlex.join(items)}")


def shell_safe_job_exec(executor, job) -> str:
    """Snakemake's command for a remote job with the paths it names re-quoted for the shell.

    Parameters
    ----------
    executor : RemoteExecutor
        The executor (its ``format_job_exec``, ``tmpdir`` and ``get_jobscript``).
    job : JobExecutorInterface
        The job.
    """
    exec_job = executor.format_job_exec(job)
    waits = [executor.tmpdir, *job.get_wait_for_files()]
    exec_job = requote_file_args(exec_job, "--wait-for-files", waits)
    listed = executor.get_jobscript(job) + ".waitforfilesfile.txt"
    return requote_file_args(exec_job, "--wait-for-files-file", listed)
