"""Unit tests of dcflow.stages.astrometry against known WCSs."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS
from synthetic import make_star_field

from dcflow.errors import CalibrationError
from dcflow.stages.astrometry import (
    fit_astrometry,
    fit_tan_sip,
    from_tangent_plane,
    match_nearest,
    to_tangent_plane,
    vote_offset,
)


def sky_offsets_mas(wcs, x, y, ra, dec):
    ra_f, dec_f = wcs.all_pix2world(x, y, 0)
    return (ra_f - ra) * np.cos(np.radians(dec)) * 3.6e6, (dec_f - dec) * 3.6e6


def test_tangent_plane_matches_astropy_tan_and_round_trips():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [210.0, -35.0]
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cd = np.eye(2)  # intermediate world coordinates = pixel offsets, in degrees
    rng = np.random.default_rng(0)
    xi, eta = rng.uniform(-0.3, 0.3, (2, 50))
    ra, dec = w.all_pix2world(xi, eta, 1)  # origin 1: pixel - crpix == (xi, eta)
    got_xi, got_eta = to_tangent_plane(ra, dec, 210.0, -35.0)
    np.testing.assert_allclose(got_xi, xi, atol=1e-12)
    np.testing.assert_allclose(got_eta, eta, atol=1e-12)
    back_ra, back_dec = from_tangent_plane(got_xi, got_eta, 210.0, -35.0)
    np.testing.assert_allclose(back_ra, ra, atol=1e-11)
    np.testing.assert_allclose(back_dec, dec, atol=1e-11)


def test_vote_offset_finds_the_shift_among_unrelated_points():
    rng = np.random.default_rng(1)
    xr, yr = rng.uniform(0, 1000, (2, 300))
    shift = (17.3, -9.6)
    xd = np.concatenate([xr[:200] + shift[0], rng.uniform(0, 1000, 100)])
    yd = np.concatenate([yr[:200] + shift[1], rng.uniform(0, 1000, 100)])
    dx, dy, n = vote_offset(xd, yd, xr, yr, max_offset_pix=50.0, bin_pix=3.0)
    assert (dx, dy) == pytest.approx(shift, abs=1e-9)
    assert n >= 200


def test_match_nearest_is_mutual_and_respects_the_radius():
    x1, y1 = np.array([0.0, 10.0, 20.0]), np.zeros(3)
    x2, y2 = np.array([0.4, 0.5, 19.0, 50.0]), np.zeros(4)
    i1, i2, d = match_nearest(x1, y1, x2, y2, radius=1.5)
    assert i1.tolist() == [0, 2] and i2.tolist() == [0, 2]
    np.testing.assert_allclose(d, [0.4, 1.0])


def test_fit_tan_sip_recovers_a_distorted_wcs():
    field = make_star_field((900, 600), n_stars=10, seed=2, distortion_arcsec=3.0)
    true = field.true_wcs
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 599, 300), rng.uniform(0, 899, 300)
    ra, dec = true.all_pix2world(x, y, 0)
    wcs = fit_tan_sip(
        x, y, ra, dec, crpix=(300.5, 450.5), crval=(150.0, 2.0), order=3, shape=(900, 600)
    )
    gx, gy = rng.uniform(0, 599, 1000), rng.uniform(0, 899, 1000)
    ra_t, dec_t = true.all_pix2world(gx, gy, 0)
    dra, ddec = sky_offsets_mas(wcs, gx, gy, ra_t, dec_t)
    assert np.hypot(dra, ddec).max() < 0.5  # mas: a cubic SIP represents the truth exactly
    # The inverse (AP, BP) round-trips to a millipixel.
    bx, by = wcs.all_world2pix(ra_t, dec_t, 0)
    assert np.hypot(bx - gx, by - gy).max() < 1e-3


def test_fit_tan_sip_refuses_too_few_points():
    with pytest.raises(ValueError, match="5 points cannot constrain an order-3 fit"):
        fit_tan_sip(
            np.arange(5.0),
            np.arange(5.0),
            np.zeros(5),
            np.zeros(5),
            crpix=(0, 0),
            crval=(0, 0),
            order=3,
            shape=(10, 10),
        )


@pytest.mark.parametrize("pointing", [(3.0, 0.0), (-3.5, 3.5), (0.0, -5.0)])
def test_fit_astrometry_recovers_a_pointing_error_of_up_to_5_arcsec(pointing):
    field = make_star_field(
        (1200, 800), n_stars=500, seed=7, pointing_error_arcsec=pointing, distortion_arcsec=2.0
    )
    truth = field.truth
    ny, nx = 1200, 800
    inside = (truth["x"] > 0) & (truth["x"] < nx - 1) & (truth["y"] > 0) & (truth["y"] < ny - 1)
    bright = inside & (truth["r_mag"] < 21.5)
    rng = np.random.default_rng(8)
    # Detections: true positions with 0.02-pixel centroid noise.
    x = truth["x"][bright] + rng.normal(0, 0.02, bright.sum())
    y = truth["y"][bright] + rng.normal(0, 0.02, bright.sum())
    flux = truth["flux_e"][bright]
    ref = field.refcat
    res = fit_astrometry(
        x, y, flux, ref["ra_deg"], ref["dec_deg"], ref["r_mag"], field.exposure.wcs, (ny, nx)
    )
    assert res.pointing_offset_arcsec > 2.0
    assert res.n_matched >= 0.9 * bright.sum()
    dra, ddec = sky_offsets_mas(
        res.wcs,
        truth["x"][inside],
        truth["y"][inside],
        truth["ra_deg"][inside],
        truth["dec_deg"][inside],
    )
    # Reference noise 15 mas per axis over ~300 stars: fit error of a few mas.
    assert np.sqrt(np.mean(dra**2 + ddec**2)) < 10.0
    # rms of matched offsets ~ sqrt(2) * 15 mas (reference noise) + centroid noise.
    assert 15.0 < res.rms_mas < 30.0
    assert res.sip_order == 3


def test_fit_astrometry_against_unrelated_stars_raises_with_counts():
    field = make_star_field((600, 400), n_stars=150, seed=9)
    other = make_star_field((600, 400), n_stars=150, seed=10)  # same pointing, other stars
    t = field.truth
    with pytest.raises(CalibrationError, match=r"chance coincidences|detections matched") as info:
        fit_astrometry(
            t["x"],
            t["y"],
            t["flux_e"],
            other.refcat["ra_deg"],
            other.refcat["dec_deg"],
            other.refcat["r_mag"],
            field.exposure.wcs,
            (600, 400),
            min_matches=10,
        )
    assert info.value.metadata["n_detected"] == len(t)
    assert "n_matched" in info.value.metadata


def test_fit_astrometry_far_from_the_reference_field_raises_with_n_matched_zero():
    field = make_star_field((600, 400), n_stars=150, seed=9)
    other = make_star_field((600, 400), n_stars=150, seed=10, crval=(151.0, 2.2))
    t = field.truth
    with pytest.raises(CalibrationError, match="only 0 detections matched") as info:
        fit_astrometry(
            t["x"],
            t["y"],
            t["flux_e"],
            other.refcat["ra_deg"],
            other.refcat["dec_deg"],
            other.refcat["r_mag"],
            field.exposure.wcs,
            (600, 400),
        )
    assert info.value.metadata["n_matched"] == 0
    assert info.value.metadata["n_reference_in_field"] == 0
