"""Per-sensor Fe55 summary: the gain of each amplifier fitted once over the events of all the
sensor's exposures (their per-exposure gains checked for agreement), as a table and a picture
(gains, Fe55 / photon transfer, the verdicts)."""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from dcflow.configs import from_mapping
from dcflow.errors import InputDataError
from dcflow.io import atomic_path, read_fits, read_table, write_table
from dcflow.joblog import run_logged
from dcflow.plots import fe55_summary_figure
from dcflow.stages.fe55 import Fe55Config, pool_exposures, summarize_gains

log = logging.getLogger("fe55_summary")


def main(
    *,
    gain_paths: Sequence[str],
    event_paths: Sequence[str],
    summary_path: str,
    plot_path: str = "",
    ptc_path: str = "",
    fe55_gain: Mapping[str, Any] | None = None,
):
    """Fit each amplifier over the events of one sensor's exposures (``event_paths``, in the
    order of ``gain_paths``), check the exposures' gains agree; set the gains against its
    photon-transfer table when it has one; draw the picture when ``plot_path`` is given. No
    truth is read: truth is compared in tests and the simulation's validation."""
    config = from_mapping(Fe55Config, fe55_gain)
    tables = [read_table(path) for path in gain_paths]
    events = [read_table(path) for path in event_paths]
    if len(event_paths) != len(gain_paths):
        raise InputDataError(
            f"{len(gain_paths)} gain table(s) but {len(event_paths)} event table(s): "
            + ", ".join([*map(str, gain_paths), *map(str, event_paths)])
        )
    for gain_path, event_path in zip(gain_paths, event_paths, strict=True):
        gain_raw, event_raw = (
            read_fits(p)[1].header.get("RAWFILE") for p in (gain_path, event_path)
        )
        if gain_raw != event_raw:
            raise InputDataError(
                f"{event_path}: events of {event_raw}, but {gain_path} is the gain table of "
                f"{gain_raw}"
            )
    ptc = read_table(ptc_path) if ptc_path else None
    try:
        pooled = pool_exposures(tables, events, config=config)
        summary = summarize_gains(
            tables,
            pooled=pooled.table(),
            ptc=ptc,
            max_ptc_deviation=config.max_ptc_deviation,
            max_gain_rel_err=config.max_gain_rel_err,
        )
    except ValueError as exc:
        names = [*map(str, gain_paths), *map(str, event_paths), *([ptc_path] if ptc_path else [])]
        raise InputDataError(f"{', '.join(names)}: {exc}") from exc
    summary.meta["NEXPOSUR"] = len(tables)
    write_table(summary, summary_path)
    if plot_path:
        figure = fe55_summary_figure(
            summary,
            max_ptc_deviation=config.max_ptc_deviation,
            title=f"sensor summary, {len(tables)} exposure(s)",
        )
        with atomic_path(plot_path) as tmp:
            figure.savefig(tmp, format="png", dpi=90)
    for row in summary:
        ratio = f", Fe55/PTC {row['fe55_over_ptc']:.4f}" if ptc is not None else ""
        log.info(
            "amp %s: gain %.4f +- %.4f e-/ADU over %d exposure(s), chi2/dof %.2f%s: %s",
            row["amp"],
            row["gain_e_per_adu"],
            row["gain_err_e_per_adu"],
            row["n_exposures"],
            row["chi2_per_dof"],
            ratio,
            "trusted" if row["trusted"] else f"UNTRUSTED ({row['verdict']})",
        )
    if summary.meta["NUNTRUST"]:
        log.warning(
            "%d of %d amplifier(s) untrusted in %s",
            summary.meta["NUNTRUST"],
            len(summary),
            summary_path,
        )


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        gain_paths=list(snakemake.input.gains),  # noqa: F821
        event_paths=list(snakemake.input.events),  # noqa: F821
        summary_path=snakemake.output.summary,  # noqa: F821
        plot_path=snakemake.output.plot,  # noqa: F821
        ptc_path=str(snakemake.input.ptc or ""),  # noqa: F821
        fe55_gain=snakemake.params.fe55_gain,  # noqa: F821
    )
