"""The simulated MegaCam: determinism, raw contract, astrometry, catalogs, campaign writing."""

from __future__ import annotations

import dataclasses
import io as stdio
import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from dcflow.configs import from_mapping
from dcflow.geometry import DetectorLayout
from dcflow.instruments import cfht_sim
from dcflow.instruments.cfht_sim import SimConfig
from dcflow.layout import Layout
from dcflow.simulate import sim_config_from_campaign, write_simulated_campaign

SMALL = SimConfig(
    n_ccds=4,
    ccd_columns=2,
    ccd_nx=256,
    ccd_ny=384,
    overscan_rows=8,
    visits_per_filter=2,
    n_bias=2,
    n_flat=2,
    star_density_per_deg2=50000.0,
)


@pytest.fixture(scope="module")
def stars() -> Table:
    return cfht_sim.make_truth_catalog(SMALL)


def science(config: SimConfig) -> list[cfht_sim.ExposureSpec]:
    return [s for s in cfht_sim.campaign_exposures(config) if s.obstype == "object"]


def test_deterministic_from_seed(stars):
    spec = science(SMALL)[0]
    a = cfht_sim.simulate_ccd(SMALL, spec, 1, stars=stars)
    b = cfht_sim.simulate_ccd(SMALL, spec, 1, stars=stars)
    assert np.array_equal(a.raw, b.raw)
    assert a.header == b.header
    other = dataclasses.replace(SMALL, seed=SMALL.seed + 1)
    c = cfht_sim.simulate_ccd(other, science(other)[0], 1, stars=cfht_sim.make_truth_catalog(other))
    assert np.mean(a.raw != c.raw) > 0.5


def test_exposures_ids_and_ranges():
    specs = cfht_sim.campaign_exposures(SMALL)
    visits = [s.visit for s in specs]
    assert len(set(visits)) == len(visits) == 2 + 2 * 2 + 2 * 2
    sci = science(SMALL)
    assert [s.band for s in sci] == ["g", "g", "r", "r"]
    assert {s.obstype for s in specs if s.visit >= SMALL.first_calib_visit} == {"bias", "flat"}
    assert all(SMALL.fwhm_min_arcsec <= s.fwhm_arcsec <= SMALL.fwhm_max_arcsec for s in sci)
    # dithers are small but non-zero
    offsets = [
        np.hypot(
            (s.ra_deg - SMALL.ra_deg) * np.cos(np.radians(SMALL.dec_deg)), s.dec_deg - SMALL.dec_deg
        )
        * 3600
        for s in sci
    ]
    assert 0 < max(offsets) <= SMALL.dither_arcsec * np.sqrt(2)


def test_raw_contract_round_trip(stars):
    spec = science(SMALL)[0]
    hdus = cfht_sim.simulate_raw(SMALL, spec, 2, stars=stars)
    buffer = stdio.BytesIO()
    hdus.writeto(buffer)
    buffer.seek(0)
    with fits.open(buffer) as back:
        header, data = back[0].header, back[0].data
        assert header["BITPIX"] == 16 and header["BZERO"] == 32768
        assert data.dtype == np.uint16
        layout = DetectorLayout.from_header(header, data.shape)
    assert layout == cfht_sim.ccd_layout(SMALL)
    assert data.shape == (384 + 8, 256 + 2 * 32)
    assert layout.assembled_shape == (384, 256)
    assert [a.flip_x for a in layout.amps] == [False, True]
    for key in ("INSTRUME", "OBSTYPE", "EXPNUM", "CCDNUM", "FILTER", "EXPTIME", "MJD-OBS",
                "AIRMASS", "RA_DEG", "DEC_DEG", "SATURATE", "GAINA", "GAINB", "RDNOISEA",
                "RDNOISEB", "CD1_1", "CD2_2", "CRPIX1", "CRVAL1"):  # fmt: skip
        assert key in header, key
    assert (header["INSTRUME"], header["OBSTYPE"], header["EXPNUM"], header["CCDNUM"]) == (
        "cfht_sim", "object", spec.visit, 2,
    )  # fmt: skip
    assert 1.5 <= header["GAINA"] <= 2.1 and 3 <= header["RDNOISEB"] <= 7
    assert header["SATURATE"] == 65535


