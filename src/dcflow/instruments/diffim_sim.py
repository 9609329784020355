"""A science image and its template with different, spatially varying PSFs, with truth.

The difference-imaging stages (`dcflow.stages.diffim`, `dcflow.stages.dia_sources`) are
checked against what this simulator injected: stars present in both images, transients (with
known flux) only in the science image, and optionally a star that moved between the epochs
(a dipole on the difference). The two images have different zero points, PSFs (a Moffat of
``beta`` 3 in the science image and a near-Gaussian Moffat of ``beta`` 8 in the template,
each a `dcflow.stages.psf.PsfFitResult` whose width varies linearly in ``ln alpha`` across the
image) and noise levels (the template is a deeper coadd). Stars are rendered with the
pixel-integrated model of `dcflow.stages.psf.MoffatPsf`, so the truth PSF is exactly the one
photometry uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from dcflow.stages.psf import MoffatPsf, PsfFitResult

__all__ = ["DiffimPair", "simulate_diffim_pair", "varying_moffat"]


@dataclass(frozen=True, slots=True)
class DiffimPair:
    """A simulated science image, its template and what was put in them.

    Attributes
    ----------
    science, science_variance : numpy.ndarray
        ``(ny, nx)`` float32 image (electrons, sky subtracted) and its variance.
    template, template_variance : numpy.ndarray
        ``(ny, nx)`` float32 template on the same pixel grid, in its own flux unit.
    science_psf, template_psf : PsfFitResult
        The PSF models the images were rendered with.
    science_zero_point, template_zero_point : float
        Magnitude of one unit of each image's pixels.
    stars : astropy.table.Table
        ``x``, ``y`` (template position), ``flux`` (science electrons), ``dx_science``,
        ``dy_science`` (shift of the star in the science image, pixels: the moved star's, the
        jitter).
    transients : astropy.table.Table
        ``x``, ``y``, ``flux`` (science electrons) of the sources only in the science image.
    """

    science: np.ndarray
    science_variance: np.ndarray
    template: np.ndarray
    template_variance: np.ndarray
    science_psf: PsfFitResult
    template_psf: PsfFitResult
    science_zero_point: float
    template_zero_point: float
    stars: Table
    transients: Table


def varying_moffat(
    fwhm_pix: float,
    beta: float,
    shape: tuple[int, int],
    *,
    width_slope_x: float = 0.0,
    width_slope_y: float = 0.0,
    e1: float = 0.0,
    subsample: int = 3,
) -> PsfFitResult:
    """A Moffat PSF whose ``ln alpha`` is linear across the image (``PsfFitResult`` order 1).

    Parameters
    ----------
    fwhm_pix : float
        FWHM at the image centre, pixels.
    beta : float
        Moffat index (large: close to a Gaussian).
    shape : tuple of int
        ``(ny, nx)`` of the image.
    width_slope_x, width_slope_y : float
        Change of ``ln alpha`` from the centre to the right (top) edge.
    e1 : float
        Ellipticity (``> 0``: elongated along x).
    subsample : int
        Pixel-integration points per axis.
    """
    alpha = fwhm_pix / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    psf = MoffatPsf(alpha_pix=float(alpha), beta=beta, e1=e1, subsample=subsample)
    return PsfFitResult(
        psf=psf,
        used=np.zeros(0, dtype=bool),
        n_stars=0,
        chi2_per_dof=float("nan"),
        width_coeffs=(0.0, float(width_slope_y), float(width_slope_x)),
        width_order=1,
        image_shape=(int(shape[0]), int(shape[1])),
    )


def _render(image: np.ndarray, model: PsfFitResult, x, y, flux, half_size: int) -> None:
    """Add point sources of the (spatially varying) model to ``image`` in place."""
    ny, nx = image.shape
    alphas = model.alpha_at(np.asarray(x, float), np.asarray(y, float))
    for xc, yc, f, a in zip(x, y, flux, alphas, strict=True):
        ix, iy = round(xc), round(yc)
        stamp = dataclasses.replace(model.psf, alpha_pix=float(a)).render(
            half_size, xc - ix, yc - iy
        )
        x1, x2 = max(ix - half_size, 0), min(ix + half_size + 1, nx)
        y1, y2 = max(iy - half_size, 0), min(iy + half_size + 1, ny)
        sy, sx = y1 - (iy - half_size), x1 - (ix - half_size)
        image[y1:y2, x1:x2] += (f * stamp[sy : sy + y2 - y1, sx : sx + x2 - x1]).astype(np.float32)


def _spread_positions(rng, n, shape, margin, min_sep, avoid_x=(), avoid_y=()):
    """Uniform random positions at least ``min_sep`` from each other and from ``avoid``."""
    ny, nx = shape
    xs, ys = list(avoid_x), list(avoid_y)
    out_x, out_y = [], []
    for _ in range(50 * n):
        if len(out_x) == n:
            break
        x = rng.uniform(margin, nx - 1 - margin)
        y = rng.uniform(margin, ny - 1 - margin)
        if xs and np.min(np.hypot(np.asarray(xs) - x, np.asarray(ys) - y)) < min_sep:
            continue
        xs.append(x)
        ys.append(y)
        out_x.append(x)
        out_y.append(y)
    return np.array(out_x), np.array(out_y)


def simulate_diffim_pair(
    shape: tuple[int, int],
    *,
    n_stars: int,
    transient_fluxes: np.ndarray,
    seed: int = 0,
    science_fwhm_pix: float = 4.5,
    template_fwhm_pix: float = 3.4,
    science_sky_e: float = 900.0,
    template_noise_ratio: float = 0.5,
    star_flux_range_e: tuple[float, float] = (2.0e3, 2.0e5),
    moved_star_shift_pix: float = 0.0,
    star_jitter_pix: float = 0.0,
    science_zero_point: float = 30.0,
    template_zero_point: float = 31.4,
) -> DiffimPair:
    """Simulate a science image and its template on the same pixel grid.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of both images.
    n_stars : int
        Stars in both images, flux log-uniform in ``star_flux_range_e``.
    transient_fluxes : numpy.ndarray
        Flux (science electrons) of each transient, only in the science image, placed at
        least 20 pixels from every star and from each other.
    seed : int
        Random seed (positions, fluxes, noise).
    science_fwhm_pix, template_fwhm_pix : float
        PSF FWHM at the image centre; each varies by about +-8 % across the image.
    science_sky_e : float
        Sky level of the science image (electrons; its Poisson noise is the sky noise).
    template_noise_ratio : float
        Template noise over science noise, in science units (a deeper coadd: < 1).
    star_flux_range_e : tuple of float
        Range of star fluxes, science electrons.
    moved_star_shift_pix : float
        If non-zero, the brightest star is shifted along x by this much in the science image.
    star_jitter_pix : float
        Every star is shifted in the science image by a random offset of this rms per axis
        (pixels; registration noise: astrometric errors that no smooth mapping removes).
    science_zero_point, template_zero_point : float
        Magnitude of one pixel unit of each image.

    Returns
    -------
    DiffimPair
        Images, variances, PSF models and truth tables.
    """
    rng = np.random.default_rng(seed)
    nx = shape[1]
    sci_psf = varying_moffat(science_fwhm_pix, 3.0, shape, width_slope_x=0.08, width_slope_y=-0.05)
    tmpl_psf = varying_moffat(
        template_fwhm_pix, 8.0, shape, width_slope_x=-0.04, width_slope_y=0.07, e1=0.05
    )
    sx, sy = _spread_positions(rng, n_stars, shape, 5.0, 6.0)
    lo, hi = np.log(star_flux_range_e[0]), np.log(star_flux_range_e[1])
    sflux = np.exp(rng.uniform(lo, hi, sx.size))
    shift = np.zeros(sx.size)
    jitter_y = np.zeros(sx.size)
    if star_jitter_pix:
        shift = rng.normal(0.0, star_jitter_pix, sx.size)
        jitter_y = rng.normal(0.0, star_jitter_pix, sx.size)
    if moved_star_shift_pix and sx.size:
        bright = int(np.argmax(np.where((sx > 40) & (sx < nx - 40), sflux, 0.0)))
        shift[bright] = moved_star_shift_pix
    fluxes = np.asarray(transient_fluxes, dtype=float)
    tx, ty = _spread_positions(rng, fluxes.size, shape, 30.0, 20.0, sx, sy)
    fluxes = fluxes[: tx.size]
    half = int(np.ceil(6.0 * science_fwhm_pix))

    sci_model = np.zeros(shape, dtype=np.float32)
    _render(sci_model, sci_psf, sx + shift, sy + jitter_y, sflux, half)
    _render(sci_model, sci_psf, tx, ty, fluxes, half)
    sci_var = (science_sky_e + sci_model).astype(np.float32)
    science = sci_model + rng.standard_normal(shape, dtype=np.float32) * np.sqrt(sci_var)

    # Template: same stars, noise template_noise_ratio x the science sky noise (a coadd, whose
    # source Poisson noise is reduced likewise), in its own flux unit.
    scale = 10.0 ** (0.4 * (template_zero_point - science_zero_point))
    tmpl_model = np.zeros(shape, dtype=np.float32)
    _render(tmpl_model, tmpl_psf, sx, sy, sflux, half)
    tvar_e = (template_noise_ratio**2 * (science_sky_e + tmpl_model)).astype(np.float32)
    template = tmpl_model + rng.standard_normal(shape, dtype=np.float32) * np.sqrt(tvar_e)
    return DiffimPair(
        science=science.astype(np.float32),
        science_variance=sci_var,
        template=(template * scale).astype(np.float32),
        template_variance=(tvar_e * scale**2).astype(np.float32),
        science_psf=sci_psf,
        template_psf=tmpl_psf,
        science_zero_point=science_zero_point,
        template_zero_point=template_zero_point,
        stars=Table({"x": sx, "y": sy, "flux": sflux, "dx_science": shift, "dy_science": jitter_y}),
        transients=Table({"x": tx, "y": ty, "flux": fluxes}),
    )
