"""Warps: flux conservation, astrometry, zero point, mask propagation, validation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from astropy.table import Table
from coadd_synthetic import (
    CALEXP_SHAPE,
    PATCH,
    PATCH_WCS,
    artefact_pixels,
    default_visits,
    mag_to_njy,
    make_truth,
    render_calexp,
    visit_wcs,
)

from dcflow.errors import InputDataError
from dcflow.exposure import MaskPlane
from dcflow.stages.warp import WarpConfig, calexp_flux_scale, warp_exposure, warp_visit

SPEC = default_visits()[1]


def bright_star_truth() -> Table:
    """Isolated r = 17.5 stars: greedily keep grid positions 30+ patch pixels apart."""
    truth = make_truth(4, n_galaxies=0)
    truth["kind"] = "star"
    truth["mag_r"] = 17.5
    kept: list[int] = []
    for k in range(len(truth)):
        dist = np.hypot(
            truth["x_patch"][kept] - truth["x_patch"][k],
            truth["y_patch"][kept] - truth["y_patch"][k],
        )
        if np.all(dist > 30):
            kept.append(k)
    return truth[kept]


def moments(image, x, y, radius=9):
    ix, iy = round(float(x)), round(float(y))
    stamp = image[iy - radius : iy + radius + 1, ix - radius : ix + radius + 1].astype(float)
    yy, xx = np.mgrid[iy - radius : iy + radius + 1, ix - radius : ix + radius + 1]
    total = stamp.sum()
    return total, (stamp * xx).sum() / total, (stamp * yy).sum() / total


@pytest.mark.parametrize(
    ("interpolation", "flux_tol", "pos_tol_pix"), [("cubic", 1e-3, 0.005), ("bilinear", 0.02, 0.03)]
)
def test_noiseless_star_flux_and_position_survive_warping(interpolation, flux_tol, pos_tol_pix):
    truth = bright_star_truth()
    calexp = render_calexp(truth, SPEC, noiseless=True)
    # the exposure time is a WCS keyword as read from a calexp header: the warp keeps it
    calexp.header["MJD-OBS"] = 60000.55
    calexp.wcs.wcs.mjdobs = 60000.55
    result = warp_exposure(
        calexp, PATCH_WCS, PATCH.shape, config=WarpConfig(interpolation=interpolation)
    )
    assert result.warp.header["ZP"] == 31.4
    assert result.warp.header["MJD-OBS"] == 60000.55
    xs, ys = PATCH_WCS.world_to_pixel_values(truth["ra_deg"], truth["dec_deg"])
    flux_err, pos_err = [], []
    for row, x, y in zip(truth, xs, ys, strict=True):
        if not (12 <= x < PATCH.shape[1] - 12 and 12 <= y < PATCH.shape[0] - 12):
            continue
        total, cx, cy = moments(result.warp.image, x, y)
        flux_err.append(total / mag_to_njy(row["mag_r"]) - 1)
        pos_err.append(np.hypot(cx - x, cy - y))
    assert len(flux_err) >= 8
    # Truncation of the 9-pixel-radius box loses < 1e-4 of a 0.95" Gaussian.
    assert np.max(np.abs(flux_err)) < flux_tol
    assert np.max(pos_err) < pos_tol_pix  # 0.005 px = 1 mas


def test_variance_and_zero_point_scaling():
    calexp = render_calexp(make_truth(2)[:0], SPEC)  # blank sky
    result = warp_exposure(calexp, PATCH_WCS, PATCH.shape)
    scale = calexp_flux_scale(calexp.header, 31.4)
    assert scale == pytest.approx(10 ** (0.4 * (31.4 - SPEC.zp)))
    assert result.pixel_area_ratio == pytest.approx((0.2 / 0.187) ** 2, rel=1e-3)
    covered = result.warp.mask == 0
    expected_var = (SPEC.sky_e + 16.0) * (scale * result.pixel_area_ratio) ** 2
    assert np.median(result.warp.variance[covered]) == pytest.approx(expected_var, rel=1e-4)
    # Interpolation correlates noise: per-pixel scatter is below the variance plane, but sums
    # over 5x5 blocks follow it to within 15 %.
    image = np.where(covered, result.warp.image, np.nan)[20:220, 20:220]
    blocks = image.reshape(40, 5, 40, 5).sum(axis=(1, 3))
    ratio = np.nanstd(blocks) / np.sqrt(25 * expected_var)
    assert 0.85 < ratio < 1.05


def test_no_data_outside_calexp_and_mask_propagation():
    spec = default_visits()[2]
    calexp = render_calexp(make_truth(2)[:0], spec)
    calexp.mask[100:104, 150:152] = int(MaskPlane.SAT)
    result = warp_exposure(calexp, PATCH_WCS, PATCH.shape)
    ra, dec = calexp.wcs.pixel_to_world_values(150.5, 101.5)
    x, y = PATCH_WCS.world_to_pixel_values(ra, dec)
    assert result.warp.mask[round(float(y)), round(float(x))] & MaskPlane.SAT
    n_sat = np.count_nonzero(result.warp.mask & MaskPlane.SAT)
    assert 8 <= n_sat <= 60  # 8 input pixels, grown by the kernel footprint
    # A calexp shifted off the patch covers nothing.
    far = render_calexp(make_truth(2)[:0], spec)
    far.wcs.wcs.crval = far.wcs.wcs.crval + np.array([0.0, 0.1])
    empty = warp_exposure(far, PATCH_WCS, PATCH.shape)
    assert empty.n_covered_pixels == 0
    assert np.all(empty.warp.mask & MaskPlane.NO_DATA)


def test_artefacts_present_in_warp():
    spec = default_visits()[2]
    assert spec.artefacts
    calexp = render_calexp(make_truth(2)[:0], spec)
    warp = warp_exposure(calexp, PATCH_WCS, PATCH.shape).warp
    ax, ay, _ = artefact_pixels(spec)
    ra, dec = visit_wcs(spec).pixel_to_world_values(ax, ay)
    px, py = PATCH_WCS.world_to_pixel_values(ra, dec)
    ix, iy = np.round(px).astype(int), np.round(py).astype(int)
    on = (ix >= 0) & (ix < PATCH.shape[1]) & (iy >= 0) & (iy < PATCH.shape[0])
    snr = warp.image[iy[on], ix[on]] / np.sqrt(warp.variance[iy[on], ix[on]])
    assert on.sum() > 100
    assert np.median(snr) > 8


def test_validation_errors():
    calexp = render_calexp(make_truth(2)[:0], SPEC)
    with pytest.raises(ValueError, match="patch_shape must be two positive"):
        warp_exposure(calexp, PATCH_WCS, (0, 10))
    del calexp.header["ZP"]
    with pytest.raises(InputDataError, match="lacks ZP"):
        warp_exposure(calexp, PATCH_WCS, PATCH.shape)
    calexp = render_calexp(make_truth(2)[:0], SPEC)
    calexp.header["PSFFWHM"] = "wide"
    with pytest.raises(InputDataError, match="PSFFWHM='wide' is not a number"):
        warp_exposure(calexp, PATCH_WCS, PATCH.shape)
    calexp = render_calexp(make_truth(2)[:0], SPEC)
    calexp.wcs = None
    with pytest.raises(InputDataError, match="no WCS"):
        warp_exposure(calexp, PATCH_WCS, PATCH.shape)
    calexp = render_calexp(make_truth(2)[:0], SPEC)
    calexp.image[:] = np.nan
    with pytest.raises(InputDataError, match="no finite pixel"):
        warp_exposure(calexp, PATCH_WCS, PATCH.shape)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        WarpConfig(interpolation="lanczos")
    assert CALEXP_SHAPE[0] != CALEXP_SHAPE[1]


def test_warp_visit_pastes_ccds_together():
    truth = bright_star_truth()
    calexp = render_calexp(truth, SPEC)
    whole = warp_exposure(calexp, PATCH_WCS, PATCH.shape)
    # Split the frame into two "CCDs" (left/right halves), each with its own WCS origin.
    half = CALEXP_SHAPE[1] // 2
    parts = []
    for x0, x1 in ((0, half), (half, CALEXP_SHAPE[1])):
        wcs = calexp.wcs.deepcopy()
        wcs.wcs.crpix = wcs.wcs.crpix - np.array([x0, 0.0])
        parts.append(
            replace(
                calexp,
                image=calexp.image[:, x0:x1].copy(),
                mask=calexp.mask[:, x0:x1].copy(),
                variance=calexp.variance[:, x0:x1].copy(),
                wcs=wcs,
            )
        )
    merged = warp_visit(parts, PATCH_WCS, PATCH.shape)
    both = (whole.warp.mask == 0) & (merged.warp.mask == 0)
    assert both.sum() > 0.9 * (whole.warp.mask == 0).sum()
    # Away from the seam (where the spline sees a CCD edge) the pasted warp is the whole one.
    yy, xx = np.mgrid[0 : PATCH.shape[0], 0 : PATCH.shape[1]]
    ra, dec = PATCH_WCS.pixel_to_world_values(xx, yy)
    x_in, _ = calexp.wcs.world_to_pixel_values(ra, dec)
    away = both & (np.abs(x_in - (half - 0.5)) > 6)
    np.testing.assert_allclose(merged.warp.image[away], whole.warp.image[away], rtol=1e-4, atol=0.5)
    assert merged.warp.header["NCCDS"] == 2
    assert merged.psf_fwhm_arcsec == pytest.approx(SPEC.fwhm_arcsec)
    with pytest.raises(ValueError, match="one visit"):
        other = replace(parts[1], header=parts[1].header.copy())
        other.header["VISIT"] = 1
        warp_visit([parts[0], other], PATCH_WCS, PATCH.shape)
    with pytest.raises(ValueError, match="at least one calexp"):
        warp_visit([], PATCH_WCS, PATCH.shape)


def test_strips_give_the_same_warp(monkeypatch):
    import dcflow.stages.warp as warp_module

    spec = default_visits()[2]
    calexp = render_calexp(make_truth(2), spec)
    calexp.mask[100:104, 150:152] = int(MaskPlane.SAT)
    whole = warp_exposure(calexp, PATCH_WCS, PATCH.shape).warp
    monkeypatch.setattr(warp_module, "_STRIP_ROWS", 37)
    strips = warp_exposure(calexp, PATCH_WCS, PATCH.shape).warp
    assert np.array_equal(whole.mask, strips.mask)
    scale = np.sqrt(np.median(whole.variance[whole.mask == 0]))
    assert np.max(np.abs(whole.image - strips.image)) < 1e-3 * scale
    np.testing.assert_allclose(whole.variance, strips.variance, rtol=1e-5)
