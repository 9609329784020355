"""ISR and processCcd of every CCD of one visit: calexp and src per CCD.

A CCD that fails (unreadable raw, NaN amplifier, failed calibration) does not stop the others
from being tried: every failure is logged with the file and the problem, then the job fails.
"""

import logging

from dcflow.configs import from_mapping
from dcflow.errors import StageError
from dcflow.instruments import raw_ccd_from_hdu
from dcflow.io import read_exposure, read_fits, read_table, write_exposure, write_table
from dcflow.joblog import run_logged
from dcflow.stages.calibs import bias_from_exposure, flat_from_exposure
from dcflow.stages.isr import IsrConfig, run_isr
from dcflow.stages.process_ccd import ProcessCcdConfig, process_ccd

log = logging.getLogger("process_visit")


def process_one(raw_path, bias_path, flat_path, refcat, band, isr_config, config):
    """ISR + processCcd of one CCD; returns the ProcessCcdResult."""
    raw = raw_ccd_from_hdu(read_fits(raw_path)[0], source=str(raw_path))
    bias = bias_from_exposure(read_exposure(bias_path))
    flat = flat_from_exposure(read_exposure(flat_path))
    exposure = run_isr(raw, bias=bias, flat=flat, config=isr_config).exposure
    try:
        return process_ccd(exposure, refcat, band=band, config=config)
    except (StageError, ValueError) as exc:
        raise type(exc)(f"{raw_path}: {exc}", **getattr(exc, "metadata", {})) from exc


def main(*, raws, biases, flats, refcat_path, calexps, srcs, band, isr_config, config):
    isr_config = from_mapping(IsrConfig, isr_config)
    config = from_mapping(ProcessCcdConfig, config)
    refcat = read_table(refcat_path)
    failures = []
    for raw_path, bias_path, flat_path, calexp_path, src_path in zip(
        raws, biases, flats, calexps, srcs, strict=True
    ):
        try:
            result = process_one(raw_path, bias_path, flat_path, refcat, band, isr_config, config)
        except StageError as exc:
            log.error("%s: %s %s", type(exc).__name__, exc, exc.metadata or "")
            failures.append(str(exc))
            continue
        write_exposure(result.calexp, calexp_path)
        write_table(result.src, src_path)
        log.info(
            "%s: %d sources, zero point %.3f, PSF FWHM %.2f arcsec, astrometric rms %.1f mas",
            calexp_path,
            len(result.src),
            result.zero_point,
            result.psf_fwhm_arcsec,
            result.astrom_rms_mas,
        )
    if failures:
        raise StageError(
            f"{len(failures)} of {len(raws)} CCDs failed: " + "; ".join(failures),
            n_failed=len(failures),
        )


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        raws=list(snakemake.input.raws),  # noqa: F821
        biases=list(snakemake.input.biases),  # noqa: F821
        flats=list(snakemake.input.flats),  # noqa: F821
        refcat_path=snakemake.input.refcat,  # noqa: F821
        calexps=list(snakemake.output.calexps),  # noqa: F821
        srcs=list(snakemake.output.srcs),  # noqa: F821
        band=snakemake.params.band,  # noqa: F821
        isr_config=snakemake.params.isr,  # noqa: F821
        config=snakemake.params.process_ccd,  # noqa: F821
    )
