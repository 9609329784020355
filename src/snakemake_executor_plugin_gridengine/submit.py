"""Submission: resources to native Grid Engine arguments, job scripts, and ``qsub`` argv lists.

Every value is its own argv item (never a formatted command line, never a shell). Both backends
run ``/bin/sh <script>`` as a binary job, so the job script's own shebang and the queue's
``shell_start_mode`` do not matter, and each script appends its output to a per-job log named
after the rule and wildcards.
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.utils import format_cli_arg

from .status import run_command

__all__ = [
    "ARRAY_CHUNK",
    "MAX_LOG_STEM",
    "JobRequest",
    "SiteDefaults",
    "array_dispatcher",
    "h_vmem_per_slot_mb",
    "job_log_path",
    "job_name",
    "job_script",
    "native_args",
    "parse_qsub_terse",
    "qsub_argv",
    "requote_config_args",
    "submit_qsub",
]

MAX_LOG_STEM = 200
"""Longest log file name before ``.log``; longer wildcard strings end in a hash."""

ARRAY_CHUNK = 1000
"""Most tasks in one array job (SGE's default max_aj_tasks is 75000; keep arrays modest)."""


@dataclass(frozen=True, slots=True)
class SiteDefaults:
    """Cluster-wide defaults from the executor settings; rules override them by resource."""

    pe: str = "smp"
    min_mem_mb: int = 1000
    queue: str | None = None
    project: str | None = None
    extra_args: str | None = None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """Everything Grid Engine needs to run one job (or the template of one array).

    Attributes
    ----------
    name : str
        Grid Engine job name (``-N``): the run's tag and the rule.
    command : tuple of str
        The program and its arguments (``/bin/sh <script>``).
    workdir : str
        Absolute working directory of the job.
    log : str
        Absolute path of the job's log; ``/dev/null`` for arrays, whose tasks log themselves.
    native : tuple of str
        Resource, queue, project and extra arguments, one argv item each.
    """

    name: str
    command: tuple[str, ...]
    workdir: str
    log: str
    native: tuple[str, ...]


def job_name(tag: str, rule: str) -> str:
    """Grid Engine job name ``sm<tag>.<rule>``: ``qacct -j 'sm<tag>.*'`` finds a run's jobs."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", rule)
    return f"sm{tag}.{safe}"


def job_log_path(logdir: Path, rule: str, wildcards: Mapping[str, str]) -> Path:
    """Per-job log ``<logdir>/<rule>/<k=v,k=v>.log``; a slash in a value is kept as ``%2F``.

    Names longer than MAX_LOG_STEM keep their start and end in a hash of the whole.
    """
    if wildcards:
        stem = ",".join(f"{k}={quote(str(v), safe='=+-_.@')}" for k, v in wildcards.items())
    else:
        stem = rule
    if len(stem) > MAX_LOG_STEM:  # a file name has at most 255 bytes
        digest = hashlib.sha1(stem.encode()).hexdigest()[:12]
        stem = f"{stem[: MAX_LOG_STEM - 13]}~{digest}"
    return logdir / rule / f"{stem}.log"


def _int_resource(resources: Mapping[str, object], name: str) -> int | None:
    value = resources.get(name)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return math.ceil(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise WorkflowError(f"resource {name}={value!r} is not a number")


def h_vmem_per_slot_mb(
    threads: int, resources: Mapping[str, object], defaults: SiteDefaults
) -> int | None:
    """h_vmem per slot in MiB for a job asking ``mem_mb`` in total, or None without mem_mb.

    h_vmem limits the address space of every process of the job, the job's own Snakemake
    process included (~450 MB virtual here), so a job never asks less than ``min_mem_mb``.
    """
    mem_mb = _int_resource(resources, "mem_mb")
    if not mem_mb:
        return None
    return math.ceil(max(mem_mb, defaults.min_mem_mb) / max(threads, 1))


def native_args(
    threads: int, resources: Mapping[str, object], defaults: SiteDefaults
) -> tuple[str, ...]:
    """Map Snakemake resources to Grid Engine arguments.

    threads -> ``-pe <pe> N`` (only when N > 1); mem_mb (per job, at least ``min_mem_mb``) ->
    ``-l h_vmem=<mem_mb/N>M`` (h_vmem is per slot); runtime (minutes) -> ``-l h_rt=<seconds>``;
    queue and project from the settings or the per-rule resources ``sge_queue``,
    ``sge_project``, ``sge_pe``;
    ``sge_extra`` (per rule) and the ``extra_args`` setting are split like a shell would.
    """
    if threads < 1:
        raise WorkflowError(f"threads={threads}: a Grid Engine job needs at least 1 slot")
    args: list[str] = []
    pe = str(resources.get("sge_pe") or defaults.pe)
    if threads > 1:
        args += ["-pe", pe, str(threads)]
    h_vmem_mb = h_vmem_per_slot_mb(threads, resources, defaults)
    if h_vmem_mb:
        args += ["-l", f"h_vmem={h_vmem_mb}M"]
    runtime_min = _int_resource(resources, "runtime")
    if runtime_min:
        args += ["-l", f"h_rt={runtime_min * 60}"]
    queue = resources.get("sge_queue") or defaults.queue
    if queue:
        args += ["-q", str(queue)]
    project = resources.get("sge_project") or defaults.project
    if project:
        args += ["-P", str(project)]
    for extra in (defaults.extra_args, resources.get("sge_extra")):
        if extra:
            args += shlex.split(str(extra))
    return tuple(args)


def requote_config_args(exec_job: str, config_args: Sequence[str] | None) -> str:
    r"""Make the ``--config`` items of Snakemake's job command shell-safe.

    Snakemake quotes them with Python's ``repr``, which a POSIX shell misreads when a value
    holds a single quote (``'q="it\'s"'``); they are re-quoted with ``shlex.quote``.
    """
    if not config_args or isinstance(config_args, str):
        return exec_job
    broken = format_cli_arg("--config", list(config_args))
    fixed = "--config " + " ".join(shlex.quote(str(a)) for a in config_args)
    return exec_job.replace(broken, fixed)


def job_script(template: str, properties: str, exec_job: str, log: Path, attempt: int) -> str:
    """Job script text from Snakemake's jobscript template.

    The script appends everything to ``log`` and starts with a line naming the Grid Engine job,
    the host and the attempt, so retries of the same job stay readable in one file.
    """
    logq = shlex.quote(str(log))
    body = (
        f"mkdir -p {shlex.quote(str(log.parent))} && exec >>{logq} 2>&1\n"
        f'echo "== gridengine job $JOB_ID task ${{SGE_TASK_ID:-}} on $(hostname)'
        f' attempt {attempt} at $(date -u +%FT%TZ)"\n'
        f"{exec_job}"
    )
    return template.format(properties=properties, exec_job=body)


BENCHMARK_HEADER = "\t".join(
    [
        "s",
        "h:m:s",
        "max_rss",
        "max_vms",
        "max_uss",
        "max_pss",
        "io_in",
        "io_out",
        "mean_load",
        "cpu_time",
    ]
)
"""Columns of Snakemake's benchmark files (a noop job writes them with its slot time)."""


def _atomic_printf(path: str, text: str) -> str:
    quoted = shlex.quote(str(path))
    temp = shlex.quote(f"{path}.noop-tmp") + "$$"
    return (
        f'mkdir -p "$(dirname {quoted})" && printf %s {shlex.quote(text)} >{temp}'
        f" && mv -f {temp} {quoted} || exit 1"
    )


def noop_exec(outputs: Sequence[str], seconds: float = 0.0, benchmarks: Sequence[str] = ()) -> str:
    """Shell lines that stand in for a noop-payload job's Snakemake process.

    They hold the slot ``seconds`` (a stand-in for work, no CPU), then write each output as a
    placeholder and each benchmark file with that wall time, through a temporary name and a
    rename, so a killed job leaves no file that looks complete. Paths are quoted: nothing
    from data ids reaches the shell raw.
    """
    lines = [f"sleep {float(seconds):g} || exit 1"] if seconds > 0 else []
    lines += [_atomic_printf(str(output), "noop\n") for output in outputs]
    whole = int(seconds)
    row = f"{seconds:.2f}\t{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    row += "\tNA" * 7 + "\t0.00"
    lines += [_atomic_printf(str(path), f"{BENCHMARK_HEADER}\n{row}\n") for path in benchmarks]
    return "\n".join([*lines, "true", ""])


def array_dispatcher(task_scripts: Sequence[Path]) -> str:
    """Script text that runs task ``$SGE_TASK_ID`` (1-based) of ``task_scripts``."""
    lines = ["#!/bin/sh", 'case "$SGE_TASK_ID" in']
    for index, script in enumerate(task_scripts, start=1):
        lines.append(f"  {index}) exec /bin/sh {shlex.quote(str(script))} ;;")
    lines += ['  *) echo "no task $SGE_TASK_ID in this array" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


def qsub_argv(request: JobRequest, n_tasks: int | None = None) -> list[str]:
    """The ``qsub`` argv for one job, or an array of ``n_tasks`` tasks."""
    argv = ["qsub", "-terse", "-b", "y", "-V", "-N", request.name, "-wd", request.workdir]
    argv += ["-o", request.log, "-j", "y"]
    if n_tasks is not None:
        argv += ["-t", f"1-{n_tasks}"]
    argv += list(request.native)
    argv += list(request.command)
    return argv


def parse_qsub_terse(text: str) -> list[str]:
    """Job ids from ``qsub -terse`` output: ``"123"`` or, for an array, ``"123.1-5:1"``."""
    # qsub may print warnings first (e.g. an option given twice): the id is its own line.
    matches = [
        re.fullmatch(r"(\d+)(?:\.(\d+)-(\d+):(\d+))?", line.strip()) for line in text.splitlines()
    ]
    m = next((m for m in reversed(matches) if m is not None), None)
    if m is None:
        raise WorkflowError(f"cannot read a job id from qsub output {text!r}")
    if m.group(2) is None:
        return [m.group(1)]
    first_task, last_task, step = (int(m.group(i)) for i in (2, 3, 4))
    return [f"{m.group(1)}.{t}" for t in range(first_task, last_task + 1, step)]


def submit_qsub(request: JobRequest, n_tasks: int | None = None) -> list[str]:
    """Submit with ``qsub`` and return the job id (or the task ids of the array)."""
    proc = run_command(qsub_argv(request, n_tasks))
    return parse_qsub_terse(proc.stdout)
