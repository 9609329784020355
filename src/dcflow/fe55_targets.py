"""What the Fe55 rules (rules/fe55.smk) must produce, from the ``fe55`` config and the layout.

rules/common.smk calls these for the Fe55 input functions and targets, and the planner adds
`fe55_jobs` to the campaign's job list, so the Fe55 job list has one definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dcflow.configs import from_mapping
from dcflow.instruments.fe55_sim import Fe55SimConfig, fe55_data_ids
from dcflow.layout import Layout
from dcflow.targets import JobSpec

__all__ = ["fe55_config", "fe55_inputs", "fe55_jobs", "fe55_targets"]


def fe55_config(config: Mapping[str, Any]) -> Fe55SimConfig:
    """The `Fe55SimConfig` of a campaign config's ``fe55`` section (defaults if absent)."""
    return from_mapping(Fe55SimConfig, config.get("fe55", {}))


def fe55_inputs(fe55: Fe55SimConfig, layout: Layout, dataset_type: str, ccd: int) -> list[str]:
    """Per-exposure products of one sensor (``fe55_gain`` or ``fe55_truth``), in exposure order.

    Raises
    ------
    ValueError
        If ``ccd`` is not an Fe55 sensor of the campaign.
    """
    return [layout.path(dataset_type, **data_id) for data_id in fe55_data_ids(fe55, ccd=ccd)]


def fe55_targets(fe55: Fe55SimConfig, layout: Layout) -> list[str]:
    """The per-sensor summaries: what asking for the Fe55 stage means (empty without sensors)."""
    return [layout.path("fe55_summary", ccd=ccd) for ccd in fe55.sensors]


def fe55_jobs(fe55: Fe55SimConfig, layout: Layout) -> list[JobSpec]:
    """Every job of rules/fe55.smk that `fe55_targets` needs, as Snakemake builds them.

    One ``fe55_simulate`` and one ``fe55_gain`` job per exposure, one ``fe55_summary`` per
    sensor. A change to rules/fe55.smk must be mirrored here (a test compares the counts with
    ``snakemake -n``).
    """
    jobs: list[JobSpec] = []
    for data_id in fe55_data_ids(fe55):
        raw = layout.path("fe55_raw", **data_id)
        jobs.append(
            JobSpec(
                rule="fe55_simulate",
                data_id=data_id,
                outputs=(raw, layout.path("fe55_truth", **data_id)),
                inputs=(),
            )
        )
        jobs.append(
            JobSpec(
                rule="fe55_gain",
                data_id=data_id,
                outputs=(layout.path("fe55_gain", **data_id), layout.path("fe55_plot", **data_id)),
                inputs=(raw,),
            )
        )
    for ccd in fe55.sensors:
        jobs.append(
            JobSpec(
                rule="fe55_summary",
                data_id={"ccd": ccd},
                outputs=(layout.path("fe55_summary", ccd=ccd),),
                inputs=(
                    *fe55_inputs(fe55, layout, "fe55_gain", ccd),
                    *fe55_inputs(fe55, layout, "fe55_truth", ccd),
                ),
            )
        )
    return jobs
