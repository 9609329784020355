"""Simulate one Fe55 exposure of a sensor: the raw frame and its truth table (true gains)."""

import logging
from collections.abc import Mapping
from typing import Any

from dcflow.configs import from_mapping
from dcflow.instruments.fe55_sim import Fe55SimConfig, fe55_hdulist, simulate_fe55_exposure
from dcflow.io import write_fits, write_table
from dcflow.joblog import run_logged

log = logging.getLogger("fe55_simulate")


def main(*, ccd: int, exposure: int, fe55: Mapping[str, Any], raw_path: str, truth_path: str):
    """Write the raw Fe55 frame of (ccd, exposure) and the truth table of its amplifiers."""
    config = from_mapping(Fe55SimConfig, fe55)
    sim = simulate_fe55_exposure(config, ccd=int(ccd), exposure=int(exposure))
    write_fits(fe55_hdulist(sim, ccd=int(ccd), exposure=int(exposure)), raw_path)
    truth = sim.truth.copy()
    truth.meta["CCD"] = int(ccd)
    truth.meta["EXPOSURE"] = int(exposure)
    write_table(truth, truth_path)
    log.info(
        "ccd %s exposure %s: %d X-rays over %d amplifiers",
        ccd,
        exposure,
        len(sim.events),
        len(sim.layout.amps),
    )


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        ccd=snakemake.wildcards.ccd,  # noqa: F821
        exposure=snakemake.wildcards.exposure,  # noqa: F821
        fe55=snakemake.params.fe55,  # noqa: F821
        raw_path=snakemake.output.raw,  # noqa: F821
        truth_path=snakemake.output.truth,  # noqa: F821
    )
