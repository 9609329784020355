"""`dcflow rerun --failed`: exactly the failed tiles and the missing jobs downstream of them.

Each failed tile's failure class (`dcflow.failures`) decides what happens to it: tiles whose
action is to fail at once (bad input) or to wait for review (site I/O errors) are left out
unless their class is named in ``include_classes``; the others are rerun, those out of memory
or time asking for more through the ledger's escalation (`dcflow.orchestration.run`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcflow.campaign.analytic import SMALL_CAMPAIGN_JOBS
from dcflow.errors import RerunTooLargeError
from dcflow.failures import FailureAction, FailureClass, FailurePolicy
from dcflow.layout import Layout
from dcflow.orchestration.campaign_files import (
    campaign_ledger_path,
    load_campaign_config,
    open_ledger,
    rooted_layout,
    rule_paths,
)
from dcflow.orchestration.plan_status import current_need
from dcflow.orchestration.profiles import failure_policy
from dcflow.orchestration.run import RunOutcome, launch_campaign
from dcflow.orchestration.settle import settle_from_disk
from dcflow.pipeline.graph import JobGraph
from dcflow.status import failed_tiles, job_states

__all__ = [
    "MAX_RERUN_JOBS",
    "ClassOutcome",
    "RerunSelection",
    "rerun_failed",
    "rerun_targets",
    "select_failed",
    "triage",
]


MAX_RERUN_JOBS = SMALL_CAMPAIGN_JOBS
"""Jobs above which ``rerun --failed`` refuses to build one Snakemake DAG (use the sharded run)."""


@dataclass(frozen=True, slots=True)
class RerunSelection:
    """The jobs ``rerun --failed`` asks for, as one boolean array per stage.

    Paths and tile names are made only when asked for (`targets`, `tiles`): a selection
    over a DC2013 campaign stays a few arrays.
    """

    graph: JobGraph
    jobs: Mapping[str, np.ndarray]

    @property
    def n_jobs(self) -> int:
        """Jobs selected."""
        return int(sum(int(flags.sum()) for flags in self.jobs.values()))

    def tiles(self) -> set[tuple[str, str]]:
        """``(rule, data_id)`` of every selected job."""
        out: set[tuple[str, str]] = set()
        for s in self.graph.stages:
            jobs = np.flatnonzero(self.jobs[s.rule])
            if jobs.size:
                out.update((s.rule, tile) for tile in self.graph.tile_batch(s.rule, jobs))
        return out

    def targets(self) -> list[str]:
        """Output files to ask Snakemake for: the outputs of the selected jobs."""
        out: list[str] = []
        for s in self.graph.stages:
            jobs = np.flatnonzero(self.jobs[s.rule])
            if jobs.size:
                for item in s.outputs:
                    out += self.graph.path_batch(s.rule, item.dataset, jobs)
        return out


@dataclass(frozen=True, slots=True)
class ClassOutcome:
    """What ``rerun --failed`` did with the failed tiles of one failure class."""

    failure_class: str
    action: str
    n_tiles: int
    rerun: bool

    def describe(self) -> str:
        """One line: how many tiles of the class, and what was done with them."""
        what = {
            FailureAction.RETRY_MORE_MEMORY: "rerun with more memory",
            FailureAction.RETRY_MORE_TIME: "rerun with more run time",
            FailureAction.RETRY_ELSEWHERE: "rerun (placed anew by the backend)",
            FailureAction.RETRY: "rerun",
            FailureAction.FAIL_AT_ONCE: "not rerun: fail at once",
            FailureAction.HOLD_FOR_REVIEW: "not rerun: held for review",
        }[FailureAction(self.action)]
        if self.rerun and not FailureAction(self.action).reruns():
            what = f"rerun as asked (action {self.action})"
        hint = "" if self.rerun else f" (--include-class {self.failure_class} reruns them)"
        return f"{self.failure_class}: {self.n_tiles} tile(s) {what}{hint}"


def triage(
    tiles: Iterable[tuple[str, str, str]],
    policy: FailurePolicy,
    include_classes: Iterable[str] = (),
) -> tuple[set[tuple[str, str]], list[ClassOutcome]]:
    """Which failed tiles to rerun, by their failure class's action.

    Parameters
    ----------
    tiles : iterable of (rule, data_id, failure_class)
        The failed tiles.
    policy : FailurePolicy
        The action of each class.
    include_classes : iterable of str
        Classes rerun whatever their action says.

    Returns
    -------
    keys : set of (rule, data_id)
        Tiles to rerun.
    outcomes : list of ClassOutcome
        One per class present, in `FailureClass` order.
    """
    forced = {FailureClass(c) for c in include_classes}
    keys: set[tuple[str, str]] = set()
    counts: dict[FailureClass, int] = {}
    for rule, data_id, name in tiles:
        failure_class = FailureClass(name or FailureClass.UNKNOWN)
        counts[failure_class] = counts.get(failure_class, 0) + 1
        if policy.action(failure_class).reruns() or failure_class in forced:
            keys.add((rule, data_id))
    outcomes = [
        ClassOutcome(
            failure_class=c.value,
            action=policy.action(c).value,
            n_tiles=counts[c],
            rerun=policy.action(c).reruns() or c in forced,
        )
        for c in FailureClass
        if c in counts
    ]
    return keys, outcomes


def rerun_targets(
    graph: JobGraph,
    failed: set[tuple[str, str]],
    need: Mapping[str, np.ndarray] | None,
) -> RerunSelection:
    """Exactly the failed tiles and the missing jobs downstream of them.

    Parameters
    ----------
    graph : JobGraph
        The campaign's job graph (arrays: no object per job).
    failed : set of (rule, data_id)
        Tiles to rerun.
    need : mapping, optional
        Per rule, the jobs that must run (outputs missing): downstream tiles are rerun only
        if they are among them (all downstream jobs when None).
    """
    by_rule: dict[str, list[str]] = {}
    for rule, tile in failed:
        by_rule.setdefault(rule, []).append(tile)
    seeds: dict[str, np.ndarray] = {}
    for rule, tiles in by_rule.items():
        if not graph.active(rule):
            continue
        found = graph.find_tiles(rule, tiles)
        flags = np.zeros(graph.jobs(rule).n_jobs, dtype=bool)
        flags[found[found >= 0]] = True
        seeds[rule] = flags
    return RerunSelection(graph, graph.downstream(seeds, need))


def select_failed(
    config_path: str | Path,
    workdir: Path,
    *,
    stage: str | None = None,
    tract: int | None = None,
    replan: bool | None = None,
    policy: FailurePolicy | None = None,
    include_classes: Iterable[str] = (),
) -> RerunSelection | None:
    """`rerun_targets` of the campaign's failed tiles whose outputs are missing (None: none).

    Tiles whose failure class's action is not to rerun are left out (`triage`). Downstream
    jobs are limited to those still to run: the plan's arrays (`current_need`: replanned for
    small campaigns, the last plan's for large ones) with the ledger's news since
    (`dcflow.status.job_states`).
    """
    selection, _ = _select(
        config_path,
        workdir,
        stage=stage,
        tract=tract,
        replan=replan,
        policy=FailurePolicy() if policy is None else policy,
        include_classes=include_classes,
    )
    return selection


def _select(
    config_path: str | Path,
    workdir: Path,
    *,
    stage: str | None,
    tract: int | None,
    replan: bool | None,
    policy: FailurePolicy,
    include_classes: Iterable[str],
) -> tuple[RerunSelection | None, list[ClassOutcome]]:
    layout = rooted_layout(config_path, workdir)
    with open_ledger(campaign_ledger_path(layout, workdir)) as ledger:
        ledger.reap_dead_runs()
        settle_from_disk(ledger, workdir)  # done jobs whose end went unrecorded: not failed
        failed = failed_tiles(
            ledger,
            stage=stage,
            tract=tract,
            on_disk=lambda path: os.path.exists(workdir / path),
            n_lines=0,
            count_attempts=False,
            policy=policy,
        )
        keys, outcomes = triage(
            ((f.rule, f.data_id, f.failure_class) for f in failed), policy, include_classes
        )
        if not keys:
            return None, outcomes
        _, graph, snapshot = current_need(config_path, workdir, replan=replan)
        live = [r.run_id for r in ledger.runs() if r.finished is None]
        states = job_states(graph, snapshot, ledger, live)
    need = {rule: masks["to_run"] for rule, masks in states.items()}
    return rerun_targets(graph, keys, need), outcomes


def rerun_failed(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: list[str],
    stage: str | None = None,
    tract: int | None = None,
    workdir: str | Path | None = None,
    mem_factor: float | None = None,
    mem_cap_mb: int | None = None,
    progress: bool = True,
    include_classes: Iterable[str] = (),
    verbose: bool = False,
) -> tuple[RunOutcome | None, set[tuple[str, str]], list[ClassOutcome]]:
    """Rerun the failed tiles (and the missing jobs downstream of them) through `run_campaign`.

    The campaign is not replanned through Snakemake's default target: the outputs of the
    selected jobs are passed as targets, so Snakemake builds a DAG of those jobs only. Unless
    ``snakemake_args`` name ``--rerun-triggers``, only modification times trigger reruns, so
    tiles that succeeded are not redone because a param or script changed since. The
    profile's failure actions (`dcflow.orchestration.profiles.failure_policy`) decide which
    failed tiles are rerun; ``include_classes`` reruns those of the named classes anyway.

    Returns
    -------
    outcome : RunOutcome or None
        How the run ended (None if there was nothing to rerun).
    selected : set of (rule, data_id)
        The tiles asked for.
    outcomes : list of ClassOutcome
        Per failure class, how many failed tiles and whether they were rerun.
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    selection, outcomes = _select(
        config_path,
        workdir,
        stage=stage,
        tract=tract,
        replan=None,
        policy=failure_policy(profile),
        include_classes=include_classes,
    )
    if selection is None or selection.n_jobs == 0:
        return None, set(), outcomes
    if selection.n_jobs > MAX_RERUN_JOBS:
        raise RerunTooLargeError(
            f"{selection.n_jobs:,} jobs are failed or missing downstream of the failed tiles: "
            f"more than one Snakemake DAG should hold ({MAX_RERUN_JOBS:,}); "
            "`dcflow run --sharded` runs exactly the missing jobs, shard by shard"
        )
    targets, selected = selection.targets(), selection.tiles()
    targets = rule_paths(targets, Layout.from_config(load_campaign_config(config_path)), workdir)
    extra = list(snakemake_args)
    if "--rerun-triggers" not in extra:
        # exactly those jobs: a params or code change since the good tiles ran must not pull
        # them in again through the targets' inputs (pass --rerun-triggers to override)
        extra = ["--rerun-triggers", "mtime", *extra]
    outcome = launch_campaign(
        config_path,
        profile=profile,
        snakemake_args=extra,
        targets=targets,
        workdir=workdir,
        shard="rerun-failed",
        mem_factor=mem_factor,
        mem_cap_mb=mem_cap_mb,
        progress=progress,
        verbose=verbose,
        exclusive=True,
    )
    return outcome, selected, outcomes
