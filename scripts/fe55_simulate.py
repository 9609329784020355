"""Simulate one Fe55 exposure of a sensor: the raw frame, its truth table (true gains), and the
flat pair and bias pair taken with it (for the photon-transfer gain)."""

import logging
from collections.abc import Mapping
from typing import Any

from dcflow.configs import from_mapping
from dcflow.instruments.fe55_sim import (
    Fe55SimConfig,
    fe55_hdulist,
    pair_hdulist,
    simulate_fe55_exposure,
    simulate_sensor_flats,
)
from dcflow.io import write_fits, write_table
from dcflow.joblog import run_logged

log = logging.getLogger("fe55_simulate")


def main(
    *,
    ccd: int,
    exposure: int,
    fe55: Mapping[str, Any],
    raw_path: str,
    truth_path: str,
    flat_path: str,
    bias_path: str,
):
    """Write the raw Fe55 frame of (ccd, exposure), its truth table, a flat and a bias pair."""
    config = from_mapping(Fe55SimConfig, fe55)
    sim = simulate_fe55_exposure(config, ccd=int(ccd), exposure=int(exposure))
    write_fits(fe55_hdulist(sim, ccd=int(ccd), exposure=int(exposure)), raw_path)
    truth = sim.truth.copy()
    truth.meta["CCD"] = int(ccd)
    truth.meta["EXPOSURE"] = int(exposure)
    write_table(truth, truth_path)
    flat_pair, bias_pair, _ = simulate_sensor_flats(config, ccd=int(ccd), exposure=int(exposure))
    for pair, kind, path in ((flat_pair, "FLAT", flat_path), (bias_pair, "BIAS", bias_path)):
        write_fits(
            pair_hdulist(pair, sim.layout, imagetyp=kind, ccd=int(ccd), exposure=int(exposure)),
            path,
        )
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
        flat_path=snakemake.output.flat,  # noqa: F821
        bias_path=snakemake.output.bias,  # noqa: F821
    )
