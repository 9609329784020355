"""Simulated blends on a coadd patch: pairs of PSF-convolved stars or galaxies with known fluxes.

The patch is the central one of `coadd_synthetic` (240 x 240 pixels, 0.2"/pixel). Sixteen
pairs sit on a 4 x 4 grid 50 pixels apart; in each pair the primary has S/N ~ 2000 and the
secondary is ``contrast_mag`` fainter, ``separation_fwhm`` PSF FWHM away at a random angle,
both at random sub-pixel positions. The PSF is a circular Gaussian (FWHM 0.9") integrated over
pixels; galaxies are exponential discs (half-light radius 0.4") convolved with it. Noise is
Gaussian with a constant variance of 1 (the coadd's background-limited regime).

``noiseless`` keeps each source's image alone, so that a deblender's error can be measured
against what the same measurement gives on the isolated source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.modeling.models import Sersic2D
from coadd_synthetic import PATCH, PATCH_WCS
from scipy import ndimage
from scipy.special import erf

from dcflow.exposure import Exposure

FWHM_ARCSEC = 0.9
PIXEL_ARCSEC = 0.2
FWHM_PIX = FWHM_ARCSEC / PIXEL_ARCSEC
SIGMA_PIX = FWHM_PIX / (2.0 * np.sqrt(2.0 * np.log(2.0)))
PRIMARY_FLUX = 2000.0 * np.sqrt(4.0 * np.pi * SIGMA_PIX**2)
GRID = (45.0, 95.0, 145.0, 195.0)


@dataclass(frozen=True)
class BlendField:
    exposure: Exposure
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    is_primary: np.ndarray
    pair: np.ndarray
    noiseless: tuple[np.ndarray, ...]
    """The image of each source alone, noiseless (same order as ``x``)."""


def star_image(shape, x, y, flux):
    yy = np.arange(shape[0]) - 0.5
    xx = np.arange(shape[1]) - 0.5
    s = np.sqrt(2.0) * SIGMA_PIX
    fx = 0.5 * (erf((xx + 1.0 - x) / s) - erf((xx - x) / s))
    fy = 0.5 * (erf((yy + 1.0 - y) / s) - erf((yy - y) / s))
    return flux * fy[:, None] * fx[None, :]


def galaxy_image(shape, x, y, flux, r_half_pix=2.0):
    oversample = 3
    ny, nx = shape
    yy, xx = np.mgrid[0 : ny * oversample, 0 : nx * oversample]
    xs = (xx + 0.5) / oversample - 0.5
    ys = (yy + 0.5) / oversample - 0.5
    model = Sersic2D(amplitude=1.0, r_eff=r_half_pix, n=1.0, x_0=x, y_0=y)(xs, ys)
    model = ndimage.gaussian_filter(model, SIGMA_PIX * oversample)
    binned = model.reshape(ny, oversample, nx, oversample).sum(axis=(1, 3))
    return flux * binned / binned.sum()


def header() -> fits.Header:
    h = fits.Header()
    h["PSFNCOMP"] = 1
    h["PSFF0"] = FWHM_ARCSEC
    h["PSFW0"] = 1.0
    h["PSFB0"] = 0.0
    h["ZP"] = 31.4
    return h


def blend_field(separation_fwhm, contrast_mag, *, seed, kind="star") -> BlendField:
    rng = np.random.default_rng(seed)
    shape = PATCH.shape
    xs, ys, fluxes, primary, pair = [], [], [], [], []
    index = 0
    for gy in GRID:
        for gx in GRID:
            angle = rng.uniform(0, 2 * np.pi)
            x0, y0 = gx + rng.uniform(-0.5, 0.5), gy + rng.uniform(-0.5, 0.5)
            d = separation_fwhm * FWHM_PIX
            for is_primary, (x, y), flux in (
                (True, (x0, y0), PRIMARY_FLUX),
                (
                    False,
                    (x0 + d * np.cos(angle), y0 + d * np.sin(angle)),
                    PRIMARY_FLUX * 10 ** (-0.4 * contrast_mag),
                ),
            ):
                xs.append(x)
                ys.append(y)
                fluxes.append(flux)
                primary.append(is_primary)
                pair.append(index)
            index += 1
    draw = star_image if kind == "star" else galaxy_image
    noiseless = tuple(
        draw(shape, x, y, f).astype(np.float64) for x, y, f in zip(xs, ys, fluxes, strict=True)
    )
    image = np.sum(noiseless, axis=0) + rng.normal(0.0, 1.0, shape)
    exposure = Exposure(
        image=image.astype(np.float32),
        mask=np.zeros(shape, dtype=np.int32),
        variance=np.ones(shape, dtype=np.float32),
        wcs=PATCH_WCS,
        header=header(),
    )
    return BlendField(
        exposure,
        np.array(xs),
        np.array(ys),
        np.array(fluxes),
        np.array(primary),
        np.array(pair),
        noiseless,
    )
