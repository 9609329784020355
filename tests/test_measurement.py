"""Unit tests of dcflow.stages.measurement with hand-worked answers."""

from __future__ import annotations

import numpy as np
import pytest
from photutils.aperture import CircularAperture, aperture_photometry

from dcflow.stages.measurement import (
    aperture_fluxes,
    empty_position_noise,
    psf_fluxes,
    psf_photometry,
    windowed_centroids,
)
from dcflow.stages.psf import MoffatPsf
from dcflow.stages.stamps import extract_stamps


def add_star(image, psf, x0, y0, flux, half=20):
    """Add ``flux`` x the pixel-integrated PSF centred at array (x0, y0), on a stamp only."""
    ix, iy = round(x0), round(y0)
    stamp = flux * psf.render(half, x0 - ix, y0 - iy)
    ny, nx = image.shape
    y1, y2 = max(iy - half, 0), min(iy + half + 1, ny)
    x1, x2 = max(ix - half, 0), min(ix + half + 1, nx)
    image[y1:y2, x1:x2] += stamp[y1 - iy + half : y2 - iy + half, x1 - ix + half : x2 - ix + half]


def test_extract_stamps_inside_and_at_the_corner():
    a = np.arange(30.0).reshape(5, 6)  # a[y, x] = 6 y + x
    stamps, inside = extract_stamps(a, np.array([2, 0]), np.array([2, 0]), 1)
    np.testing.assert_array_equal(stamps[0], [[7, 8, 9], [13, 14, 15], [19, 20, 21]])
    assert inside[0].all()
    np.testing.assert_array_equal(
        inside[1], [[False] * 3, [False, True, True], [False, True, True]]
    )
    assert stamps[1, 1, 1] == 0 and stamps[1, 2, 2] == 7


def test_windowed_centroid_of_symmetric_profiles():
    psf = MoffatPsf(alpha_pix=2.5, beta=3.0)
    shape = (40, 60)
    truth = [(20.3, 15.7), (41.85, 22.1)]
    image = np.zeros(shape)
    for x0, y0 in truth:
        image += 1000.0 * psf.render_at(shape, x0, y0)
    x, y = windowed_centroids(image, np.array([20, 42]), np.array([16, 22]), sigma_pix=2.0)
    np.testing.assert_allclose(x, [t[0] for t in truth], atol=2e-3)
    np.testing.assert_allclose(y, [t[1] for t in truth], atol=2e-3)


def test_aperture_flux_of_a_constant_image_is_the_area():
    image = np.full((50, 70), 2.0)
    variance = np.full((50, 70), 4.0)
    flux, err = aperture_fluxes(image, variance, np.array([30.3]), np.array([20.6]), radius_pix=5.0)
    assert flux[0] == pytest.approx(2.0 * np.pi * 25.0, rel=1e-4)
    # Interior weights are 1, rim weights < 1: sqrt(4 * n_full) < err < sqrt(4 pi r^2).
    assert 2.0 * np.sqrt(np.pi * 25.0 - 2 * np.pi * 5) < err[0] < 2.0 * np.sqrt(np.pi * 25.0)


def test_aperture_flux_matches_photutils_exact():
    rng = np.random.default_rng(1)
    image = rng.normal(0, 1, (60, 80))
    x = rng.uniform(10, 70, 20)
    y = rng.uniform(10, 50, 20)
    flux, _ = aperture_fluxes(image, np.ones_like(image), x, y, radius_pix=6.3)
    ref = aperture_photometry(
        image, CircularAperture(np.column_stack([x, y]), r=6.3), method="exact"
    )
    np.testing.assert_allclose(flux, ref["aperture_sum"], atol=0.02)


def test_aperture_partly_outside_sums_the_inside():
    image = np.ones((30, 30))
    flux, _ = aperture_fluxes(image, image, np.array([0.0]), np.array([15.0]), radius_pix=4.0)
    # Pixel centres at x >= 0 cover x >= -0.5: a bit more than half the disc.
    assert np.pi * 16 / 2 < flux[0] < np.pi * 16 / 2 + 2 * 4 * 0.5 + 0.1


def test_psf_flux_of_a_scaled_model_is_exact_with_the_formal_error():
    psf = MoffatPsf(alpha_pix=2.2, beta=2.8, e1=0.05, e2=-0.03)
    table = psf.phase_table(8)
    shape = (50, 40)
    x0, y0 = 17.3, 30.8
    image = 2500.0 * psf.render_at(shape, x0, y0)
    variance = np.full(shape, 9.0)
    bad = np.zeros(shape, bool)
    flux, err, _ = psf_fluxes(image, variance, bad, np.array([x0]), np.array([y0]), table)
    assert flux[0] == pytest.approx(2500.0, rel=2e-3)  # phase-table interpolation
    p = psf.render(8, x0 - 17, y0 - 31)
    assert err[0] == pytest.approx(3.0 / np.sqrt((p * p).sum()), rel=1e-3)
    # A masked pixel is left out, not fitted.
    bad[31, 17] = True
    image2 = image.copy()
    image2[31, 17] = 1e6
    flux2, _, _ = psf_fluxes(image2, variance, bad, np.array([x0]), np.array([y0]), table)
    assert flux2[0] == pytest.approx(2500.0, rel=3e-3)


def test_empty_inputs():
    z = np.zeros((10, 10))
    assert windowed_centroids(z, np.zeros(0), np.zeros(0), sigma_pix=1.0)[0].size == 0
    assert aperture_fluxes(z, z, np.zeros(0), np.zeros(0), radius_pix=2.0)[0].size == 0