def test_header_wcs_matches_truth_without_errors():
    config = dataclasses.replace(SMALL, pointing_error_arcsec=0.0, distortion_pix=0.0)
    spec = science(config)[1]
    wcs = cfht_sim.header_wcs(config, spec, 3)
    x = np.array([0.0, 255.0, 17.0, 200.5])
    y = np.array([0.0, 383.0, 300.0, 10.25])
    ra, dec = wcs.all_pix2world(x, y, 0)
    ra_t, dec_t = cfht_sim.pixel_to_sky_true(config, spec, 3, x, y)
    sep_mas = np.hypot((ra - ra_t) * np.cos(np.radians(dec_t)), dec - dec_t) * 3.6e6
    assert sep_mas.max() < 1.0
    # East is to the left (-x), north up (+y), at 0.187"/pixel
    ra0, dec0 = cfht_sim.pixel_to_sky_true(config, spec, 3, 100.0, 100.0)
    ra1, dec1 = cfht_sim.pixel_to_sky_true(config, spec, 3, 101.0, 101.0)
    assert (ra1 - ra0) * np.cos(np.radians(dec0)) * 3600 == pytest.approx(-0.187, rel=1e-3)
    assert (dec1 - dec0) * 3600 == pytest.approx(0.187, rel=1e-3)
    xb, yb = cfht_sim.sky_to_pixel_true(config, spec, 3, ra_t, dec_t)
    assert np.allclose(xb, x, atol=1e-6) and np.allclose(yb, y, atol=1e-6)


def test_header_wcs_carries_pointing_error_and_omits_distortion():
    config = dataclasses.replace(SMALL, distortion_pix=0.0)
    for spec in science(config):
        ra, dec = cfht_sim.header_wcs(config, spec, 0).all_pix2world([100.0], [100.0], 0)
        ra_t, dec_t = cfht_sim.pixel_to_sky_true(config, spec, 0, 100.0, 100.0)
        sep = np.hypot((ra[0] - ra_t) * np.cos(np.radians(dec_t)), dec[0] - dec_t) * 3600
        assert sep <= config.pointing_error_arcsec * 1.001
    # Distortion: inverse round trip still exact, and the displacement is radial
    spec = science(SMALL)[0]
    ra, dec = cfht_sim.pixel_to_sky_true(SMALL, spec, 0, 5.0, 5.0)
    x, y = cfht_sim.sky_to_pixel_true(SMALL, spec, 0, ra, dec)
    assert abs(x - 5.0) < 1e-6 and abs(y - 5.0) < 1e-6
    flat = dataclasses.replace(SMALL, distortion_pix=0.0)
    xf, yf = cfht_sim.sky_to_pixel_true(flat, spec, 0, ra, dec)
    u0, v0 = cfht_sim.ccd_origin_pix(SMALL, 0)
    r = np.hypot(5.0 + u0, 5.0 + v0)
    assert np.hypot(xf - x, yf - y) == pytest.approx(
        SMALL.distortion_pix * (r / 1e4) ** 3, rel=1e-3
    )


def test_truth_catalog_counts_follow_power_law():
    stars = cfht_sim.make_truth_catalog(dataclasses.replace(SMALL, star_density_per_deg2=1e6))
    assert len(stars) > 10000
    mags = np.asarray(stars["r_mag"])
    assert mags.min() >= SMALL.mag_min and mags.max() <= SMALL.mag_max
    counts, edges = np.histogram(mags, bins=np.arange(18.0, 24.01, 1.0))
    slope = np.polyfit(0.5 * (edges[1:] + edges[:-1]), np.log10(counts), 1)[0]
    assert slope == pytest.approx(SMALL.count_slope, abs=0.02)
    assert set(stars.colnames) >= {"id", "ra_deg", "dec_deg", "g_mag", "r_mag"}


def test_reference_catalog_noise():
    config = dataclasses.replace(SMALL, star_density_per_deg2=1e6)
    truth = cfht_sim.make_truth_catalog(config)
    ref = cfht_sim.make_reference_catalog(config, truth)
    assert len(ref) > 1000
    matched = truth[np.searchsorted(truth["id"], ref["id"])]
    assert np.array_equal(matched["id"], ref["id"])
    cos = np.cos(np.radians(ref["dec_deg"]))
    dra = (ref["ra_deg"] - matched["ra_deg"]) * cos * 3.6e6
    ddec = (ref["dec_deg"] - matched["dec_deg"]) * 3.6e6
    for resid in (dra, ddec):
        assert 10.0 <= np.std(resid) <= 20.0
        assert np.std(resid) == pytest.approx(config.ref_pos_noise_mas, rel=0.1)
    for band in config.filters:
        dmag = ref[f"{band}_mag"] - matched[f"{band}_mag"]
        assert 0.01 <= np.std(dmag) <= 0.02
        assert np.all(ref[f"{band}_mag_err"] == config.ref_mag_noise)
        assert ref[f"{band}_mag"].max() <= config.ref_mag_max + 0.1


def test_psf_fwhm_varies_between_visits_but_little_across_a_ccd():
    config = SimConfig()  # full focal plane
    table = cfht_sim.truth_table(dataclasses.replace(config, ccd_nx=64, ccd_ny=144, ccd_gap_pix=3))
    assert table["fwhm_arcsec"].min() >= 0.5 and table["fwhm_arcsec"].max() <= 1.2 * 1.07
    spec = science(config)[0]
    u0, v0 = cfht_sim.ccd_origin_pix(config, 0)  # a corner CCD: the largest gradient
    corners = cfht_sim._fwhm_pix(config, spec, u0 + np.array([0, 2048]), v0 + np.array([0, 4612]))
    assert abs(corners[0] / corners[1] - 1) < 0.05


