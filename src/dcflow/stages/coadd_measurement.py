"""Detect Objects on the multi-band detection image and measure them in every filter's coadd.

Detection: local maxima of the chi-square significance image above a threshold whose signed
per-filter S/N sum is positive (chi-square responds to holes too). A patch keeps only the
peaks inside its *inner* box, so each Object belongs to exactly one patch of its tract, and
its id is built from the tract and the peak's tract pixel,
``object_id = tract << 40 | y_tract << 20 | x_tract``: stable across reruns (deterministic
peaks) and unique across the tract without any coordination between patch jobs.

Measurement, per filter, at each peak: a Gaussian-weighted centroid (weight of the PSF's
width, iterated), the PSF flux (`psf_photometry`, aperture-corrected with bright isolated
point sources of the same coadd), a circular-aperture flux, and adaptive second moments
(elliptical Gaussian weight iterated to match the source, exact for Gaussian sources). The
reference filter of an Object is the one where its PSF S/N is highest; its position
(``ra_deg``, ``dec_deg``) and extendedness come from there. Extendedness is 1 when the source's
adaptive size ``T = Ixx + Iyy`` exceeds that of the PSF model at the same position by more
than ``extendedness_size_threshold`` (fractionally), 0 otherwise, NaN if unmeasured.

Deblending (`dcflow.stages.deblend`): the detection footprints (significance above the
threshold, grown by ``deblend_grow_fwhm``) that hold several peaks (found again on the
unsmoothed significance image, which resolves closer pairs, and in the residual of a fit of
the known peaks, which shows a faint neighbour on a bright one's shoulder) are shared among
them by templates fitted simultaneously; each child is measured, in every filter, on its own
share of the footprint, and carries ``parent`` (the family's id: the ``object_id`` of its
first peak) and ``deblend_nChild`` (peaks in the footprint). Isolated peaks are measured on the
unchanged coadd.
Unlike LSST, there is no parent row: every row is a peak (forced photometry then measures the
same children).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage

from dcflow.campaign.skymap import PatchInfo
from dcflow.catalog_schema import annotate, flux_unit_of_zero_point
from dcflow.configs import check_fields, config_field
from dcflow.errors import InputDataError
from dcflow.exposure import Exposure, MaskPlane
from dcflow.stages.deblend import (
    TEMPLATES,
    child_layers,
    deblend,
    footprint_peaks,
    grow_footprints,
    residual_peaks,
)
from dcflow.stages.forced_photometry import (
    FWHM_PER_SIGMA,
    MixturePsf,
    aperture_correction,
    aperture_correction_field,
    aperture_photometry,
    isolated,
    psf_photometry,
)
from dcflow.stages.multiband import MultibandResult
from dcflow.stages.stamps import adaptive_moments, extract_stamps

__all__ = [
    "CoaddMeasurementConfig",
    "CoaddMeasurementResult",
    "detect_peaks",
    "gaussian_centroid",
    "make_object_ids",
    "measure_coadds",
]

log = logging.getLogger(__name__)

_BAD = int(MaskPlane.BAD | MaskPlane.SAT | MaskPlane.CR | MaskPlane.NO_DATA)
_PER_FILTER_COLUMNS = (
    ("centroid_x", float),
    ("centroid_y", float),
    ("psf_flux", float),
    ("psf_flux_err", float),
    ("psf_flux_flag", bool),
    ("psf_inexact", bool),
    ("ap_flux", float),
    ("ap_flux_err", float),
    ("ap_flux_flag", bool),
    ("ixx", float),
    ("iyy", float),
    ("ixy", float),
    ("moments_flag", bool),
)


@dataclass(frozen=True, slots=True)
class CoaddMeasurementConfig:
    """Configuration of `measure_coadds`."""

    detect_threshold_sigma: float = config_field(
        5.0, "Detection threshold on the chi-square significance image, sigma", minimum=0.0
    )
    peak_min_separation_pixels: int = config_field(
        3, "Smallest distance between two peaks, patch pixels", minimum=1
    )
    stamp_radius_fwhm: float = config_field(
        2.0, "Half-size of the PSF-fit stamp, in units of the PSF FWHM", exclusive_minimum=0.0
    )
    moments_radius_fwhm: float = config_field(
        4.0,
        "Half-size of the adaptive-moments stamp, in units of the PSF FWHM",
        exclusive_minimum=0.0,
    )
    aperture_radius_arcsec: float = config_field(
        2.0,
        "Radius of the aperture flux (and of the aperture correction), arcsec",
        exclusive_minimum=0.0,
    )
    extendedness_size_threshold: float = config_field(
        0.15,
        "Fractional excess of adaptive size T over the PSF's above which a source is "
        "extended (dimensionless)",
        exclusive_minimum=0.0,
    )
    apcorr_min_snr: float = config_field(
        50.0, "Least PSF S/N of a star used for the aperture correction", minimum=0.0
    )
    apcorr_min_stars: int = config_field(
        10, "Fewest stars for an aperture correction (else none is applied)", minimum=1
    )
    apcorr_order: int = config_field(
        0,
        "Polynomial order in (x, y) of the aperture correction over the patch (0: one value); "
        "lowered automatically when there are fewer than 5 stars per term. 0 by default: in "
        "dense test fields a plane fitted to contaminated apertures cost 3 mmag at S/N > 100",
        minimum=0,
        maximum=3,
    )

    deblend_template: str = config_field(
        "mixed",
        "Template by which a footprint's flux is shared among its peaks",
        choices=TEMPLATES,
    )
    deblend_grow_fwhm: float = config_field(
        1.0,
        "Footprints are grown by this many PSF FWHM before deblending, so that the wings of "
        "their sources are shared too (FWHM)",
        minimum=0.0,
        maximum=10.0,
    )
    deblend_min_peak_contrast_sigma: float = config_field(
        5.0,
        "A footprint's peaks are looked for again on the unsmoothed significance image; one "
        "counts when it stands this far above the saddle to higher ground (sigma)",
        exclusive_minimum=0.0,
    )
    deblend_residual_peak_sigma: float = config_field(
        5.0,
        "Peaks are also looked for in the residual of a fit of each footprint's known peaks "
        "(a faint neighbour on a bright one's shoulder is no local maximum); one counts when "
        "its PSF-filtered S/N reaches this (sigma; 0: no residual search)",
        minimum=0.0,
    )
    deblend_max_children: int = config_field(
        25,
        "Footprints with more peaks are not deblended (deblend_skipped): bounds the cost of "
        "large crowded footprints (peaks)",
        minimum=2,
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class CoaddMeasurementResult:
    """The Object table of one patch.

    Attributes
    ----------
    objects : astropy.table.Table
        One row per Object owned by the patch: ``object_id``, ``tract``, ``patch``, ``x``,
        ``y`` (patch pixels, reference filter), ``ra_deg``, ``dec_deg``, ``detect_significance``,
        ``ref_filter``, ``extendedness``, ``size_ratio``, and per filter ``<f>_centroid_x``,
        ``<f>_centroid_y``, ``<f>_psf_flux``, ``<f>_psf_flux_err``, ``<f>_psf_flux_flag``,
        ``<f>_psf_inexact`` (the local PSF mixture changes across the PSF stamp: an input's
        edge crosses it, so the PSF flux is less exact),
        ``<f>_ap_flux``, ``<f>_ap_flux_err``, ``<f>_ap_flux_flag``, ``<f>_ixx``, ``<f>_iyy``,
        ``<f>_ixy`` (pixel^2), ``<f>_moments_flag``. Fluxes are in the coadd unit (``ZP``).
    filters : tuple of str
        Filters measured.
    aperture_corrections : tuple of float
        Factor applied to each filter's PSF fluxes.
    n_peaks : int
        Peaks found in the whole patch, including those in the border owned by neighbours.
    """

    objects: Table
    filters: tuple[str, ...]
    aperture_corrections: tuple[float, ...]
    n_peaks: int


def detect_peaks(
    detection: MultibandResult, *, threshold_sigma: float, min_separation_pixels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer ``(x, y)`` of the local maxima of the significance image above the threshold.

    Returns peaks sorted by ``(y, x)``; plateaus give one peak (their first pixel).
    """
    sig = np.nan_to_num(detection.significance.astype(np.float64), nan=0.0)
    size = 2 * min_separation_pixels + 1
    local_max = ndimage.maximum_filter(sig, size=size, mode="constant", cval=0.0)
    signed = np.nansum(detection.snr, axis=0)
    candidate = (sig >= threshold_sigma) & (sig == local_max) & (signed > 0)
    labels, n = ndimage.label(candidate, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ys, xs = np.nonzero(candidate)
    first = np.unique(labels[ys, xs], return_index=True)[1]
    return xs[first].astype(np.int64), ys[first].astype(np.int64)


def make_object_ids(tract_id: int, x_tract: np.ndarray, y_tract: np.ndarray) -> np.ndarray:
    """``tract << 40 | y << 20 | x`` from integer tract pixel coordinates of the peaks.

    Raises
    ------
    ValueError
        If a coordinate is negative or >= 2**20, or the tract id is >= 2**23.
    """
    x = np.asarray(x_tract, dtype=np.int64)
    y = np.asarray(y_tract, dtype=np.int64)
    if not 0 <= tract_id < 2**23:
        raise ValueError(f"tract_id must be in [0, 2**23); got {tract_id}")
    if x.size and (x.min() < 0 or y.min() < 0 or x.max() >= 2**20 or y.max() >= 2**20):
        raise ValueError("tract pixel coordinates must be in [0, 2**20) for Object ids")
    return (np.int64(tract_id) << 40) | (y << 20) | x


def gaussian_centroid(
    image: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    sigma_pix: float,
    *,
    n_iter: int = 10,
    max_shift_pix: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iterated Gaussian-weighted centroid (unbiased for symmetric sources).

    Returns
    -------
    x, y : numpy.ndarray
        Centroids; the start position where flagged.
    flag : numpy.ndarray of bool
        True where the weighted flux is not positive or the centroid ran more than
        ``max_shift_pix`` from the start.
    """
    x0 = np.asarray(x0, dtype=float)
    y0 = np.asarray(y0, dtype=float)
    x, y = x0.copy(), y0.copy()
    radius = int(np.ceil(3.0 * sigma_pix)) + 2
    offsets = np.arange(-radius, radius + 1)
    data = np.nan_to_num(image.astype(np.float64), nan=0.0)
    flag = np.zeros(len(x), dtype=bool)
    for _ in range(n_iter):
        ix, iy = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
        stamp, inside = extract_stamps(data, ix, iy, radius, fill=0.0)
        dx = offsets[None, None, :] + (ix - x)[:, None, None]
        dy = offsets[None, :, None] + (iy - y)[:, None, None]
        w = np.exp(-0.5 * (dx**2 + dy**2) / sigma_pix**2) * inside * stamp
        total = w.sum(axis=(1, 2))
        ok = total > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.where(ok, x + (w * dx).sum(axis=(1, 2)) / total, x)
            y = np.where(ok, y + (w * dy).sum(axis=(1, 2)) / total, y)
        flag |= ~ok
        far = np.hypot(x - x0, y - y0) > max_shift_pix
        flag |= far
        x = np.where(flag, x0, x)
        y = np.where(flag, y0, y)
    return x, y, flag


def _local_weights(coverage, coadd, psf, x, y, name):
    """``(n, k)`` PSF component weights at each position: global weight times local coverage."""
    k = len(psf.weights)
    if coverage.ndim != 3 or coverage.shape[0] != k:
        raise ValueError(
            f"coverages[{name!r}] must be (n_components={k}, ny_cells, nx_cells); "
            f"got {coverage.shape}"
        )
    b = int(coadd.header.get("COVBIN", 1))
    ny, nx = coadd.shape
    if coverage.shape[1:] != (-(-ny // b), -(-nx // b)):
        raise ValueError(
            f"coverages[{name!r}] cells {coverage.shape[1:]} do not tile the coadd {coadd.shape} "
            f"with COVBIN={b}"
        )
    cy = np.clip(np.round(y).astype(np.int64) // b, 0, coverage.shape[1] - 1)
    cx = np.clip(np.round(x).astype(np.int64) // b, 0, coverage.shape[2] - 1)
    return np.asarray(psf.weights, dtype=float)[None, :] * coverage[:, cy, cx].T


_MEASURED = (
    "centroid_x",
    "centroid_y",
    "psf_flux",
    "psf_flux_err",
    "psf_flux_flag",
    "psf_inexact",
    "ap_flux",
    "ap_flux_err",
    "ap_flux_flag",
    "ixx",
    "iyy",
    "ixy",
    "moments_flag",
    "size_ratio",
)


def _pixel_snr(coadds: Mapping[str, Exposure], filters: tuple[str, ...]) -> np.ndarray:
    """Unsmoothed per-pixel S/N summed over filters, over sqrt(filters with data): unit noise.

    Cheaper than a second chi-square image and signed, so a peak's prominence is in sigma.
    """
    total = np.zeros(coadds[filters[0]].shape)
    count = np.zeros(total.shape)
    for name in filters:
        coadd = coadds[name]
        if int(coadd.header.get("PSFNCOMP", 1)) == 0:
            continue
        good = ((coadd.mask & _BAD) == 0) & np.isfinite(coadd.image) & (coadd.variance > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            total += np.where(good, coadd.image / np.sqrt(coadd.variance), 0.0)
        count += good
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.sqrt(count), 0.0)


def _widest_psf(coadds: Mapping[str, Exposure], filters: tuple[str, ...]) -> MixturePsf | None:
    """PSF of largest FWHM among the filters' coadds with data (None if none has data)."""
    widest = None
    for name in filters:
        coadd = coadds[name]
        if int(coadd.header.get("PSFNCOMP", 1)) == 0:
            continue
        pixel_arcsec = float(np.mean(proj_plane_pixel_scales(coadd.wcs.celestial))) * 3600.0
        psf = MixturePsf.from_header(coadd.header, pixel_arcsec)
        if widest is None or psf.effective_fwhm_pix > widest.effective_fwhm_pix:
            widest = psf
    return widest


def _empty_measurements(n: int) -> dict[str, np.ndarray]:
    return {
        key: np.zeros(n, dtype=bool) if key.endswith(("flag", "inexact")) else np.full(n, np.nan)
        for key in _MEASURED
    }


def _measure_filter(exposure, px, py, psf, coverage, name, *, radius, m_radius, ap_radius):
    """Centroid, PSF and aperture flux, adaptive moments at peaks ``(px, py)`` of one image.

    ``exposure.image`` has NaN at unusable pixels (a deblended layer or the coadd itself).
    The PSF flux is not yet aperture-corrected.
    """
    n = len(px)
    sigma_pix = psf.effective_fwhm_pix / FWHM_PER_SIGMA
    image = exposure.image
    cx, cy, cflag = gaussian_centroid(image, px, py, sigma_pix)
    local = None
    inexact = np.zeros(n, dtype=bool)
    if coverage is not None:
        local = _local_weights(coverage, exposure, psf, cx, cy, name)
        # The PSF changes inside the stamp (an input's edge or gap crosses it): flag.
        centre = psf.normalised_weights(local, n)
        for sx, sy in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            corner = _local_weights(
                coverage, exposure, psf, cx + sx * radius, cy + sy * radius, name
            )
            change = np.abs(psf.normalised_weights(corner, n) - centre).sum(axis=1)
            inexact |= change > 0.1
    flux, err, flag = psf_photometry(exposure, cx, cy, psf, radius_pix=radius, weights=local)
    ap_flux, ap_err, ap_flag = aperture_photometry(exposure, cx, cy, radius_pix=ap_radius)
    offsets = np.arange(-m_radius, m_radius + 1)
    ix, iy = np.round(cx).astype(np.int64), np.round(cy).astype(np.int64)
    stamps, _ = extract_stamps(np.nan_to_num(image, nan=0.0), ix, iy, m_radius, fill=0.0)
    ixx, iyy, ixy, mflag = adaptive_moments(stamps, cx - ix, cy - iy, offsets, sigma_pix)
    model = psf.stamps(cx - ix, cy - iy, offsets, local)
    pxx, pyy, _, pflag = adaptive_moments(model, cx - ix, cy - iy, offsets, sigma_pix)
    mflag |= pflag | cflag
    return {
        "centroid_x": cx,
        "centroid_y": cy,
        "psf_flux": flux,
        "psf_flux_err": err,
        "psf_flux_flag": flag,
        "psf_inexact": inexact,
        "ap_flux": ap_flux,
        "ap_flux_err": ap_err,
        "ap_flux_flag": ap_flag,
        "ixx": np.where(mflag, np.nan, ixx),
        "iyy": np.where(mflag, np.nan, iyy),
        "ixy": np.where(mflag, np.nan, ixy),
        "moments_flag": mflag,
        "size_ratio": np.where(mflag, np.nan, (ixx + iyy) / (pxx + pyy) - 1.0),
    }


def _empty_table(filters: tuple[str, ...]) -> Table:
    columns = {
        "object_id": np.zeros(0, dtype=np.int64),
        "tract": np.zeros(0, dtype=np.int64),
        "patch": np.zeros(0, dtype="U16"),
        "x": np.zeros(0),
        "y": np.zeros(0),
        "ra_deg": np.zeros(0),
        "dec_deg": np.zeros(0),
        "detect_significance": np.zeros(0),
        "ref_filter": np.zeros(0, dtype="U16"),
        "extendedness": np.zeros(0),
        "size_ratio": np.zeros(0),
        "parent": np.zeros(0, dtype=np.int64),
        "deblend_nChild": np.zeros(0, dtype=np.int64),
        "deblend_skipped": np.zeros(0, dtype=bool),
    }
    for name in filters:
        for column, dtype in _PER_FILTER_COLUMNS:
            columns[f"{name}_{column}"] = np.zeros(0, dtype=dtype)
    return annotate(Table(columns), "object", filters=filters)


def measure_coadds(
    coadds: Mapping[str, Exposure],
    detection: MultibandResult,
    patch: PatchInfo,
    *,
    coverages: Mapping[str, np.ndarray] | None = None,
    config: CoaddMeasurementConfig | None = None,
) -> CoaddMeasurementResult:
    """Detect and measure the Objects of one patch.

    Parameters
    ----------
    coadds : mapping of str to Exposure
        Filter to deepCoadd of the patch (``(ny, nx)`` = ``patch.shape``), each with WCS and a
        PSF description in its header (`assemble_coadd` writes one).
    detection : MultibandResult
        The chi-square detection image of the same coadds.
    patch : PatchInfo
        The patch (its tract id, name and boxes).
    coverages : mapping of str to numpy.ndarray, optional
        Filter to the coadd's ``input_coverage`` (`CoaddResult`), cells of header ``COVBIN``
        pixels: the PSF model at each Object is then the mixture of the inputs that cover it.
        Without it, the global mixture is used everywhere (biased where inputs are missing).
    config : CoaddMeasurementConfig, optional
        Thresholds and apertures.

    Returns
    -------
    CoaddMeasurementResult
        The Object table (empty, with every column, if nothing is detected).

    Raises
    ------
    InputDataError
        If a filter of ``detection`` has no coadd, or a coadd lacks a WCS or PSF description.
    ValueError
        If a coadd's shape is not ``patch.shape``, or a coverage map does not match its
        coadd's PSF components and shape.
    """
    config = config or CoaddMeasurementConfig()
    filters = tuple(detection.filters)
    for name in filters:
        if name not in coadds:
            raise InputDataError(f"no coadd for detection filter {name!r}", filter=name)
        if coadds[name].shape != patch.shape:
            raise ValueError(
                f"coadds[{name!r}] shape {coadds[name].shape} differs from patch shape "
                f"{patch.shape}"
            )
        if coadds[name].wcs is None:
            raise InputDataError(f"coadds[{name!r}] has no WCS", filter=name)
    px, py = detect_peaks(
        detection,
        threshold_sigma=config.detect_threshold_sigma,
        min_separation_pixels=config.peak_min_separation_pixels,
    )
    above = detection.significance >= config.detect_threshold_sigma
    pixel_snr = _pixel_snr(coadds, filters)
    px, py = footprint_peaks(
        above, pixel_snr, px, py, min_contrast_sigma=config.deblend_min_peak_contrast_sigma
    )
    widest_psf = _widest_psf(coadds, filters)
    grow_pix = config.deblend_grow_fwhm * (widest_psf.effective_fwhm_pix if widest_psf else 0.0)
    footprints = grow_footprints(above, grow_pix)
    if config.deblend_residual_peak_sigma > 0 and config.deblend_template != "none" and widest_psf:
        px, py = residual_peaks(
            footprints,
            pixel_snr,
            px,
            py,
            psf=widest_psf,
            min_snr=config.deblend_residual_peak_sigma,
            max_children=config.deblend_max_children,
        )
    n_peaks = len(px)
    own = patch.inner.contains(px + patch.outer.x0, py + patch.outer.y0)
    all_px, all_py = px, py
    px, py = px[own], py[own]
    n = len(px)
    if n == 0:
        return CoaddMeasurementResult(
            _empty_table(filters), filters, (1.0,) * len(filters), n_peaks
        )
    # Families over all peaks, the neighbours' border peaks too: they share footprints.
    families = deblend(
        above,
        all_px,
        all_py,
        grow_pix=grow_pix,
        max_children=config.deblend_max_children,
        template=config.deblend_template,
        footprints=footprints,
    )
    owned_row = np.cumsum(own) - 1

    per_filter: dict[str, dict[str, np.ndarray]] = {}
    size_ratio: dict[str, np.ndarray] = {}
    snr: dict[str, np.ndarray] = {}
    corrections = []
    for name in filters:
        coadd = coadds[name]
        if int(coadd.header.get("PSFNCOMP", 1)) == 0:  # an empty coadd: nothing to measure
            per_filter[name] = {
                column: np.ones(n, dtype=bool) if dtype is bool else np.full(n, np.nan)
                for column, dtype in _PER_FILTER_COLUMNS
            }
            per_filter[name]["psf_inexact"] = np.zeros(n, dtype=bool)
            size_ratio[name] = np.full(n, np.nan)
            snr[name] = np.full(n, -np.inf)
            corrections.append(1.0)
            continue
        pixel_arcsec = float(np.mean(proj_plane_pixel_scales(coadd.wcs.celestial))) * 3600.0
        psf = MixturePsf.from_header(coadd.header, pixel_arcsec)
        fwhm_pix = psf.effective_fwhm_pix
        image = np.where((coadd.mask & _BAD) == 0, coadd.image, np.nan)
        radius = max(2, int(np.ceil(config.stamp_radius_fwhm * fwhm_pix)))
        m_radius = max(3, int(np.ceil(config.moments_radius_fwhm * fwhm_pix)))
        ap_radius = config.aperture_radius_arcsec / pixel_arcsec
        coverage = coverages.get(name) if coverages is not None else None
        raw = _empty_measurements(n)
        for k, layer in child_layers(
            image, families, all_px, all_py, psf=psf, template=config.deblend_template
        ):
            peaks = np.flatnonzero((families.layer == k) & own)
            rows = owned_row[peaks]
            layer_exposure = Exposure(layer, coadd.mask, coadd.variance, coadd.wcs, coadd.header)
            measured = _measure_filter(
                layer_exposure,
                all_px[peaks],
                all_py[peaks],
                psf,
                coverage,
                name,
                radius=radius,
                m_radius=m_radius,
                ap_radius=ap_radius,
            )
            for key, values in measured.items():
                raw[key][rows] = values
        cx, cy, local = raw["centroid_x"], raw["centroid_y"], None
        if coverage is not None:
            local = _local_weights(coverage, coadd, psf, cx, cy, name)
        flux, err, flag = raw["psf_flux"], raw["psf_flux_err"], raw["psf_flux_flag"]
        ap_flux, ap_err, ap_flag = raw["ap_flux"], raw["ap_flux_err"], raw["ap_flux_flag"]
        inexact, mflag = raw["psf_inexact"], raw["moments_flag"]
        ixx, iyy, ixy = raw["ixx"], raw["iyy"], raw["ixy"]
        ratio = raw["size_ratio"]
        size_ratio[name] = ratio
        with np.errstate(invalid="ignore", divide="ignore"):
            snr[name] = np.where(flag, -np.inf, flux / err)
        point_like = np.isfinite(ratio) & (ratio < config.extendedness_size_threshold)
        lonely = isolated(all_px, all_py, ap_radius + fwhm_pix)[own]
        correction, n_stars = aperture_correction(
            flux,
            ap_flux,
            snr[name],
            point_like & lonely & ~ap_flag & ~flag,
            min_snr=config.apcorr_min_snr,
            min_stars=config.apcorr_min_stars,
            enclosed_fraction=psf.enclosed_fraction(ap_radius, local),
        )
        log.info("filter %s: aperture correction %.4f from %d stars", name, correction, n_stars)
        corrections.append(correction)
        field = np.full(n, correction)
        if n_stars and config.apcorr_order > 0:
            enclosed = psf.enclosed_fraction(ap_radius, local)
            used = point_like & lonely & ~ap_flag & ~flag & (snr[name] >= config.apcorr_min_snr)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = ap_flux / (flux * enclosed)
            field = aperture_correction_field(
                cx, cy, ratio, used & (flux > 0), coadd.shape, order=config.apcorr_order
            )
        per_filter[name] = {
            "centroid_x": cx,
            "centroid_y": cy,
            "psf_flux": flux * field,
            "psf_flux_err": err * field,
            "psf_flux_flag": flag,
            "psf_inexact": inexact,
            "ap_flux": ap_flux,
            "ap_flux_err": ap_err,
            "ap_flux_flag": ap_flag,
            "ixx": ixx,
            "iyy": iyy,
            "ixy": ixy,
            "moments_flag": mflag,
        }

    snr_matrix = np.array([snr[name] for name in filters])
    ref_index = np.argmax(snr_matrix, axis=0)
    rows = np.arange(n)
    ref_x = np.array([per_filter[f]["centroid_x"] for f in filters])[ref_index, rows]
    ref_y = np.array([per_filter[f]["centroid_y"] for f in filters])[ref_index, rows]
    ref_ratio = np.array([size_ratio[f] for f in filters])[ref_index, rows]
    extendedness = np.where(
        np.isfinite(ref_ratio),
        (ref_ratio > config.extendedness_size_threshold).astype(float),
        np.nan,
    )
    wcs = coadds[filters[0]].wcs
    ra, dec = wcs.all_pix2world(ref_x, ref_y, 0)
    table = _empty_table(filters)
    columns = {
        "object_id": make_object_ids(patch.tract_id, px + patch.outer.x0, py + patch.outer.y0),
        "tract": np.full(n, patch.tract_id, dtype=np.int64),
        "patch": np.full(n, patch.name, dtype="U16"),
        "x": ref_x,
        "y": ref_y,
        "ra_deg": np.asarray(ra),
        "dec_deg": np.asarray(dec),
        "detect_significance": detection.significance[py, px].astype(float),
        "ref_filter": np.array(filters, dtype="U16")[ref_index],
        "extendedness": extendedness,
        "size_ratio": ref_ratio,
        "parent": np.where(
            families.n_child[own] > 1,
            make_object_ids(
                patch.tract_id,
                all_px[families.first_peak[own]] + patch.outer.x0,
                all_py[families.first_peak[own]] + patch.outer.y0,
            ),
            0,
        ),
        "deblend_nChild": families.n_child[own],
        "deblend_skipped": families.skipped[own],
    }
    for name in filters:
        for column, _ in _PER_FILTER_COLUMNS:
            columns[f"{name}_{column}"] = per_filter[name][column]
    table = Table({key: columns[key] for key in table.colnames})
    table.meta["ZP"] = float(coadds[filters[0]].header.get("ZP", np.nan))
    annotate(table, "object", filters=filters, flux_unit=flux_unit_of_zero_point(table.meta["ZP"]))
    return CoaddMeasurementResult(table, filters, tuple(corrections), n_peaks)
