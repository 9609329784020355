"""Turn a Snakemake job into a DIRAC job description, and submit it.

The pure half (names, groups, resource mapping, argument checks, the job script) is plain
Python and tested without DIRAC; :func:`make_dirac_job` alone imports the DIRAC client.

Quoting: DIRAC's Script module splits the Arguments string with ``shlex.split`` and runs it
without a shell, but the string also travels inside the job's JDL, whose parser breaks on ``;``
(the optimizer then fails the job) and on double quotes. Every argument is therefore checked
against a conservative character set and joined with :func:`shlex.join`; anything else is a
:class:`WorkflowError` naming the value. The job script path is the only argument.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from snakemake_interface_common.exceptions import WorkflowError

__all__ = [
    "DEFAULT_CPU_TIME_S",
    "MAX_GROUP_CHARS",
    "MAX_NAME_CHARS",
    "DiracJobSpec",
    "arguments_string",
    "cpu_time_s",
    "job_group",
    "job_name",
    "job_script",
    "make_dirac_job",
    "output_digest",
    "parametric_chunks",
]

MAX_NAME_CHARS = 128
"""JobDB.Jobs.JobName is VARCHAR(128)."""

MAX_GROUP_CHARS = 32
"""JobDB.Jobs.JobGroup is VARCHAR(32)."""

DEFAULT_CPU_TIME_S = 3600
"""CPU time asked for a job whose rule declares no ``runtime`` (DIRAC's own default: 600 s)."""

_SAFE_ARGUMENT = re.compile(r"^[A-Za-z0-9_./=:,+@-]+$")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.=+-]")


@dataclass(frozen=True, slots=True)
class DiracJobSpec:
    """Everything DIRAC needs to know about one job (or one parametric batch).

    Attributes
    ----------
    name : str
        JobName (rule, wildcards and an output digest; at most 128 characters).
    group : str
        JobGroup: the campaign run, so a restarted driver finds its jobs again.
    arguments : tuple of str
        Arguments of ``/bin/sh`` (the job script path), each checked by :func:`arguments_string`.
    cpu_time_s : int
        CPU time requested, in seconds (from the ``runtime`` resource, minutes).
    processors : int
        Number of processors (Snakemake threads).
    max_ram_mb : int or None
        Memory limit in MB (``mem_mb``), or None.
    sites, banned_sites, tags : tuple of str
        Destination sites, banned sites and required tags.
    output_sandbox : tuple of str
        Files to bring back in the output sandbox.
    """

    name: str
    group: str
    arguments: tuple[str, ...]
    cpu_time_s: int
    processors: int
    max_ram_mb: int | None
    sites: tuple[str, ...] = ()
    banned_sites: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    output_sandbox: tuple[str, ...] = ("std.out",)


def output_digest(outputs: Iterable[str]) -> str:
    """Return 10 hex digits identifying a set of output paths (order-independent).

    Parameters
    ----------
    outputs : iterable of str
        The job's output files.

    Returns
    -------
    str
        The digest, used in the JobName to recognise a job's outputs after a driver restart.
    """
    text = "\n".join(sorted(str(o) for o in outputs))
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def job_name(rule: str, wildcards: Mapping[str, object], outputs: Iterable[str]) -> str:
    """Build the DIRAC JobName ``<rule>.<k>=<v>.<k2>=<v2>~<digest>`` (at most 128 characters).

    Characters outside ``[A-Za-z0-9_.=+-]`` become ``_`` (a comma would split the name in a
    parametric JDL's list of names); the wildcards part is cut if too long; the output digest
    (after ``~``) always ends the name, so it stays unique.

    Parameters
    ----------
    rule : str
        Rule name (or ``group_<name>`` for a group job).
    wildcards : mapping
        Wildcard values of the job.
    outputs : iterable of str
        The job's output files.

    Returns
    -------
    str
        The JobName.
    """
    label = ".".join(f"{key}={value}" for key, value in wildcards.items())
    label = _NAME_CHARS.sub("_", f"{rule}.{label}" if label else rule)
    suffix = f"~{output_digest(outputs)}"
    return label[: MAX_NAME_CHARS - len(suffix)] + suffix


def job_group(workdir: str | Path, prefix: str | None = None) -> str:
    """Return the JobGroup of a campaign run: ``<prefix>-<8 hex of the working directory>``.

    The same working directory gives the same group, so a restarted driver finds the jobs of
    the previous one with ``selectJobs(jobGroup=...)``.

    Parameters
    ----------
    workdir : str or Path
        The workflow's working directory.
    prefix : str, optional
        Group prefix (default ``smk``); letters, digits, ``_`` and ``-``.

    Returns
    -------
    str
        The group, at most 32 characters.

    Raises
    ------
    WorkflowError
        If the prefix has other characters or is too long.
    """
    prefix = prefix or "smk"
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,23}", prefix):
        raise WorkflowError(
            f"--dirac-job-group-prefix must be 1-23 letters, digits, '_' or '-', not {prefix!r}"
        )
    digest = hashlib.sha1(str(Path(workdir).resolve()).encode()).hexdigest()[:8]
    return f"{prefix}-{digest}"


