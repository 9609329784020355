"""Unit tests of dcflow.stages.detection on hand-built images."""

from __future__ import annotations

import numpy as np
import pytest

from dcflow.stages.detection import detect_signed_sources, detect_sources


def gaussian(shape, x0, y0, flux, sigma):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (
        flux / (2 * np.pi * sigma**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    )


def test_peaks_at_known_pixels_sorted_by_significance_and_blends_flagged():
    shape = (80, 120)  # non-square: an x/y swap fails
    image = (
        gaussian(shape, 30.0, 20.0, 5000.0, 1.5)
        + gaussian(shape, 90.0, 60.0, 2000.0, 1.5)
        # A pair 7 pixels apart shares one footprint.
        + gaussian(shape, 60.0, 40.0, 3000.0, 1.5)
        + gaussian(shape, 67.0, 40.0, 3000.0, 1.5)
    ).astype(np.float32)
    det = detect_sources(image, noise_rms=1.0, fwhm_pix=3.5, threshold_sigma=5.0)
    got = sorted(zip(det.x_peak.tolist(), det.y_peak.tolist(), strict=True))
    assert got == [(30, 20), (60, 40), (67, 40), (90, 60)]
    assert det.x_peak[0] == 30 and det.y_peak[0] == 20  # brightest first
    assert np.all(np.diff(det.significance) <= 0)
    blended = {
        (x, y)
        for x, y, n in zip(det.x_peak, det.y_peak, det.n_peaks_in_footprint, strict=True)
        if n > 1
    }
    assert blended == {(60, 40), (67, 40)}
    assert det.n_footprints == 3
    assert det.footprints[20, 30] > 0 and det.footprints[0, 0] == 0


def test_source_on_the_edge_is_detected():
    shape = (60, 50)
    image = gaussian(shape, 0.2, 30.0, 4000.0, 1.5).astype(np.float32)
    det = detect_sources(image, noise_rms=1.0, fwhm_pix=3.5)
    assert det.x_peak.tolist() == [0] and det.y_peak.tolist() == [30]


def test_pure_noise_gives_few_false_detections():
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 5.0, (400, 300)).astype(np.float32)
    det = detect_sources(image, noise_rms=5.0, fwhm_pix=4.0, threshold_sigma=5.0)
    # Gaussian tail beyond 5 sigma over ~1e4 independent beams: expect ~0.
    assert det.x_peak.size <= 1


def test_threshold_in_smoothed_noise_units():
    # A star at detection significance ~8 is found at 5 sigma, not at 12 sigma.
    shape = (64, 64)
    sigma = 4.0 / 2.3548
    noise_smooth = 1.0 / (2 * np.sqrt(np.pi) * sigma)
    # Peak of (PSF * kernel) for equal Gaussians: flux / (4 pi sigma^2).
    flux = 8.0 * noise_smooth * 4 * np.pi * sigma**2
    image = gaussian(shape, 32.0, 32.0, flux, sigma).astype(np.float32)
    det5 = detect_sources(image, noise_rms=1.0, fwhm_pix=4.0, threshold_sigma=5.0)
    assert det5.significance[0] == pytest.approx(8.0, rel=0.02)
    assert detect_sources(image, noise_rms=1.0, fwhm_pix=4.0, threshold_sigma=12.0).x_peak.size == 0


def test_empty_image_gives_empty_result():
    det = detect_sources(np.zeros((50, 40), np.float32), noise_rms=1.0, fwhm_pix=3.0)
    assert det.x_peak.size == 0 and det.n_footprints == 0 and det.footprints.shape == (50, 40)


def test_detection_validation():
    with pytest.raises(ValueError, match="image must be 2-d"):
        detect_sources(np.zeros(5), noise_rms=1.0, fwhm_pix=3.0)
    with pytest.raises(ValueError, match="noise_rms must be finite and > 0"):
        detect_sources(np.zeros((5, 5)), noise_rms=0.0, fwhm_pix=3.0)
    with pytest.raises(ValueError, match="fwhm_pix must be > 0"):
        detect_sources(np.zeros((5, 5)), noise_rms=1.0, fwhm_pix=-1.0)


def test_noise_bumps_on_a_bright_star_are_not_second_peaks():
    """A bright star on noise: the wings carry local maxima of the smoothed image that rise
    less than 3 sigma above the saddle to the star's peak; they are neither sources nor
    blends. A real companion 12 pixels away (a deep saddle) still is."""
    shape = (90, 140)
    rng = np.random.default_rng(2)
    star = gaussian(shape, 50.0, 45.0, 2.0e4, 2.0)
    # A broad halo (galaxy-like) makes the footprint large, with room for noise bumps.
    halo = gaussian(shape, 50.0, 45.0, 1.6e5, 60.0)  # 2.7-7 per pixel: one footprint
    noise = rng.normal(0.0, 1.0, shape)
    image = (star + halo + noise).astype(np.float32)
    every = detect_sources(
        image, noise_rms=1.0, fwhm_pix=3.0, threshold_sigma=5.0, min_peak_contrast_sigma=0.0
    )
    det = detect_sources(image, noise_rms=1.0, fwhm_pix=3.0, threshold_sigma=5.0)
    assert every.x_peak.size > 1  # noise bumps in the halo are local maxima
    assert det.x_peak.tolist() == [50] and det.y_peak.tolist() == [45]
    assert det.n_peaks_in_footprint.tolist() == [1]
    pair = image + gaussian(shape, 62.0, 45.0, 5.0e3, 2.0).astype(np.float32)
    det = detect_sources(pair, noise_rms=1.0, fwhm_pix=3.0, threshold_sigma=5.0)
    assert sorted(det.x_peak.tolist()) == [50, 62]
    assert det.n_peaks_in_footprint.tolist() == [2, 2]


def test_signed_detection_is_two_detections_with_one_smoothing():
    """Peaks of both signs from one smoothing are exactly those of two `detect_sources`
    calls on the image and its negative (a difference image with a dipole and noise)."""
    shape = (70, 110)
    rng = np.random.default_rng(5)
    image = (
        gaussian(shape, 25.0, 30.0, 3000.0, 1.5)
        - gaussian(shape, 80.0, 20.0, 2500.0, 1.5)
        + gaussian(shape, 60.0, 50.0, 1500.0, 1.5)
        - gaussian(shape, 63.0, 50.0, 1500.0, 1.5)
        + rng.normal(0.0, 1.0, shape)
    ).astype(np.float32)
    positive, negative = detect_signed_sources(image, noise_rms=1.0, fwhm_pix=3.5)
    for got, want in zip(
        (positive, negative),
        (
            detect_sources(image, noise_rms=1.0, fwhm_pix=3.5),
            detect_sources(-image, noise_rms=1.0, fwhm_pix=3.5),
        ),
        strict=True,
    ):
        assert got.x_peak.tolist() == want.x_peak.tolist()
        assert got.y_peak.tolist() == want.y_peak.tolist()
        np.testing.assert_array_equal(got.significance, want.significance)
        np.testing.assert_array_equal(got.footprints, want.footprints)
    assert (25, 30) in zip(positive.x_peak.tolist(), positive.y_peak.tolist(), strict=True)
    assert (80, 20) in zip(negative.x_peak.tolist(), negative.y_peak.tolist(), strict=True)
    with pytest.raises(ValueError, match="noise_rms must be finite"):
        detect_signed_sources(image, noise_rms=0.0, fwhm_pix=3.5)
