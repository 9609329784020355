"""How much of the bright SDSS stars' PSF-flux error is PSF width and how much is PSF shape.

Usage: .venv/bin/python benchmarks/psf_sdss_width_shape.py [--min-snr 200]

On the Stripe 82 frames (processCcd with config/sdss-stripe82.yaml, as benchmarks/psf_sdss.py),
for the bright isolated point sources of psf_sdss.py's ratio check, it measures:

- ``weighting``: each star's own Moffat width (``ln alpha`` against the model's there, the
  fit `dcflow.stages.psf.local_log_widths` makes) with uniform weights (the sky's variance:
  those of the PSF flux) less with inverse-variance weights, median over the stars, for the
  Moffat alone and with a residual table (`fit_psf_residual`, oversampling 3, from the point
  sources above S/N 50). A model of the right shape gives one width whatever the weights;
- ``width / shape``: the PSF / 3" aperture flux ratio of each star above ``--min-snr``, with
  the PSF flux at the model's width and at the star's own width (uniform-weight linear fits
  at the catalogue position, as processCcd's final fluxes), each over its median. If the
  stars' own widths were all real (the star is the model, scaled), the ratio at the model's
  width would fall by ``k = d ln F / d ln alpha`` per unit of own offset and the ratio at the
  own width would not move; if they were all shape (the width fit reading the profile's
  mismatch), the slope would be 0. The pooled slope (one zero point per filter) over ``-k``
  is the real fraction of the offsets; the rms at the own width is what is left that no
  width explains;
- the slope of the own-width ratio against log10 S/N (a flux-dependent error).

Measured 2026-12-08 on run 6377 (49 stars above S/N 200 over u g r i z): weighting, Moffat:
u +0.48 g +0.80 r +1.18 i +1.10 z +1.13 %; with the table: +0.18 +0.55 +0.31 +0.45 +0.48 %
(oversampling 3: -0.15 +0.21 -0.06 +0.14 +0.18 %; the bright stars' stamp chi^2 per pixel 2-3
times lower). A Moffat's width depends on the weights by 0.5-1.2 %, i.e. 4-11 mmag of PSF flux
(k = 0.94): that is the profile's shape. Width / shape: slope -0.79 +- 0.07 (k 0.94), so 0.85
+- 0.08 of the own offsets (rms 0.57 %) are real width; ratio rms 5.1 mmag at the model's
width, 2.8 at the own width (above S/N 400, 22 stars: 3.4 and 2.1; real fraction 0.77 +-
0.11). The width part, ~4.3 mmag, is what ``psf_flux_width: local`` removes. The 2-3 mmag left
rises with flux only among the brightest (per dex of S/N: 1.9 +- 2.1 mmag above S/N 150, 4.7
+- 1.7 above 200, 8.8 +- 2.7 above 400). Measured apart from this script: it is not spatial
(a plane in x, y per filter: F-test p = 0.4-0.8), nor colour (-0.7 +- 1.2 mmag per mag of
g - r), nor pixel phase (the stars' widths against |phase_x|, |phase_y|: within 1.7 sigma in
every filter), nor column flat-field structure (the sky's column pattern, 0.1-0.35 % in g r i
z, predicts 0.1-0.8 mmag of it). The brightest
u and g stars fit 0.6-0.8 % wider than S/N 100-400 stars with the core masked and not wider
with the wings masked: their wings hold relatively more light, which inverse-variance weights
(a bright star's wings are the pixels its own Poisson noise does not swamp) make them fit.

What did not remove the rest (same frames, psf_sdss.py's figures, ratio scatter / noise with
the sky term u g r i z, pooled per-star chi robust scatter over 116 stars, rms of the S/N >
400 stars' ratio deviations): now 1.13 1.11 1.08 0.88 1.51, 1.25, 2.5 mmag; the residual
table refitted jointly with the width polynomial (table, widths with it, table again) 1.43
1.11 1.39 0.86 1.65 (model's width u g), pooled chi 1.31; width fits with the model's
weights (sky variance from the stamp border plus the model's counts, against the variance
plane, which carries each pixel's own noise and makes faint u stars fit 1.2 % narrow) 1.00
0.96 1.14 0.93 1.76, 1.26, 2.2 mmag; the same with sky and gain from a line through the
stamp's variances 1.55 0.82 1.22 1.02 1.47, 1.41, 5.4 mmag (and 8.8 +- 1.7 mmag per dex of
S/N). That two reasonable weightings move the brightest stars by 3 mmag is the shape
dependence again; a constant table takes the mean shape, not what varies from star to star.

Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np
from psf_sdss import CONFIG, HALF, ROOT, _frame

from dcflow.configs import from_mapping
from dcflow.exposure import MaskPlane
from dcflow.instruments import sdss
from dcflow.layout import Layout
from dcflow.stages.process_ccd import ProcessCcdConfig, process_ccd
from dcflow.stages.psf import _gather, _star_log_widths, fit_psf_residual, local_log_widths

_BAD_BITS = int(MaskPlane.BAD | MaskPlane.SAT | MaskPlane.CR | MaskPlane.NO_DATA)
"""Pixels processCcd's PSF fits leave out."""