def test_psf_photometry_separates_a_close_pair_and_fits_an_edge_star():
    psf = MoffatPsf(alpha_pix=2.4, beta=3.0)
    table = psf.phase_table(9)
    shape = (60, 90)
    truth = [(30.3, 25.6, 20000.0), (34.6, 27.9, 5000.0), (0.3, 40.2, 10000.0)]
    image = np.zeros(shape)
    for x0, y0, f in truth:
        image += f * psf.render_at(shape, x0, y0)
    variance = np.full(shape, 25.0)
    bad = np.zeros(shape, bool)
    # Starting positions 0.3-0.8 pixel off (as a windowed centroid pulled by a neighbour).
    xs = np.array([30.0, 35.2, 1.1])
    ys = np.array([25.9, 27.5, 40.0])
    x, y, flux, err, chi2 = psf_photometry(image, variance, bad, xs, ys, table, n_iter=6)
    np.testing.assert_allclose(x, [t[0] for t in truth], atol=0.01)
    np.testing.assert_allclose(y, [t[1] for t in truth], atol=0.01)
    np.testing.assert_allclose(flux, [t[2] for t in truth], rtol=0.005)
    assert (err > 0).all() and (chi2 < 0.01).all()  # noise-free image
    # Without neighbour subtraction or position fit the pair's fluxes are biased.
    f0, _, _ = psf_fluxes(image, variance, bad, xs, ys, table)
    assert abs(f0[1] / 5000.0 - 1) > 0.05


def test_model_weights_lower_the_noise_of_bright_stars_without_bias():
    rng = np.random.default_rng(6)
    psf = MoffatPsf(alpha_pix=2.0, beta=3.0)
    table = psf.phase_table(7)
    gx, gy = np.meshgrid(np.arange(12) * 20 + 15, np.arange(15) * 20 + 15)
    xs = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    ys = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    shape = (310, 250)
    model = np.zeros(shape)
    for x0, y0 in zip(xs, ys, strict=True):
        add_star(model, psf, x0, y0, 2e5)
    sky = 100.0
    image = rng.poisson(model + sky) - sky
    var = model + sky
    bad = np.zeros(shape, bool)
    _, _, f_uni, e_uni, _ = psf_photometry(image, var, bad, xs, ys, table)
    _, _, f_mod, e_mod, _ = psf_photometry(image, var, bad, xs, ys, table, sky_variance=sky)
    # Source-photon limited: model weights beat uniform ones by > 10 % in scatter.
    assert np.std(f_mod) < 0.9 * np.std(f_uni)
    for f, e in ((f_uni, e_uni), (f_mod, e_mod)):
        # Unbiased to 0.2 % (phase-table interpolation and position-fit effects are ~0.1 %).
        assert np.mean(f) == pytest.approx(2e5, rel=2e-3)
        assert np.std(f) == pytest.approx(np.median(e), rel=0.2)  # errors are right


def test_empty_position_noise_sees_correlated_noise_the_variance_plane_misses():
    """White noise: measured = predicted; neighbours correlated (rho 0.5 along x): a 9 x 9 box
    sum has variance (81 + 2 * 0.5 * 72) / 81 = 1.889 times the independent-pixel prediction.
    Blocked pixels (a bright "source") are never in a stamp."""
    rng = np.random.default_rng(3)
    ny, nx = 700, 900
    sigma = 5.0
    white = rng.normal(0.0, sigma, (ny, nx + 1))
    variance = np.full((ny, nx), sigma**2)
    blocked = np.zeros((ny, nx), bool)
    blocked[100:200, 300:400] = True
    box = np.ones((9, 9))
    image = white[:, :nx].copy()
    image[blocked] = 1e6
    measured, predicted, n = empty_position_noise(image, variance, blocked, box)
    assert predicted == pytest.approx(81 * sigma**2)
    assert n == (ny // 9) * (nx // 9) - 12 * 12
    assert measured / predicted == pytest.approx(1.0, abs=0.1)
    correlated = (white[:, :nx] + white[:, 1:]) / np.sqrt(2.0)
    measured, predicted, _ = empty_position_noise(correlated, variance, blocked, box)
    assert measured / predicted == pytest.approx(153 / 81, rel=0.1)
    # A stack of measurements at the same positions: each as measured alone.
    column = np.zeros((9, 9))
    column[:, 4] = 1.0  # along y: no correlated pair
    stacked, stacked_pred, _ = empty_position_noise(
        correlated, variance, blocked, np.stack([box, column])
    )
    assert stacked[0] == pytest.approx(measured) and stacked_pred[0] == pytest.approx(predicted)
    assert stacked[1] / stacked_pred[1] == pytest.approx(1.0, abs=0.1)


def test_empty_position_noise_validation_and_too_few_positions():
    image = np.zeros((40, 50))
    with pytest.raises(ValueError, match="must have the same"):
        empty_position_noise(image, np.ones((40, 49)), np.zeros((40, 50), bool), np.ones((3, 3)))
    with pytest.raises(ValueError, match="square stamp of odd size"):
        empty_position_noise(image, np.ones((40, 50)), np.zeros((40, 50), bool), np.ones((4, 4)))
    with pytest.raises(ValueError, match="square stamp of odd size"):
        empty_position_noise(image, np.ones((40, 50)), np.zeros((40, 50), bool), np.ones(3))
    measured, predicted, n = empty_position_noise(
        image, np.ones((40, 50)), np.ones((40, 50), bool), np.ones((3, 3))
    )
    assert n == 0 and np.isnan(measured) and np.isnan(predicted)
