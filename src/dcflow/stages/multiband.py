"""Multi-band detection image: the chi-square combination of per-filter coadds.

Each filter's coadd is first smoothed by its own PSF (the matched filter for point sources),
giving a per-filter signal-to-noise image ``snr_f = (I * K) / sqrt(V * K^2)``. The detection
image is ``chi2 = sum_f snr_f^2`` over the filters with data at each pixel (Szalay, Connolly &
Szokoly 1999, as in LSST's chi-square coadds), and its significance is expressed as the
Gaussian-equivalent number of sigma of the chi-square tail probability with ``k`` degrees of
freedom (``k`` = filters with data), so one threshold in sigma serves any number of filters.
A chi-square image responds to negative fluctuations too: the signed ``snr`` planes are kept
so that detection can keep positive sources only.

Smoothing uses normalised convolution over usable pixels, so NO_DATA holes and patch edges
do not bias the values near them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage, special, stats

from dcflow.configs import check_fields, config_field
from dcflow.errors import InputDataError
from dcflow.exposure import Exposure, MaskPlane
from dcflow.stages.forced_photometry import FWHM_PER_SIGMA, MixturePsf

__all__ = ["MultibandConfig", "MultibandResult", "chi2_detection_image"]


@dataclass(frozen=True, slots=True)
class MultibandConfig:
    """Configuration of `chi2_detection_image`."""

    detection_kernel: str = config_field(
        "psf",
        "Smoothing applied to each filter before combining",
        choices={
            "psf": "each filter's coadd PSF (Gaussian of its PSFFWHM): matched filter",
            "none": "no smoothing: per-pixel chi-square",
        },
    )
    bad_mask_planes: tuple[str, ...] = config_field(
        ("NO_DATA",),
        "Mask planes whose pixels are excluded from the detection image",
        choices={p.name: (p.__doc__ or p.name).strip() for p in MaskPlane},
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class MultibandResult:
    """The chi-square detection image of one patch.

    Attributes
    ----------
    filters : tuple of str
        Filters combined, in the order of ``snr``.
    snr : numpy.ndarray
        ``(n_filters, ny, nx)`` float32 smoothed signal-to-noise per filter (NaN without data).
    chi2 : numpy.ndarray
        ``(ny, nx)`` float32 sum of ``snr**2`` over filters with data.
    n_filters : numpy.ndarray
        ``(ny, nx)`` int16 filters with data at each pixel (the chi-square degrees of freedom).
    significance : numpy.ndarray
        ``(ny, nx)`` float32 Gaussian-equivalent significance of ``chi2``, sigma (0 without
        data).
    """

    filters: tuple[str, ...]
    snr: np.ndarray
    chi2: np.ndarray
    n_filters: np.ndarray
    significance: np.ndarray


def _kernel_sum_sq(sigma: float) -> float:
    radius = int(np.ceil(4.0 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    return float(np.sum(k**2) ** 2)


def _smoothed_snr(coadd: Exposure, sigma_pix: float, bad_bits: int) -> np.ndarray:
    good = ((coadd.mask & bad_bits) == 0) & np.isfinite(coadd.image) & np.isfinite(coadd.variance)
    good &= coadd.variance > 0
    if sigma_pix <= 0:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(good, coadd.image / np.sqrt(coadd.variance), np.nan)
    g = good.astype(np.float64)
    norm = ndimage.gaussian_filter(g, sigma_pix, mode="constant")
    num = ndimage.gaussian_filter(np.where(good, coadd.image, 0.0), sigma_pix, mode="constant")
    # K^2 of a unit-sum Gaussian K of sigma is a unit-sum Gaussian of sigma / sqrt(2) times
    # sum(K^2) (1 / (4 pi sigma^2) when sigma is well sampled).
    var = ndimage.gaussian_filter(
        np.where(good, coadd.variance, 0.0), sigma_pix / np.sqrt(2.0), mode="constant"
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        value = num / norm
        value_var = var * _kernel_sum_sq(sigma_pix) / norm**2
        snr = value / np.sqrt(value_var)
    return np.where(good & (norm > 0.5), snr, np.nan)


def chi2_detection_image(
    coadds: Mapping[str, Exposure], *, config: MultibandConfig | None = None
) -> MultibandResult:
    """Combine per-filter coadds of one patch into a chi-square detection image.

    Parameters
    ----------
    coadds : mapping of str to Exposure
        Filter name to deepCoadd of the same patch (same ``(ny, nx)`` grid and WCS), with a
        PSF description in the header when ``detection_kernel="psf"``; an empty coadd
        (``PSFNCOMP = 0``) contributes no data.
    config : MultibandConfig, optional
        Smoothing and masked planes.

    Returns
    -------
    MultibandResult
        Per-filter S/N planes, chi-square, degrees of freedom and significance.

    Raises
    ------
    InputDataError
        If ``coadds`` is empty, a coadd lacks a WCS or ``PSFFWHM`` (with PSF smoothing).
    ValueError
        If the coadds' shapes differ.
    """
    config = config or MultibandConfig()
    if not coadds:
        raise InputDataError("no coadds to combine", n_filters=0)
    filters = tuple(coadds)
    shape = coadds[filters[0]].shape
    bad_bits = 0
    for name in config.bad_mask_planes:
        bad_bits |= int(MaskPlane[name])
    snr = np.empty((len(filters), *shape), dtype=np.float32)
    for index, name in enumerate(filters):
        coadd = coadds[name]
        if coadd.shape != shape:
            raise ValueError(f"coadds[{name!r}] shape {coadd.shape} differs from {shape}")
        sigma = 0.0
        if int(coadd.header.get("PSFNCOMP", 1)) == 0:  # an empty coadd: no data, no PSF
            snr[index] = np.nan
            continue
        if config.detection_kernel == "psf":
            if coadd.wcs is None:
                raise InputDataError(f"coadds[{name!r}] has no WCS", filter=name)
            pixel_arcsec = float(np.mean(proj_plane_pixel_scales(coadd.wcs.celestial))) * 3600.0
            psf = MixturePsf.from_header(coadd.header, pixel_arcsec)
            sigma = psf.effective_fwhm_pix / FWHM_PER_SIGMA
        snr[index] = _smoothed_snr(coadd, sigma, bad_bits)
    have = np.isfinite(snr)
    n_filters = have.sum(axis=0).astype(np.int16)
    chi2 = np.sum(np.where(have, snr.astype(np.float64) ** 2, 0.0), axis=0)
    significance = np.zeros(shape)
    some = n_filters > 0
    tail = np.zeros(shape)
    tail[some] = stats.chi2.sf(chi2[some], n_filters[some])
    exact = some & (tail > 1e-300)
    significance[exact] = -special.ndtri(tail[exact])
    # Beyond ~37 sigma the tail underflows; sqrt(chi2) is then accurate to a few per cent.
    significance[some & ~exact] = np.sqrt(chi2[some & ~exact])
    return MultibandResult(
        filters=filters,
        snr=snr,
        chi2=chi2.astype(np.float32),
        n_filters=n_filters,
        significance=significance.astype(np.float32),
    )