def _bright_point_sources(src):
    """psf_sdss.py's selection: unflagged, S/N > 100, alone within 2 HALF, extendedness 0."""
    x, y = np.asarray(src["x"]), np.asarray(src["y"])
    near = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    isolated = (near < 2 * HALF).sum(axis=1) == 1
    point = np.asarray(src["extendedness"]) == 0
    return np.nonzero((src["flags"] == 0) & (src["snr"] > 100) & isolated & point)[0]


def _sky_weight(weight):
    """Uniform weights: the inverse of each stamp's median border variance."""
    border = np.ones(weight.shape[1:], bool)
    border[1:-1, 1:-1] = False
    w = weight[:, border]
    sky = np.nanmedian(np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), np.nan), axis=1)
    return np.where(weight > 0, 1.0 / sky[:, None, None], 0.0)


def measure(band: str, layout: Layout, min_snr: float) -> dict[str, np.ndarray]:
    frame = _frame(layout, band)
    config = from_mapping(ProcessCcdConfig, CONFIG.get("process_ccd"))
    result = process_ccd(frame.exposure, frame.refcat, band=band, config=config)
    src, fit, calexp = result.src, result.psf_fit, result.calexp
    image = np.asarray(calexp.image, float)
    variance = np.asarray(calexp.variance, float)
    bad = ((calexp.mask & _BAD_BITS) != 0) | ~np.isfinite(image)
    stars = _bright_point_sources(src)
    x, y = np.asarray(src["x"], float)[stars], np.asarray(src["y"], float)[stars]
    half = int(np.clip(np.ceil(2.0 * fit.psf.fwhm_pix), 4, 15))  # processCcd's PSF-flux stamp
    data, weight, dx, dy = _gather(image, variance, bad, x, y, half)
    start = np.log(fit.alpha_at(x, y) / fit.psf.alpha_pix)

    # Width against weighting, Moffat alone and with residual tables.
    all_x, all_y = np.asarray(src["x"], float), np.asarray(src["y"], float)
    shape_stars = np.nonzero(
        (src["flags"] == 0) & (src["snr"] > 50) & (np.asarray(src["extendedness"]) == 0)
    )[0]
    weighting = {}
    for name, oversample in (("moffat", None), ("table2", 2), ("table3", 3)):
        model = fit
        if oversample is not None:
            model = fit_psf_residual(
                fit,
                image,
                variance,
                bad,
                all_x[shape_stars],
                all_y[shape_stars],
                half_size=half,
                oversample=oversample,
            )
        inverse, err_i = _star_log_widths(data, weight, dx, dy, model.psf, start=start, n_iter=5)
        uniform, err_u = _star_log_widths(
            data, _sky_weight(weight), dx, dy, model.psf, start=start, n_iter=5
        )
        ok = np.isfinite(err_i) & np.isfinite(err_u)
        weighting[name] = float(np.median((uniform - inverse)[ok]))

    # PSF / aperture ratios at the model's width and at each star's own width.
    local = local_log_widths(
        fit, image, variance, bad, x, y, reference=np.ones(x.size, bool), half_size=half
    )
    good = weight > 0
    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)

    def flux(offset):
        table = fit.phase_table(half, x, y, log_width_offset=offset)
        p = np.where(good, table.stamps(x - xi, y - yi), 0.0)
        return (p * data).sum(axis=(1, 2)) / (p * p).sum(axis=(1, 2))

    zero = np.zeros(x.size)
    at_model = flux(zero)
    response = (np.log(flux(zero + 0.01)) - np.log(flux(zero - 0.01))) / 0.02
    own = local.star_offset
    at_own = flux(np.nan_to_num(own))
    ap = np.asarray(src["ap_flux"], float)[stars]
    dev_model = np.log(at_model / ap)
    dev_model -= np.median(dev_model)
    dev_own = np.log(at_own / ap)
    dev_own -= np.median(dev_own)
    snr = np.asarray(src["snr"], float)[stars]
    # Blends and galaxies the extendedness cut misses sit 40-50 mmag off: not PSF errors.
    keep = (snr > min_snr) & np.isfinite(local.star_offset_err) & (np.abs(dev_model) < 0.02)
    return {
        "weighting": weighting,
        "own": own[keep],
        "dev_model": dev_model[keep],
        "dev_own": dev_own[keep],
        "response": response[keep],
        "snr": snr[keep],
    }


