"""Forced photometry of every CCD of one visit at the Object positions of its patches."""

import logging

from astropy.table import vstack

from dcflow.configs import from_mapping
from dcflow.io import read_exposure, read_table, write_table
from dcflow.joblog import run_logged
from dcflow.stages.forced_photometry import ForcedPhotometryConfig, forced_photometry

log = logging.getLogger("forced_photometry")


def main(*, calexps, objects, forced_paths, config):
    config = from_mapping(ForcedPhotometryConfig, config)
    catalog = vstack([read_table(path) for path in objects], metadata_conflicts="silent")
    for calexp_path, forced_path in zip(calexps, forced_paths, strict=True):
        result = forced_photometry(read_exposure(calexp_path), catalog, config=config)
        write_table(result.table, forced_path)
        log.info(
            "%s: %d Objects, aperture correction %.4f",
            forced_path, len(result.table), result.aperture_correction,
        )  # fmt: skip


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        calexps=list(snakemake.input.calexps),  # noqa: F821
        objects=list(snakemake.input.objects),  # noqa: F821
        forced_paths=list(snakemake.output.forced),  # noqa: F821
        config=snakemake.params.forced_photometry,  # noqa: F821
    )
