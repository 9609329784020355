"""Unit tests of dcflow.stages.psf."""

from __future__ import annotations

import numpy as np
import pytest

from dcflow.errors import CalibrationError
from dcflow.stages.psf import MoffatPsf, fit_psf


def add_star(image, psf, x0, y0, flux, half=20):
    """Add ``flux`` x the pixel-integrated PSF centred at array (x0, y0), on a stamp only."""
    ix, iy = round(x0), round(y0)
    stamp = flux * psf.render(half, x0 - ix, y0 - iy)
    ny, nx = image.shape
    y1, y2 = max(iy - half, 0), min(iy + half + 1, ny)
    x1, x2 = max(ix - half, 0), min(ix + half + 1, nx)
    image[y1:y2, x1:x2] += stamp[y1 - iy + half : y2 - iy + half, x1 - ix + half : x2 - ix + half]


def test_moffat_is_normalised_and_fwhm_is_where_half_the_peak_is():
    psf = MoffatPsf(alpha_pix=3.0, beta=4.0)
    stamp = psf.render(60)
    assert stamp.sum() == pytest.approx(1.0, abs=2e-4)  # beta=4 wings beyond 60 px: ~1e-5
    half = psf.fwhm_pix / 2
    peak = psf.point_value(np.array(0.0), np.array(0.0))
    assert psf.point_value(np.array(half), np.array(0.0)) == pytest.approx(peak / 2, rel=1e-9)
    # Hand value: FWHM = 2 alpha sqrt(2^(1/beta) - 1).
    assert psf.fwhm_pix == pytest.approx(2 * 3.0 * np.sqrt(2**0.25 - 1))


def test_ellipticity_elongates_along_x_for_positive_e1():
    psf = MoffatPsf(alpha_pix=2.0, beta=3.0, e1=0.2)
    assert psf.point_value(np.array(2.0), np.array(0.0)) > psf.point_value(
        np.array(0.0), np.array(2.0)
    )
    assert psf.render(40).sum() == pytest.approx(1.0, abs=2e-3)


def test_phase_table_interpolates_between_phases():
    psf = MoffatPsf(alpha_pix=1.8, beta=2.5)
    table = psf.phase_table(6, n_phase=10)
    got = table.stamps(np.array([0.23]), np.array([-0.31]))[0]
    exact = psf.render(6, 0.23, -0.31)
    assert np.abs(got - exact).max() < 2e-3 * exact.max()


def test_fit_recovers_the_shape_of_noisy_stars():
    rng = np.random.default_rng(4)
    truth = MoffatPsf(alpha_pix=3.2, beta=3.3, e1=0.06, e2=-0.04)
    shape = (300, 200)
    # Isolated stars on a 5 x 6 grid with random sub-pixel positions.
    gx, gy = np.meshgrid(np.arange(5) * 36 + 28, np.arange(6) * 46 + 30)
    xs = gx.ravel() + rng.uniform(-3, 3, 30)
    ys = gy.ravel() + rng.uniform(-3, 3, 30)
    model = np.zeros(shape)
    for x, y in zip(xs, ys, strict=True):
        add_star(model, truth, x, y, 2e5)
    sky = 500.0
    image = rng.poisson(model + sky) - sky
    var = model + sky
    res = fit_psf(image, var, np.zeros(shape, bool), xs, ys, fwhm_guess_pix=4.0)
    assert res.psf.fwhm_pix == pytest.approx(truth.fwhm_pix, rel=0.01)
    assert res.psf.beta == pytest.approx(truth.beta, rel=0.05)
    assert res.psf.e1 == pytest.approx(0.06, abs=0.01)
    assert res.psf.e2 == pytest.approx(-0.04, abs=0.01)
    assert res.n_stars >= 28
    assert res.chi2_per_dof == pytest.approx(1.0, abs=0.3)


def test_a_contaminated_star_is_rejected():
    rng = np.random.default_rng(5)
    truth = MoffatPsf(alpha_pix=2.5, beta=3.0)
    shape = (200, 200)
    gx, gy = np.meshgrid(np.arange(5) * 36 + 28, np.arange(5) * 36 + 28)
    xs = gx.ravel() + rng.uniform(-0.5, 0.5, 25)
    ys = gy.ravel() + rng.uniform(-0.5, 0.5, 25)
    model = np.zeros(shape)
    for x, y in zip(xs, ys, strict=True):
        add_star(model, truth, x, y, 1e5)
    add_star(model, truth, xs[7] + 3.0, ys[7], 5e4)  # a close companion
    image = rng.poisson(model + 300.0) - 300.0
    res = fit_psf(image, model + 300.0, np.zeros(shape, bool), xs, ys, fwhm_guess_pix=3.0)
    assert not res.used[7]
    assert res.used.sum() >= 22
    assert res.psf.fwhm_pix == pytest.approx(truth.fwhm_pix, rel=0.01)


def test_too_few_stars_raise_with_counts():
    z = np.zeros((50, 50))
    with pytest.raises(CalibrationError, match="only 2 PSF star candidates") as info:
        fit_psf(z, z + 1, z.astype(bool), [10, 20], [10, 20], fwhm_guess_pix=3.0)
    assert info.value.metadata == {"n_psf_stars": 2, "min_stars": 3}
