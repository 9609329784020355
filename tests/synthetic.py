"""Synthetic star fields with known truth, for the processCcd tests and benchmark.

A field is a non-square CCD image in electrons with Moffat stars of known total flux at known
positions, drawn through a *true* TAN-SIP WCS whose tangent point lies off the CCD (as for a
CCD of a mosaic); the exposure carries a *header* WCS that is the same TAN projection without
the distortion and with its pointing shifted by a chosen error. Stars are rendered by
integrating the Moffat profile over each pixel (5 x 5 sub-samples in the core), then sky,
Poisson and read noise are added.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, Sip

from dcflow.exposure import Exposure, MaskPlane

__all__ = ["SyntheticField", "make_star_field", "moffat_alpha"]

PIXEL_SCALE_ARCSEC = 0.187


def moffat_alpha(fwhm_pix: float, beta: float) -> float:
    """Moffat core width alpha (pixels) for a FWHM (pixels) and beta."""
    return fwhm_pix / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


@dataclass(frozen=True)
class SyntheticField:
    """A synthetic exposure with its truth."""

    exposure: Exposure
    refcat: Table
    truth: Table
    true_wcs: WCS
    zero_point: float
    fwhm_arcsec: float


def _true_wcs(shape, crval, rotation_deg, distortion_arcsec, crpix) -> WCS:
    ny, nx = shape
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval = crval
    w.wcs.crpix = crpix
    w.wcs.cd = scale * np.array([[-c, s], [s, c]])
    # Radial-ish distortion: u*r^2-like terms scaled so that the offset reaches
    # distortion_arcsec at the CCD corner farthest from the tangent point.
    far = max(
        np.hypot(px + 1 - crpix[0], py + 1 - crpix[1]) for px in (0, nx - 1) for py in (0, ny - 1)
    )
    k3 = (distortion_arcsec / PIXEL_SCALE_ARCSEC) / far**3
    k2 = 0.3 * (distortion_arcsec / PIXEL_SCALE_ARCSEC) / far**2
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[3, 0] = k3
    a[1, 2] = k3
    b[2, 1] = k3
    b[0, 3] = k3
    a[2, 0] = k2
    b[1, 1] = 0.5 * k2
    b[0, 2] = -0.7 * k2
    a[1, 1] = -0.4 * k2
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def _render_moffat(image, x, y, flux, alpha, beta, rng_sub=5):
    """Add pixel-integrated circular Moffat stars to ``image`` in place."""
    ny, nx = image.shape
    offs = (np.arange(rng_sub) - (rng_sub - 1) / 2.0) / rng_sub
    alphas = np.broadcast_to(np.asarray(alpha, dtype=float), np.shape(x))
    for xi, yi, fi, alpha in zip(x, y, flux, alphas, strict=True):
        norm = (beta - 1.0) / (np.pi * alpha**2)
        # Radius beyond which the lost flux is below ~0.3 e- (fraction capped to [1e-5, 1e-2]).
        lost = min(max(0.3 / max(fi, 1.0), 1e-5), 1e-2)
        r_max = alpha * np.sqrt(lost ** (1.0 / (1.0 - beta)) - 1.0)
        half = int(min(max(np.ceil(r_max), 8), 80))
        x0, x1 = max(int(xi) - half, 0), min(int(xi) + half + 1, nx)
        y0, y1 = max(int(yi) - half, 0), min(int(yi) + half + 1, ny)
        if x1 <= x0 or y1 <= y0:
            continue
        gx = np.arange(x0, x1) - xi
        gy = np.arange(y0, y1) - yi
        r2 = (gy[:, None] ** 2 + gx[None, :] ** 2) / alpha**2
        prof = norm * (1.0 + r2) ** (-beta)
        # Core (within 3 alpha): integrate over the pixel with rng_sub^2 points.
        core = int(np.ceil(3.0 * alpha))
        cx0, cx1 = max(int(xi) - core, x0), min(int(xi) + core + 1, x1)
        cy0, cy1 = max(int(yi) - core, y0), min(int(yi) + core + 1, y1)
        if cx1 > cx0 and cy1 > cy0:
            sx = ((np.arange(cx0, cx1) - xi)[:, None] + offs[None, :]).ravel()
            sy = ((np.arange(cy0, cy1) - yi)[:, None] + offs[None, :]).ravel()
            r2c = (sy[:, None] ** 2 + sx[None, :] ** 2) / alpha**2
            pc = norm * (1.0 + r2c) ** (-beta)
            pc = pc.reshape(cy1 - cy0, rng_sub, cx1 - cx0, rng_sub).mean(axis=(1, 3))
            prof[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = pc
        image[y0:y1, x0:x1] += fi * prof


def make_star_field(
    shape: tuple[int, int] = (700, 500),
    *,
    n_stars: int = 400,
    seed: int = 1,
    fwhm_arcsec: float = 0.8,
    beta: float = 3.0,
    sky_e: float = 800.0,
    read_noise_e: float = 4.0,
    zero_point: float = 30.0,
    mag_range: tuple[float, float] = (17.0, 24.5),
    pointing_error_arcsec: tuple[float, float] = (2.4, -1.8),
    distortion_arcsec: float = 1.5,
    rotation_deg: float = 0.05,
    crval: tuple[float, float] = (150.3, 2.2),
    crpix_offset: tuple[float, float] = (-1500.0, 2600.0),
    ref_pos_noise_mas: float = 15.0,
    ref_mag_noise: float = 0.015,
    n_cosmic_rays: int = 0,
    saturation_e: float | None = None,
    band: str = "r",
    fwhm_edge_growth: float = 0.0,
    noise_seed: int | None = None,
) -> SyntheticField:
    """Make a synthetic star field in electrons with known truth.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image.
    n_stars : int
        Number of stars drawn over the image, magnitudes from a power law ``dN/dm ~ 10^(0.3 m)``.
    seed : int
        Random seed (the field is deterministic from it).
    fwhm_arcsec, beta : float
        Moffat PSF FWHM (arcsec) and beta.
    sky_e, read_noise_e : float
        Sky level (e-/pixel) and read noise (e-).
    zero_point : float
        ``mag = zero_point - 2.5 log10(flux_e)``.
    mag_range : tuple of float
        Magnitude range of the stars.
    pointing_error_arcsec : tuple of float
        Offset of the header WCS pointing (east, north), arcsec.
    distortion_arcsec : float
        Size of the true distortion at the CCD corner farthest from the tangent point.
    rotation_deg : float
        Rotation of the true WCS (the header WCS has none).
    crval, crpix_offset : tuple of float
        Tangent point (deg) and its position relative to the CCD centre (pixels).
    ref_pos_noise_mas, ref_mag_noise : float
        Noise of the reference catalogue positions (mas per axis) and magnitudes.
    n_cosmic_rays : int
        Number of single-pixel cosmic rays added and masked as CR.
    saturation_e : float, optional
        Level at which pixels are clipped and masked SAT.
    band : str
        Band name of the reference-catalogue magnitude columns.
    fwhm_edge_growth : float
        Relative growth of the FWHM from mid-height (``fwhm_arcsec``) to the top and bottom
        rows, quadratic in the row: a PSF that varies across the CCD as seeing and optics
        make it do.
    noise_seed : int, optional
        Seed of the pixel noise and cosmic rays alone (default: drawn on from ``seed``), so
        that epochs of the same stars differ only by their noise.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    crpix = (nx / 2.0 + 0.5 + crpix_offset[0], ny / 2.0 + 0.5 + crpix_offset[1])
    true_wcs = _true_wcs(shape, crval, rotation_deg, distortion_arcsec, crpix)

    # Stars: positions uniform over the CCD plus a 10-pixel margin, power-law magnitudes.
    m0, m1 = mag_range
    u = rng.uniform(size=n_stars)
    k = 0.3 * np.log(10.0)
    mag = np.log(np.exp(k * m0) + u * (np.exp(k * m1) - np.exp(k * m0))) / k
    x = rng.uniform(-10, nx + 10, n_stars)
    y = rng.uniform(-10, ny + 10, n_stars)
    flux = 10.0 ** (-0.4 * (mag - zero_point))
    ra, dec = true_wcs.all_pix2world(x, y, 0)

    fwhm_pix = fwhm_arcsec / PIXEL_SCALE_ARCSEC
    alpha = moffat_alpha(fwhm_pix, beta) * (1.0 + fwhm_edge_growth * (2.0 * y / ny - 1.0) ** 2)
    model = np.zeros(shape, dtype=np.float64)
    _render_moffat(model, x, y, flux, alpha, beta)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
    image = rng.poisson(model + sky_e).astype(np.float64)
    image += rng.normal(0.0, read_noise_e, shape)
    mask = np.zeros(shape, dtype=np.int32)
    if saturation_e is not None:
        sat = image >= saturation_e
        image[sat] = saturation_e
        mask[sat] |= MaskPlane.SAT
    if n_cosmic_rays:
        cy = rng.integers(0, ny, n_cosmic_rays)
        cx = rng.integers(0, nx, n_cosmic_rays)
        image[cy, cx] += rng.uniform(2000, 20000, n_cosmic_rays)
        mask[cy, cx] |= MaskPlane.CR
    variance = (np.maximum(model, 0) + sky_e + read_noise_e**2).astype(np.float32)

    # Header WCS: TAN without distortion, pointing shifted by the error.
    head = WCS(naxis=2)
    head.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    head.wcs.crpix = crpix
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    head.wcs.cd = scale * np.array([[-1.0, 0.0], [0.0, 1.0]])
    de, dn = pointing_error_arcsec
    head.wcs.crval = (
        crval[0] + de / 3600.0 / np.cos(np.radians(crval[1])),
        crval[1] + dn / 3600.0,
    )

    header = fits.Header()
    header["FILTER"] = band
    header["EXPTIME"] = 60.0
    exposure = Exposure(
        image=image.astype(np.float32),
        mask=mask,
        variance=variance,
        wcs=head,
        header=header,
    )

    truth = Table(
        {
            "x": x,
            "y": y,
            "ra_deg": ra,
            "dec_deg": dec,
            "flux_e": flux,
            f"{band}_mag": mag,
        }
    )
    # Reference catalogue: a slightly larger area, noisy positions and magnitudes.
    noise_deg = ref_pos_noise_mas / 3.6e6
    inside = (x > -5) & (x < nx + 5) & (y > -5) & (y < ny + 5)
    refcat = Table(
        {
            "ra_deg": ra[inside]
            + rng.normal(0, noise_deg, inside.sum()) / np.cos(np.radians(dec[inside])),
            "dec_deg": dec[inside] + rng.normal(0, noise_deg, inside.sum()),
            f"{band}_mag": mag[inside] + rng.normal(0, ref_mag_noise, inside.sum()),
            f"{band}_mag_err": np.full(inside.sum(), ref_mag_noise),
        }
    )
    return SyntheticField(
        exposure=exposure,
        refcat=refcat,
        truth=truth,
        true_wcs=true_wcs,
        zero_point=zero_point,
        fwhm_arcsec=fwhm_arcsec,
    )
