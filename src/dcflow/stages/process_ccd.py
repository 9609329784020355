"""processCcd: from an ISR-corrected exposure to a calibrated exposure and its source table.

The steps, each a function of its own module:

1. background (`dcflow.stages.background`): sigma-clipped box statistics, spline
   interpolated, subtracted; estimated again after detection from the pixels outside the
   (grown) footprints;
2. detection (`dcflow.stages.detection`): matched-filter smoothing, threshold, footprints
   and peaks (a second peak counts only with a prominence of
   ``detection_min_peak_contrast_sigma``: noise bumps on bright profiles are not sources
   and do not make blends), with cosmic-ray and bad pixels zeroed first so they do not
   become sources;
3. centroids (`dcflow.stages.measurement.windowed_centroids`) and flags;
4. PSF (`dcflow.stages.psf`): an elliptical Moffat fitted to bright isolated unsaturated
   stars, its width a polynomial over the CCD fitted to the widths of many more (fainter)
   isolated stars (seeing changes across the focal plane, and a width off by 1 % biases PSF
   fluxes by ~1 %);
5. PSF-fit positions and fluxes of every source with its neighbours' models subtracted
   (`dcflow.stages.measurement.psf_photometry`), aperture fluxes, and an aperture correction
   (aperture flux over PSF-model flux in the same aperture, fitted as a low-order
   polynomial over the CCD) that puts PSF fluxes on a total-flux scale; the flux errors get
   the background noise the variance plane misses (faint undetected sources, correlated
   pixels), measured with each measurement's weights at empty positions
   (`dcflow.stages.measurement.empty_position_noise`; header ``SKYNPSF``, ``SKYNAP``);
6. astrometry (`dcflow.stages.astrometry`): offset voting against the reference catalogue,
   then TAN-SIP fits;
7. photometric zero point (`dcflow.stages.photocal`) from the aperture-corrected PSF fluxes
   of the astrometric matches.

Measured (this machine, one BLAS thread): on a simulated full-size 2048 x 4612 MegaCam CCD
with ~1200 sources, ~1.1 s of CPU (ISR adds ~0.3 s) and ~200 MB above the input exposure;
scored against the simulator's truth with `dcflow.stages.validation.score_against_truth`
over CCDs 0, 8, 13 and seeing 0.5-1.2", isolated stars with S/N > 100 have 4.5-9.6 mas
astrometric rms, 5.5-7.5 mmag magnitude rms (their photon noise alone gives ~6-7) with
|median| <= 2.7 mmag, and the completeness at S/N >= 10 is >= 99.8 %.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS
from scipy import ndimage
from scipy.spatial import cKDTree

from dcflow.catalog_schema import SRC_COLUMNS, annotate
from dcflow.configs import check_fields, config_field
from dcflow.errors import CalibrationError, InputDataError
from dcflow.exposure import Exposure, MaskPlane
from dcflow.stages.astrometry import fit_astrometry
from dcflow.stages.background import estimate_background
from dcflow.stages.detection import detect_sources
from dcflow.stages.measurement import (
    SourceFlag,
    aperture_fluxes,
    aperture_weight_stamps,
    aperture_weight_table,
    empty_position_noise,
    psf_aperture_ratio_noise,
    psf_photometry,
    windowed_centroids,
)
from dcflow.stages.photocal import fit_zero_point
from dcflow.stages.psf import (
    PSF_RESIDUAL_EXTNAME,
    MoffatPsf,
    PsfFitResult,
    fit_psf,
    fit_psf_residual,
    fit_psf_width,
    local_log_widths,
)
from dcflow.stages.stamps import adaptive_moments, extract_stamps

__all__ = [
    "SRC_COLUMNS",
    "ProcessCcdConfig",
    "ProcessCcdResult",
    "RatioNoise",
    "empty_src_table",
    "process_ccd",
    "src_psf_aperture_ratio_noise",
]

log = logging.getLogger(__name__)

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
_MAG_PER_FLUX = 2.5 / np.log(10.0)

_BAD_BITS = int(MaskPlane.BAD | MaskPlane.SAT | MaskPlane.CR | MaskPlane.NO_DATA)
_DET_ZERO_BITS = int(MaskPlane.BAD | MaskPlane.CR | MaskPlane.NO_DATA)


@dataclass(frozen=True, slots=True)
class ProcessCcdConfig:
    """Configuration of `process_ccd`."""

    background_box_pix: int = config_field(
        128, "Background mesh box size, pixels", minimum=16, maximum=2048
    )
    background_filter_size: int = config_field(
        3, "Median-filter size over the background mesh, boxes (1 = none)", minimum=1, maximum=9
    )
    background_clip_sigma: float = config_field(
        3.0, "Sigma-clipping threshold of the background box statistics, sigma", minimum=1.5
    )
    background_mask_grow_pix: int = config_field(
        6,
        "After detection the background is estimated again as the clipped mean of the pixels "
        "outside the detection footprints grown by this many pixels (the first pass's "
        "mode estimate sits ~0.25 e- below a photon-noise sky, which biases PSF fluxes of "
        "S/N 100 stars by ~1.5 mmag and 3-arcsec aperture fluxes by ~15 mmag); -1 = no "
        "second pass, pixels",
        minimum=-1,
        maximum=50,
    )
    detection_fwhm_arcsec: float = config_field(
        0.8,
        "FWHM of the Gaussian smoothing kernel for detection and of the first centroid "
        "window (the expected seeing), arcsec",
        exclusive_minimum=0.0,
        maximum=10.0,
    )
    detection_threshold_sigma: float = config_field(
        5.0, "Detection threshold in the smoothed image, sigma", minimum=2.0, maximum=1000.0
    )
    detection_min_pixels: int = config_field(
        5, "Minimum above-threshold pixels of a footprint, pixels", minimum=1, maximum=10000
    )
    detection_min_peak_contrast_sigma: float = config_field(
        5.0,
        "A second peak in a footprint counts (as a source, and makes the footprint blended) "
        "only if it rises this far above the highest saddle to higher ground (its "
        "prominence), in smoothed-image noise sigma: the detection threshold with the saddle "
        "for sky (0 = every local maximum)",
        minimum=0.0,
        maximum=1000.0,
    )
    aperture_radius_arcsec: float = config_field(
        3.0, "Radius of the aperture flux (ap_flux), arcsec", exclusive_minimum=0.0, maximum=30.0
    )
    psf_min_snr: float = config_field(
        100.0, "Minimum detection S/N of PSF stars, dimensionless", minimum=5.0
    )
    psf_max_stars: int = config_field(
        60, "Maximum number of PSF stars (the brightest usable), count", minimum=5, maximum=2000
    )
    psf_isolation_arcsec: float = config_field(
        4.0,
        "A PSF star has no other detection within this radius, arcsec",
        minimum=0.0,
        maximum=60.0,
    )
    psf_subsample: int = config_field(
        5,
        "Points per pixel per axis to integrate the PSF model over a pixel",
        minimum=1,
        maximum=15,
    )
    psf_width_order: int = config_field(
        2,
        "Highest polynomial order in (x, y) of the PSF width over the CCD (0 = one width for the "
        "CCD; a width off by 1 % biases PSF fluxes by ~10 mmag); a lower order is used where the "
        "stars' widths do not call for the higher terms (F-test at p = 0.01)",
        minimum=0,
        maximum=3,
    )
    psf_width_min_snr: float = config_field(
        30.0,
        "Minimum detection S/N of the isolated stars whose widths give the PSF width "
        "polynomial, dimensionless (fainter than the shape stars: more of them)",
        minimum=5.0,
    )
    psf_width_max_stars: int = config_field(
        400,
        "Maximum number of stars for the PSF width polynomial (the brightest usable), count",
        minimum=5,
        maximum=5000,
    )
    psf_residual: str = config_field(
        "none",
        "Empirical correction added to the analytic (Moffat) PSF model",
        choices={
            "none": "the analytic model alone",
            "table": "a lookup table of the PSF stars' stacked residuals from the analytic "
            "model (DAOPHOT-style, constant over the CCD), stored with the calexp and used "
            "wherever the model is rendered: real stars' cores and wings are not Moffats",
        },
    )
    psf_residual_oversample: int = config_field(
        2,
        "Nodes per pixel per axis of the PSF residual table (psf_residual: table)",
        minimum=1,
        maximum=4,
    )
    psf_fit_iterations: int = config_field(
        3,
        "Iterations of the PSF fit of positions and fluxes with neighbours subtracted "
        "(0 = fluxes at the windowed centroids)",
        minimum=0,
        maximum=10,
    )
    psf_flux_weighting: str = config_field(
        "uniform",
        "Pixel weights of the PSF flux fit",
        choices={
            "uniform": "equal weights: optimal for sky-limited sources, and least sensitive "
            "to PSF-model errors (measured on cfht_sim: 8-12 mmag rms at S/N > 100 against "
            "10-15 for model weights)",
            "model": "1 / (sky variance + model flux): less photon noise for bright stars, "
            "more weight on the PSF core, so more sensitive to PSF-model errors",
        },
    )
    psf_flux_width: str = config_field(
        "local",
        "PSF width used for each source's PSF flux",
        choices={
            "model": "the PSF model's width at the source's position",
            "local": "the model's width combined with the source's own width fit, weighted by "
            "the measured scatter of star widths about the model and the fit's error: bright "
            "isolated stars take their own width (on SDSS, stars' widths wander 0.8-2 % about "
            "any smooth model, which puts a 4-6 mmag floor under PSF fluxes), faint sources "
            "and sources inconsistent with a point source keep the model's",
        },
    )
    extendedness_threshold: float = config_field(
        0.1,
        "A source is extended (extendedness 1) when its adaptive-moment size exceeds the PSF "
        "model's by more than this fraction and by more than 3 / (its S/N), dimensionless",
        exclusive_minimum=0.0,
        maximum=10.0,
    )
    apcorr_radius_arcsec: float = config_field(
        0.0,
        "Radius of the aperture that defines total fluxes (the aperture correction brings "
        "PSF fluxes to the flux in it, plus the PSF model's light beyond it), arcsec; 0 = "
        "aperture_radius_arcsec. Set it to the reference catalogue's own convention where "
        "the PSF has wings the model does not follow: SDSS PSF magnitudes are corrected to "
        "7.43 arcsec, and on the Stripe 82 frames the 7.43-arcsec aperture holds 1.3-2.4 % "
        "more light than the Moffat model's extrapolation from 3 arcsec",
        minimum=0.0,
        maximum=60.0,
    )
    apcorr_order: int = config_field(
        0,
        "Polynomial order in (x, y) of the aperture correction over the CCD (0 = a constant, "
        "which cancels in the zero point; the PSF model already follows the seeing over the "
        "CCD, and a fitted slope only adds the noise of the bright stars' aperture fluxes)",
        minimum=0,
        maximum=2,
    )
    astrom_max_offset_arcsec: float = config_field(
        10.0, "Largest pointing error searched by offset voting, arcsec", minimum=0.5, maximum=300.0
    )
    astrom_match_radius_arcsec: float = config_field(
        1.5,
        "Match radius once the voted offset is applied, arcsec (later rounds shrink it)",
        exclusive_minimum=0.0,
        maximum=30.0,
    )
    astrom_sip_order: int = config_field(
        3,
        "Total polynomial order of the WCS fit (1 = TAN only, >= 2 TAN-SIP)",
        minimum=1,
        maximum=5,
    )
    astrom_min_snr: float = config_field(
        20.0, "Minimum S/N of detections used for astrometry, dimensionless", minimum=3.0
    )
    astrom_min_matches: int = config_field(
        10, "Fewest reference matches accepted, count", minimum=3, maximum=100000
    )
    astrom_max_rms_arcsec: float = config_field(
        0.25,
        "Largest accepted rms of the reference-matched offsets, arcsec (above it the matches "
        "are taken for chance coincidences)",
        exclusive_minimum=0.0,
        maximum=10.0,
    )
    photcal_min_snr: float = config_field(
        50.0, "Minimum S/N of stars used for the zero point, dimensionless", minimum=3.0
    )
    photcal_min_stars: int = config_field(
        5, "Fewest stars accepted for the zero point, count", minimum=1, maximum=100000
    )
    photcal_clip_sigma: float = config_field(
        3.0, "Clipping threshold of the zero-point fit, sigma", minimum=1.5
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class ProcessCcdResult:
    """Outputs of `process_ccd`.

    Attributes
    ----------
    calexp : dcflow.exposure.Exposure
        Background-subtracted image (e-), mask with DETECTED set, variance (e-^2), calibrated
        WCS, header with ZP, ZPERR, PSFFWHM, ASTRMS, NASTREF, NPHOTREF, BKGMEAN.
    src : astropy.table.Table
        One row per source; columns and units in `SRC_COLUMNS`.
    zero_point : float
        ``mag = zero_point - 2.5 log10(flux_e)`` for total fluxes in electrons.
    zero_point_err : float
        Its standard error, mag.
    psf_fwhm_arcsec : float
        Half-maximum FWHM of the fitted PSF model at the CCD centre, arcsec (header
        ``PSFFWHM``; ``PSFMOMFW`` and ``PSFEFFW`` give the widths to compare with adaptive
        moments of stars and with SDSS's ``psf_width``).
    astrom_rms_mas : float
        rms of the sky offsets of the reference matches, mas.
    n_astrom_matched : int
        Reference matches in the final astrometric fit.
    n_photcal : int
        Stars in the zero-point fit.
    background_mean : float
        Mean sky level subtracted, e-/pixel.
    psf : dcflow.stages.psf.MoffatPsf
        The PSF model at the CCD centre (pixel units).
    psf_fit : dcflow.stages.psf.PsfFitResult
        The spatially varying PSF model (its width a polynomial over the CCD).
    """

    calexp: Exposure
    src: Table
    zero_point: float
    zero_point_err: float
    psf_fwhm_arcsec: float
    astrom_rms_mas: float
    n_astrom_matched: int
    n_photcal: int
    background_mean: float
    psf: MoffatPsf
    psf_fit: PsfFitResult


def empty_src_table(n: int = 0) -> Table:
    """A src table of ``n`` rows with every column of `SRC_COLUMNS` (zeros / False).

    Units and descriptions come from `dcflow.catalog_schema`.
    """
    table = Table({name: np.zeros(n, dtype=col.dtype) for name, col in SRC_COLUMNS.items()})
    return annotate(table, "src")


def _validate(exposure: Exposure, refcat: Table, band: str) -> None:
    if not isinstance(exposure, Exposure):
        raise TypeError(f"exposure must be a dcflow.exposure.Exposure, got {type(exposure)}")
    image = exposure.image
    if image.ndim != 2 or min(image.shape) < 32:
        raise ValueError(f"exposure.image must be 2-d (ny, nx) >= 32 x 32, got {image.shape}")
    if exposure.mask.shape != image.shape or exposure.variance.shape != image.shape:
        raise ValueError(
            f"exposure mask {exposure.mask.shape} / variance {exposure.variance.shape} "
            f"differ from image {image.shape}"
        )
    if exposure.wcs is None or not exposure.wcs.has_celestial:
        raise ValueError("exposure.wcs must be a celestial WCS (the header pointing), got None")
    finite = np.isfinite(image)
    if finite.mean() < 0.5:
        raise InputDataError(
            f"exposure.image is {100 * (1 - finite.mean()):.1f}% non-finite",
            n_nonfinite=int((~finite).sum()),
        )
    missing = [
        c
        for c in ("ra_deg", "dec_deg", f"{band}_mag", f"{band}_mag_err")
        if c not in refcat.colnames
    ]
    if missing:
        raise ValueError(
            f"refcat lacks column(s) {', '.join(missing)} for band {band!r}; "
            f"it has {', '.join(refcat.colnames)}"
        )
    if len(refcat) == 0:
        raise ValueError("refcat is empty")


def _extendedness(image, bad, x, y, psf_table, snr, flags, threshold):
    """1 where a source's adaptive-moment size exceeds the PSF model's there, else 0 or NaN.

    The size is ``(det M)^(1/4)`` of the adaptive second moments
    (`dcflow.stages.stamps.adaptive_moments`) of the source's stamp and of the PSF model at
    its position and phase, on the same stamp. A source is extended when its size exceeds the
    PSF's by more than ``max(threshold, 3 / snr)`` (the moments' noise: a size measured at S/N
    ``s`` scatters by about ``1 / s``); NaN when the moments fail or the stamp reaches the edge.
    The same measure as the Object table's ``size_ratio`` (`dcflow.stages.coadd_measurement`);
    unlike an aperture-to-PSF flux ratio it is barely touched by neighbours a few FWHM away.
    """
    half = psf_table.half_size
    xi, yi = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    stamps, _ = extract_stamps(np.where(bad, 0.0, image), xi, yi, half, fill=0.0)
    model = psf_table.stamps(x - xi, y - yi)
    offsets = np.arange(-half, half + 1)
    sigma0 = max(1.0, half / 4.0)
    sxx, syy, sxy, sflag = adaptive_moments(stamps.astype(float), x - xi, y - yi, offsets, sigma0)
    pxx, pyy, pxy, pflag = adaptive_moments(model, x - xi, y - yi, offsets, sigma0)
    with np.errstate(divide="ignore", invalid="ignore"):
        size_ratio = ((sxx * syy - sxy**2) / (pxx * pyy - pxy**2)) ** 0.25
        allowance = np.maximum(threshold, 3.0 / snr)
    measurable = ~sflag & ~pflag & np.isfinite(size_ratio) & (snr > 0)
    measurable &= (flags & SourceFlag.EDGE) == 0
    return np.where(measurable, (size_ratio > 1.0 + allowance).astype(float), np.nan)


def _poly_design(x, y, nx, ny, order):
    u = 2.0 * x / nx - 1.0
    v = 2.0 * y / ny - 1.0
    cols = [
        u**p * v**q for total in range(order + 1) for p in range(total + 1) for q in [total - p]
    ]
    return np.column_stack(cols)


def _aperture_correction(x, y, ratio, ratio_err, shape, order, floor=0.005):
    """Fit ratio(x, y) as a polynomial with clipping; constant if the stars are few.

    The errors get a floor (``floor``, the scatter of aperture-to-PSF ratios from PSF-model
    errors and light of neighbours in the aperture), and stars are first clipped around
    the median, so that no single bright star with a contaminated aperture sets the fit.
    """
    ny, nx = shape
    good = np.isfinite(ratio) & np.isfinite(ratio_err) & (ratio_err > 0)
    if good.sum() < 3:
        return lambda xx, yy: np.ones_like(np.asarray(xx, float)), 1.0, int(good.sum())
    ratio_err = np.hypot(np.where(good, ratio_err, 1.0), floor)
    resid0 = (ratio - np.median(ratio[good])) / ratio_err
    scatter0 = 1.4826 * np.median(np.abs(resid0[good]))
    first = good & (np.abs(resid0) < 3.0 * max(scatter0, 1.0))
    if first.sum() >= 3:
        good = first
    n_terms = (order + 1) * (order + 2) // 2
    while order > 0 and good.sum() < 5 * n_terms:
        order -= 1
        n_terms = (order + 1) * (order + 2) // 2
    keep = good.copy()
    coef = np.array([np.median(ratio[good])] + [0.0] * (n_terms - 1))
    for _ in range(4):
        a = _poly_design(x[keep], y[keep], nx, ny, order)
        w = 1.0 / ratio_err[keep]
        coef, *_ = np.linalg.lstsq(a * w[:, None], ratio[keep] * w, rcond=None)
        model = _poly_design(x, y, nx, ny, order) @ coef
        resid = (ratio - model) / ratio_err
        scatter = 1.4826 * np.median(np.abs(resid[keep]))
        new_keep = good & (np.abs(resid) < 3.0 * max(scatter, 1.0))
        if new_keep.sum() < n_terms + 2 or np.array_equal(new_keep, keep):
            break
        keep = new_keep

    def evaluate(xx, yy):
        return _poly_design(np.asarray(xx, float), np.asarray(yy, float), nx, ny, order) @ coef

    return evaluate, float(np.median(evaluate(x[keep], y[keep]))), int(keep.sum())


def _psf_flux_half_size(fwhm_pix: float) -> int:
    """Half size of the PSF-flux and local-width stamps, pixels."""
    return int(np.clip(np.ceil(2.0 * fwhm_pix), 4, 15))


def process_ccd(
    exposure: Exposure,
    refcat: Table,
    *,
    band: str,
    config: ProcessCcdConfig = ProcessCcdConfig(),
) -> ProcessCcdResult:
    """Background-subtract, detect, measure and calibrate one CCD exposure.

    Parameters
    ----------
    exposure : dcflow.exposure.Exposure
        ISR-corrected exposure in electrons: ``(ny, nx)`` float32 image with the sky still
        in, int32 mask of `MaskPlane` bits (SAT, BAD, CR...), float32 variance (e-^2), and
        the header WCS (array pixel origin; pointing error up to
        ``config.astrom_max_offset_arcsec``). Not modified.
    refcat : astropy.table.Table
        Reference catalogue with columns ``ra_deg``, ``dec_deg``, ``<band>_mag``,
        ``<band>_mag_err`` covering the CCD.
    band : str
        Band of the exposure, selecting the reference magnitude columns.
    config : ProcessCcdConfig
        Parameters.

    Returns
    -------
    ProcessCcdResult
        Calibrated exposure, source table and calibration figures.

    Raises
    ------
    TypeError, ValueError
        If the inputs have the wrong type, shape or columns.
    dcflow.errors.InputDataError
        If most of the image is not finite.
    dcflow.errors.CalibrationError
        If too few PSF stars, reference matches or zero-point stars are found (the metadata
        carries ``n_matched`` and the counts behind it).
    """
    _validate(exposure, refcat, band)
    cfg = config
    image = exposure.image
    mask = exposure.mask
    variance = exposure.variance
    ny, nx = image.shape
    wcs0 = exposure.wcs
    scale_arcsec = float(np.sqrt(abs(np.linalg.det(wcs0.pixel_scale_matrix)))) * 3600.0

    # 1. Background.
    finite = np.isfinite(image)
    bad = ((mask & _BAD_BITS) != 0) | ~finite
    bkg = estimate_background(
        image,
        mask=bad,
        box_size=cfg.background_box_pix,
        filter_size=cfg.background_filter_size,
        clip_sigma=cfg.background_clip_sigma,
    )
    if not np.isfinite(bkg.mean) or not np.isfinite(bkg.rms) or bkg.rms <= 0:
        raise InputDataError(
            f"background estimate is not usable (mean {bkg.mean}, rms {bkg.rms})",
            background_mean=float(bkg.mean),
            background_rms=float(bkg.rms),
        )
    sub = image - bkg.background
    sub[~finite] = 0.0

    # 2. Detection on an image with CR / bad pixels zeroed.
    det_image = np.where((mask & _DET_ZERO_BITS) != 0, np.float32(0.0), sub)
    fwhm0_pix = cfg.detection_fwhm_arcsec / scale_arcsec
    det = detect_sources(
        det_image,
        noise_rms=bkg.rms,
        fwhm_pix=fwhm0_pix,
        threshold_sigma=cfg.detection_threshold_sigma,
        min_pixels=cfg.detection_min_pixels,
        min_peak_contrast_sigma=cfg.detection_min_peak_contrast_sigma,
    )
    del det_image
    if cfg.background_mask_grow_pix >= 0:
        # Second pass: clipped mean of the sky between the (grown) footprints.
        sources = det.footprints > 0
        if cfg.background_mask_grow_pix > 0:
            sources = ndimage.maximum_filter(sources, size=2 * cfg.background_mask_grow_pix + 1)
        bkg = estimate_background(
            image,
            mask=bad | sources,
            box_size=cfg.background_box_pix,
            filter_size=cfg.background_filter_size,
            clip_sigma=cfg.background_clip_sigma,
            statistic="mean",
        )
        del sources
        sub = image - bkg.background
        sub[~finite] = 0.0
    n_src = det.x_peak.size
    log.info("detected %d sources in %d footprints", n_src, det.n_footprints)
    if n_src < cfg.astrom_min_matches:
        raise CalibrationError(
            f"only {n_src} sources detected (need >= {cfg.astrom_min_matches} for astrometry); "
            "empty or heavily masked exposure",
            n_matched=0,
            n_detected=int(n_src),
        )

    # 3. Centroids with the nominal seeing window.
    sat = (mask & int(MaskPlane.SAT)) != 0
    xc, yc = windowed_centroids(
        sub, det.x_peak, det.y_peak, sigma_pix=fwhm0_pix * _FWHM_TO_SIGMA, bad=bad & ~sat
    )

    # 4. PSF from bright, isolated, unsaturated, unblended stars away from the edges.
    psf_half = int(np.clip(np.ceil(2.0 * fwhm0_pix), 4, 15))
    ap_r = cfg.aperture_radius_arcsec / scale_arcsec
    flag_half = int(np.ceil(max(ap_r, psf_half)))
    xi, yi = np.rint(xc).astype(np.int64), np.rint(yc).astype(np.int64)
    mstamp, minside = extract_stamps(mask, xi, yi, flag_half)
    j = np.arange(-flag_half, flag_half + 1)
    r2 = (j[None, None, :] - (xc - xi)[:, None, None]) ** 2 + (
        j[None, :, None] - (yc - yi)[:, None, None]
    ) ** 2
    in_ap = r2 <= ap_r**2
    in_core = r2 <= max(2.0, fwhm0_pix) ** 2
    flags = np.zeros(n_src, dtype=np.int32)
    sat_stamp = (mstamp & int(MaskPlane.SAT)) != 0
    flags[(in_core & sat_stamp).reshape(n_src, -1).any(axis=1)] |= SourceFlag.SATURATED
    flags[(~minside & in_ap).reshape(n_src, -1).any(axis=1)] |= SourceFlag.EDGE
    edge_psf = (
        (xi - psf_half < 0)
        | (xi + psf_half > nx - 1)
        | (yi - psf_half < 0)
        | (yi + psf_half > ny - 1)
    )
    flags[edge_psf] |= SourceFlag.EDGE
    badpix = (mstamp & int(MaskPlane.BAD | MaskPlane.CR | MaskPlane.NO_DATA)) != 0
    flags[(badpix & in_ap).reshape(n_src, -1).any(axis=1)] |= SourceFlag.BAD_PIXELS
    suspect = (mstamp & int(MaskPlane.SUSPECT)) != 0
    flags[(suspect & in_ap).reshape(n_src, -1).any(axis=1)] |= SourceFlag.SUSPECT
    flags[det.n_peaks_in_footprint > 1] |= SourceFlag.BLENDED
    sat_near = sat_stamp.reshape(n_src, -1).any(axis=1)
    del mstamp, minside, r2, in_ap, in_core, badpix, suspect, sat_stamp

    tree = cKDTree(np.column_stack([xc, yc]))
    n_near = np.array(
        [
            len(n)
            for n in tree.query_ball_point(
                np.column_stack([xc, yc]), cfg.psf_isolation_arcsec / scale_arcsec
            )
        ]
    )
    candidates = np.nonzero(
        (flags == 0) & ~sat_near & (n_near == 1) & (det.significance >= cfg.psf_min_snr)
    )[0]
    if candidates.size < 5:
        # Sparse field: fall back to the best stars down to S/N 20.
        fallback = np.nonzero(
            (flags == 0) & ~sat_near & (n_near == 1) & (det.significance >= 20.0)
        )[0]
        candidates = fallback[:5]
    candidates = candidates[: cfg.psf_max_stars]  # already sorted by significance
    psf_fit = fit_psf(
        sub,
        variance,
        bad,
        xc[candidates],
        yc[candidates],
        fwhm_guess_pix=fwhm0_pix,
        half_size=psf_half,
        subsample=cfg.psf_subsample,
    )
    if cfg.psf_width_order > 0:
        # Only the width stamp must be clean: an aperture reaching off the image or over a
        # masked pixel (EDGE / BAD_PIXELS) does not spoil a width (masked pixels get no
        # weight), and stars near the edges pin the polynomial down where it would
        # otherwise extrapolate.
        stamp_ok = (flags & ~int(SourceFlag.EDGE | SourceFlag.BAD_PIXELS)) == 0
        width_stars = np.nonzero(
            stamp_ok
            & ~edge_psf
            & ~sat_near
            & (n_near == 1)
            & (det.significance >= cfg.psf_width_min_snr)
        )[0][: cfg.psf_width_max_stars]
        psf_fit = fit_psf_width(
            psf_fit, sub, variance, bad, xc[width_stars], yc[width_stars], order=cfg.psf_width_order
        )
    if cfg.psf_residual == "table":
        shape_stars = candidates[psf_fit.used]
        psf_fit = fit_psf_residual(
            psf_fit,
            sub,
            variance,
            bad,
            xc[shape_stars],
            yc[shape_stars],
            half_size=_psf_flux_half_size(psf_fit.psf.fwhm_pix),
            oversample=cfg.psf_residual_oversample,
        )
    psf = psf_fit.psf
    used_psf = np.zeros(n_src, dtype=bool)
    used_psf[candidates[psf_fit.used]] = True
    fwhm_pix = psf.fwhm_pix

    # 5. PSF-fit positions and fluxes (neighbours subtracted), then aperture fluxes there.
    phot_half = _psf_flux_half_size(fwhm_pix)
    model_table = psf_fit.phase_table(phot_half, xc, yc)  # the PSF width at each source
    width_offset = np.zeros(n_src)
    if cfg.psf_flux_width == "local":
        clean = np.nonzero(
            ((flags & ~int(SourceFlag.EDGE | SourceFlag.BAD_PIXELS)) == 0)
            & ~edge_psf
            & ~sat_near
            & (n_near == 1)
        )[0]
        local = local_log_widths(
            psf_fit,
            sub,
            variance,
            bad,
            xc[clean],
            yc[clean],
            reference=det.significance[clean] >= cfg.psf_width_min_snr,
            half_size=phot_half,
        )
        width_offset[clean] = local.log_width_offset
        intrinsic_width_scatter, n_width_reference = local.intrinsic_scatter, local.n_reference
        table = psf_fit.phase_table(phot_half, xc, yc, log_width_offset=width_offset)
    else:
        intrinsic_width_scatter, n_width_reference = float("nan"), 0
        table = model_table
    xc, yc, psf_flux, psf_err, psf_chi2 = psf_photometry(
        sub,
        variance,
        bad,
        xc,
        yc,
        table,
        n_iter=cfg.psf_fit_iterations,
        sky_variance=bkg.rms**2 if cfg.psf_flux_weighting == "model" else None,
    )
    ap_flux, ap_err = aperture_fluxes(sub, variance, xc, yc, radius_pix=ap_r)
    # Background noise the variance plane misses (faint undetected sources, correlated
    # pixels), measured at empty positions with each measurement's own weights and added
    # to the flux errors: the errors then describe the sky-limited scatter actually seen.
    blocked = bad | (det.footprints > 0)
    grow = max(cfg.background_mask_grow_pix, 0)
    if grow > 0:
        blocked = ndimage.maximum_filter(blocked, size=2 * grow + 1)
    centre = psf_fit.psf_at((nx - 1) / 2.0, (ny - 1) / 2.0).render(phot_half)
    ap_table = aperture_weight_table(ap_r)
    mid = (ap_table.shape[0] - 1) // 2
    sky_noise = {}
    for name, weights in (
        ("psf", centre / (centre * centre).sum()),
        ("ap", ap_table[mid, mid]),
    ):
        measured, predicted, n_empty = empty_position_noise(sub, variance, blocked, weights)
        sky_noise[name] = (measured, predicted)
        log.debug(
            "%s flux at %d empty positions: variance %.4g, predicted %.4g",
            name,
            n_empty,
            measured,
            predicted,
        )
    del blocked

    def _excess(name):
        measured, predicted = sky_noise[name]
        return max(measured - predicted, 0.0) if np.isfinite(measured) else 0.0

    psf_err = np.sqrt(psf_err**2 + _excess("psf"))
    ap_err = np.sqrt(ap_err**2 + _excess("ap"))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = psf_flux / psf_err
    # Aperture correction: PSF flux -> flux in the calibration aperture (the model's light
    # beyond it added), from bright stars alone in that aperture and wholly on the image.
    calib_r = (cfg.apcorr_radius_arcsec or cfg.aperture_radius_arcsec) / scale_arcsec
    if calib_r == ap_r:
        calib_flux, calib_err, n_near_calib = ap_flux, ap_err, n_near
    else:
        calib_flux, calib_err = aperture_fluxes(sub, variance, xc, yc, radius_pix=calib_r)
        n_near_calib = np.array(
            [len(n) for n in tree.query_ball_point(np.column_stack([xc, yc]), calib_r)]
        )
    inside_calib = (
        (xc >= calib_r) & (xc <= nx - 1 - calib_r) & (yc >= calib_r) & (yc <= ny - 1 - calib_r)
    )
    frac = psf_fit.enclosed_fraction(calib_r, xc, yc, log_width_offset=width_offset)
    alone = (flags == 0) & (n_near == 1) & (n_near_calib == 1) & inside_calib
    bright = alone & (snr >= cfg.psf_min_snr)
    if bright.sum() < 10:
        bright = alone & (snr >= 20.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = calib_flux / (psf_flux * frac)
        ratio_err = ratio * np.hypot(calib_err / calib_flux, psf_err / psf_flux)
    apcorr_fn, apcorr_median, n_apcorr = _aperture_correction(
        xc[bright], yc[bright], ratio[bright], ratio_err[bright], (ny, nx), cfg.apcorr_order
    )
    apcorr = apcorr_fn(xc, yc)
    log.debug("aperture correction median %.4f from %d stars", apcorr_median, n_apcorr)
    total_flux = psf_flux * apcorr
    # Star/galaxy separation against the model's width: a source's own width would absorb
    # part of a compact galaxy's size.
    extendedness = _extendedness(
        sub, bad, xc, yc, model_table, snr, flags, cfg.extendedness_threshold
    )

    # 6. Astrometry.
    # SUSPECT pixels are doubtful, not known bad (SDSS: the unchecked frame border, ghosts):
    # a source touching them stays out of the PSF model and the aperture correction (its
    # aperture flux is in doubt), but its PSF-fit centroid and flux still calibrate the frame,
    # where the zero point's clipping removes it if it is off.
    usable = np.nonzero(((flags & ~int(SourceFlag.SUSPECT)) == 0) & (snr >= cfg.astrom_min_snr))[0]
    band_mag = np.asarray(refcat[f"{band}_mag"], float)
    astro = fit_astrometry(
        xc[usable],
        yc[usable],
        total_flux[usable],
        np.asarray(refcat["ra_deg"], float),
        np.asarray(refcat["dec_deg"], float),
        band_mag,
        wcs0,
        (ny, nx),
        max_offset_arcsec=cfg.astrom_max_offset_arcsec,
        match_radius_arcsec=cfg.astrom_match_radius_arcsec,
        sip_order=cfg.astrom_sip_order,
        min_matches=cfg.astrom_min_matches,
        max_rms_arcsec=cfg.astrom_max_rms_arcsec,
    )
    wcs: WCS = astro.wcs
    det_idx = usable[astro.det_index]
    used_astrom = np.zeros(n_src, dtype=bool)
    used_astrom[det_idx] = True
    ra, dec = wcs.all_pix2world(xc, yc, 0)

    # 7. Zero point from the matched stars.
    pc_sel = snr[det_idx] >= cfg.photcal_min_snr
    pc_src = det_idx[pc_sel]
    pc_ref = astro.ref_index[pc_sel]
    try:
        photo = fit_zero_point(
            total_flux[pc_src],
            psf_err[pc_src] * apcorr[pc_src],
            band_mag[pc_ref],
            np.asarray(refcat[f"{band}_mag_err"], float)[pc_ref],
            clip_sigma=cfg.photcal_clip_sigma,
            min_stars=cfg.photcal_min_stars,
        )
    except CalibrationError as err:
        err.metadata.update(n_matched=int(astro.n_matched))
        raise
    used_photcal = np.zeros(n_src, dtype=bool)
    used_photcal[pc_src[photo.used]] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(total_flux > 0, photo.zero_point - 2.5 * np.log10(total_flux), np.nan)
        mag_err = np.where(psf_flux > 0, _MAG_PER_FLUX * psf_err / np.abs(psf_flux), np.nan)

    src = empty_src_table(n_src)
    src["id"] = np.arange(1, n_src + 1)
    src["x"], src["y"] = xc, yc
    src["ra_deg"], src["dec_deg"] = ra, dec
    src["ap_flux"], src["ap_flux_err"] = ap_flux, ap_err
    src["psf_flux"], src["psf_flux_err"], src["psf_chi2"] = psf_flux, psf_err, psf_chi2
    src["apcorr"] = apcorr
    src["snr"] = snr
    src["mag"], src["mag_err"] = mag, mag_err
    src["extendedness"] = extendedness
    src["flags"] = flags
    src["used_psf"], src["used_astrom"], src["used_photcal"] = used_psf, used_astrom, used_photcal
    annotate(src, "src")  # assigning a column replaces it: units and descriptions go on last

    centre_psf = psf_fit.psf_at((nx - 1) / 2.0, (ny - 1) / 2.0)
    psf_fwhm_arcsec = centre_psf.fwhm_pix * scale_arcsec
    out_mask = mask.copy()
    out_mask[det.footprints > 0] |= int(MaskPlane.DETECTED)
    header = exposure.header.copy()
    header["ZP"] = (photo.zero_point, "mag zero point: mag = ZP - 2.5 log10(flux_e)")
    header["ZPERR"] = (photo.zero_point_err, "zero-point standard error, mag")
    header["PSFFWHM"] = (psf_fwhm_arcsec, "PSF model half-maximum FWHM at centre, arcsec")
    header["PSFBETA"] = (psf.beta, "PSF Moffat beta")
    header["PSFMOMFW"] = (
        centre_psf.moments_fwhm_pix() * scale_arcsec,
        "PSF 2.3548 x adaptive-moment sigma, arcsec",
    )
    header["PSFEFFW"] = (
        centre_psf.effective_fwhm_pix() * scale_arcsec,
        "PSF noise-equivalent-area width, arcsec",
    )
    header["APCORR"] = (apcorr_median, "median aperture correction of PSF fluxes")
    header["PSFWSCAT"] = (
        intrinsic_width_scatter if np.isfinite(intrinsic_width_scatter) else -1.0,
        "stars ln(width) scatter about model, -1 unused",
    )
    header["PSFWNREF"] = (n_width_reference, "stars measuring PSFWSCAT")
    for key, card in psf_fit.to_header().items():
        if key != "PSFBETA":
            header[key] = card
    header["APRADIUS"] = (cfg.aperture_radius_arcsec, "radius of src ap_flux, arcsec")
    header["APCRAD"] = (calib_r * scale_arcsec, "aperture of total fluxes (APCORR), arcsec")
    header["EXTFRAC"] = (cfg.extendedness_threshold, "src extendedness: least size excess over PSF")
    header["ASTRMS"] = (astro.rms_mas, "rms of reference-matched offsets, mas")
    header["NASTREF"] = (astro.n_matched, "reference stars in the astrometric fit")
    header["NPHOTREF"] = (photo.n_used, "reference stars in the zero-point fit")
    for name, what in (("psf", "PSF"), ("ap", "aperture")):
        measured, predicted = sky_noise[name]
        ratio = float(np.sqrt(measured / predicted)) if predicted > 0 else float("nan")
        header[f"SKYN{name.upper()}"] = (
            ratio if np.isfinite(ratio) else -1.0,
            f"{what} flux noise, empty sky / variance plane",
        )
    header["BKGMEAN"] = (bkg.mean, "mean background subtracted, e-/pixel")
    header["BKGRMS"] = (bkg.rms, "background noise, e-/pixel")
    residual_table = psf_fit.residual_table()
    calexp = Exposure(
        image=sub.astype(np.float32, copy=False),
        mask=out_mask,
        variance=variance.copy(),
        wcs=wcs,
        header=header,
        extra_planes={} if residual_table is None else {PSF_RESIDUAL_EXTNAME: residual_table},
    )
    return ProcessCcdResult(
        calexp=calexp,
        src=src,
        zero_point=photo.zero_point,
        zero_point_err=photo.zero_point_err,
        psf_fwhm_arcsec=psf_fwhm_arcsec,
        astrom_rms_mas=astro.rms_mas,
        n_astrom_matched=astro.n_matched,
        n_photcal=photo.n_used,
        background_mean=bkg.mean,
        psf=centre_psf,
        psf_fit=psf_fit,
    )


@dataclass(frozen=True, slots=True)
class RatioNoise:
    """What `src_psf_aperture_ratio_noise` finds, per source.

    Attributes
    ----------
    relative_noise : numpy.ndarray
        Standard deviation of ``psf_flux / ap_flux`` over its value, from the variance plane.
    relative_noise_with_sky : numpy.ndarray
        The same with the empty-position sky excess added.
    aperture_fraction : numpy.ndarray
        The PSF model's light within the aperture at the width the PSF flux used: the ratio
        a noiseless star of that PSF has is ``1 / aperture_fraction``.
    width_shrink : numpy.ndarray
        Share of the star's own width offset the PSF flux took (0: the model's width).
    """

    relative_noise: np.ndarray
    relative_noise_with_sky: np.ndarray
    aperture_fraction: np.ndarray
    width_shrink: np.ndarray


def src_psf_aperture_ratio_noise(
    result: ProcessCcdResult,
    index: np.ndarray,
    *,
    config: ProcessCcdConfig = ProcessCcdConfig(),
) -> RatioNoise:
    """Noise of ``psf_flux / ap_flux`` of src rows, as processCcd measured both.

    The check that PSF fluxes are at the noise floor (issue 15) compares the scatter of bright
    stars' PSF / aperture flux ratios with this. Both fluxes are sums over the same pixels,
    and with ``psf_flux_width: local`` the PSF's width follows each star's own noisy width,
    so the PSF flux is more like the aperture flux than a fixed filter would be: with
    `psf_aperture_ratio_noise` both effects are taken to first order. The star's own width
    offset and error are measured again as processCcd measured them; the share it took is
    ``s^2 / (s^2 + err^2)`` with ``s`` the header's ``PSFWSCAT``. The sky noise the variance
    plane misses is measured at empty positions with each star's own ratio weights.

    Parameters
    ----------
    result : ProcessCcdResult
        processCcd's output.
    index : numpy.ndarray
        Rows of ``result.src`` (isolated, unflagged sources: a neighbour's light or a masked
        pixel is not noise).
    config : ProcessCcdConfig
        The configuration processCcd ran with.

    Returns
    -------
    RatioNoise
        Per source: the ratio's relative noise without and with the sky excess, and the
        model's aperture fraction at the width used (a star's PSF flux times it is what its
        aperture should hold: with each star's own width, the 3" aperture's share of the
        light changes from star to star, 0.1 % per 1 % of width on SDSS).
    """
    cfg = config
    index = np.asarray(index, dtype=np.int64)
    calexp, psf_fit = result.calexp, result.psf_fit
    image = np.asarray(calexp.image, dtype=float)
    variance = np.asarray(calexp.variance, dtype=float)
    bad = ((calexp.mask & _BAD_BITS) != 0) | ~np.isfinite(image)
    src = result.src[index]
    x, y = np.asarray(src["x"], float), np.asarray(src["y"], float)
    scale_arcsec = float(np.sqrt(abs(np.linalg.det(calexp.wcs.pixel_scale_matrix)))) * 3600.0
    ap_r = cfg.aperture_radius_arcsec / scale_arcsec
    phot_half = _psf_flux_half_size(psf_fit.psf.fwhm_pix)
    shrink = np.zeros(index.size)
    offset = np.zeros(index.size)
    if cfg.psf_flux_width == "local" and index.size:
        local = local_log_widths(
            psf_fit,
            image,
            variance,
            bad,
            x,
            y,
            reference=np.ones(index.size, bool),
            half_size=phot_half,
        )
        scatter = max(float(calexp.header.get("PSFWSCAT", 0.0)), 0.0)
        err, own = local.star_offset_err, local.star_offset
        total = np.hypot(scatter, err)
        consistent = np.isfinite(err) & (np.abs(np.nan_to_num(own)) <= 3.0 * total)
        shrink = np.where(consistent, scatter**2 / np.where(consistent, total**2, 1.0), 0.0)
        offset = shrink * np.nan_to_num(own)
    ap_half = int(np.ceil(ap_r + 0.5))
    half = max(phot_half, ap_half)
    xi, yi = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    var, inside = extract_stamps(variance, xi, yi, half)
    data = extract_stamps(image, xi, yi, half)[0]
    usable = inside & np.isfinite(data) & np.isfinite(var)
    in_fit = usable & ~extract_stamps(bad, xi, yi, half)[0] & (var > 0)
    j = np.abs(np.arange(-half, half + 1))
    in_fit &= (np.maximum(j[:, None], j[None, :]) <= phot_half)[None]

    def psf_stamps(d_ln_width):
        table = psf_fit.phase_table(half, x, y, log_width_offset=offset + d_ln_width)
        return np.where(in_fit, table.stamps(x - xi, y - yi), 0.0)

    step = 1e-3
    psf = psf_stamps(0.0)
    d_psf = (psf_stamps(step) - psf_stamps(-step)) / (2 * step)
    w_ap = np.zeros(psf.shape)
    w_ap[:, half - ap_half : half + ap_half + 1, half - ap_half : half + ap_half + 1] = (
        aperture_weight_stamps(ap_r, x - xi, y - yi)
    )
    w_ap = np.where(usable, w_ap, 0.0)
    noise, weights = psf_aperture_ratio_noise(
        psf,
        d_psf,
        w_ap,
        np.where(usable, var, 0.0),
        np.asarray(src["psf_flux"], float),
        np.asarray(src["ap_flux"], float),
        shrink,
    )
    blocked = bad | ((calexp.mask & int(MaskPlane.DETECTED)) != 0)
    grow = max(cfg.background_mask_grow_pix, 0)
    if grow > 0:
        blocked = ndimage.maximum_filter(blocked, size=2 * grow + 1)
    measured, predicted, _ = empty_position_noise(
        image, variance, blocked, np.nan_to_num(weights, nan=0.0)
    )
    excess = np.where(np.isfinite(measured), np.maximum(measured - predicted, 0.0), 0.0)
    return RatioNoise(
        relative_noise=noise,
        relative_noise_with_sky=np.sqrt(noise**2 + excess),
        aperture_fraction=psf_fit.enclosed_fraction(ap_r, x, y, log_width_offset=offset),
        width_shrink=shrink,
    )
