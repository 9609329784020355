"""Unit tests of dcflow.stages.photocal."""

from __future__ import annotations

import numpy as np
import pytest

from dcflow.errors import CalibrationError
from dcflow.stages.photocal import fit_zero_point


def test_zero_point_hand_example_with_an_outlier():
    # flux 100 e- at mag 25 => ZP = 25 + 2.5 log10(100) = 30; one star 1 mag off is clipped.
    flux = np.array([100.0, 1000.0, 10.0, 100.0, 1000.0, 100.0, 100.0])
    mag = 30.0 - 2.5 * np.log10(flux)
    mag[3] += 1.0
    res = fit_zero_point(flux, 0.01 * flux, mag, np.full(7, 0.01), min_stars=3)
    assert res.zero_point == pytest.approx(30.0, abs=1e-9)
    assert res.used.tolist() == [True, True, True, False, True, True, True]
    assert res.n_used == 6
    # Equal errors sqrt(0.01^2 + (1.0857 * 0.01)^2) per star, no excess scatter.
    assert res.zero_point_err == pytest.approx(np.hypot(0.01, 0.010857) / np.sqrt(6), rel=1e-3)


def test_zero_point_statistics_on_noisy_stars():
    rng = np.random.default_rng(3)
    flux = 10 ** rng.uniform(3, 5, 400)
    mag = 27.3 - 2.5 * np.log10(flux) + rng.normal(0, 0.02, 400)
    res = fit_zero_point(flux, 1e-3 * flux, mag, np.full(400, 0.02))
    assert res.zero_point == pytest.approx(27.3, abs=4 * 0.02 / np.sqrt(400))
    assert res.scatter_mag == pytest.approx(0.02, rel=0.15)


def test_non_positive_fluxes_are_ignored_and_too_few_raise():
    flux = np.array([100.0, -5.0, np.nan, 100.0])
    with pytest.raises(CalibrationError, match="2 usable reference stars, need >= 5") as info:
        fit_zero_point(flux, np.ones(4), np.full(4, 25.0), np.full(4, 0.01))
    assert info.value.metadata["n_photcal"] == 2