def test_truth_table_zero_point_model():
    table = cfht_sim.truth_table(SMALL)
    assert len(table) == 4 * 4
    row = table[0]
    spec = science(SMALL)[0]
    median = np.median(cfht_sim.flat_pattern(SMALL, int(row["ccd"])))
    expected = 26.9 + 2.5 * np.log10(spec.exptime_s * spec.transparency * median)
    assert row["zp_mag"] == pytest.approx(expected, abs=1e-6)
    assert row["visit"] == spec.visit and row["filter"] == "g"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"ccd_nx": 255}, "ccd_nx must be even"),
        ({"sky_mag_arcsec2": [22.0]}, "sky_mag_arcsec2 must give one value per filter"),
        ({"filters": ["g", "q"]}, "filters must be one of"),
        ({"first_calib_visit": 1002}, "overlap science visits"),
        ({"fwhm_min_arcsec": 1.5}, "fwhm_min_arcsec .* exceeds fwhm_max_arcsec"),
        ({"n_ccds": 37}, "n_ccds must be <= 36"),
        ({"no_such_key": 1}, "unknown key"),
    ],
)
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        from_mapping(SimConfig, changes)


def test_full_size_ccd_geometry():
    config = SimConfig(n_ccds=36, star_density_per_deg2=2000.0)
    bias = cfht_sim.campaign_exposures(config)[0]
    sim = cfht_sim.simulate_ccd(config, bias, 35)
    assert sim.raw.shape == (4612 + 16, 2 * (1024 + 32))
    layout = DetectorLayout.from_header(sim.header, sim.raw.shape)
    assert layout.assembled_shape == (4612, 2048)
    # 36 CCDs tile a 9 x 4 grid about the optical axis
    u0, v0 = cfht_sim.ccd_origin_pix(config, 0)
    u35, v35 = cfht_sim.ccd_origin_pix(config, 35)
    assert u0 == -u35 - 2048 and v0 == -v35 - 4612


def test_write_simulated_campaign_is_idempotent(tmp_path, caplog):
    config = SimConfig(
        n_ccds=2, ccd_nx=64, ccd_ny=96, visits_per_filter=1, n_bias=1, n_flat=1,
        filters=("r",), zero_point_1s_mag=(26.6,), sky_mag_arcsec2=(21.2,),
    )  # fmt: skip
    layout = Layout(input_root=str(tmp_path / "in"), output_root=str(tmp_path / "out"))
    with caplog.at_level(logging.INFO, logger="dcflow.simulate"):
        paths = write_simulated_campaign(config, layout)
    assert len(paths) == 2 + 3 * 2
    assert paths[0].endswith("cfht_sim/refcat.fits") and paths[1].endswith("cfht_sim/truth.fits")
    assert any("raw_1001_1.fits" in p for p in paths)
    stamps = {p: (tmp_path / p).stat().st_mtime_ns for p in paths}
    assert sum(r.message.startswith("visit") for r in caplog.records) == 3
    with fits.open(paths[1]) as truth:
        assert truth["STARS"].data.size > 0 and len(truth["VISITS"].data) == 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dcflow.simulate"):
        assert write_simulated_campaign(config, layout) == paths
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in paths} == stamps
    assert all(
        "0 CCD(s) written" in r.message for r in caplog.records if r.message.startswith("visit")
    )
    # A damaged file is rewritten, the others are left alone
    damaged, truncated = paths[-1], paths[-3]
    (tmp_path / damaged).write_bytes(b"SIMPLE  =  T")
    whole = (tmp_path / truncated).read_bytes()
    (tmp_path / truncated).write_bytes(whole[: len(whole) // 2])
    write_simulated_campaign(config, layout)
    for path in (damaged, truncated):
        with fits.open(path) as hdus:
            assert hdus[0].header["SIMHASH"] == cfht_sim.config_digest(config)
    with fits.open(truncated) as hdus:
        rewritten = hdus[0].data.copy()
    (tmp_path / "whole.fits").write_bytes(whole)
    with fits.open(tmp_path / "whole.fits") as hdus:
        assert np.array_equal(hdus[0].data, rewritten)
    assert (tmp_path / paths[-2]).stat().st_mtime_ns == stamps[paths[-2]]
    # Another seed rewrites every file
    write_simulated_campaign(dataclasses.replace(config, seed=7), layout)
    assert all((tmp_path / p).stat().st_mtime_ns != stamps[p] for p in paths)


def test_sim_config_from_campaign_section():
    config = sim_config_from_campaign(
        {
            "simulation": {
                "seed": 5,
                "filters": ["g"],
                "zero_point_1s_mag": [26.9],
                "sky_mag_arcsec2": [22.0],
            }
        }
    )
    assert config.seed == 5 and config.filters == ("g",)
    with pytest.raises(ValueError, match="unknown key"):
        sim_config_from_campaign({"simulation": {"sead": 5}})
