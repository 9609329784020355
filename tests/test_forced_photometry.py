"""Forced photometry: the variable star's light curve, constant stars' scatter, validation."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
from astropy.table import Table
from coadd_synthetic import (
    VARIABLE_AMPLITUDE,
    VARIABLE_PERIOD_DAYS,
    artefact_pixels,
    mag_to_njy,
    measured_field,
    variable_factor,
)

from dcflow.errors import InputDataError
from dcflow.stages.forced_photometry import (
    ForcedPhotometryConfig,
    aperture_correction,
    forced_photometry,
    isolated,
)


@functools.lru_cache(maxsize=1)
def light_curves():
    """Forced r fluxes (visits x truth rows), errors, truth fluxes and MJDs."""
    m = measured_field()
    truth = m.field.truth
    flux, err, true, mjd = [], [], [], []
    for spec, calexp in zip(m.field.specs, m.field.calexps, strict=True):
        if spec.filter != "r":
            continue
        if spec.artefacts:  # forced photometry does not reject artefacts: use the clean frame
            clean = calexp.image - artefact_pixels(spec)[2].astype(np.float32)
            calexp = replace(calexp, image=clean)
        table = forced_photometry(calexp, m.objects).table
        assert np.array_equal(table["object_id"], m.objects["object_id"])
        flux.append(np.asarray(table["psf_flux"])[m.truth_index])
        err.append(np.asarray(table["psf_flux_err"])[m.truth_index])
        factor = np.where(truth["kind"] == "variable", variable_factor(spec.mjd), 1.0)
        true.append(mag_to_njy(truth["mag_r"]) * factor)
        mjd.append(spec.mjd)
    return np.array(flux), np.array(err), np.array(true), np.array(mjd)


def test_variable_star_light_curve_recovered():
    m = measured_field()
    flux, err, true, mjd = light_curves()
    k = int(np.nonzero(m.field.truth["kind"] == "variable")[0][0])
    assert m.matched[k]
    f, e = flux[:, k], err[:, k]
    # Epoch by epoch within errors.
    chi2 = np.sum(((f - true[:, k]) / e) ** 2)
    assert chi2 / len(f) < 3.0
    # Sinusoid of the known period: mean, amplitude (fractional) within 3 sigma of the truth.
    phase = 2 * np.pi * (mjd - 60000.0) / VARIABLE_PERIOD_DAYS
    design = np.column_stack([np.ones_like(phase), np.sin(phase), np.cos(phase)]) / e[:, None]
    coef, *_ = np.linalg.lstsq(design, f / e, rcond=None)
    cov = np.linalg.inv(design.T @ design)
    amplitude = np.hypot(coef[1], coef[2]) / coef[0]
    grad = np.array(
        [
            -amplitude / coef[0],
            coef[1] / (amplitude * coef[0] ** 2),
            coef[2] / (amplitude * coef[0] ** 2),
        ]
    )
    sigma_amp = np.sqrt(grad @ cov @ grad)
    assert abs(amplitude - VARIABLE_AMPLITUDE) < 3 * sigma_amp
    assert sigma_amp < 0.05
    assert abs(coef[2]) < 3 * np.sqrt(cov[2, 2])  # a pure sine: no cosine term


def test_constant_stars_scatter_matches_errors():
    m = measured_field()
    flux, err, true, _ = light_curves()
    stars = (m.field.truth["kind"] == "star") & m.matched
    f, e = flux[:, stars], err[:, stars]
    assert np.all(np.isfinite(f))
    weights = 1 / e**2
    mean = np.sum(f * weights, axis=0) / np.sum(weights, axis=0)
    dof = f.size - f.shape[1]
    reduced = np.sum(((f - mean) / e) ** 2) / dof
    assert 0.8 <= reduced <= 1.2
    # Calibrated: residuals against the truth fluxes are consistent with the errors too.
    vs_truth = np.mean(((f - true[:, stars]) / e) ** 2)
    assert 0.8 <= vs_truth <= 1.2


def test_objects_off_the_calexp_are_flagged():
    m = measured_field()
    calexp = m.field.calexps[0]
    objects = Table(
        {
            "object_id": [1, 2],
            "ra_deg": [m.objects["ra_deg"][0], 10.0],
            "dec_deg": [m.objects["dec_deg"][0], 10.0],
        }
    )
    table = forced_photometry(calexp, objects).table
    assert table["psf_flux_flag"].tolist() == [False, True]
    assert np.isnan(table["psf_flux"][1])
    assert forced_photometry(calexp, objects[:0]).table.colnames == table.colnames


def test_aperture_correction_median_and_fallback():
    psf = np.array([100.0, 200.0, 300.0, 400.0, 50.0])
    ap = psf * np.array([1.05, 1.04, 1.06, 2.0, 1.05])
    snr = np.array([100.0, 100.0, 100.0, 100.0, 5.0])
    usable = np.ones(5, dtype=bool)
    correction, n = aperture_correction(psf, ap, snr, usable, min_snr=50, min_stars=3)
    assert (correction, n) == (pytest.approx(1.055), 4)
    assert aperture_correction(psf, ap, snr, usable, min_snr=50, min_stars=5) == (1.0, 0)
    assert isolated(np.array([0.0, 3.0, 20.0]), np.array([0.0, 0.0, 0.0]), 5.0).tolist() == [
        False,
        False,
        True,
    ]


def test_validation_errors():
    m = measured_field()
    calexp = m.field.calexps[0]
    with pytest.raises(InputDataError, match="objects table lacks column 'ra_deg'"):
        forced_photometry(calexp, Table({"object_id": [1]}))
    with pytest.raises(InputDataError, match="no WCS"):
        forced_photometry(replace(calexp, wcs=None), m.objects)
    header = calexp.header.copy()
    del header["PSFFWHM"]
    with pytest.raises(InputDataError, match="usable PSF description"):
        forced_photometry(replace(calexp, header=header), m.objects)
    with pytest.raises(ValueError, match="stamp_radius_fwhm must be > 0"):
        ForcedPhotometryConfig(stamp_radius_fwhm=0.0)
