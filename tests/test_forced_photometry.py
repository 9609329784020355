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
    default_visits,
    mag_to_njy,
    make_truth,
    measured_field,
    render_calexp,
    variable_factor,
)

from dcflow.errors import InputDataError
from dcflow.stages.forced_photometry import (
    ForcedPhotometryConfig,
    aperture_correction,
    aperture_correction_field,
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
    assert table.meta["VISIT"] == calexp.header["VISIT"] and table.meta["ZP"] == 31.4
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


def test_moffat_psf_from_header_gives_total_flux():
    # Stars only (Moffat beta = 2.5, broad wings), as processCcd describes its PSF.
    truth = make_truth(6, n_galaxies=0)
    truth["kind"] = "star"
    kept: list[int] = []  # grid positions 30+ pixels apart: no neighbour in the wings
    for k in range(len(truth)):
        gap = np.hypot(
            truth["x_patch"][kept] - truth["x_patch"][k],
            truth["y_patch"][kept] - truth["y_patch"][k],
        )
        if np.all(gap > 30):
            kept.append(k)
    truth = truth[kept]
    truth["mag_r"] = np.linspace(17.0, 19.0, len(truth))
    spec = replace(default_visits()[0], psf_beta=2.5, fwhm_arcsec=0.9)
    calexp = render_calexp(truth, spec, seed=3)
    objects = Table(
        {"object_id": truth["id"], "ra_deg": truth["ra_deg"], "dec_deg": truth["dec_deg"]}
    )
    config = ForcedPhotometryConfig(apcorr_min_stars=5)
    result = forced_photometry(calexp, objects, config=config)
    ok = ~result.table["psf_flux_flag"]
    ratio = result.table["psf_flux"][ok] / mag_to_njy(truth["mag_r"][ok])
    pull = (result.table["psf_flux"][ok] - mag_to_njy(truth["mag_r"][ok])) / result.table[
        "psf_flux_err"
    ][ok]
    assert abs(np.median(ratio) - 1) < 0.005  # total flux, to 0.5 %
    assert 0.7 < np.std(pull) < 1.3
    assert abs(result.aperture_correction - 1) < 0.01  # the Moffat model is right
    # A Gaussian model of the same FWHM, without aperture correction, loses the wings.
    header = calexp.header.copy()
    del header["PSFBETA"]
    gauss = forced_photometry(
        replace(calexp, header=header),
        objects,
        config=ForcedPhotometryConfig(apply_aperture_correction=False),
    )
    gauss_ratio = gauss.table["psf_flux"][ok] / mag_to_njy(truth["mag_r"][ok])
    assert np.median(gauss_ratio) < 0.95


def test_aperture_correction_field_fits_a_plane_and_degrades_gracefully():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 2048, 60)
    y = rng.uniform(0, 4612, 60)
    truth = 1.0 + 0.01 * (2 * x / 2048 - 1) - 0.02 * (2 * y / 4612 - 1)
    ratio = truth + rng.normal(0, 0.002, 60)
    ratio[:3] = 1.5  # contaminated stars are clipped
    used = np.ones(60, dtype=bool)
    field = aperture_correction_field(x, y, ratio, used, (4612, 2048), order=1)
    assert np.max(np.abs(field[3:] - truth[3:])) < 0.002
    # With 10 stars a plane (3 terms) needs 15: the median is used instead.
    few = np.zeros(60, dtype=bool)
    few[10:20] = True
    flat = aperture_correction_field(x, y, ratio, few, (4612, 2048), order=1)
    assert np.all(flat == np.median(ratio[10:20]))