def arguments_string(arguments: Sequence[str]) -> str:
    """Join arguments for DIRAC's Arguments field, refusing what the JDL cannot carry.

    Parameters
    ----------
    arguments : sequence of str
        The arguments, one item each.

    Returns
    -------
    str
        The ``shlex.join`` of the arguments.

    Raises
    ------
    WorkflowError
        If an argument has a character outside ``[A-Za-z0-9_./=:,+@-]`` (``;`` and quotes break
        DIRAC's JDL parser; ``%`` would be read as a parametric placeholder).
    """
    for argument in arguments:
        if not _SAFE_ARGUMENT.match(argument):
            raise WorkflowError(
                f"DIRAC job argument {argument!r} has a character outside [A-Za-z0-9_./=:,+@-]: "
                "';' and quotes break DIRAC's JDL; move the working directory to a plain path"
            )
    return shlex.join(arguments)


def cpu_time_s(runtime_min: object, processors: int) -> int:
    """CPU time to ask DIRAC for: ``runtime`` (minutes of wall time) x processors, in seconds.

    Parameters
    ----------
    runtime_min : object
        The job's ``runtime`` resource (minutes), or None / a non-number for the default.
    processors : int
        Number of processors of the job.

    Returns
    -------
    int
        Seconds of CPU time, at least 60.
    """
    if isinstance(runtime_min, (int, float)) and runtime_min > 0:
        return max(60, int(runtime_min * 60 * max(1, processors)))
    return DEFAULT_CPU_TIME_S * max(1, processors)


def parametric_chunks(count: int, max_parametric: int) -> list[range]:
    """Split ``count`` jobs into consecutive chunks of at most ``max_parametric``.

    Parameters
    ----------
    count : int
        Number of jobs.
    max_parametric : int
        The JobManager's MaxParametricJobs (at least 1).

    Returns
    -------
    list of range
        Index ranges covering ``0..count-1``.
    """
    size = max(1, max_parametric)
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def job_script(properties: str, exec_job: str, workdir: str, path_env: str) -> str:
    """Return the shell script a DIRAC job runs (shared-filesystem mode).

    The JobWrapper starts it in the pilot's scratch directory with DIRAC's environment; the
    script returns to the workflow's working directory on the shared filesystem and restores
    the submitting PATH (the workers see the same software), then runs Snakemake's command.

    Parameters
    ----------
    properties : str
        Snakemake's job properties (JSON), kept as a comment as in Snakemake's own job scripts.
    exec_job : str
        Snakemake's command for the job (``format_job_exec``).
    workdir : str
        The workflow's working directory.
    path_env : str
        The PATH of the submitting process.

    Returns
    -------
    str
        The script text.
    """
    return (
        "#!/bin/sh\n"
        f"# properties = {properties}\n"
        "exec 2>&1\n"
        f"cd {shlex.quote(workdir)} || exit 97\n"
        f"PATH={shlex.quote(path_env)}\nexport PATH\n"
        "unset PYTHONPATH DIRAC DIRAC_ROOT_PATH DIRACSYSCONFIG\n"
        f"{exec_job}\n"
    )


def make_dirac_job(
    spec: DiracJobSpec,
    scripts: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
):
    """Build a DIRAC ``Job`` from a spec (imports the DIRAC client).

    Parameters
    ----------
    spec : DiracJobSpec
        The job. For a parametric batch, ``spec.arguments`` is ignored.
    scripts, names : sequence of str, optional
        For a parametric (bulk) submission: one job script path and one JobName per job;
        DIRAC substitutes them for ``%(script)s`` and ``%(name)s`` in each job's JDL.

    Returns
    -------
    DIRAC.Interfaces.API.Job.Job
        The job, ready for ``Dirac().submitJob``.

    Raises
    ------
    WorkflowError
        If an argument cannot travel in a JDL, or DIRAC refuses a setting.
    """
    from DIRAC.Interfaces.API.Job import Job

    job = Job()
    if scripts is None:
        arguments = arguments_string(spec.arguments)
        name = spec.name
    else:
        names = list(names) if names is not None else [spec.name] * len(scripts)
        for value in scripts:
            arguments_string([value])
        for value in (
            job.setParameterSequence("script", list(scripts)),
            job.setParameterSequence("name", names),
        ):
            if not value["OK"]:
                raise WorkflowError(f"DIRAC refused a parametric job: {value['Message']}")
        arguments = "%(script)s"
        name = "%(name)s"
    calls = [
        job.setName(name),
        job.setJobGroup(spec.group),
        job.setExecutable(
            "/bin/sh", arguments=arguments, includeInSandbox=False, logFile="job.log"
        ),
        job.setCPUTime(spec.cpu_time_s),
        job.setOutputSandbox(list(spec.output_sandbox)),
    ]
    if spec.processors > 1:
        calls.append(job.setNumberOfProcessors(spec.processors))
    if spec.max_ram_mb:
        calls.append(job.setRAMRequirements(maxRAM=spec.max_ram_mb))
    if spec.sites:
        calls.append(job.setDestination(list(spec.sites)))
    if spec.banned_sites:
        calls.append(job.setBannedSites(list(spec.banned_sites)))
    if spec.tags:
        calls.append(job.setTag(list(spec.tags)))
    for result in calls:
        if isinstance(result, dict) and not result.get("OK", True):
            raise WorkflowError(f"DIRAC refused job {spec.name!r}: {result.get('Message')}")
    return job
