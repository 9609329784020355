"""PSF model width and PSF-flux quality on the real SDSS Stripe 82 frames, per filter.

Usage: .venv/bin/python benchmarks/psf_sdss.py [--bands g r i]

For each filter, runs processCcd (config/sdss-stripe82.yaml settings) on the frame and prints:

- the PSF model's widths at the CCD centre: half-maximum FWHM of the Moffat (``PSFFWHM``),
  its Gaussian-equivalent FWHM from adaptive moments (``PSFMOMFW``) and its
  noise-equivalent-area width (``PSFEFFW``);
- independent measures of the same quantities: SDSS photo's ``psf_width`` (psField: the
  noise-equivalent width of photo's double-Gaussian fit, which has no wing), the
  noise-equivalent width of photo's own KL PSF image (``psField_kl_eff``, median over the
  stars' positions, against the model's on the same 51 x 51 stamp, ``model_eff_at_stars``:
  like with like), and, per bright isolated unsaturated star (S/N > 100), the median
  of an adaptive-moment FWHM, of a pixel-integrated Gaussian fit and of a Moffat fit (free
  centre, width, beta and background); the model's moments are measured on the model at
  each star's position, so like is compared with like;
- the robust scatter (1.4826 MAD) of ``apcorr * psf_flux / ap_flux`` over those stars (point
  sources only: extendedness 0) and the scatter the noise explains
  (`dcflow.stages.process_ccd.src_psf_aperture_ratio_noise`, to first order: the covariance
  of the two fluxes, both sums over the same pixels, and the response of a PSF flux made at
  the star's own width, which follows the light the aperture sums) -- ``ratio_noise`` -- and
  with the sky noise the variance plane misses added, measured with each star's own ratio
  weights at empty positions (`empty_position_noise`) -- ``ratio_noise_sky``;
  ``ratio_mad_boot_sd`` is the bootstrap error of the MAD, and ``chi_mad`` the robust scatter
  of each star's deviation over its own noise (which does not mix stars of very different
  noise as MAD / median noise does; ``chi_mad_boot_sd`` its bootstrap error), also for S/N
  100-200 and above 400 alone; ``ratio_frac_mad_mmag`` is the ratio's scatter with each PSF
  flux put in the aperture with the model's share of light there at the width it used;
  ``width_colour_pct_mag`` is the slope (% per mag) of the stars' moment width over the
  model's against their g - r colour (reference catalogue), with its error.

Measured on run 6377 (2026-12-06), with the model's width alone (``psf_flux_width: model``):
stars of S/N 100-200 were noise-limited (``chi`` MAD 0.7-1.1 in g r i z), stars above S/N 400
were not (2.5-6): a floor of 4-6 mmag from PSF-model width errors (a bright star's width
predicted by any smooth polynomial or kernel smoother from the other stars misses by 0.8-2 %
rms, its own width is measured to 0.15 %). With each source's own width weighed against the
model's (``local``, the default) ratio scatter / noise (with the sky term) went from
u 2.50 g 1.65 r 1.12 i 0.99 z 1.90 to u 0.58 g 0.69 r 0.81 i 1.01 z 1.16 (u also without the
stars touching SUSPECT border pixels, now flagged); ``chi`` MAD above S/N 400 from
6.0 4.2 5.4 2.5 3.5 to 4.9 1.1 3.7 0.3 3.0 (3-8 stars each).

psField (2026-12-07): the model's effective width over ``psf_width`` is u 1.017 g 1.034
r 1.023 i 1.018 z 1.047, but ``psf_width`` is the width of a double Gaussian without the PSF's
wing (it reproduces the 2-Gaussian parameters' effective width to 0.8 %), 0.6-4.2 % below
photo's own KL PSF; against the KL PSF at the same stars the model is u 1.010 g 1.005
r 0.981 i 0.985 z 0.994 (tests/test_sdss.py checks 3 %).

Ratio noise (2026-12-07, later): the figures above divide by the noise of a fixed-width PSF
flux. A PSF flux made at each star's own width follows the light the aperture sums (the unit
test on stars whose PSF flux takes 98 % of their own width: scatter / this noise 1.07 over
588 stars, / the fixed-width noise 0.26), so the noise is about half: u 3.3 g 3.1 r 5.0 i 8.3
z 3.4 mmag with the sky term, against 6.5 5.6 6.3 10.3 4.6. Ratio scatter / noise is then
(with the width polynomial's order chosen by F-test, as now) u 1.15 g 1.26 r 1.01 i 1.24
z 1.48 (bootstrap +- 0.62 0.47 0.33 0.31 0.65; 11-35 stars), per-star ``chi`` 1.07 1.69 1.36
1.10 1.59, and above S/N 400 ``chi`` 15.6 3.9 9.7 0.5 7.0: the brightest stars are not at the
noise floor; what is left is PSF-shape error, not noise. Widths: moments 0.987-0.995, KL PSF
u 1.010 g 1.004 r 0.981 i 0.985 z 0.994.

PSF residual table (2026-12-07, ``process_ccd.psf_residual: table``, a DAOPHOT-style lookup
table of the shape stars' stacked residuals added to the Moffat): the PSF fit's reduced chi^2
of bright stars drops 3-4 times (r, S/N > 500: 25-77 to 7-21), but ratio scatter / noise (with
the sky term) goes from u 1.15 g 1.26 r 1.01 i 1.24 z 1.48 to u 1.14 g 1.05 r 1.69 i 1.21
z 1.17 (oversampling 2; 3: 1.12 0.92 1.58 1.04 1.39; 4: 0.86 0.97 1.30 1.10 1.70), and the
per-star ``chi`` robust scatter pooled over the five filters (117 stars) from 1.33 +- 0.16 to
1.35-1.38 +- 0.14: within the noise of these 11-35 stars per filter, and r (FWHM 2 pixels,
the most undersampled) worse each time, so the default stays ``none``. What a constant table
cannot remove is what varies from star to star (the width, and an offset of 2-4 mmag of the
stars above S/N 400, which are not among the shape stars). Widths with the table: effective
/ psField u 1.018 g 1.035 r 1.026 i 1.016 z 1.048 (without: 1.017 1.035 1.023 1.018 1.049).

Intrinsic width scatter by maximum likelihood (2026-12-07, later): ratio scatter / noise with
the sky term from u 1.15 g 1.26 r 1.01 i 1.24 z 1.48 to u 1.13 g 1.11 r 1.08 i 0.88 z 1.51
(bootstrap +- 0.55 0.71 0.37 0.38 0.70), per-star ``chi`` 1.07 1.69 1.36 1.10 1.59 to 0.79
1.21 1.39 1.03 1.66, median width shrink 0.76 0.92 0.47 0.77 0.48 to 0.59 0.68 0.45 0.48 0.45
(the faint stars no longer inflate the scatter the bright ones are shrunk by); widths
unchanged. z, and the stars above S/N 400 (``chi`` 17 4.3 9.5 0.8 7.0), are still not at the
noise floor: PSF-shape error, not width noise.

What the ratio figure means (2026-12-07, later): ``ratio_mad / ratio_noise_sky`` is not 1 when
the scatter is noise alone. With each star drawn from its own predicted noise
(``ratio_stat_noise_only``, 500 draws) it is u 0.54 g 0.61 r 0.81 i 0.72 z 0.79 (+- 0.2-0.3):
the 10-35 stars' noises span 0.2-15 mmag, and a MAD of such a mixture falls below the median
noise. The measured u 1.13 g 1.11 r 1.08 i 0.88 z 1.51 are 1.2-2.1 times that; the per-star
``chi_mad`` (1 for noise alone) is the figure that compares like with like. z's 1.51 +- 0.65
is within one bootstrap error of 1.20; what is significant is the stars above S/N 400
(deviations of 1-6 mmag on a predicted 0.2-0.7 mmag; with noise alone, the error of the median
they are measured from included, their ``chi`` MAD would be 1.1-1.8). In u g r these stars'
ratios sit 2-4 mmag above those of S/N 100-400 (medians by S/N bin; i and z: none), so the
excess is an offset with flux more than a scatter. Measured causes ruled out for those: a sky
offset (the mean of the background-subtracted image 4-7" from each star, less the model's
wing, is 0.04-0.45 +- 0.25 e-/pixel at zero flux in u..z; 3" apertures at 3000 empty positions
hold 0.01-0.15 e-/pixel: <= 1 mmag at S/N 100, where the offset would need ~1.5), saturation
or non-linearity (z's brightest star, peak 59000 ADU, deviates by 1.4 mmag, g's two at 42000
by 5.8, r's and i's at 12000-35000 by 0-3: no trend with peak counts), and per-star Moffat
shape (a free beta and ellipticity per star moves beta by -0.2 to +0.3 and e by <= 0.03 and
lowers the brightest stars' stamp chi^2 only from 12-29 to 10-25: what is left is not a
Moffat's). The real PSF has a halo the Moffat lacks: 1.2-1.9e-5 of the flux per pixel 4-7" out
(u..z, in proportion to flux, so it cancels in the normalised ratio). What does depend on flux
is the width a Moffat is given for such a profile: each star's own width over the model's
(medians, S/N 30-100 / 100-400 / > 400) is u -1.2 / +0.2 / +0.7 % and g -1.5 / +0.3 / +0.6 %
with the inverse-variance weights used (a bright star's Poisson noise weighs its core down),
+0.3 / +0.7 / +1.0 and -0.2 / +1.0 / +0.8 % with uniform ones, while adaptive moments show no
size change with peak charge (g -0.4 +- 0.3 %, z -0.3 +- 0.3 % per 1e5 e-: no
brighter-fatter); and the brightest stars' free Moffat beta is 0.1-0.2 below the others' (g
and r, peaks 20000-44000 ADU). Tried and not kept: width fits with uniform weights (those of
the PSF flux; ratio u 0.98 g 1.44 r 1.09 i 1.12 z 2.74, worse: g's brightest go from +6 to -12
mmag), weights proportional to the model PSF (flux-independent, core-weighted: u 1.43 g 0.85 r
1.61 i 1.59 z 2.44), the width polynomial measured on the PSF flux's stamp (u 0.58 g 0.95 r
0.97 i 0.88 z 1.77, chi 1.54 1.34 1.39 1.03 1.21: within the noise), both together (z 2.75),
and the width polynomial from S/N > 100 stars only (u 1.47 g 1.13 r 1.09 i 0.77 z 1.27; above
S/N 400 ``chi`` unchanged). With the constant residual table (``psf_residual: table``) r's
seven stars above S/N 390 agree among themselves to 0.7 mmag rms but sit 4.8 +- 0.2 mmag above
the median: the error is a shift with flux, not one that varies over the CCD, so a residual
table varying with position (PSFEx-style) is not what these frames call for. Nor is colour:
the ratio against the reference g - r has slopes -1.8 +- 2.3 (g), +1.2 +- 1.9 (r), -0.4 +- 1.7
(i), +5.3 +- 4.2 (z) mmag/mag. The noise model has the sky (variance plane from the image
before sky subtraction, plus the empty-position excess: PSF 0.98-1.08, aperture 1.03-1.26
times the plane), the sources' Poisson noise and the dark variance (RDVAR 30-220 e-^2), but no
term for the PSF model's own error: the scatter beyond the noise, by maximum likelihood
(sources of inconsistent width left out), is u 2.9 g 3.0 r 1.6 i 0.5 z 2.0 mmag; a PSF-flux
error floor of that size, measured per CCD, would make the quoted errors of stars above S/N
~300 honest, not their fluxes better.

Width or shape (2026-12-08, benchmarks/psf_sdss_width_shape.py): 0.85 +- 0.08 of the bright
stars' own width offsets are real width (ratio rms 5.1 mmag at the model's width, 2.8 at their
own, S/N > 200); what is left is shape that varies from star to star. The residual table
refitted jointly with the width polynomial (oversampling 3) gives ratio scatter / noise with
the sky term u 0.84 g 1.11 r 1.05 i 1.02 z 1.49 (oversampling 2: 0.99 1.19 1.27 0.98 1.12),
per-star ``chi`` pooled over 117 stars 1.28 (1.35) against 1.25 now: within the noise, so not
kept.

Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial import cKDTree

from dcflow.config_schema import load_config
from dcflow.configs import from_mapping
from dcflow.instruments import sdss
from dcflow.io import read_fits, read_table
from dcflow.layout import Layout
from dcflow.stages.process_ccd import (
    ProcessCcdConfig,
    process_ccd,
    src_psf_aperture_ratio_noise,
)
from dcflow.stages.psf import FWHM_PER_SIGMA, effective_area
from dcflow.stages.stamps import adaptive_moments, extract_stamps

ROOT = Path(__file__).resolve().parents[1]
CONFIG = load_config(ROOT / "config" / "sdss-stripe82.yaml")
CAMCOL = 4
HALF = 12
_OFF = (np.arange(5) - 2) / 5.0


def _frame(layout: Layout, band: str) -> sdss.SdssFrame:
    return sdss.prepare_frame(
        read_fits(layout.path("raw", ccd=CAMCOL, filter=band)),
        read_fits(layout.path("sdss_mask", ccd=CAMCOL, filter=band)),
        read_fits(layout.path("sdss_psfield", ccd=CAMCOL, filter=band)),
        read_fits(layout.path("sdss_tsfield", ccd=CAMCOL, filter=band)),
        read_table(layout.path("refcat", instrument="sdss")),
    )


def _integrated(profile, dx, dy):
    xs = dx[..., None, None] + _OFF[None, :]
    ys = dy[..., None, None] + _OFF[:, None]
    return profile(xs, ys).mean(axis=(-2, -1))


def _fit_star(stamp, weight, kind):
    """Per-star fit with free centre and background: (half-maximum FWHM pix, beta or nan)."""
    j = np.arange(-HALF, HALF + 1, dtype=float)
    dx, dy = j[None, :] + 0 * j[:, None], j[:, None] + 0 * j[None, :]
    sw = np.sqrt(weight)
    total = stamp.sum()

    if kind == "gauss":

        def model(p):
            s, x0, y0, amp, bg = p
            g = _integrated(
                lambda x, y: np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * s * s)), dx, dy
            )
            return amp * g / (2 * np.pi * s * s) + bg

        p0, lo, hi = [1.5, 0, 0, total, 0], [0.3, -1, -1, 0, -np.inf], [20, 1, 1, np.inf, np.inf]
    else:

        def model(p):
            a, b, x0, y0, amp, bg = p
            m = _integrated(
                lambda x, y: (1 + ((x - x0) ** 2 + (y - y0) ** 2) / (a * a)) ** -b, dx, dy
            )
            return amp * (b - 1) / (np.pi * a * a) * m + bg

        p0 = [2.0, 3.0, 0, 0, total, 0]
        lo, hi = [0.3, 1.2, -1, -1, 0, -np.inf], [20, 20, 1, 1, np.inf, np.inf]
    sol = least_squares(lambda p: (sw * (stamp - model(p))).ravel(), p0, bounds=(lo, hi))
    if kind == "gauss":
        return FWHM_PER_SIGMA * sol.x[0], np.nan
    a, b = sol.x[:2]
    return 2 * a * np.sqrt(2 ** (1 / b) - 1), b


def measure(band: str, layout: Layout) -> dict[str, float]:
    frame = _frame(layout, band)
    config = from_mapping(ProcessCcdConfig, CONFIG.get("process_ccd"))
    result = process_ccd(frame.exposure, frame.refcat, band=band, config=config)
    scale = sdss.PIXEL_SCALE_ARCSEC
    src, image, var = result.src, result.calexp.image, result.calexp.variance
    x, y = np.asarray(src["x"]), np.asarray(src["y"])
    near = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    isolated = (near < 2 * HALF).sum(axis=1) == 1
    # Bright isolated unflagged point sources (extended ones, galaxies and close pairs, are
    # not stars: their PSF / aperture ratio measures their size, not the photometry's noise).
    point = np.asarray(src["extendedness"]) == 0
    stars = np.nonzero((src["flags"] == 0) & (src["snr"] > 100) & isolated & point)[0]
    xi, yi = np.rint(x[stars]).astype(int), np.rint(y[stars]).astype(int)
    stamps, inside = extract_stamps(image, xi, yi, HALF)
    variance, _ = extract_stamps(var, xi, yi, HALF)
    inside &= variance > 0
    stamps = np.where(inside, stamps, 0.0).astype(float)
    weight = np.where(inside, 1.0 / np.where(variance > 0, variance, 1.0), 0.0)
    offsets = np.arange(-HALF, HALF + 1)
    phase_x, phase_y = x[stars] - xi, y[stars] - yi
    sigma0 = result.psf.fwhm_pix / FWHM_PER_SIGMA

    def moments_fwhm(s):
        mxx, myy, mxy, flag = adaptive_moments(s, phase_x, phase_y, offsets, sigma0, n_iter=40)
        return np.where(flag, np.nan, FWHM_PER_SIGMA * (mxx * myy - mxy**2) ** 0.25)

    star_mom = moments_fwhm(stamps)
    models = np.stack(
        [
            result.psf_fit.psf_at(xs, ys).render(HALF, xs - i, ys - k)
            for xs, ys, i, k in zip(x[stars], y[stars], xi, yi, strict=True)
        ]
    )
    model_mom = moments_fwhm(models)
    gauss = np.array([_fit_star(s, w, "gauss")[0] for s, w in zip(stamps, weight, strict=True)])
    moffat = np.array([_fit_star(s, w, "moffat") for s, w in zip(stamps, weight, strict=True)])

    # PSF / aperture flux ratios and the scatter the noise explains (covariance of the two
    # sums over the same pixels and the PSF's own-width response included). Normalised to its
    # median: the aperture correction may refer to another aperture (APCRAD), and a constant
    # factor must not scale the scatter. ``ratio_frac``: each PSF flux also put in the aperture
    # with the model's share of light there at the width it used (a star 1 % wider has about
    # 0.1 % less of its light within 3"), a diagnostic (its noise is not modelled).
    noise = src_psf_aperture_ratio_noise(result, stars, config=config)
    ratio = np.asarray(src["apcorr"][stars] * src["psf_flux"][stars] / src["ap_flux"][stars])
    ratio_frac = ratio * noise.aperture_fraction
    ratio_frac = ratio_frac / np.median(ratio_frac)
    ratio = ratio / np.median(ratio)
    expected, expected_sky = noise.relative_noise, noise.relative_noise_with_sky
    flux = np.asarray(src["ap_flux"][stars])
    mad = 1.4826 * np.median(np.abs(ratio - np.median(ratio)))
    # Per-star normalised deviations: robust to stars of very different noise.
    chi = (ratio - np.median(ratio)) / expected_sky
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(ratio), size=(500, len(ratio)))
    boot = [1.4826 * np.median(np.abs(r - np.median(r))) for r in ratio[draws]]
    chi_boot = [1.4826 * np.median(np.abs(c)) for c in chi[draws]]
    snr = np.asarray(src["snr"][stars])
    # What ``ratio_mad / ratio_noise_sky`` would be from the predicted noise alone: each star
    # drawn from its own noise and normalised like the data. It is not 1: the MAD of stars
    # whose noise spans 0.2-15 mmag falls below the median noise.
    fake = rng.normal(0.0, expected_sky, size=(500, len(ratio)))
    fake = fake - np.median(fake, axis=1, keepdims=True)
    noise_only = 1.4826 * np.median(np.abs(fake), axis=1) / np.sqrt(np.median(expected_sky**2))

    def chi_mad(sel):
        return 1.4826 * float(np.median(np.abs(chi[sel]))) if sel.sum() else float("nan")

    # Chromatic PSF: the stars' width relative to the model's at their position against their
    # g - r colour from the reference catalogue (nearest within 1").
    ref = frame.refcat
    dec0 = np.radians(float(np.median(src["dec_deg"])))
    tree = cKDTree(np.column_stack([np.asarray(ref["ra_deg"]) * np.cos(dec0), ref["dec_deg"]]))
    dist, near_ref = tree.query(
        np.column_stack([np.asarray(src["ra_deg"][stars]) * np.cos(dec0), src["dec_deg"][stars]])
    )
    colour = np.where(
        dist * 3600 < 1.0,
        np.asarray(ref["g_mag"])[near_ref] - np.asarray(ref["r_mag"])[near_ref],
        np.nan,
    )
    dlnw = np.log(star_mom / model_mom)
    fit = np.isfinite(colour) & np.isfinite(dlnw) & (np.abs(colour) < 3)
    slope, slope_err = np.nan, np.nan
    if fit.sum() >= 5:
        design = np.column_stack([np.ones(fit.sum()), colour[fit]])
        coef = np.linalg.lstsq(design, dlnw[fit], rcond=None)[0]
        resid = dlnw[fit] - design @ coef
        cov = np.linalg.inv(design.T @ design) * (resid @ resid) / (fit.sum() - 2)
        slope, slope_err = 100 * coef[1], 100 * float(np.sqrt(cov[1, 1]))
    # photo's own PSF (KL basis) at the same stars, against the model on the same stamp.
    psfield = read_fits(layout.path("sdss_psfield", ccd=CAMCOL, filter=band))

    def eff_fwhm(p):
        return FWHM_PER_SIGMA * np.sqrt(effective_area(p) / (4 * np.pi)) * scale

    kl_eff = [
        eff_fwhm(sdss.psfield_psf_image(psfield, band=band, row=ys, col=xs))
        for xs, ys in zip(x[stars], y[stars], strict=True)
    ]
    model_eff = [
        eff_fwhm(result.psf_fit.psf_at(xs, ys).render(25))
        for xs, ys in zip(x[stars], y[stars], strict=True)
    ]
    h = result.calexp.header
    return {
        "n_stars": len(stars),
        "psField_width": frame.calibration.psf_fwhm_arcsec,
        "model_fwhm": h["PSFFWHM"],
        "model_beta": h["PSFBETA"],
        "model_mom_fwhm": h["PSFMOMFW"],
        "model_eff_fwhm": h["PSFEFFW"],
        "psField_kl_eff": float(np.median(kl_eff)),
        "model_eff_at_stars": float(np.median(model_eff)),
        "model_mom_at_stars": float(np.nanmedian(model_mom)) * scale,
        "star_mom": float(np.nanmedian(star_mom)) * scale,
        "star_gauss": float(np.nanmedian(gauss)) * scale,
        "star_moffat": float(np.nanmedian(moffat[:, 0])) * scale,
        "star_moffat_beta": float(np.nanmedian(moffat[:, 1])),
        "ratio_mad_mmag": 1086 * mad,
        "ratio_noise_mmag": 1086 * float(np.sqrt(np.median(expected**2))),
        "ratio_noise_sky_mmag": 1086 * float(np.sqrt(np.median(expected_sky**2))),
        "ratio_mad_boot_sd": 1086 * float(np.std(boot)),
        "ratio_stat_noise_only": float(np.mean(noise_only)),
        "ratio_stat_noise_only_sd": float(np.std(noise_only)),
        "ratio_frac_mad_mmag": 1086 * 1.4826 * float(np.median(np.abs(ratio_frac - 1))),
        "width_shrink_median": float(np.median(noise.width_shrink)),
        "chi_mad": 1.4826 * float(np.median(np.abs(chi))),
        "chi_mad_boot_sd": float(np.std(chi_boot)),
        "chi_mad_snr_100_200": chi_mad(snr < 200),
        "chi_mad_snr_gt_400": chi_mad(snr > 400),
        "width_colour_pct_mag": slope,
        "width_colour_err": slope_err,
        "psf_err_mmag": 1086
        * float(np.median(src["psf_flux_err"][stars] / src["psf_flux"][stars])),
        "ap_err_mmag": 1086 * float(np.median(src["ap_flux_err"][stars] / flux)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", nargs="+", default=list(sdss.SDSS_BANDS))
    args = parser.parse_args(argv)
    layout = dataclasses.replace(
        Layout.from_config(CONFIG),
        input_root=str((ROOT / CONFIG["layout"]["input_root"]).resolve()),
    )
    rows = {band: measure(band, layout) for band in args.bands}
    keys = list(next(iter(rows.values())))
    print(f"{'':20s}" + "".join(f"{b:>9s}" for b in rows))
    for key in keys:
        print(f"{key:20s}" + "".join(f"{rows[b][key]:9.3f}" for b in rows))
    for band, r in rows.items():
        print(
            f"{band}: model moments / star moments {r['model_mom_at_stars'] / r['star_mom']:.3f}, "
            f"model effective width / psField {r['model_eff_fwhm'] / r['psField_width']:.3f} "
            f"(/ psField KL PSF {r['model_eff_at_stars'] / r['psField_kl_eff']:.3f}), "
            f"model FWHM / per-star Moffat {r['model_fwhm'] / r['star_moffat']:.3f}, "
            f"ratio scatter / noise {r['ratio_mad_mmag'] / r['ratio_noise_mmag']:.2f} "
            f"(+- {r['ratio_mad_boot_sd'] / r['ratio_noise_mmag']:.2f} bootstrap), "
            f"/ noise with empty-position sky {r['ratio_mad_mmag'] / r['ratio_noise_sky_mmag']:.2f}"
            f" (noise alone: {r['ratio_stat_noise_only']:.2f}"
            f" +- {r['ratio_stat_noise_only_sd']:.2f})"
            f", per-star chi robust scatter {r['chi_mad']:.2f} "
            f"(+- {r['chi_mad_boot_sd']:.2f} bootstrap, {r['n_stars']:.0f} stars)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
