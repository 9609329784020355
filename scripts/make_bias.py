"""Combine a CCD's raw bias exposures into its master bias."""

import logging

from dcflow.configs import from_mapping
from dcflow.errors import InputDataError
from dcflow.instruments import raw_ccd_from_hdu
from dcflow.io import read_fits, write_exposure
from dcflow.joblog import run_logged
from dcflow.stages.calibs import CalibConfig, calib_to_exposure, combine_bias
from dcflow.stages.isr import IsrConfig, assemble_ccd

log = logging.getLogger("make_bias")


def main(*, raws, bias_path, isr_config, calib_config):
    isr_config = from_mapping(IsrConfig, isr_config)
    calib_config = from_mapping(CalibConfig, calib_config)
    if len(raws) < calib_config.min_frames:
        raise InputDataError(
            f"{bias_path}: {len(raws)} bias exposure(s) in the registry for this CCD, "
            f"at least calibs.min_frames={calib_config.min_frames} needed",
            n_frames=len(raws),
        )
    frames = []
    for path in raws:
        raw = raw_ccd_from_hdu(read_fits(path)[0], source=str(path))
        frames.append(assemble_ccd(raw, config=isr_config).image)
    master = combine_bias(frames, config=calib_config)
    write_exposure(calib_to_exposure(master), bias_path)
    log.info("master bias %s from %d frames", bias_path, len(frames))


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        raws=list(snakemake.input.raws),  # noqa: F821
        bias_path=snakemake.output.bias,  # noqa: F821
        isr_config=snakemake.params.isr,  # noqa: F821
        calib_config=snakemake.params.calibs,  # noqa: F821
    )