@functools.lru_cache(maxsize=1)
def _epochs_with_a_varying_psf(seed=8):
    """Four epochs of one star field, seeing 0.7-1.0" growing by 0-15 % from the middle to
    the top and bottom rows, through
    processCcd; forced fluxes of the stars with the stored PSF model and with one width
    (benchmarks/photometry_sim.py runs it over other seeds)."""
    from synthetic import make_star_field

    from dcflow.stages.process_ccd import process_ccd

    shape = (900, 600)
    fields = [
        make_star_field(
            shape,
            n_stars=400,
            seed=seed,
            mag_range=(15.5, 21.0),
            fwhm_arcsec=fwhm,
            fwhm_edge_growth=growth,
            noise_seed=100 + k + 4 * (seed - 8),
        )
        for k, (fwhm, growth) in enumerate([(0.7, 0.0), (0.8, 0.12), (0.9, 0.06), (1.0, 0.15)])
    ]
    truth = fields[0].truth
    inside = (truth["x"] > 20) & (truth["x"] < shape[1] - 20)
    inside &= (truth["y"] > 20) & (truth["y"] < shape[0] - 20)
    truth = truth[inside]
    objects = Table(
        {"object_id": np.arange(len(truth)), "ra_deg": truth["ra_deg"], "dec_deg": truth["dec_deg"]}
    )
    varying, single = [], []
    for field in fields:
        calexp = process_ccd(field.exposure, field.refcat, band="r").calexp
        header = calexp.header.copy()
        del header["PSFMODEL"]
        for out, exposure in ((varying, calexp), (single, replace(calexp, header=header))):
            table = forced_photometry(exposure, objects).table
            out.append((np.asarray(table["psf_flux"]), np.asarray(table["psf_flux_err"])))
    return truth, varying, single


def _chi2_per_epoch(measured, bright):
    """Reduced chi^2 of each bright star's fluxes about its weighted mean, after removing each
    epoch's median offset (the zero point of each calexp is fitted to a noisy reference
    catalogue: 2-6 mmag per epoch here, which is calibration, not PSF photometry)."""
    flux = np.array([f for f, _ in measured])[:, bright]
    err = np.array([e for _, e in measured])[:, bright]
    offset = np.median(flux / np.median(flux, axis=0), axis=1)[:, None]
    flux, err = flux / offset, err / offset
    mean = np.sum(flux / err**2, axis=0) / np.sum(1 / err**2, axis=0)
    return np.sum(((flux - mean) / err) ** 2, axis=0) / (flux.shape[0] - 1)


def test_stored_psf_model_puts_bright_constant_stars_at_the_noise_floor():
    """With processCcd's spatially varying PSF read from the calexp, bright isolated constant
    stars (S/N > 100) have a reduced chi^2 across epochs of about 1 (median <= 1.5; measured
    1.14, and 1.36 above S/N 200); with one width per CCD the flux errors follow the seeing
    across the CCD (measured: 7, and 10 above S/N 200)."""
    truth, varying, single = _epochs_with_a_varying_psf()
    flux, err = varying[0]
    near = np.hypot(
        truth["x"][:, None] - truth["x"][None, :], truth["y"][:, None] - truth["y"][None, :]
    )
    isolated_star = (near < 25).sum(axis=1) == 1
    bright = isolated_star & np.isfinite(flux) & (flux / err > 100)
    for f, _ in varying + single:
        bright &= np.isfinite(f)
    assert bright.sum() >= 12
    chi2 = _chi2_per_epoch(varying, bright)
    chi2_single = _chi2_per_epoch(single, bright)
    assert np.median(chi2) <= 1.5
    assert np.median(chi2_single) > 4.0


def test_a_psf_model_of_another_image_shape_is_an_input_error():
    from synthetic import make_star_field

    from dcflow.stages.process_ccd import process_ccd

    field = make_star_field((400, 300), n_stars=120, seed=9, mag_range=(16.0, 21.0))
    calexp = process_ccd(field.exposure, field.refcat, band="r").calexp
    header = calexp.header.copy()
    header["PSFWNX"] = 2048
    objects = Table({"object_id": [1], "ra_deg": [0.0], "dec_deg": [0.0]})
    with pytest.raises(InputDataError, match=r"fitted on an image of shape \(400, 2048\)"):
        forced_photometry(replace(calexp, header=header), objects)
    header["PSFMODEL"] = "other"
    with pytest.raises(InputDataError, match="calexp PSF model: PSFMODEL='other'"):
        forced_photometry(replace(calexp, header=header), objects)


def test_forced_src_columns_are_all_in_the_schema():
    from dcflow.catalog_schema import FORCED_SRC_COLUMNS

    m = measured_field()
    calexp = next(c for s, c in zip(m.field.specs, m.field.calexps, strict=True) if s.filter == "r")
    table = forced_photometry(calexp, m.objects).table
    assert list(table.colnames) == list(FORCED_SRC_COLUMNS)
    assert str(table["psf_flux"].unit) == "nJy" and str(table["x"].unit) == "pix"
    other = forced_photometry(calexp, m.objects, config=ForcedPhotometryConfig(zero_point_mag=27.0))
    assert other.table["psf_flux"].unit is None  # units of the table's ZP, not nJy
