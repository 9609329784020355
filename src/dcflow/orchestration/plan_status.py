"""`dcflow plan`, `status` and `failed`: the analytic plan, joined with the run ledger.

Every plan keeps its needrun arrays (`dcflow.campaign.snapshots`). A small campaign is
replanned for each status (a scan of its outputs costs little); a large one (more than
`SMALL_CAMPAIGN_JOBS` jobs) is answered from the last plan's arrays and the ledger since, so
``dcflow status`` on a DC2013 campaign takes seconds, not a replanning minute.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from dcflow.campaign.analytic import SMALL_CAMPAIGN_JOBS, plan_index
from dcflow.campaign.index import CampaignIndex
from dcflow.campaign.snapshots import (
    PlanSnapshot,
    campaign_digest,
    load_index,
    read_plan_snapshot,
    save_index,
    write_plan_snapshot,
)
from dcflow.errors import InputMissingError, LedgerUnreadableError
from dcflow.failures import FailurePolicy
from dcflow.layout import Layout
from dcflow.orchestration.campaign_files import (
    campaign_ledger_path,
    index_campaign,
    load_campaign_config,
    open_ledger,
    rooted_layout,
)
from dcflow.orchestration.profiles import rule_defaults
from dcflow.pipeline.graph import JobGraph
from dcflow.plan import Plan
from dcflow.status import (
    CampaignStatus,
    FailedTile,
    UntrustedResult,
    campaign_status,
    failed_tiles,
    untrusted_results,
)

__all__ = [
    "current_need",
    "failed_and_untrusted",
    "failed_campaign",
    "indexed_campaign",
    "plan_campaign",
    "status_campaign",
]


def indexed_campaign(config_path: str | Path, workdir: Path) -> tuple[dict, Layout, CampaignIndex]:
    """The campaign's config, rooted layout and index, the index kept between calls.

    The index is read back from the output root when neither the config nor the registry
    changed since it was kept (`dcflow.campaign.snapshots`); a shard's config is always
    indexed afresh.
    """
    config = load_campaign_config(config_path)
    layout = rooted_layout(config_path, workdir)
    if config.get("shard"):
        return config, layout, index_campaign(config, layout)
    try:
        digest = campaign_digest(config, layout.path("registry"))
    except FileNotFoundError as exc:
        raise InputMissingError(
            f"{layout.path('registry')}: no campaign registry (run `dcflow ingest` first)"
        ) from exc
    index = load_index(layout.path("index_cache"), digest, config, layout)
    if index is None:
        index = index_campaign(config, layout)
        save_index(index, layout.path("index_cache"), digest)
    return config, layout, index


def plan_campaign(
    config_path: str | Path,
    *,
    profile: str | None = "local",
    workdir: str | Path | None = None,
    inventory: str | Path | None = None,
    mtimes: bool | None = None,
    history: str | Path | None = None,
) -> Plan:
    """The campaign's dry-run plan (`dcflow.campaign.analytic`), with CPU estimates from the ledger.

    The plan's needrun arrays are kept under the output root for `status_campaign`.

    Parameters
    ----------
    config_path : path-like
        The campaign config.
    profile : str or None
        Profile whose default resources give rules without a literal ``runtime``.
    workdir : path-like, optional
        Snakemake's working directory (default: the current one).
    inventory : path-like, optional
        A file list of the outputs (one path per line, ``.gz`` allowed) to read instead of
        walking the output tree.
    mtimes : bool, optional
        Whether a tree walk stats files (Snakemake's mtime trigger; default: small campaigns).
    history : path-like, optional
        The ledger of an earlier campaign: its measured job times estimate the stages this
        campaign's ledger has not measured yet.

    Raises
    ------
    LedgerUnreadableError
        If ``history`` is not a readable ledger.
    """
    start = time.perf_counter()
    workdir = Path(workdir or os.getcwd()).resolve()
    config, layout, index = indexed_campaign(config_path, workdir)
    return _plan_indexed(
        config,
        layout,
        index,
        workdir,
        profile=profile,
        inventory=inventory,
        mtimes=mtimes,
        start=start,
        history=history,
    )[0]


def _plan_indexed(
    config: dict,
    layout: Layout,
    index: CampaignIndex,
    workdir: Path,
    *,
    profile: str | None,
    inventory: str | Path | None = None,
    mtimes: bool | None = None,
    start: float | None = None,
    history: str | Path | None = None,
) -> tuple[Plan, PlanSnapshot]:
    """`plan_campaign` of an indexed campaign; keeps (and returns) the plan's snapshot."""
    ledger_file = campaign_ledger_path(layout, workdir)
    measured: dict[str, tuple[float, int]] = {}
    if ledger_file.exists():
        with open_ledger(ledger_file) as ledger:
            measured = ledger.mean_runtimes()
    earlier: dict[str, tuple[float, int]] = {}
    if history is not None:
        if not Path(history).is_file():
            raise LedgerUnreadableError(f"{history}: no such ledger (--history)")
        with open_ledger(history) as ledger:
            earlier = {r: v for r, v in ledger.mean_runtimes().items() if r not in measured}
        measured = {**earlier, **measured}
    defaults = {r: v["runtime"] for r, v in rule_defaults(profile).items() if "runtime" in v}
    scanned_at = os.stat(inventory).st_mtime if inventory is not None else time.time()
    plan = plan_index(
        index,
        workdir=workdir,
        inventory=inventory,
        mtimes=mtimes,
        mean_runtimes_s=measured,
        default_runtimes_min=defaults,
        start_time=start,
    )
    if earlier:
        plan = dataclasses.replace(
            plan,
            runtime_source={
                rule: f"{source} of {history}" if rule in earlier else source
                for rule, source in plan.runtime_source.items()
            },
        )
    snapshot = PlanSnapshot(need=plan.need or {}, scanned_at=scanned_at)
    if not config.get("shard"):
        digest = campaign_digest(config, layout.path("registry"))
        write_plan_snapshot(layout.path("plan_snapshot"), snapshot, digest)
    return plan, snapshot


def current_need(
    config_path: str | Path, workdir: Path, *, replan: bool | None = None
) -> tuple[dict, JobGraph, PlanSnapshot]:
    """The campaign's config, job graph and the needrun arrays status and rerun start from.

    Parameters
    ----------
    replan : bool, optional
        Plan afresh (True) or use the last plan's arrays when they are still the campaign's
        (False: plan only if there are none). Default: replan campaigns of at most
        `SMALL_CAMPAIGN_JOBS` jobs.
    """
    config, layout, index = indexed_campaign(config_path, workdir)
    graph = JobGraph(index)
    if replan is None:
        replan = sum(graph.jobs(s.rule).n_jobs for s in graph.stages) <= SMALL_CAMPAIGN_JOBS
    if not replan:
        digest = campaign_digest(config, layout.path("registry"))
        snapshot = read_plan_snapshot(layout.path("plan_snapshot"), digest)
        if snapshot is not None:
            return config, graph, snapshot
    _, snapshot = _plan_indexed(config, layout, index, workdir, profile=None)
    return config, graph, snapshot


def status_campaign(
    config_path: str | Path,
    *,
    profile: str | None = "local",
    workdir: str | Path | None = None,
    replan: bool | None = None,
) -> CampaignStatus:
    """The campaign's status: the plan's arrays (disk) joined with the ledger (attempts).

    ``replan`` as `current_need`; ``profile`` is kept for the CLI (status needs no estimates).
    Also the outputs whose stage judged them untrusted (a Fe55 gain that failed its verdict).
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    config, graph, snapshot = current_need(config_path, workdir, replan=replan)
    untrusted = untrusted_results(graph.verdict_outputs(config))
    with open_ledger(campaign_ledger_path(graph.index.layout, workdir)) as ledger:
        return campaign_status(graph, snapshot, ledger, workdir=workdir, untrusted=untrusted)


def failed_campaign(
    config_path: str | Path,
    *,
    stage: str | None = None,
    tract: int | None = None,
    workdir: str | Path | None = None,
    n_lines: int = 10,
    policy: FailurePolicy | None = None,
) -> list[FailedTile]:
    """Failed tiles of the campaign whose outputs are still missing (optionally filtered).

    Reads the ledger and stats the failed tiles' outputs: no plan, no index. Each tile's
    action is ``policy``'s for its failure class (the defaults when None).
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    layout = rooted_layout(config_path, workdir)
    with open_ledger(campaign_ledger_path(layout, workdir)) as ledger:
        return failed_tiles(
            ledger,
            stage=stage,
            tract=tract,
            on_disk=lambda path: os.path.exists(workdir / path),
            n_lines=n_lines,
            policy=policy,
        )


def failed_and_untrusted(
    config_path: str | Path,
    *,
    stage: str | None = None,
    tract: int | None = None,
    workdir: str | Path | None = None,
    n_lines: int = 10,
    policy: FailurePolicy | None = None,
) -> tuple[list[FailedTile], list[UntrustedResult]]:
    """What ``dcflow failed`` lists: failed tiles, and outputs judged untrusted.

    The tiles are `failed_campaign`'s; the untrusted outputs exist on disk but their stage
    judged them untrusted (of ``stage`` only, when given; tracts do not apply). The index is
    the one kept under the output root (no plan).
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    tiles = failed_campaign(
        config_path, stage=stage, tract=tract, workdir=workdir, n_lines=n_lines, policy=policy
    )
    config, _, index = indexed_campaign(config_path, workdir)
    untrusted = [
        u
        for u in untrusted_results(JobGraph(index).verdict_outputs(config))
        if stage is None or u.rule == stage
    ]
    return tiles, untrusted
