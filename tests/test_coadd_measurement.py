"""Object catalog from the coadds vs the synthetic truth; chi2 image; ids; validation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from astropy.io import fits
from coadd_synthetic import PATCH, PATCH_WCS, TRACT, mag_to_njy, measured_field, warped_field

from dcflow.campaign.skymap import patch_info
from dcflow.errors import InputDataError
from dcflow.exposure import Exposure, MaskPlane
from dcflow.stages.coadd import assemble_coadd
from dcflow.stages.coadd_measurement import (
    CoaddMeasurementConfig,
    make_object_ids,
    measure_coadds,
)
from dcflow.stages.forced_photometry import MixturePsf
from dcflow.stages.multiband import MultibandConfig, chi2_detection_image
from dcflow.stages.stamps import adaptive_moments


def test_completeness_at_snr_10():
    m = measured_field()
    bright = m.truth_snr >= 10
    assert bright.sum() >= 60
    assert m.matched[bright].mean() >= 0.95


def test_astrometry_and_photometry_of_bright_stars():
    m = measured_field()
    truth = m.field.truth
    sel = (truth["kind"] == "star") & (m.truth_snr > 100) & m.matched
    assert sel.sum() >= 25
    obj = m.objects[m.truth_index[sel]]
    tx, ty = PATCH_WCS.world_to_pixel_values(truth["ra_deg"][sel], truth["dec_deg"][sel])
    # Astrometry on the sky (RA/Dec from the WCS), in mas.
    dra = (obj["ra_deg"] - truth["ra_deg"][sel]) * np.cos(np.radians(truth["dec_deg"][sel]))
    ddec = obj["dec_deg"] - truth["dec_deg"][sel]
    astro_rms_mas = np.sqrt(np.mean(dra**2 + ddec**2)) * 3.6e6
    assert astro_rms_mas <= 20.0
    assert np.sqrt(np.mean((obj["x"] - tx) ** 2 + (obj["y"] - ty) ** 2)) * 200 <= 20.0
    dm = -2.5 * np.log10(obj["r_psf_flux"] / mag_to_njy(truth["mag_r"][sel]))
    assert np.sqrt(np.mean(dm**2)) * 1000 <= 10.0
    dm_g = -2.5 * np.log10(obj["g_psf_flux"] / mag_to_njy(truth["mag_g"][sel]))
    bright_g = obj["g_psf_flux"] / obj["g_psf_flux_err"] > 100
    assert np.sqrt(np.mean(dm_g[bright_g] ** 2)) * 1000 <= 10.0


def test_extendedness_separates_galaxies_from_stars():
    m = measured_field()
    truth = m.field.truth
    obj = m.objects[m.truth_index]
    snr = obj["r_psf_flux"] / obj["r_psf_flux_err"]
    sel = m.matched & (snr > 50) & (truth["kind"] != "variable")
    is_galaxy = truth["kind"][sel] == "galaxy"
    assert is_galaxy.sum() >= 4 and (~is_galaxy).sum() >= 30
    correct = (obj["extendedness"][sel] == 1) == is_galaxy
    assert correct.mean() >= 0.95


def test_ids_unique_stable_and_patch_owned():
    m = measured_field()
    ids = np.asarray(m.objects["object_id"])
    assert len(np.unique(ids)) == len(ids)
    assert np.all(ids >> 40 == TRACT.tract_id)
    # Every Object lies in the patch's inner box, and ids decode to its peak tract pixel.
    xt = m.objects["x"] + PATCH.outer.x0
    yt = m.objects["y"] + PATCH.outer.y0
    assert np.all(PATCH.inner.contains(xt, yt))
    assert np.all(np.abs((ids & (2**20 - 1)) - xt) <= 2.5)
    assert np.all(np.abs(((ids >> 20) & (2**20 - 1)) - yt) <= 2.5)
    # A rerun gives the same ids.
    again = measure_coadds(
        m.coadds,
        chi2_detection_image(m.coadds),
        PATCH,
        config=CoaddMeasurementConfig(apcorr_min_stars=3),
    )
    assert np.array_equal(np.asarray(again.objects["object_id"]), ids)
    assert make_object_ids(3, np.array([5]), np.array([7]))[0] == (3 << 40) | (7 << 20) | 5


def test_neighbour_patch_owns_border_objects():
    m = measured_field()
    # Measuring the same coadd as if it were patch 0,1 moves ownership: its inner box does not
    # overlap patch 1,1's, so no Object id can be shared.
    other = patch_info(TRACT, 0, 1)
    assert other.outer.shape == PATCH.outer.shape
    assert not np.any(
        other.inner.contains(m.objects["x"] + PATCH.outer.x0, m.objects["y"] + PATCH.outer.y0)
    )


def test_chi2_image_statistics_on_noise():
    field = warped_field()
    blank = {}
    rng = np.random.default_rng(2)
    for band in ("r", "g"):
        shape = PATCH.shape
        header = fits.Header({"PSFFWHM": 0.9, "ZP": 31.4})
        blank[band] = Exposure(
            image=rng.normal(size=shape).astype(np.float32),
            mask=np.zeros(shape, dtype=np.int32),
            variance=np.ones(shape, dtype=np.float32),
            wcs=PATCH_WCS,
            header=header,
        )
    result = chi2_detection_image(blank)
    inner = (slice(20, -20), slice(20, -20))
    # Smoothed S/N of white noise has unit variance; chi2 with 2 bands has mean 2.
    assert np.std(result.snr[0][inner]) == pytest.approx(1.0, abs=0.05)
    assert np.mean(result.chi2[inner]) == pytest.approx(2.0, abs=0.1)
    assert np.mean(result.significance[inner] > 5) < 1e-4
    raw = chi2_detection_image(blank, config=MultibandConfig(detection_kernel="none"))
    assert np.std(raw.snr[1]) == pytest.approx(1.0, abs=0.02)
    # On the real field every bright star peaks far above threshold.
    assert field.truth is not None


def test_adaptive_moments_recover_gaussian_covariance():
    offsets = np.arange(-15, 16)
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    cov = np.array([[6.0, 1.5], [1.5, 3.0]])
    inv = np.linalg.inv(cov)
    dx, dy = xx - 0.3, yy + 0.2
    stamp = np.exp(-0.5 * (inv[0, 0] * dx**2 + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy**2))
    ixx, iyy, ixy, flag = adaptive_moments(
        stamp[None], np.array([0.3]), np.array([-0.2]), offsets, 2.0
    )
    assert not flag[0]
    assert (ixx[0], iyy[0], ixy[0]) == (
        pytest.approx(6.0, rel=0.01),
        pytest.approx(3.0, rel=0.01),
        pytest.approx(1.5, rel=0.02),
    )


def test_empty_result_has_all_columns():
    m = measured_field()
    quiet = {
        b: Exposure(
            image=np.zeros(PATCH.shape, np.float32),
            mask=np.zeros(PATCH.shape, np.int32),
            variance=np.ones(PATCH.shape, np.float32),
            wcs=PATCH_WCS,
            header=m.coadds[b].header,
        )
        for b in ("r", "g")
    }
    result = measure_coadds(quiet, chi2_detection_image(quiet), PATCH)
    assert len(result.objects) == 0
    assert result.objects.colnames == m.objects.colnames


def test_validation_errors():
    m = measured_field()
    detection = chi2_detection_image(m.coadds)
    with pytest.raises(InputDataError, match="no coadd for detection filter 'g'"):
        measure_coadds({"r": m.coadds["r"]}, detection, PATCH)
    with pytest.raises(ValueError, match="differs from patch shape"):
        measure_coadds(
            m.coadds,
            detection,
            patch_info(TRACT, 0, 0).__class__(0, 0, 0, PATCH.inner, PATCH.inner),
        )
    with pytest.raises(InputDataError, match="no coadds to combine"):
        chi2_detection_image({})
    with pytest.raises(ValueError, match="detect_threshold_sigma must be >= 0"):
        CoaddMeasurementConfig(detect_threshold_sigma=-1.0)
    with pytest.raises(ValueError, match="tract_id must be in"):
        make_object_ids(2**23, np.array([1]), np.array([1]))
    with pytest.raises(ValueError, match="need positive fwhm"):
        MixturePsf(fwhm_pix=(1.0,), beta=(0.0,), weights=())
    with pytest.raises(ValueError, match="beta 0 or > 1"):
        MixturePsf(fwhm_pix=(1.0,), beta=(0.5,), weights=(1.0,))


def test_local_psf_from_coverage_where_visits_are_missing():
    # The bad-seeing r visits (FWHM > 0.9") miss the left half of the patch, as behind a CCD
    # gap: there the coadd PSF is sharper than the global mixture.
    field = warped_field()
    specs = [s for s in field.specs if s.filter == "r"]
    warps = []
    for spec, warp in zip(specs, field.for_filter("r", clean=True), strict=True):
        if spec.fwhm_arcsec > 0.9:
            mask = warp.mask.copy()
            mask[:, : PATCH.shape[1] // 2] |= int(MaskPlane.NO_DATA)
            warp = replace(warp, mask=mask)
        warps.append(warp)
    result = assemble_coadd(warps)
    coadds = {"r": result.coadd}
    detection = chi2_detection_image(coadds)
    truth = field.truth
    config = CoaddMeasurementConfig(apcorr_min_stars=3)
    rms = {}
    for label, coverages in (("local", {"r": result.input_coverage}), ("global", None)):
        objects = measure_coadds(
            coadds, detection, PATCH, coverages=coverages, config=config
        ).objects
        tx, ty = PATCH_WCS.world_to_pixel_values(truth["ra_deg"], truth["dec_deg"])
        dist = np.hypot(tx[:, None] - objects["x"][None, :], ty[:, None] - objects["y"][None, :])
        obj = objects[dist.argmin(axis=1)]
        snr = obj["r_psf_flux"] / obj["r_psf_flux_err"]
        sel = (dist.min(axis=1) < 2) & (truth["kind"] == "star") & (snr > 100)
        straddle = np.abs(tx - PATCH.shape[1] // 2) < 6  # the PSF changes across these
        if coverages is not None:
            assert np.all(obj["r_psf_inexact"][sel & straddle])
            assert not np.any(obj["r_psf_inexact"][sel & (np.abs(tx - PATCH.shape[1] // 2) > 20)])
        sel &= ~straddle
        left = sel & (tx < PATCH.shape[1] // 2 - 10)
        assert left.sum() >= 8
        dm = -2.5 * np.log10(obj["r_psf_flux"][sel] / mag_to_njy(truth["mag_r"][sel]))
        rms[label] = np.sqrt(np.mean(dm**2)) * 1000
    assert rms["local"] <= 10.0
    assert rms["global"] > 2 * rms["local"]
    # The coverage map: bad-seeing visits have zero coverage on the left, one on the right.
    bad = [i for i, s in enumerate(specs) if s.fwhm_arcsec > 0.9]
    cells = result.input_coverage
    assert cells.shape == (len(specs), 30, 30)
    assert np.all(cells[bad, 5:25, 2:12] == 0)
    assert np.all(cells[bad, 5:25, 18:28] == 1)


def test_empty_filter_coadd_gives_nan_columns():
    m = measured_field()
    field = m.field
    no_data = np.full(PATCH.shape, int(MaskPlane.NO_DATA), dtype=np.int32)
    empty_warps = [replace(w, mask=no_data) for w in field.for_filter("g")]
    empty_g = assemble_coadd(empty_warps).coadd
    coadds = {"r": m.coadds["r"], "g": empty_g}
    detection = chi2_detection_image(coadds)
    assert np.all(detection.n_filters[60:180, 60:180] == 1)
    objects = measure_coadds(coadds, detection, PATCH).objects
    assert len(objects) >= 0.9 * len(m.objects)
    assert np.all(np.isnan(objects["g_psf_flux"])) and np.all(objects["g_psf_flux_flag"])
    assert np.all(objects["ref_filter"] == "r")
    # A patch with no data at all: an empty table with every column.
    nothing = {"r": assemble_coadd(empty_warps).coadd, "g": empty_g}
    result = measure_coadds(nothing, chi2_detection_image(nothing), PATCH)
    assert len(result.objects) == 0 and result.objects.colnames == m.objects.colnames


def test_object_columns_are_all_in_the_schema():
    from dcflow.catalog_schema import schema_for

    m = measured_field()
    schema = schema_for("object", filters=("r", "g"))
    assert set(m.objects.colnames) <= set(schema)
    for name in m.objects.colnames:
        assert m.objects[name].description == schema[name].description
    assert str(m.objects["r_psf_flux"].unit) == "nJy" and str(m.objects["ra_deg"].unit) == "deg"
