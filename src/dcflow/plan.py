"""The reference planner: what a campaign will run, from its job list and one scan of the outputs.

Snakemake's own dry run builds the whole DAG (about 0.5 ms and 15 KB per job, see
notes/scale.md); this planner enumerates the same jobs from
`dcflow.pipeline.graph.JobGraph.job_specs` (one Python object per job: small campaigns only),
learns what exists from one directory walk of the output tree plus Snakemake's incomplete
markers, and applies Snakemake's needrun rules. `dcflow.campaign.analytic` applies the same
rules to arrays (what `dcflow plan` runs, at any scale); tests check both against each other
and against ``snakemake -n``:

- the target job (rule ``all``) runs if one of its inputs is missing;
- a job whose outputs are marked incomplete (a job killed halfway) is rerun
  (profiles set ``rerun-incomplete``);
- a job that must run makes every job downstream of it run, and makes the jobs upstream of it
  run if the files it needs from them are missing.

Not modelled here: reruns that Snakemake triggers from modification times (the analytic
planner models them), changed params, code or software environments (they need a metadata
read per file). Counts equal ``snakemake -n``'s when nobody edited params or scripts after the
outputs were made.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dcflow.jobspec import JobSpec
from dcflow.ledger import tile_of
from dcflow.pipeline.spec import TARGET_RULE

__all__ = [
    "LazyMapping",
    "Plan",
    "StageCount",
    "clear_incomplete_marks",
    "incomplete_outputs",
    "inventory",
    "needrun_jobs",
    "parse_dry_run_counts",
    "plan_jobs",
    "runtime_estimates",
]

TARGET_RULES = frozenset({TARGET_RULE})
"""Rules whose job is a target (no outputs of its own; runs when an input is missing)."""


@dataclass(frozen=True, slots=True)
class StageCount:
    """Jobs of one stage, filter and tract: total, done and still to run."""

    stage: str
    filter: str | None
    tract: int | None
    total: int
    done: int
    to_run: int
    cpu_hours: float


class LazyMapping(Mapping):
    """A read-only mapping built on first use (a plan's jobs to run, at campaign scale).

    Parameters
    ----------
    build : callable
        Returns the dict; called once, when the mapping is first read.
    """

    def __init__(self, build: Callable[[], dict]) -> None:
        self._build = build
        self._data: dict | None = None

    def _mapping(self) -> dict:
        if self._data is None:
            self._data = self._build()
        return self._data

    def __getitem__(self, key: object) -> object:
        return self._mapping()[key]

    def __iter__(self) -> Iterator:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __contains__(self, key: object) -> bool:
        return key in self._mapping()


@dataclass(frozen=True, slots=True)
class Plan:
    """A campaign's dry-run plan.

    Attributes
    ----------
    rows : tuple of StageCount
        Counts per stage x filter x tract, in workflow order.
    to_run : mapping
        ``(rule, data_id) -> (filter, tract)`` of every job that must run (a `LazyMapping`
        from the analytic planner: built only when read, one entry per job).
    cpu_hours : float
        Estimated CPU time of the jobs to run, hours.
    runtime_source : dict
        Per rule, where its runtime estimate comes from (``ledger (n jobs)`` or
        ``rule default``).
    n_files : int
        Files found by the output scan.
    seconds : float
        Wall time the plan took, s.
    """

    rows: tuple[StageCount, ...]
    to_run: Mapping[tuple[str, str], tuple[str | None, int | None]]
    cpu_hours: float
    runtime_source: Mapping[str, str]
    n_files: int
    seconds: float
    need: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """Per stage, one boolean per job (the analytic planner's arrays; None from plan_jobs)."""

    @property
    def n_total(self) -> int:
        """All jobs of the campaign."""
        return sum(r.total for r in self.rows)

    @property
    def n_to_run(self) -> int:
        """Jobs still to run."""
        return sum(r.to_run for r in self.rows)

    @property
    def n_done(self) -> int:
        """Jobs whose outputs are complete on disk."""
        return sum(r.done for r in self.rows)

    def to_run_by_rule(self) -> dict[str, int]:
        """Jobs to run per rule (what ``snakemake -n`` lists in its job stats)."""
        counts: dict[str, int] = {}
        for row in self.rows:
            if row.to_run:
                counts[row.stage] = counts.get(row.stage, 0) + row.to_run
        return counts

    def by_stage(self) -> dict[str, StageCount]:
        """Counts summed over filters and tracts, per stage."""
        out: dict[str, StageCount] = {}
        for row in self.rows:
            old = out.get(row.stage)
            if old is None:
                out[row.stage] = StageCount(
                    row.stage, None, None, row.total, row.done, row.to_run, row.cpu_hours
                )
            else:
                out[row.stage] = StageCount(
                    row.stage,
                    None,
                    None,
                    old.total + row.total,
                    old.done + row.done,
                    old.to_run + row.to_run,
                    old.cpu_hours + row.cpu_hours,
                )
        return out

    def to_json(self) -> str:
        """The plan as JSON (machines: ``dcflow plan --json``)."""
        return json.dumps(
            {
                "n_total": self.n_total,
                "n_done": self.n_done,
                "n_to_run": self.n_to_run,
                "cpu_hours": round(self.cpu_hours, 4),
                "to_run_by_rule": self.to_run_by_rule(),
                "runtime_source": dict(self.runtime_source),
                "rows": [asdict(r) for r in self.rows],
                "n_files_scanned": self.n_files,
                "seconds": round(self.seconds, 4),
            },
            indent=2,
        )


def inventory(root: str | os.PathLike) -> set[str]:
    """Every file under ``root``, from one directory walk without a stat per file.

    Paths are normalized (absolute if ``root`` is).
    """
    found: set[str] = set()
    for dirpath, _, filenames in os.walk(root):
        found.update(os.path.normpath(os.path.join(dirpath, name)) for name in filenames)
    return found


def _incomplete_marks(workdir: str | os.PathLike):
    """Yield ``(marker file, output path)`` for each of Snakemake's "incomplete" marks.

    One walk of ``.snakemake/incomplete``: each marker's name is the URL-safe base64 of the
    output path, split into ``@``-prefixed chunks when long. Output paths come normalized and
    joined to ``workdir`` (absolute if it is); Snakemake's own files are skipped.
    """
    top = Path(workdir) / ".snakemake" / "incomplete"
    for dirpath, _, filenames in os.walk(top):
        rel = Path(dirpath).relative_to(top).parts
        for name in filenames:
            chunks = [p.removeprefix("@") for p in (*rel, name)]
            try:
                path = base64.urlsafe_b64decode("".join(chunks).encode()).decode()
            except (ValueError, UnicodeDecodeError):
                continue  # Snakemake's own files (migration_underway)
            yield Path(dirpath) / name, os.path.normpath(os.path.join(workdir, path))


def incomplete_outputs(workdir: str | os.PathLike = ".") -> set[str]:
    """Outputs Snakemake marked incomplete (a job started and never confirmed) in a workdir.

    Paths are returned normalized and joined to ``workdir`` (absolute if it is).
    """
    return {output for _, output in _incomplete_marks(workdir)}


def clear_incomplete_marks(workdir: str | os.PathLike, outputs: Iterable[str]) -> int:
    """Remove Snakemake's "incomplete" marks of ``outputs``; return how many were removed.

    ``outputs`` are relative to ``workdir`` or absolute. For a job known to have ended well
    while no Snakemake watched it: its outputs, written atomically, are whole, and the marks
    alone would have it redone.
    """
    wanted = {os.path.normpath(os.path.join(workdir, p)) for p in outputs}
    removed = 0
    for marker, output in _incomplete_marks(workdir):
        if output in wanted:
            marker.unlink(missing_ok=True)
            removed += 1
    return removed


def needrun_jobs(
    jobs: Sequence[JobSpec],
    existing: set[str],
    incomplete: set[str] = frozenset(),
    *,
    workdir: str | os.PathLike = "",
) -> set[int]:
    """Indices of the jobs that must run, by Snakemake's rules (see the module docstring).

    Parameters
    ----------
    jobs : sequence of JobSpec
        The whole job graph; target jobs are those of `TARGET_RULES`.
    existing : set of str
        Normalized paths of the files present.
    incomplete : set of str
        Normalized paths marked incomplete (they count only if present).
    workdir : path-like
        Directory that relative job paths are relative to (paths are compared after joining
        them to it and normalizing), matching how ``existing`` was built.
    """
    base = os.fspath(workdir)

    def norm(path: str) -> str:
        return os.path.normpath(os.path.join(base, path))

    producer: dict[str, int] = {}
    for index, job in enumerate(jobs):
        for path in job.outputs:
            producer[norm(path)] = index
    dependencies: list[dict[int, list[str]]] = [{} for _ in jobs]
    dependents: list[set[int]] = [set() for _ in jobs]
    for index, job in enumerate(jobs):
        for path in job.inputs:
            full = norm(path)
            source = producer.get(full)
            if source is not None:
                dependencies[index].setdefault(source, []).append(full)
                dependents[source].add(index)
    queue: deque[int] = deque()
    for index, job in enumerate(jobs):
        outputs = [norm(p) for p in job.outputs]
        if job.rule in TARGET_RULES:
            if any(norm(p) not in existing for p in job.inputs):
                queue.append(index)
        elif any(p in incomplete and p in existing for p in outputs):
            queue.append(index)
    needed = set(queue)
    while queue:
        index = queue.popleft()
        for source, files in dependencies[index].items():
            if source not in needed and any(f not in existing for f in files):
                needed.add(source)
                queue.append(source)
        for sink in dependents[index]:
            if sink not in needed:
                needed.add(sink)
                queue.append(sink)
    return needed


def runtime_estimates(
    rules: Iterable[str],
    *,
    mean_runtimes_s: Mapping[str, tuple[float, int]] | None = None,
    default_runtimes_min: Mapping[str, float] | None = None,
    fallback_runtime_min: float = 30.0,
) -> tuple[dict[str, float], dict[str, str]]:
    """CPU hours per job of each rule, and where each estimate comes from.

    The ledger's measured mean first, then the rule's default ``runtime``, then
    ``fallback_runtime_min``; target rules cost nothing.
    """
    measured = dict(mean_runtimes_s or {})
    defaults = dict(default_runtimes_min or {})
    per_job_h: dict[str, float] = {}
    source: dict[str, str] = {}
    for rule in rules:
        if rule in TARGET_RULES:
            per_job_h[rule], source[rule] = 0.0, "target (no work)"
        elif rule in measured:
            per_job_h[rule] = measured[rule][0] / 3600.0
            source[rule] = f"ledger ({measured[rule][1]} jobs)"
        elif rule in defaults:
            per_job_h[rule] = defaults[rule] / 60.0
            source[rule] = "rule default runtime"
        else:
            per_job_h[rule] = fallback_runtime_min / 60.0
            source[rule] = "fallback runtime"
    return per_job_h, source


def plan_jobs(
    jobs: Sequence[JobSpec],
    *,
    output_root: str | os.PathLike,
    workdir: str | os.PathLike = ".",
    mean_runtimes_s: Mapping[str, tuple[float, int]] | None = None,
    default_runtimes_min: Mapping[str, float] | None = None,
    fallback_runtime_min: float = 30.0,
) -> Plan:
    """Plan a job graph against what exists under ``output_root``.

    Parameters
    ----------
    jobs : sequence of JobSpec
        The campaign's jobs (`dcflow.pipeline.graph.JobGraph.job_specs`).
    output_root : path-like
        Root of the output tree (scanned once); relative to ``workdir`` unless absolute.
    workdir : path-like
        Snakemake's working directory (holds ``.snakemake/incomplete``).
    mean_runtimes_s : mapping, optional
        Per rule ``(mean runtime s, n jobs)`` measured by the ledger.
    default_runtimes_min : mapping, optional
        Per rule default ``runtime`` resource, minutes (used without ledger history).
    fallback_runtime_min : float
        Runtime of a rule with neither, minutes.
    """
    start = time.perf_counter()
    workdir = os.path.abspath(workdir)
    root = os.path.normpath(os.path.join(workdir, output_root))
    existing = inventory(root)
    # outputs written outside the output root (Fe55 raws and truth under the input root)
    outside = {
        full
        for job in jobs
        for path in job.outputs
        if not (full := os.path.normpath(os.path.join(workdir, path))).startswith(root + os.sep)
    }
    existing |= {path for path in outside if os.path.exists(path)}
    incomplete = incomplete_outputs(workdir)
    needed = needrun_jobs(jobs, existing, incomplete, workdir=workdir)
    per_job_h, source = runtime_estimates(
        dict.fromkeys(job.rule for job in jobs),
        mean_runtimes_s=mean_runtimes_s,
        default_runtimes_min=default_runtimes_min,
        fallback_runtime_min=fallback_runtime_min,
    )
    counts: dict[tuple[str, str | None, int | None], list[int]] = {}
    to_run: dict[tuple[str, str], tuple[str | None, int | None]] = {}
    for index, job in enumerate(jobs):
        row = counts.setdefault((job.rule, job.filter, job.tract), [0, 0])
        row[0] += 1
        if index in needed:
            row[1] += 1
            to_run[(job.rule, tile_of(job.data_id))] = (job.filter, job.tract)
    rows = tuple(
        StageCount(
            stage=rule,
            filter=band,
            tract=tract,
            total=total,
            done=total - n_run,
            to_run=n_run,
            cpu_hours=n_run * per_job_h[rule],
        )
        for (rule, band, tract), (total, n_run) in counts.items()
    )
    return Plan(
        rows=rows,
        to_run=to_run,
        cpu_hours=sum(r.cpu_hours for r in rows),
        runtime_source=source,
        n_files=len(existing),
        seconds=time.perf_counter() - start,
    )


_STATS_LINE = re.compile(r"^(\S+)\s+(\d+)\s*$")


def parse_dry_run_counts(text: str) -> dict[str, int]:
    """Jobs per rule from the "Job stats" table that ``snakemake -n`` prints.

    Returns an empty dict for "Nothing to be done".
    """
    counts: dict[str, int] = {}
    lines: Iterable[str] = text.splitlines()
    in_table = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("Job stats"):
            in_table, counts = True, {}
            continue
        if not in_table:
            continue
        if stripped.startswith("job ") or stripped.startswith("---") or not stripped:
            if counts and not stripped:
                in_table = False
            continue
        match = _STATS_LINE.match(stripped)
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
        elif match:
            in_table = False
    return counts
