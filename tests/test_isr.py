"""ISR against known answers: hand-made raws and cfht_sim frames with known truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from dcflow.configs import from_mapping
from dcflow.errors import InputDataError
from dcflow.exposure import MaskPlane
from dcflow.geometry import DetectorLayout
from dcflow.instruments import RawCcd, cfht_sim, raw_ccd_from_hdu
from dcflow.instruments.cfht_sim import SimConfig
from dcflow.stages.calibs import combine_bias, combine_flat
from dcflow.stages.isr import IsrConfig, assemble_ccd, run_isr

# Non-square CCD, amp B mirrored; one visit per band at the best seeing (hardest for the
# cosmic-ray finder); no dithers, no distortion, so pixel positions are easy to reason about.
CONFIG = SimConfig(
    n_ccds=2,
    ccd_columns=2,
    ccd_nx=320,
    ccd_ny=480,
    overscan_rows=8,
    visits_per_filter=1,
    n_bias=4,
    n_flat=4,
    star_density_per_deg2=0.0,
)


def exposures(config):
    specs = cfht_sim.campaign_exposures(config)
    return (
        [s for s in specs if s.obstype == "bias"],
        [s for s in specs if s.obstype == "flat" and s.band == "g"],
        [s for s in specs if s.obstype == "object"],
    )


def to_raw(sim: cfht_sim.SimulatedCcd, source: str = "sim.fits") -> RawCcd:
    return raw_ccd_from_hdu(fits.PrimaryHDU(data=sim.raw, header=sim.header), source=source)


def masters(config, ccd):
    biases, flats, _ = exposures(config)
    bias = combine_bias(
        [assemble_ccd(to_raw(cfht_sim.simulate_ccd(config, s, ccd))).image for s in biases]
    )
    flat = combine_flat(
        [assemble_ccd(to_raw(cfht_sim.simulate_ccd(config, s, ccd))).image for s in flats],
        bias=bias,
    )
    return bias, flat


@pytest.fixture(scope="module")
def calibs():
    return masters(CONFIG, 1)


def star_at(config, spec, ccd, x, y, mag, star_id=1) -> Table:
    ra, dec = cfht_sim.pixel_to_sky_true(config, spec, ccd, x, y)
    table = Table()
    table["id"] = np.atleast_1d(np.arange(star_id, star_id + np.size(x)))
    table["ra_deg"] = np.atleast_1d(ra)
    table["dec_deg"] = np.atleast_1d(dec)
    for band in config.filters:
        table[f"{band}_mag"] = np.atleast_1d(np.broadcast_to(mag, np.shape(ra)).astype(float))
    return table


# ------------------------------------------------------------------------------------------
# Hand-made raws


def handmade(signal_e: np.ndarray, gains, levels, *, row_wave=None, nan_amp=None) -> RawCcd:
    """A raw frame whose assembled signal is ``signal_e`` exactly (no noise)."""
    ny, nx = signal_e.shape
    layout = DetectorLayout.regular(
        n_amps=2, amp_nx=nx // 2, ny=ny, overscan_cols=16, overscan_rows=4
    )
    raw = np.zeros(layout.raw_shape, dtype=np.float32)
    rows = np.zeros(layout.raw_shape[0], dtype=np.float32) if row_wave is None else row_wave
    header = fits.Header()
    for amp, gain, level in zip(layout.amps, gains, levels, strict=True):
        cols = slice(
            min(amp.data[1].start, amp.serial_overscan[1].start),
            max(amp.data[1].stop, amp.serial_overscan[1].stop),
        )
        raw[:, cols] = level + rows[:, None]
        block = signal_e[amp.assembled] / gain
        raw[amp.data] += block[:, ::-1] if amp.flip_x else block
        header[f"GAIN{amp.name}"] = gain
        header[f"RDNOISE{amp.name}"] = 4.0
    if nan_amp is not None:
        amp = next(a for a in layout.amps if a.name == nan_amp)
        raw[amp.data] = np.nan
    header.update(layout.header_cards())
    header.update({"INSTRUME": "cfht_sim", "OBSTYPE": "flat", "EXPNUM": 7, "CCDNUM": 3,
                   "FILTER": "r", "EXPTIME": 1.0, "SATURATE": 65535})  # fmt: skip
    return raw_ccd_from_hdu(fits.PrimaryHDU(data=raw, header=header), source="handmade.fits")


def test_overscan_gain_and_orientation_exact():
    ny, nx = 40, 24
    yy, xx = np.mgrid[0:ny, 0:nx]
    signal = (1000.0 + 10.0 * xx + 0.5 * yy).astype(np.float32)  # distinct in x and y
    raw = handmade(signal, gains=(1.6, 2.0), levels=(900.0, 1300.0))
    asm = assemble_ccd(raw, config=IsrConfig(overscan_skip_cols=0))
    assert asm.image.shape == (ny, nx)
    np.testing.assert_allclose(asm.image, signal, atol=1e-3)
    assert asm.overscan_level_adu == pytest.approx({"A": 900.0, "B": 1300.0})


def test_flat_field_of_known_value_is_gain_corrected():
    signal = np.full((30, 20), 2000.0, dtype=np.float32)
    raw = handmade(signal, gains=(1.5, 2.1), levels=(1000.0, 1000.0))
    result = run_isr(raw)
    np.testing.assert_allclose(result.exposure.image, 2000.0, atol=1e-3)
    # variance = signal + read noise^2
    np.testing.assert_allclose(result.exposure.variance, 2000.0 + 16.0, rtol=1e-5)


@pytest.mark.parametrize(("method", "tolerance"), [("median_per_row", 1e-3), ("poly", 0.05)])
def test_row_structure_removed_by_overscan(method, tolerance):
    ny, nx = 200, 20
    t = np.arange(ny + 4) / (ny + 4)
    wave = (5.0 * np.sin(2 * np.pi * t) + 3.0 * t).astype(np.float32)
    signal = np.full((ny, nx), 100.0, dtype=np.float32)
    raw = handmade(signal, gains=(1.8, 1.8), levels=(1000.0, 1100.0), row_wave=wave)
    asm = assemble_ccd(raw, config=IsrConfig(overscan_method=method, overscan_poly_order=5))
    assert np.abs(asm.image - 100.0).max() < tolerance * 100


# ------------------------------------------------------------------------------------------
# Simulated frames


def test_known_star_lands_at_its_assembled_pixel(calibs):
    bias, flat = calibs
    spec = exposures(CONFIG)[2][0]
    # one star in amp A and one in the mirrored amp B, off-centre in both axes
    positions = [(40.3, 350.6), (230.2, 120.7)]
    stars = star_at(CONFIG, spec, 1, [p[0] for p in positions], [p[1] for p in positions], 17.0)
    sim = cfht_sim.simulate_ccd(CONFIG, spec, 1, stars=stars)
    image = run_isr(to_raw(sim), bias=bias, flat=flat).exposure.image
    for x, y in positions:
        iy, ix = round(y), round(x)
        stamp = image[iy - 25 : iy + 26, ix - 25 : ix + 26]
        peak = np.unravel_index(np.argmax(stamp), stamp.shape)
        assert (peak[0] + iy - 25, peak[1] + ix - 25) == (iy, ix)
        sub = stamp - np.median(image)
        yy, xx = np.mgrid[iy - 25 : iy + 26, ix - 25 : ix + 26]
        assert np.sum(sub * xx) / np.sum(sub) == pytest.approx(x, abs=0.05)
        assert np.sum(sub * yy) / np.sum(sub) == pytest.approx(y, abs=0.05)


def test_bias_structure_removed_and_flat_applied(calibs):
    bias, flat = calibs
    spec = exposures(CONFIG)[2][0]
    sim = cfht_sim.simulate_ccd(CONFIG, spec, 1, stars=star_at(CONFIG, spec, 1, 1.0, 1.0, 30.0))
    raw = to_raw(sim)
    corrected = run_isr(raw, bias=bias, flat=flat).exposure
    plain = run_isr(raw).exposure
    good = corrected.mask == 0
    sky = float(np.median(corrected.image[good]))
    # Sky after ISR: sky * median(flat) + dark, flat across the CCD (vignetting removed)
    median_flat = np.median(cfht_sim.flat_pattern(CONFIG, 1))
    expected = cfht_sim._sky_e(CONFIG, spec) * median_flat + CONFIG.dark_e_per_s * 60
    assert sky == pytest.approx(expected, rel=0.01)
    usable = good.mean(axis=0) > 0.9
    column_means = np.mean(corrected.image[:, usable], axis=0, where=good[:, usable])
    rms_columns_corrected = np.std(column_means)
    rms_columns_plain = np.std(np.median(plain.image, axis=0))
    # the column pattern (bias) and pixel response are gone: column means scatter at the
    # noise level sqrt(variance / ny)
    noise = np.sqrt(np.median(corrected.variance) / CONFIG.ccd_ny)
    assert rms_columns_corrected < 1.5 * noise
    assert rms_columns_plain > 3 * rms_columns_corrected
    # dead columns are BAD and interpolated
    bad_columns = cfht_sim.ccd_electronics(CONFIG, 1).bad_columns
    for col in bad_columns:
        assert np.all(corrected.mask[:, col] & MaskPlane.BAD)
        assert np.all(corrected.mask[:, col] & MaskPlane.INTRP)
        assert np.median(corrected.image[:, col]) == pytest.approx(sky, rel=0.02)


def test_variance_matches_empirical_sky_variance(calibs):
    bias, flat = calibs
    config = dataclasses.replace(CONFIG, cosmic_ray_rate_per_cm2_min=0.0)
    spec = exposures(config)[2][1]
    sim = cfht_sim.simulate_ccd(config, spec, 1, stars=star_at(config, spec, 1, 1.0, 1.0, 30.0))
    exposure = run_isr(to_raw(sim), bias=bias, flat=flat).exposure
    good = exposure.mask == 0
    empirical = np.var(exposure.image[good])
    assert empirical / np.mean(exposure.variance[good]) == pytest.approx(1.0, abs=0.04)
    # per amplifier (different read noise, gain)
    for cols in (slice(0, 160), slice(160, 320)):
        g = good[:, cols]
        ratio = np.var(exposure.image[:, cols][g]) / np.mean(exposure.variance[:, cols][g])
        assert ratio == pytest.approx(1.0, abs=0.06)


def test_bleed_trail_is_masked_sat():
    config = dataclasses.replace(CONFIG, cosmic_ray_rate_per_cm2_min=0.0)
    spec = exposures(config)[2][0]
    sim = cfht_sim.simulate_ccd(config, spec, 0, stars=star_at(config, spec, 0, 100.4, 240.2, 9.5))
    assert sim.saturated.sum() > 50
    rows = np.flatnonzero(sim.saturated[:, 100])
    fwhm_pix = spec.fwhm_arcsec / 0.187
    assert rows.max() - rows.min() > 8 * fwhm_pix  # a trail, not just the core
    result = run_isr(to_raw(sim))
    sat = (result.exposure.mask & MaskPlane.SAT) != 0
    assert np.all(sat[sim.saturated])
    # grown by one pixel, no more
    assert sat.sum() <= 3 * sim.saturated.sum()
    assert result.n_saturated == sat.sum()
    assert not np.any(result.exposure.mask & MaskPlane.CR & (sat * 0xFFFF))


def test_cosmic_rays_masked_but_not_star_cores(calibs):
    bias, flat = calibs
    config = dataclasses.replace(
        CONFIG, fwhm_min_arcsec=0.5, fwhm_max_arcsec=0.5, cosmic_ray_rate_per_cm2_min=200.0
    )
    spec = exposures(config)[2][0]
    rng = np.random.default_rng(3)
    n = 150
    x, y = rng.uniform(10, 310, n), rng.uniform(10, 470, n)
    mags = rng.uniform(15.5, 21.0, n)
    stars = star_at(config, spec, 1, x, y, 0.0)
    for band in config.filters:
        stars[f"{band}_mag"] = mags
    sim = cfht_sim.simulate_ccd(config, spec, 1, stars=stars)
    assert sim.cosmic_rays.sum() > 150
    result = run_isr(to_raw(sim), bias=bias, flat=flat)
    cr = (result.exposure.mask & MaskPlane.CR) != 0
    # every cosmic-ray pixel well above the noise is found
    deposit = result.exposure.image - np.median(result.exposure.image)
    strong = sim.cosmic_rays & (deposit > 10 * np.sqrt(result.exposure.variance))
    assert cr[strong].mean() > 0.97
    assert cr[sim.cosmic_rays].mean() > 0.85
    # few false positives away from the cosmic rays
    near = np.zeros_like(cr)
    ys, xs = np.nonzero(sim.cosmic_rays)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near[np.clip(ys + dy, 0, 479), np.clip(xs + dx, 0, 319)] = True
    assert (cr & ~near).sum() <= 3
    # no star core (3x3 about the centre) flagged, unless a cosmic ray hit it
    cores = 0
    for row in sim.stars:
        iy, ix = round(row["y"]), round(row["x"])
        core = (slice(iy - 1, iy + 2), slice(ix - 1, ix + 2))
        if sim.cosmic_rays[core].any() or sim.saturated[core].any():
            continue
        cores += 1
        assert not cr[core].any(), (row["x"], row["y"], row["flux_e"])
    assert cores > 100


def test_photometric_model_recovered_by_aperture_sums(calibs):
    bias, flat = calibs
    config = dataclasses.replace(CONFIG, cosmic_ray_rate_per_cm2_min=0.0)
    spec = exposures(config)[2][0]
    # a grid of stars clear of the dead columns of this CCD
    assert cfht_sim.ccd_electronics(config, 1).bad_columns == (172, 251)
    xs, ys = np.meshgrid(
        np.array([40.0, 110.0, 210.0, 290.0]) + 0.3, np.arange(50, 400, 110.0) + 0.7
    )
    stars = star_at(config, spec, 1, xs.ravel(), ys.ravel(), 18.0)
    sim = cfht_sim.simulate_ccd(config, spec, 1, stars=stars)
    exposure = run_isr(to_raw(sim), bias=bias, flat=flat).exposure
    median_flat = np.median(cfht_sim.flat_pattern(config, 1))
    sky = cfht_sim._sky_e(config, spec) * median_flat + config.dark_e_per_s * spec.exptime_s
    truth = cfht_sim.truth_table(config)
    zp = truth[(truth["visit"] == spec.visit) & (truth["ccd"] == 1)]["zp_mag"][0]
    radius = 5 * spec.fwhm_arcsec / 0.187
    yy, xx = np.mgrid[0:480, 0:320]
    mags = []
    for row in sim.stars:
        inside = np.hypot(xx - row["x"], yy - row["y"]) < radius
        mags.append(zp - 2.5 * np.log10(np.sum(exposure.image[inside] - sky)))
    assert len(mags) == 16
    residual = np.asarray(mags) - 18.0
    print("aperture magnitude - truth (mag):", np.round(residual, 4))
    assert np.median(residual) == pytest.approx(0.0, abs=0.004)


# ------------------------------------------------------------------------------------------
# Errors


def test_nan_amplifier_is_an_input_error():
    signal = np.full((30, 20), 100.0, dtype=np.float32)
    raw = handmade(signal, gains=(1.5, 2.0), levels=(1000.0, 1000.0), nan_amp="B")
    with pytest.raises(
        InputDataError, match=r"handmade.fits: amplifier B data has non-finite .* all"
    ):
        run_isr(raw)
    partial = handmade(signal, gains=(1.5, 2.0), levels=(1000.0, 1000.0))
    partial.data[3, 2] = np.nan
    with pytest.raises(InputDataError, match=r"amplifier A data .* in 1 of 300 pixels") as info:
        assemble_ccd(partial)
    assert info.value.metadata == {"amp": "A", "n_nonfinite": 1}


@pytest.mark.parametrize("key", ["EXPNUM", "GAINB", "DATASECA", "SATURATE", "CRVAL1"])
def test_missing_header_keyword_is_named(key):
    spec = exposures(CONFIG)[2][0]
    sim = cfht_sim.simulate_ccd(CONFIG, spec, 0, stars=star_at(CONFIG, spec, 0, 1.0, 1.0, 30.0))
    header = sim.header.copy()
    del header[key]
    with pytest.raises(InputDataError, match=rf"raw_1_0.fits: .*{key}"):
        raw_ccd_from_hdu(fits.PrimaryHDU(data=sim.raw, header=header), source="raw_1_0.fits")


def test_bad_header_values_and_shapes(calibs):
    bias, _ = calibs
    biases = exposures(CONFIG)[0]
    sim = cfht_sim.simulate_ccd(CONFIG, biases[0], 0)
    header = sim.header.copy()
    header["OBSTYPE"] = "dark"
    with pytest.raises(InputDataError, match="OBSTYPE='dark' is not one of"):
        raw_ccd_from_hdu(fits.PrimaryHDU(data=sim.raw, header=header), source="x.fits")
    header = sim.header.copy()
    header["GAINA"] = "fast"
    with pytest.raises(InputDataError, match="GAINA='fast' is not a number"):
        raw_ccd_from_hdu(fits.PrimaryHDU(data=sim.raw, header=header), source="x.fits")
    with pytest.raises(InputDataError, match="no 2-d image data"):
        raw_ccd_from_hdu(fits.PrimaryHDU(header=sim.header), source="x.fits")
    small = dataclasses.replace(CONFIG, ccd_ny=240)
    raw = to_raw(cfht_sim.simulate_ccd(small, exposures(small)[0][0], 0))
    with pytest.raises(InputDataError, match=r"sim.fits: bias shape \(480, 320\) differs"):
        run_isr(raw, bias=bias)


def test_raw_must_be_a_raw_ccd():
    with pytest.raises(TypeError, match=r"raw must be a RawCcd .* not ndarray"):
        run_isr(np.zeros((10, 10)))


def test_isr_config_validation():
    with pytest.raises(ValueError, match="overscan_method must be one of median_per_row, poly"):
        from_mapping(IsrConfig, {"overscan_method": "mean"})
    with pytest.raises(ValueError, match=r"cr_psf_fwhm_pix must be > 0\.5"):
        IsrConfig(cr_psf_fwhm_pix=0.5)
