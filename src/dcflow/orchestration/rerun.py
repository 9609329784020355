"""`dcflow rerun --failed`: exactly the failed tiles and the missing jobs downstream of them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dcflow.ledger import parse_tile
from dcflow.orchestration.campaign_files import campaign_ledger_path, open_ledger, rooted_layout
from dcflow.orchestration.plan_status import current_need
from dcflow.orchestration.run import run_campaign
from dcflow.pipeline.graph import JobGraph
from dcflow.status import failed_tiles

__all__ = ["rerun_failed", "rerun_targets", "select_failed"]


def rerun_targets(
    graph: JobGraph,
    failed: set[tuple[str, str]],
    need: Mapping[str, np.ndarray] | None,
) -> tuple[list[str], set[tuple[str, str]]]:
    """Targets that rerun exactly the failed tiles and the missing jobs downstream of them.

    Parameters
    ----------
    graph : JobGraph
        The campaign's job graph (arrays: no object per job).
    failed : set of (rule, data_id)
        Tiles to rerun.
    need : mapping, optional
        Per rule, the jobs that must run per the plan (outputs missing): downstream tiles are
        rerun only if they are among them (all downstream jobs when None).

    Returns
    -------
    targets : list of str
        Output files to ask Snakemake for (the outputs of the selected jobs).
    selected : set of (rule, data_id)
        The tiles those targets make run.
    """
    by_rule: dict[str, list[str]] = {}
    for rule, tile in failed:
        by_rule.setdefault(rule, []).append(tile)
    seeds: dict[str, np.ndarray] = {}
    for rule, tiles in by_rule.items():
        if not graph.active(rule):
            continue
        found = graph.find_jobs(rule, [parse_tile(t) for t in tiles])
        flags = np.zeros(graph.jobs(rule).n_jobs, dtype=bool)
        flags[found[found >= 0]] = True
        seeds[rule] = flags
    selected = graph.downstream(seeds, need)
    targets: list[str] = []
    keys: set[tuple[str, str]] = set()
    for s in graph.stages:
        jobs = np.flatnonzero(selected[s.rule])
        if jobs.size == 0:
            continue
        keys.update((s.rule, tile) for tile in graph.tile_batch(s.rule, jobs))
        for item in s.outputs:
            targets += graph.path_batch(s.rule, item.dataset, jobs)
    return targets, keys


def select_failed(
    config_path: str | Path,
    workdir: Path,
    *,
    stage: str | None = None,
    tract: int | None = None,
    replan: bool | None = None,
) -> tuple[list[str], set[tuple[str, str]]]:
    """`rerun_targets` of the campaign's failed tiles whose outputs are missing.

    Downstream jobs are limited to those the plan's arrays say must run (`current_need`:
    replanned for small campaigns, the last plan's arrays for large ones).
    """
    layout = rooted_layout(config_path, workdir)
    with open_ledger(campaign_ledger_path(layout, workdir)) as ledger:
        ledger.reap_dead_runs()
        failed = failed_tiles(
            ledger,
            stage=stage,
            tract=tract,
            on_disk=lambda path: os.path.exists(workdir / path),
            n_lines=0,
        )
    keys = {(f.rule, f.data_id) for f in failed}
    if not keys:
        return [], set()
    graph, snapshot = current_need(config_path, workdir, replan=replan)
    return rerun_targets(graph, keys, snapshot.need)


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
) -> tuple[int, set[tuple[str, str]]]:
    """Rerun the failed tiles (and the missing jobs downstream of them) through `run_campaign`.

    The campaign is not replanned through Snakemake's default target: the outputs of the
    selected jobs are passed as targets, so Snakemake builds a DAG of those jobs only. Unless
    ``snakemake_args`` name ``--rerun-triggers``, only modification times trigger reruns, so
    tiles that succeeded are not redone because a param or script changed since.

    Returns
    -------
    code : int
        Snakemake's exit code (0 if there was nothing to rerun).
    selected : set of (rule, data_id)
        The tiles asked for.
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    targets, selected = select_failed(config_path, workdir, stage=stage, tract=tract)
    if not selected:
        return 0, set()
    targets = [os.path.relpath(t, workdir) for t in targets]  # as the rules name them
    extra = list(snakemake_args)
    if "--rerun-triggers" not in extra:
        # exactly those jobs: a params or code change since the good tiles ran must not pull
        # them in again through the targets' inputs (pass --rerun-triggers to override)
        extra = ["--rerun-triggers", "mtime", *extra]
    code = run_campaign(
        config_path,
        profile=profile,
        snakemake_args=extra,
        targets=targets,
        workdir=workdir,
        shard="rerun-failed",
        mem_factor=mem_factor,
        mem_cap_mb=mem_cap_mb,
        progress=progress,
    )
    return code, selected
