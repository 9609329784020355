"""Per-sensor Fe55 summary: the gain of each amplifier combined over the sensor's exposures."""

import logging
from collections.abc import Sequence

from dcflow.errors import InputDataError
from dcflow.io import read_table, write_table
from dcflow.joblog import run_logged
from dcflow.stages.fe55 import summarize_gains

log = logging.getLogger("fe55_summary")


def main(*, gain_paths: Sequence[str], summary_path: str, truth_paths: Sequence[str] = ()):
    """Combine the gain tables of one sensor; compare with the truth tables when given."""
    tables = [read_table(path) for path in gain_paths]
    truth = read_table(truth_paths[0]) if truth_paths else None
    try:
        summary = summarize_gains(tables, truth=truth)
    except ValueError as exc:
        raise InputDataError(f"{', '.join(map(str, gain_paths))}: {exc}") from exc
    summary.meta["NEXPOSUR"] = len(tables)
    write_table(summary, summary_path)
    for row in summary:
        log.info(
            "amp %s: gain %.4f +- %.4f e-/ADU over %d exposure(s), chi2/dof %.2f",
            row["amp"],
            row["gain_e_per_adu"],
            row["gain_err_e_per_adu"],
            row["n_exposures"],
            row["chi2_per_dof"],
        )


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        gain_paths=list(snakemake.input.gains),  # noqa: F821
        summary_path=snakemake.output.summary,  # noqa: F821
        truth_paths=list(snakemake.input.truths),  # noqa: F821
    )
