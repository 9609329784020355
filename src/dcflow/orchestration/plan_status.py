"""`dcflow plan`, `status` and `failed`: the analytic plan, joined with the run ledger."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dcflow.campaign.analytic import plan_index
from dcflow.layout import Layout
from dcflow.orchestration.campaign_files import (
    campaign_ledger_path,
    index_campaign,
    load_campaign_config,
    open_ledger,
    rooted_layout,
)
from dcflow.orchestration.profiles import rule_defaults
from dcflow.plan import Plan
from dcflow.status import CampaignStatus, FailedTile, campaign_status, failed_tiles

__all__ = ["failed_campaign", "plan_campaign", "status_campaign"]


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
    return plan_index(
        index,
        workdir=workdir,
        inventory=inventory,
        mtimes=mtimes,
        mean_runtimes_s=measured,
        default_runtimes_min=defaults,
        start_time=start,
    )


def status_campaign(
    config_path: str | Path, *, profile: str | None = "local", workdir: str | Path | None = None
) -> CampaignStatus:
    """The campaign's status: the plan (disk) joined with the ledger (attempts)."""
    workdir = Path(workdir or os.getcwd()).resolve()
    layout = rooted_layout(config_path, workdir)
    plan = plan_campaign(config_path, profile=profile, workdir=workdir)
    with open_ledger(campaign_ledger_path(layout, workdir)) as ledger:
        return campaign_status(plan, ledger, workdir=workdir)


def failed_campaign(
    config_path: str | Path,
    *,
    stage: str | None = None,
    tract: int | None = None,
    workdir: str | Path | None = None,
    n_lines: int = 10,
) -> list[FailedTile]:
    """Failed tiles of the campaign whose outputs are still missing (optionally filtered)."""
    workdir = Path(workdir or os.getcwd()).resolve()
    layout = rooted_layout(config_path, workdir)
    plan = plan_campaign(config_path, profile=None, workdir=workdir)
    with open_ledger(campaign_ledger_path(layout, workdir)) as ledger:
        return failed_tiles(ledger, stage=stage, tract=tract, plan=plan, n_lines=n_lines)
