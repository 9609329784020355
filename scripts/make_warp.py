"""Warp the CCDs of one visit onto one patch of the sky map."""

import logging

from dcflow.campaign.skymap import (
    SkyMapConfig,
    make_tracts,
    parse_patch_name,
    patch_info,
    patch_wcs,
)
from dcflow.configs import from_mapping
from dcflow.io import read_exposure, write_exposure
from dcflow.joblog import run_logged
from dcflow.stages.warp import WarpConfig, warp_visit

log = logging.getLogger("make_warp")


def main(*, calexps, warp_path, tract, patch, skymap_config, warp_config):
    tract_info = make_tracts(from_mapping(SkyMapConfig, skymap_config))[int(tract)]
    patch_x, patch_y = parse_patch_name(patch)
    info = patch_info(tract_info, patch_x, patch_y)
    exposures = [read_exposure(path) for path in calexps]
    result = warp_visit(
        exposures,
        patch_wcs(tract_info, info),
        info.shape,
        config=from_mapping(WarpConfig, warp_config),
    )
    write_exposure(result.warp, warp_path)
    log.info("%s: %d patch pixels covered", warp_path, result.n_covered_pixels)


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        calexps=list(snakemake.input.calexps),  # noqa: F821
        warp_path=snakemake.output.warp,  # noqa: F821
        tract=snakemake.wildcards.tract,  # noqa: F821
        patch=snakemake.wildcards.patch,  # noqa: F821
        skymap_config=snakemake.params.skymap,  # noqa: F821
        warp_config=snakemake.params.warp,  # noqa: F821
    )
