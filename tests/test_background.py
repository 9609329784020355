"""Unit tests of dcflow.stages.background against hand-worked answers."""

from __future__ import annotations

import numpy as np
import pytest

from dcflow.stages.background import (
    _clipped_box_stats,
    estimate_background,
    interpolation_weights,
)


def test_interpolation_weights_reproduce_linear_functions_and_sum_to_one():
    w = interpolation_weights(700, 6, 116)
    assert w.shape == (700, 6)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    centres = (np.arange(6) + 0.5) * 116 - 0.5
    coords = np.arange(700.0)
    inside = (coords >= centres[0]) & (coords <= centres[-1])
    # A natural cubic spline through a straight line is the line itself.
    np.testing.assert_allclose((w @ (3.0 + 0.5 * centres))[inside], 3.0 + 0.5 * coords[inside])
    # Beyond the outer centres the value is held constant.
    np.testing.assert_allclose((w @ centres)[:50], centres[0])


def test_box_stats_clip_outliers_and_ignore_nan():
    # 1..99 (median 50) plus three huge outliers and NaNs (masked pixels).
    row = np.concatenate([np.arange(1.0, 100.0), [1e6, 2e6, 3e6], [np.nan] * 10])
    level, rms = _clipped_box_stats(row[None, :], clip_sigma=3.0, n_iter=3)
    # Symmetric kept values: mean == median == 50, so the mode estimate is 50 too.
    assert level[0] == pytest.approx(50.0)
    assert rms[0] == pytest.approx(np.arange(1.0, 100.0).std())


def test_box_stats_too_few_pixels_gives_nan():
    level, rms = _clipped_box_stats(np.array([[1.0, 2.0, np.nan]]), 3.0, 3)
    assert np.isnan(level[0]) and np.isnan(rms[0])


def test_background_recovers_a_gradient_under_stars():
    rng = np.random.default_rng(2)
    ny, nx = 600, 420
    yy, xx = np.mgrid[0:ny, 0:nx]
    truth = 500.0 + 0.02 * xx - 0.01 * yy
    image = truth + rng.normal(0.0, 10.0, (ny, nx))
    # Bright compact sources on 1 % of the pixels.
    idx = rng.integers(0, ny * nx, ny * nx // 100)
    image.flat[idx] += 5000.0
    res = estimate_background(image.astype(np.float32), box_size=64)
    interior = (slice(40, -40), slice(40, -40))
    # Box noise: 10 / sqrt(~1000 sub-sampled pixels) ~ 0.4 e-, smoothed by the mesh filter.
    assert np.abs(res.background[interior] - truth[interior]).max() < 1.0
    assert res.rms == pytest.approx(10.0, rel=0.05)
    assert res.mean == pytest.approx(truth.mean(), abs=2.0)


def test_background_honours_mask():
    image = np.full((200, 300), 100.0, dtype=np.float32)
    image[:, :150] = 1e5
    mask = np.zeros(image.shape, dtype=bool)
    mask[:, :150] = True
    res = estimate_background(image, mask=mask, box_size=50)
    np.testing.assert_allclose(res.background, 100.0, atol=1e-3)


def test_background_validation():
    with pytest.raises(ValueError, match="image must be 2-d"):
        estimate_background(np.zeros(10))
    with pytest.raises(ValueError, match="mask shape"):
        estimate_background(np.zeros((64, 64)), mask=np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="box_size must be >= 8"):
        estimate_background(np.zeros((64, 64)), box_size=4)
    with pytest.raises(ValueError, match="no box has enough valid pixels"):
        estimate_background(np.full((64, 64), np.nan), box_size=32)


def test_mode_estimate_sits_below_a_photon_noise_sky_and_the_masked_mean_does_not():
    rng = np.random.default_rng(21)
    sky_e = 190.0
    image = rng.poisson(sky_e, (512, 512)) + rng.normal(0.0, 5.0, (512, 512))
    mode = estimate_background(image, box_size=128)
    mean = estimate_background(image, box_size=128, statistic="mean")
    # Poisson skewness: the mode estimate of a Poisson sky lies ~0.2 e- below its mean.
    assert -0.5 < mode.mean - sky_e < -0.15
    assert abs(mean.mean - sky_e) < 0.06  # 16 boxes of ~4000 sub-sampled pixels: +-0.03
    # With the stars masked the clipped mean stays unbiased.
    yy, xx = np.mgrid[:512, :512]
    stars = np.zeros((512, 512), bool)
    for x0, y0 in rng.uniform(20, 492, (40, 2)):
        r2 = (xx - x0) ** 2 + (yy - y0) ** 2
        image = image + 5e4 / (2 * np.pi * 4.0) * np.exp(-r2 / 8.0)
        stars |= r2 < 15**2
    masked = estimate_background(image, mask=stars, box_size=128, statistic="mean")
    assert abs(masked.mean - sky_e) < 0.06
    with pytest.raises(ValueError, match="statistic must be 'mode' or 'mean', got 'median'"):
        estimate_background(image, statistic="median")
