"""Forced PSF photometry of Objects on a calexp, and the PSF photometry shared with coadds.

At every Object position (from its RA/Dec and the calexp WCS) the flux is the linear
least-squares amplitude of the PSF model with uniform pixel weights over a stamp,
``F = sum(P I) / sum(P^2)``, with error ``sqrt(sum(P^2 V)) / sum(P^2)`` from the variance plane
(uniform weights keep bright stars unbiased: per-pixel inverse-variance weights would include
the star's own Poisson noise). Masked pixels are left out of both sums.

On a calexp whose header carries processCcd's spatially varying PSF model (``PSFMODEL``,
`dcflow.stages.psf.psf_model_from_header`: an elliptical Moffat whose width is a polynomial
over the CCD) that model is used, at each Object's position: one width per CCD leaves a
flux error that follows the seeing across the CCD, which shows as a chi^2 of several per
epoch for bright constant stars. Otherwise the PSF model is a circular mixture of Gaussian
and Moffat components integrated over pixels (`MixturePsf`): a calexp's ``PSFFWHM`` and
``PSFBETA`` (a Gaussian if there is no ``PSFBETA``), or a coadd's mixture of its inputs' PSFs.

Fluxes are on a *total-flux* scale, as processCcd's are (its zero point is fitted to them): the
model's own flux outside any aperture is part of the PSF flux, and an *aperture correction*
absorbs the model's errors (ellipticity, interpolation): the median over bright, isolated,
point-like Objects of the aperture flux over the PSF flux times the model's enclosed fraction
in that aperture.

Forced fluxes are reported at the configured zero point (31.4: nJy), as coadd fluxes are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import stats
from scipy.optimize import brentq
from scipy.special import erf

from dcflow.catalog_schema import annotate, flux_unit_of_zero_point
from dcflow.configs import check_fields, config_field
from dcflow.errors import InputDataError
from dcflow.exposure import Exposure, MaskPlane
from dcflow.stages.psf import PSF_RESIDUAL_EXTNAME, PsfFitResult, psf_model_from_header
from dcflow.stages.stamps import extract_stamps
from dcflow.stages.warp import calexp_flux_scale

__all__ = [
    "ForcedPhotometryConfig",
    "ForcedPhotometryResult",
    "MixturePsf",
    "aperture_correction",
    "aperture_correction_field",
    "aperture_photometry",
    "blend_psf_photometry",
    "forced_photometry",
    "isolated",
    "mixture_fwhm",
    "psf_photometry",
]

log = logging.getLogger(__name__)

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
"""FWHM of a Gaussian over its standard deviation."""

_BAD_FOR_PHOTOMETRY = int(MaskPlane.BAD | MaskPlane.SAT | MaskPlane.CR | MaskPlane.NO_DATA)


def _moffat_alpha(fwhm: np.ndarray, beta: np.ndarray) -> np.ndarray:
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _profile(r: np.ndarray, fwhm: np.ndarray, beta: np.ndarray, weights: np.ndarray):
    """Surface brightness of a unit-flux circular mixture at radii ``r`` (same unit as fwhm)."""
    r = np.asarray(r, dtype=float)[..., None]
    sigma = fwhm / FWHM_PER_SIGMA
    gauss = np.exp(-0.5 * (r / sigma) ** 2) / (2.0 * np.pi * sigma**2)
    moffat_beta = np.where(beta > 0, beta, 2.0)
    alpha = _moffat_alpha(fwhm, moffat_beta)
    moffat = (moffat_beta - 1.0) / (np.pi * alpha**2) * (1.0 + (r / alpha) ** 2) ** (-moffat_beta)
    return np.sum(weights * np.where(beta > 0, moffat, gauss), axis=-1)


def mixture_fwhm(
    fwhm: Sequence[float], weights: Sequence[float], beta: Sequence[float] | None = None
) -> float:
    """FWHM of a weighted sum of unit-flux circular PSFs (same unit as ``fwhm``).

    Parameters
    ----------
    fwhm : sequence of float
        FWHM of each component.
    weights : sequence of float
        Flux weight of each component (normalised here).
    beta : sequence of float, optional
        Moffat index of each component; 0 (the default) means a Gaussian.
    """
    fwhm = np.asarray(fwhm, dtype=float)
    weights = np.asarray(weights, dtype=float)
    beta = np.zeros_like(fwhm) if beta is None else np.asarray(beta, dtype=float)
    if (
        fwhm.size == 0
        or fwhm.shape != weights.shape
        or fwhm.shape != beta.shape
        or np.any(fwhm <= 0)
        or np.any(weights < 0)
        or weights.sum() <= 0
        or np.any((beta != 0) & (beta <= 1))
    ):
        raise ValueError(
            f"need positive fwhm, weights >= 0 (sum > 0) and beta 0 or > 1, of equal length; "
            f"got fwhm={fwhm}, weights={weights}, beta={beta}"
        )
    w = weights / weights.sum()
    half = 0.5 * _profile(0.0, fwhm, beta, w)
    return 2.0 * brentq(lambda r: _profile(r, fwhm, beta, w) - half, 0.0, 2.0 * fwhm.max())


@dataclass(frozen=True, slots=True)
class MixturePsf:
    """Circular PSF: a weighted sum of Gaussian and Moffat components, unit total flux.

    Attributes
    ----------
    fwhm_pix : tuple of float
        FWHM of each component, pixels.
    beta : tuple of float
        Moffat index of each component (> 1), or 0 for a Gaussian.
    weights : tuple of float
        Flux fraction of each component (normalised on use).
    """

    fwhm_pix: tuple[float, ...]
    beta: tuple[float, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        mixture_fwhm(self.fwhm_pix, self.weights, self.beta)  # validates

    @classmethod
    def from_header(cls, header, pixel_scale_arcsec: float) -> MixturePsf:
        """PSF from a header: a coadd's mixture, or a calexp's ``PSFFWHM`` (and ``PSFBETA``).

        A coadd header holds ``PSFNCOMP`` components ``PSFF<i>`` (FWHM, arcsec), ``PSFW<i>``
        (weight) and optionally ``PSFB<i>`` (Moffat beta, 0 = Gaussian). A calexp header holds
        ``PSFFWHM`` (arcsec) and, when its PSF is a Moffat, ``PSFBETA``.

        Raises
        ------
        InputDataError
            If the header has neither description.
        """
        try:
            if "PSFNCOMP" in header:
                n = int(header["PSFNCOMP"])
                fwhm = [float(header[f"PSFF{i}"]) for i in range(n)]
                weights = [float(header[f"PSFW{i}"]) for i in range(n)]
                beta = [float(header.get(f"PSFB{i}", 0.0)) for i in range(n)]
            else:
                fwhm = [float(header["PSFFWHM"])]
                weights = [1.0]
                beta = [float(header.get("PSFBETA", 0.0) or 0.0)]
            return cls(
                fwhm_pix=tuple(f / pixel_scale_arcsec for f in fwhm),
                beta=tuple(beta),
                weights=tuple(weights),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputDataError(f"header lacks a usable PSF description ({exc})") from None

    @property
    def effective_fwhm_pix(self) -> float:
        """FWHM of the mixture, pixels."""
        return mixture_fwhm(self.fwhm_pix, self.weights, self.beta)

    def normalised_weights(self, weights: np.ndarray | None, n: int) -> np.ndarray:
        """``(n, k)`` component weights summing to 1 per source (global ones if None)."""
        k = len(self.fwhm_pix)
        if weights is None:
            w = np.broadcast_to(np.asarray(self.weights, dtype=float), (n, k))
        else:
            w = np.asarray(weights, dtype=float)
            if w.shape != (n, k):
                raise ValueError(f"weights must have shape ({n}, {k}); got {w.shape}")
        total = w.sum(axis=1, keepdims=True)
        fallback = np.asarray(self.weights, dtype=float)[None, :] / np.sum(self.weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, w / total, fallback)

    def enclosed_fraction(
        self, radius_pix: float, weights: np.ndarray | None = None
    ) -> float | np.ndarray:
        """Fraction of the total flux within ``radius_pix`` (continuous profile).

        With per-source component ``weights`` (``(n, k)``) it returns one value per source.
        """
        fwhm = np.asarray(self.fwhm_pix)
        beta = np.asarray(self.beta)
        sigma = fwhm / FWHM_PER_SIGMA
        gauss = 1.0 - np.exp(-0.5 * (radius_pix / sigma) ** 2)
        b = np.where(beta > 0, beta, 2.0)
        moffat = 1.0 - (1.0 + (radius_pix / _moffat_alpha(fwhm, b)) ** 2) ** (1.0 - b)
        per_component = np.where(beta > 0, moffat, gauss)
        if weights is None:
            w = np.asarray(self.weights) / np.sum(self.weights)
            return float(np.sum(w * per_component))
        return self.normalised_weights(weights, len(weights)) @ per_component

    def stamps(
        self,
        dx: np.ndarray,
        dy: np.ndarray,
        offsets: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """Pixel-integrated model on stamps: ``(n, len(offsets), len(offsets))``.

        Gaussian components are integrated exactly (error functions), Moffat components by
        averaging 5 x 5 points per pixel.

        Parameters
        ----------
        dx, dy : numpy.ndarray
            ``(n,)`` source position minus the stamp's central pixel, pixels.
        offsets : numpy.ndarray
            Integer pixel offsets of the stamp rows/columns from its central pixel.
        weights : numpy.ndarray, optional
            ``(n, k)`` component weights per source (the local mix of a coadd's inputs); the
            global ``weights`` if omitted.
        """
        dx = np.asarray(dx, dtype=float)
        dy = np.asarray(dy, dtype=float)
        w = self.normalised_weights(weights, len(dx))
        out = np.zeros((len(dx), len(offsets), len(offsets)))
        sub = (np.arange(5) - 2.0) / 5.0
        for index, (fwhm, beta) in enumerate(zip(self.fwhm_pix, self.beta, strict=True)):
            weight = w[:, index, None, None]
            if not np.any(weight):
                continue
            if beta <= 0:
                s = np.sqrt(2.0) * fwhm / FWHM_PER_SIGMA
                lo = offsets[None, :] - 0.5
                fx = 0.5 * (erf((lo + 1.0 - dx[:, None]) / s) - erf((lo - dx[:, None]) / s))
                fy = 0.5 * (erf((lo + 1.0 - dy[:, None]) / s) - erf((lo - dy[:, None]) / s))
                out += weight * fy[:, :, None] * fx[:, None, :]
                continue
            alpha = float(_moffat_alpha(np.asarray(fwhm), np.asarray(beta)))
            norm = (beta - 1.0) / (np.pi * alpha**2)
            for lo in range(0, len(dx), 128):  # bounded temporaries: (128, m, m, 5, 5)
                hi = lo + 128
                px = offsets[None, :, None] + sub[None, None, :] - dx[lo:hi, None, None]
                py = offsets[None, :, None] + sub[None, None, :] - dy[lo:hi, None, None]
                r2 = py[:, :, None, :, None] ** 2 + px[:, None, :, None, :] ** 2
                value = norm * (1.0 + r2 / alpha**2) ** (-beta)
                out[lo:hi] += weight[lo:hi] * value.mean(axis=(3, 4))
        return out


def _model_stamps(shape, x, y, ix, iy, psf, radius_pix, weights=None) -> np.ndarray:
    """``(n, 2r+1, 2r+1)`` PSF models at ``(x, y)`` on stamps centred on ``(ix, iy)``."""
    finite = np.isfinite(x) & np.isfinite(y)
    if isinstance(psf, PsfFitResult):
        ny, nx = shape
        at_x = np.clip(np.where(finite, x, 0.0), 0, nx - 1)
        at_y = np.clip(np.where(finite, y, 0.0), 0, ny - 1)
        table = psf.phase_table(radius_pix, at_x, at_y)
        return table.stamps(np.clip(x - ix, -0.5, 0.5), np.clip(y - iy, -0.5, 0.5))
    offsets = np.arange(-radius_pix, radius_pix + 1)
    return psf.stamps(x - ix, y - iy, offsets, weights)


def blend_psf_photometry(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    family: np.ndarray,
    psf: MixturePsf | PsfFitResult,
    *,
    radius_pix: int,
    flux: np.ndarray,
    flux_err: np.ndarray,
    flag: np.ndarray,
    bad_mask_bits: int = _BAD_FOR_PHOTOMETRY,
) -> tuple[np.ndarray, np.ndarray]:
    """PSF fluxes of blend families fitted simultaneously (the children of one coadd parent).

    An independent PSF fit of a child takes in its neighbours' light; fitting the family's
    PSFs together on the union of their stamps (uniform weights, as `psf_photometry`) shares
    it. Rows with ``family == 0``, flagged rows and families of one usable member keep the
    given ``flux`` and ``flux_err``; returns new arrays, the inputs are untouched.
    """
    flux = np.array(flux, dtype=float)
    flux_err = np.array(flux_err, dtype=float)
    family = np.asarray(family)
    usable = (family != 0) & ~np.asarray(flag) & np.isfinite(x) & np.isfinite(y)
    if not usable.any():
        return flux, flux_err
    ix = np.round(np.where(usable, x, 0.0)).astype(np.int64)
    iy = np.round(np.where(usable, y, 0.0)).astype(np.int64)
    ny, nx = exposure.image.shape
    bad = ((exposure.mask & bad_mask_bits) != 0) | ~np.isfinite(exposure.image)
    bad |= ~np.isfinite(exposure.variance)
    r = radius_pix
    for label in np.unique(family[usable]):
        members = np.flatnonzero(usable & (family == label))
        if len(members) < 2:
            continue
        models = _model_stamps((ny, nx), x[members], y[members], ix[members], iy[members], psf, r)
        y0 = max(0, int(iy[members].min()) - r)
        y1 = min(ny, int(iy[members].max()) + r + 1)
        x0 = max(0, int(ix[members].min()) - r)
        x1 = min(nx, int(ix[members].max()) + r + 1)
        design = np.zeros((len(members), y1 - y0, x1 - x0))
        covered = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        for k, model in enumerate(models):
            sy0, sx0 = int(iy[members[k]]) - r, int(ix[members[k]]) - r
            ly0, lx0 = max(sy0, y0), max(sx0, x0)
            ly1, lx1 = min(sy0 + 2 * r + 1, y1), min(sx0 + 2 * r + 1, x1)
            design[k, ly0 - y0 : ly1 - y0, lx0 - x0 : lx1 - x0] = model[
                ly0 - sy0 : ly1 - sy0, lx0 - sx0 : lx1 - sx0
            ]
            covered[ly0 - y0 : ly1 - y0, lx0 - x0 : lx1 - x0] = True
        good = covered & ~bad[y0:y1, x0:x1]
        a = design[:, good].T
        normal = a.T @ a
        try:
            inverse = np.linalg.inv(normal)
        except np.linalg.LinAlgError:
            log.warning("blend family %s: singular simultaneous fit, kept single fits", label)
            continue
        coefficients = inverse @ (a.T @ exposure.image[y0:y1, x0:x1][good].astype(float))
        weighted = a * exposure.variance[y0:y1, x0:x1][good].astype(float)[:, None]
        covariance = inverse @ (a.T @ weighted) @ inverse
        flux[members] = coefficients
        flux_err[members] = np.sqrt(np.diag(covariance))
    return flux, flux_err


def psf_photometry(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    psf: MixturePsf | PsfFitResult,
    *,
    radius_pix: int,
    weights: np.ndarray | None = None,
    bad_mask_bits: int = _BAD_FOR_PHOTOMETRY,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF flux at fixed positions (uniform weights over a square stamp).

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted image with variance and mask.
    x, y : numpy.ndarray
        Source positions, pixels (array origin).
    psf : MixturePsf or dcflow.stages.psf.PsfFitResult
        PSF model: one circular mixture for every source, or processCcd's spatially varying
        model (evaluated at each source's position, clipped to the image).
    radius_pix : int
        Half-size of the square stamp, pixels.
    weights : numpy.ndarray, optional
        ``(n, k)`` per-source component weights of the PSF mixture (see `MixturePsf.stamps`).
    bad_mask_bits : int, optional
        Mask bits whose pixels are left out.

    Returns
    -------
    flux, flux_err : numpy.ndarray
        In the image's units; NaN where flagged.
    flag : numpy.ndarray of bool
        True where the centre pixel is unusable or more than 30 % of the PSF weight
        (``sum P^2``) is masked or off the image.
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    finite = np.isfinite(x) & np.isfinite(y)
    ix = np.round(np.where(finite, x, -(10**6))).astype(np.int64)
    iy = np.round(np.where(finite, y, -(10**6))).astype(np.int64)
    image, inside = extract_stamps(exposure.image, ix, iy, radius_pix, fill=0.0)
    variance, _ = extract_stamps(exposure.variance, ix, iy, radius_pix, fill=0.0)
    mask, _ = extract_stamps(exposure.mask, ix, iy, radius_pix, fill=int(MaskPlane.NO_DATA))
    good = inside & ((mask & bad_mask_bits) == 0) & np.isfinite(image) & np.isfinite(variance)
    model = _model_stamps(exposure.image.shape, x, y, ix, iy, psf, radius_pix, weights)
    p2_all = np.sum(model**2, axis=(1, 2))
    pm = np.where(good, model, 0.0)
    p2 = np.sum(pm**2, axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = np.sum(pm * np.where(good, image, 0.0), axis=(1, 2)) / p2
        err = np.sqrt(np.sum(pm**2 * np.where(good, variance, 0.0), axis=(1, 2))) / p2
    centre_ok = good[:, radius_pix, radius_pix]
    flag = ~finite | ~centre_ok | (p2 < 0.7 * p2_all)
    return np.where(flag, np.nan, flux), np.where(flag, np.nan, err), flag


def aperture_photometry(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    *,
    radius_pix: float,
    bad_mask_bits: int = _BAD_FOR_PHOTOMETRY,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Circular-aperture flux with photutils (exact pixel overlap), and its error.

    Returns
    -------
    flux, flux_err : numpy.ndarray
        NaN where flagged.
    flag : numpy.ndarray of bool
        True where any pixel of the aperture is masked, non-finite or off the image.
    """
    from photutils.aperture import CircularAperture

    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    n = len(x)
    flux = np.full(n, np.nan)
    err = np.full(n, np.nan)
    flag = np.ones(n, dtype=bool)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return flux, err, flag
    bad = ((exposure.mask & bad_mask_bits) != 0) | ~np.isfinite(exposure.image)
    bad |= ~np.isfinite(exposure.variance)
    image = np.where(bad, 0.0, exposure.image)
    variance = np.where(bad, 0.0, exposure.variance)
    aperture = CircularAperture(np.column_stack([x[finite], y[finite]]), r=radius_pix)
    sums, sum_vars = aperture.do_photometry(image, error=np.sqrt(variance))
    bad_frac, _ = aperture.do_photometry(bad.astype(float))
    ny, nx = exposure.shape
    xs, ys = x[finite], y[finite]
    off = (xs - radius_pix < -0.5) | (xs + radius_pix > nx - 0.5)
    off |= (ys - radius_pix < -0.5) | (ys + radius_pix > ny - 0.5)
    ok = (bad_frac == 0) & ~off
    flux[finite] = np.where(ok, sums, np.nan)
    err[finite] = np.where(ok, sum_vars, np.nan)
    flag[finite] = ~ok
    return flux, err, flag


def aperture_correction(
    psf_flux: np.ndarray,
    aperture_flux: np.ndarray,
    snr: np.ndarray,
    usable: np.ndarray,
    *,
    min_snr: float,
    min_stars: int,
    enclosed_fraction: float | np.ndarray = 1.0,
) -> tuple[float, int]:
    """Median of ``aperture_flux / (psf_flux * enclosed_fraction)`` over bright usable stars.

    Parameters
    ----------
    psf_flux, aperture_flux, snr : numpy.ndarray
        Per-source PSF flux, aperture flux and PSF S/N.
    usable : numpy.ndarray of bool
        Sources that may be used (point-like, isolated, unflagged).
    min_snr : float
        Least PSF S/N of a source used.
    min_stars : int
        Fewest sources for a correction.
    enclosed_fraction : float or numpy.ndarray, optional
        The PSF model's flux fraction inside the aperture (per source, or one value), so that
        corrected PSF fluxes are total fluxes.

    Returns
    -------
    correction : float
        Factor to multiply PSF fluxes by (1.0 when fewer than ``min_stars`` qualify).
    n_stars : int
        Sources used (0 when the correction fell back to 1.0).
    """
    enclosed = np.broadcast_to(np.asarray(enclosed_fraction, dtype=float), np.shape(psf_flux))
    if np.any(~(enclosed > 0.0) | (enclosed > 1.0)):
        raise ValueError(f"enclosed_fraction must be in (0, 1]; got {enclosed_fraction}")
    psf_flux = np.asarray(psf_flux, dtype=float)
    aperture_flux = np.asarray(aperture_flux, dtype=float)
    ok = np.asarray(usable, dtype=bool) & (np.asarray(snr) >= min_snr)
    ok &= np.isfinite(psf_flux) & np.isfinite(aperture_flux) & (psf_flux > 0)
    n = int(ok.sum())
    if n < min_stars:
        log.warning("aperture correction: %d stars (< %d): not applied", n, min_stars)
        return 1.0, 0
    return float(np.median(aperture_flux[ok] / (psf_flux[ok] * enclosed[ok]))), n


def aperture_correction_field(
    x: np.ndarray,
    y: np.ndarray,
    ratio: np.ndarray,
    used: np.ndarray,
    shape: tuple[int, int],
    *,
    order: int,
) -> np.ndarray:
    """Aperture correction at every position: a clipped polynomial fit of ``ratio`` over stars.

    Parameters
    ----------
    x, y : numpy.ndarray
        Positions of all sources, pixels.
    ratio : numpy.ndarray
        Aperture flux over (PSF flux times enclosed fraction), per source.
    used : numpy.ndarray of bool
        Sources that enter the fit (bright, isolated, point-like).
    shape : tuple of int
        ``(ny, nx)`` of the image (normalises the coordinates).
    order : int
        Total polynomial order, lowered until there are at least 5 stars per term; 0 gives
        the median, and so does a fit whose non-constant terms are not significant (chi-square
        test at 99.9 %).

    Returns
    -------
    numpy.ndarray
        The correction at every source.
    """
    ny, nx = shape
    u = 2.0 * np.asarray(x, dtype=float) / nx - 1.0
    v = 2.0 * np.asarray(y, dtype=float) / ny - 1.0
    used = np.asarray(used, dtype=bool) & np.isfinite(ratio)
    while order > 0 and used.sum() < 5 * (order + 1) * (order + 2) // 2:
        order -= 1
    if order == 0:
        return np.full(len(u), float(np.median(ratio[used])))

    def design(uu: np.ndarray, vv: np.ndarray) -> np.ndarray:
        return np.column_stack(
            [uu**p * vv ** (t - p) for t in range(order + 1) for p in range(t + 1)]
        )

    keep = used.copy()
    for _ in range(4):
        coef, *_ = np.linalg.lstsq(design(u[keep], v[keep]), ratio[keep], rcond=None)
        resid = ratio - design(u, v) @ coef
        scatter = 1.4826 * np.median(np.abs(resid[keep]))
        new_keep = used & (np.abs(resid) <= 3.0 * max(scatter, 1e-4))
        if np.array_equal(new_keep, keep) or new_keep.sum() < len(coef) + 2:
            break
        keep = new_keep
    # Keep the polynomial only if its non-constant terms are significant (chi-square test at
    # 99.9 %): with tens of noisy stars a plane fitted to no real gradient adds ~1 % errors.
    a = design(u[keep], v[keep])
    resid = ratio[keep] - a @ coef
    dof = max(int(keep.sum()) - a.shape[1], 1)
    cov = np.linalg.pinv(a.T @ a) * float(np.sum(resid**2) / dof)
    terms = coef[1:]
    chi2_terms = float(terms @ np.linalg.pinv(cov[1:, 1:]) @ terms)
    if chi2_terms < stats.chi2.isf(1e-3, len(terms)):
        return np.full(len(u), float(np.median(ratio[keep])))
    return design(u, v) @ coef


def isolated(x: np.ndarray, y: np.ndarray, radius_pix: float) -> np.ndarray:
    """True for positions with no other position within ``radius_pix``."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 2:
        return np.ones(len(x), dtype=bool)
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.column_stack([x, y])).query_pairs(radius_pix, output_type="ndarray")
    out = np.ones(len(x), dtype=bool)
    out[pairs.ravel()] = False
    return out


@dataclass(frozen=True, slots=True)
class ForcedPhotometryConfig:
    """Configuration of `forced_photometry`."""

    zero_point_mag: float = config_field(
        31.4, "Zero point of the output fluxes, mag (31.4 AB = nJy)", minimum=0.0, maximum=50.0
    )
    stamp_radius_fwhm: float = config_field(
        2.0, "Half-size of the PSF-fit stamp, in units of the PSF FWHM", exclusive_minimum=0.0
    )
    aperture_radius_arcsec: float = config_field(
        2.0,
        "Radius of the aperture used for the aperture correction, arcsec",
        exclusive_minimum=0.0,
    )
    apply_aperture_correction: bool = config_field(
        True, "Scale PSF fluxes to the aperture flux of bright isolated stars (false: raw PSF fit)"
    )
    apcorr_min_snr: float = config_field(
        30.0, "Least PSF S/N of a star used for the aperture correction", minimum=0.0
    )
    apcorr_min_stars: int = config_field(
        10, "Fewest stars for an aperture correction (else none is applied)", minimum=1
    )
    apcorr_order: int = config_field(
        1,
        "Polynomial order in (x, y) of the aperture correction over the calexp (0: one "
        "value); it absorbs the PSF width varying across the CCD, which the single-FWHM model "
        "ignores. Lowered automatically when there are fewer than 5 stars per term",
        minimum=0,
        maximum=3,
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class ForcedPhotometryResult:
    """Forced photometry of one calexp.

    Attributes
    ----------
    table : astropy.table.Table
        One row per Object: ``object_id``, ``x``, ``y`` (calexp pixels), ``psf_flux`` and
        ``psf_flux_err`` (at ``zero_point_mag``, aperture-corrected), ``psf_flux_flag``.
        Objects off the calexp are kept with the flag set and NaN fluxes. ``meta`` holds
        ``ZP``, ``APCORR``, ``NAPCORR`` and the calexp's ``VISIT``, ``CCD``, ``FILTER`` and
        ``MJD-OBS`` (or ``MJD``) when its header has them.
    aperture_correction : float
        Median aperture correction; the factor applied varies over the calexp as a
        polynomial of ``apcorr_order`` (1.0 everywhere if too few stars).
    n_apcorr_stars : int
        Stars behind the aperture correction (0 if none was applied).
    flux_scale : float
        Output flux units per calexp electron.
    """

    table: Table
    aperture_correction: float
    n_apcorr_stars: int
    flux_scale: float


def forced_photometry(
    calexp: Exposure, objects: Table, *, config: ForcedPhotometryConfig | None = None
) -> ForcedPhotometryResult:
    """PSF flux of every Object on one calexp, at the Object's coadd position.

    Parameters
    ----------
    calexp : Exposure
        Background-subtracted calexp (electrons) with WCS, header ``ZP`` and ``PSFFWHM``.
    objects : astropy.table.Table
        Object table with ``object_id``, ``ra_deg``, ``dec_deg``; an ``extendedness`` column
        (0 = point source), if present, restricts the aperture correction to stars; a
        ``parent`` column (deblended children share a non-zero one) makes each family's PSF
        fluxes one simultaneous fit (`blend_psf_photometry`).
    config : ForcedPhotometryConfig, optional
        Stamp size, zero point and aperture correction.

    Returns
    -------
    ForcedPhotometryResult
        One row per Object, in the input order.

    Raises
    ------
    InputDataError
        If the calexp lacks a WCS, ``ZP`` or ``PSFFWHM``, or ``objects`` lacks a column.
    """
    config = config or ForcedPhotometryConfig()
    for column in ("object_id", "ra_deg", "dec_deg"):
        if column not in objects.colnames:
            raise InputDataError(f"objects table lacks column {column!r}", column=column)
    if calexp.wcs is None:
        raise InputDataError("calexp has no WCS: Object positions cannot be placed")
    flux_scale = calexp_flux_scale(calexp.header, config.zero_point_mag)
    pixel_arcsec = float(np.mean(proj_plane_pixel_scales(calexp.wcs.celestial))) * 3600.0
    psf = MixturePsf.from_header(calexp.header, pixel_arcsec)
    fwhm_pix = psf.effective_fwhm_pix
    radius = max(2, int(np.ceil(config.stamp_radius_fwhm * fwhm_pix)))
    try:
        varying = psf_model_from_header(
            calexp.header, calexp.extra_planes.get(PSF_RESIDUAL_EXTNAME)
        )
    except ValueError as exc:
        raise InputDataError(f"calexp PSF model: {exc}") from None
    if varying is not None and varying.image_shape != calexp.image.shape:
        raise InputDataError(
            f"calexp PSF model was fitted on an image of shape {varying.image_shape}, the "
            f"calexp is {calexp.image.shape}",
            psf_nx=int(varying.image_shape[1]),
            calexp_nx=int(calexp.image.shape[1]),
        )
    fit_model = varying if varying is not None else psf

    n = len(objects)
    if n:
        x, y = calexp.wcs.all_world2pix(
            np.asarray(objects["ra_deg"], dtype=float),
            np.asarray(objects["dec_deg"], dtype=float),
            0,
        )
    else:
        x = y = np.zeros(0)
    flux, err, flag = psf_photometry(calexp, x, y, fit_model, radius_pix=radius)
    if "parent" in objects.colnames:
        flux, err = blend_psf_photometry(
            calexp,
            x,
            y,
            np.asarray(objects["parent"], dtype=np.int64),
            fit_model,
            radius_pix=radius,
            flux=flux,
            flux_err=err,
            flag=flag,
        )
    correction, n_stars = 1.0, 0
    field = np.ones(n)
    if config.apply_aperture_correction and n:
        ap_radius = config.aperture_radius_arcsec / pixel_arcsec
        ap_flux, _, ap_flag = aperture_photometry(calexp, x, y, radius_pix=ap_radius)
        stars = np.ones(n, dtype=bool)
        if "extendedness" in objects.colnames:
            stars = np.asarray(objects["extendedness"]) == 0
        usable = stars & ~flag & ~ap_flag & isolated(x, y, ap_radius + 2.0 * fwhm_pix)
        if varying is not None:
            ny, nx = calexp.image.shape
            enclosed = varying.enclosed_fraction(
                ap_radius,
                np.clip(np.nan_to_num(x), 0, nx - 1),
                np.clip(np.nan_to_num(y), 0, ny - 1),
            )
        else:
            enclosed = psf.enclosed_fraction(ap_radius)
        correction, n_stars = aperture_correction(
            flux,
            ap_flux,
            flux / err,
            usable,
            min_snr=config.apcorr_min_snr,
            min_stars=config.apcorr_min_stars,
            enclosed_fraction=enclosed,
        )
        field = np.full(n, correction)
        if n_stars and config.apcorr_order > 0:
            used = usable & (flux / err >= config.apcorr_min_snr) & (flux > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = ap_flux / (flux * enclosed)
            field = aperture_correction_field(
                x, y, ratio, used, calexp.shape, order=config.apcorr_order
            )
    scale = flux_scale * field
    table = Table(
        {
            "object_id": np.asarray(objects["object_id"], dtype=np.int64),
            "x": np.asarray(x, dtype=float),
            "y": np.asarray(y, dtype=float),
            "psf_flux": flux * scale,
            "psf_flux_err": err * scale,
            "psf_flux_flag": flag,
        }
    )
    table.meta["ZP"] = config.zero_point_mag
    annotate(table, "forced_src", flux_unit=flux_unit_of_zero_point(config.zero_point_mag))
    for key in ("VISIT", "CCD", "FILTER", "MJD-OBS", "MJD"):
        if key in calexp.header:
            table.meta[key] = calexp.header[key]
    table.meta["APCORR"] = correction
    table.meta["NAPCORR"] = n_stars
    return ForcedPhotometryResult(
        table=table, aperture_correction=correction, n_apcorr_stars=n_stars, flux_scale=flux_scale
    )
