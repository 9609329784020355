"""`dcflow plan`, `status` and `failed`: the analytic plan, joined with the run ledger."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dcflow.campaign.analytic import plan_index
from dcflow.campaign.index import CampaignIndex
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

__all__ = ["failed_and_untrusted", "failed_campaign", "plan_campaign", "status_campaign"]


def plan_campaign(
    config_path: str | Path,
    *,
    profile: str | None = "local",
    workdir: str | Path | None = None,
    inventory: str | Path | None = None,
    mtimes: bool | None = None,
) -> Plan:
    """The campaign's dry-run plan (`dcflow.campaign.analytic`), with CPU estimates from the ledger.

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
    """
    return _plan_and_index(
        config_path, profile=profile, workdir=workdir, inventory=inventory, mtimes=mtimes
    )[0]


def _plan_and_index(
    config_path: str | Path,
    *,
    profile: str | None,
    workdir: str | Path | None,
    inventory: str | Path | None = None,
    mtimes: bool | None = None,
) -> tuple[Plan, CampaignIndex, dict]:
    """`plan_campaign`, also returning the campaign index and config it planned from."""
    start = time.perf_counter()
    workdir = Path(workdir or os.getcwd()).resolve()
    config = load_campaign_config(config_path)
    layout = Layout.from_config(config)
    layout = Layout(
        input_root=str(workdir / layout.input_root),
        output_root=str(workdir / layout.output_root),
        templates=layout.templates,
    )
    index = index_campaign(config, layout)
    ledger_file = campaign_ledger_path(layout, workdir)
    measured: dict[str, tuple[float, int]] = {}
    if ledger_file.exists():
        with open_ledger(ledger_file) as ledger:
            measured = ledger.mean_runtimes()
    defaults = {r: v["runtime"] for r, v in rule_defaults(profile).items() if "runtime" in v}
    plan = plan_index(
        index,
        workdir=workdir,
        inventory=inventory,
        mtimes=mtimes,
        mean_runtimes_s=measured,
        default_runtimes_min=defaults,
        start_time=start,
    )
    return plan, index, config


def _untrusted(index: CampaignIndex, config: dict) -> list[UntrustedResult]:
    """Outputs on disk that their stage judged untrusted (the spec names which carry verdicts)."""
    return untrusted_results(JobGraph(index).verdict_outputs(config))


def status_campaign(
    config_path: str | Path, *, profile: str | None = "local", workdir: str | Path | None = None
) -> CampaignStatus:
    """The campaign's status: the plan (disk) joined with the ledger (attempts).

    Also the outputs whose stage judged them untrusted (a Fe55 gain that failed its verdict).
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    layout = rooted_layout(config_path, workdir)
    plan, index, config = _plan_and_index(config_path, profile=profile, workdir=workdir)
    untrusted = _untrusted(index, config)
    with open_ledger(campaign_ledger_path(layout, workdir)) as ledger:
        return campaign_status(plan, ledger, workdir=workdir, untrusted=untrusted)


def failed_campaign(
    config_path: str | Path,
    *,
    stage: str | None = None,
    tract: int | None = None,
    workdir: str | Path | None = None,
    n_lines: int = 10,
) -> list[FailedTile]:
    """Failed tiles of the campaign whose outputs are still missing (optionally filtered)."""
    return failed_and_untrusted(
        config_path, stage=stage, tract=tract, workdir=workdir, n_lines=n_lines
    )[0]


def failed_and_untrusted(
    config_path: str | Path,
    *,
    stage: str | None = None,
    tract: int | None = None,
    workdir: str | Path | None = None,
    n_lines: int = 10,
) -> tuple[list[FailedTile], list[UntrustedResult]]:
    """What ``dcflow failed`` lists: failed tiles, and outputs judged untrusted.

    The tiles are `failed_campaign`'s; the untrusted outputs exist on disk but their stage
    judged them untrusted (of ``stage`` only, when given; tracts do not apply).
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    layout = rooted_layout(config_path, workdir)
    plan, index, config = _plan_and_index(config_path, profile=None, workdir=workdir)
    untrusted = [u for u in _untrusted(index, config) if stage is None or u.rule == stage]
    with open_ledger(campaign_ledger_path(layout, workdir)) as ledger:
        tiles = failed_tiles(ledger, stage=stage, tract=tract, plan=plan, n_lines=n_lines)
    return tiles, untrusted