def _slope(value, regressor, band_index, n_bands):
    """Least-squares slope of ``value`` on ``regressor`` with one zero point per band."""
    design = np.column_stack(
        [regressor] + [(band_index == k).astype(float) for k in range(n_bands)]
    )
    coef = np.linalg.lstsq(design, value, rcond=None)[0]
    resid = value - design @ coef
    cov = np.linalg.pinv(design.T @ design) * (resid @ resid) / (value.size - design.shape[1])
    return float(coef[0]), float(np.sqrt(cov[0, 0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", nargs="+", default=list(sdss.SDSS_BANDS))
    parser.add_argument("--min-snr", type=float, default=200.0)
    args = parser.parse_args(argv)
    layout = dataclasses.replace(
        Layout.from_config(CONFIG),
        input_root=str((ROOT / CONFIG["layout"]["input_root"]).resolve()),
    )
    rows = {band: measure(band, layout, args.min_snr) for band in args.bands}
    print("own width, uniform less inverse-variance weights, median %:")
    for name in next(iter(rows.values()))["weighting"]:
        print(
            f"  {name:8s}"
            + "".join(f" {b} {100 * r['weighting'][name]:+.2f}" for b, r in rows.items())
        )
    pooled = {
        key: np.concatenate([r[key] for r in rows.values()])
        for key in ("own", "dev_model", "dev_own", "response", "snr")
    }
    band_index = np.concatenate([np.full(r["own"].size, k) for k, r in enumerate(rows.values())])
    k = float(np.median(pooled["response"]))
    slope, slope_err = _slope(pooled["dev_model"], pooled["own"], band_index, len(rows))
    flux_slope, flux_err = _slope(pooled["dev_own"], np.log10(pooled["snr"]), band_index, len(rows))
    print(
        f"stars above S/N {args.min_snr:g}: {pooled['own'].size}; k = d ln F / d ln alpha {k:.3f}"
    )
    print(
        f"model-width ratio against own width offset: slope {slope:.3f} +- {slope_err:.3f}; "
        f"real-width fraction {-slope / k:.2f} +- {slope_err / k:.2f}"
    )
    print(
        f"ratio rms at the model's width {1086 * np.std(pooled['dev_model']):.2f} mmag, at the "
        f"own width {1086 * np.std(pooled['dev_own']):.2f}; own offsets rms "
        f"{100 * np.std(pooled['own']):.2f} %"
    )
    print(
        f"own-width ratio against log10 S/N: {1086 * flux_slope:.2f} +- "
        f"{1086 * flux_err:.2f} mmag/dex"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
