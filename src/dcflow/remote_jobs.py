"""How a batch job names the Snakemake job it runs, safely for every wildcard value.

Snakemake tells a remote job what to run with ``--target-jobs rule:key=value,...``; its parser
splits that list at every comma, so a wildcard value holding one (a patch "3,4") cannot be
read back ("Invalid target wildcards definition"). Such jobs are named by their output files
instead, the older form Snakemake still accepts (``--allowed-rules`` already limits the DAG
to the job's rules).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from snakemake_interface_executor_plugins.utils import (
    encode_target_jobs_cli_args,
    format_cli_arg,
)

__all__ = ["comma_safe_job_exec"]


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
