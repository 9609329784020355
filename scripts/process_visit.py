"""ISR (raw cameras) and processCcd of every CCD of one visit: calexp and src per CCD.

A CCD that fails (unreadable raw, NaN amplifier, failed calibration) does not stop the others
from being tried: every failure is logged with the file and the problem, then the job fails.
SDSS corrected frames need no ISR: the instrument layer turns their fpC, fpM, psField and
tsField files into the exposure and reference catalog processCcd takes.
"""

import logging

from dcflow.configs import from_mapping
from dcflow.errors import StageError
from dcflow.instruments import raw_ccd_from_hdu, sdss
from dcflow.io import read_exposure, read_fits, read_table, write_exposure, write_table
from dcflow.joblog import run_logged
from dcflow.stages.calibs import bias_from_exposure, flat_from_exposure
from dcflow.stages.isr import IsrConfig, run_isr
from dcflow.stages.process_ccd import ProcessCcdConfig, process_ccd

log = logging.getLogger("process_visit")


def load_raw_camera(raw_path, bias_path, flat_path, isr_config):
    """A raw camera's CCD after ISR with its master bias and flat."""
    raw = raw_ccd_from_hdu(read_fits(raw_path)[0], source=str(raw_path))
    bias = bias_from_exposure(read_exposure(bias_path))
    flat = flat_from_exposure(read_exposure(flat_path))
    return run_isr(raw, bias=bias, flat=flat, config=isr_config).exposure


def load_sdss_frame(fpc_path, fpm_path, psfield_path, tsfield_path, ref_stars):
    """An SDSS frame as an exposure in electrons, with the reference stars it covers."""
    frame = sdss.prepare_frame(
        read_fits(fpc_path), read_fits(fpm_path), read_fits(psfield_path),
        read_fits(tsfield_path), ref_stars,
    )  # fmt: skip
    return frame.exposure, frame.refcat


def main(
    *, instrument, raws, biases, flats, masks, psfields, tsfields, refcat_path, calexps, srcs,
    band, isr_config, config,
):  # fmt: skip
    isr_config = from_mapping(IsrConfig, isr_config)
    config = from_mapping(ProcessCcdConfig, config)
    refcat = read_table(refcat_path)
    failures = []
    for i, raw_path in enumerate(raws):
        try:
            if instrument == "sdss":
                exposure, ccd_refcat = load_sdss_frame(
                    raw_path, masks[i], psfields[i], tsfields[i], refcat
                )
            else:
                exposure = load_raw_camera(raw_path, biases[i], flats[i], isr_config)
                ccd_refcat = refcat
            try:
                result = process_ccd(exposure, ccd_refcat, band=band, config=config)
            except StageError as exc:
                raise type(exc)(f"{raw_path}: {exc}", **exc.metadata) from exc
        except StageError as exc:
            log.error("%s: %s %s", type(exc).__name__, exc, exc.metadata or "")
            failures.append(str(exc))
            continue
        write_exposure(result.calexp, calexps[i])
        write_table(result.src, srcs[i])
        log.info(
            "%s: %d sources, zero point %.3f, PSF FWHM %.2f arcsec, astrometric rms %.1f mas",
            calexps[i], len(result.src), result.zero_point, result.psf_fwhm_arcsec,
            result.astrom_rms_mas,
        )  # fmt: skip
    if failures:
        raise StageError(
            f"{len(failures)} of {len(raws)} CCDs failed: " + "; ".join(failures),
            n_failed=len(failures),
        )


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        instrument=snakemake.params.instrument,  # noqa: F821
        raws=list(snakemake.input.raws),  # noqa: F821
        biases=list(snakemake.input.biases),  # noqa: F821
        flats=list(snakemake.input.flats),  # noqa: F821
        masks=list(snakemake.input.masks),  # noqa: F821
        psfields=list(snakemake.input.psfields),  # noqa: F821
        tsfields=list(snakemake.input.tsfields),  # noqa: F821
        refcat_path=snakemake.input.refcat,  # noqa: F821
        calexps=list(snakemake.output.calexps),  # noqa: F821
        srcs=list(snakemake.output.srcs),  # noqa: F821
        band=snakemake.params.band,  # noqa: F821
        isr_config=snakemake.params.isr,  # noqa: F821
        config=snakemake.params.process_ccd,  # noqa: F821
    )
