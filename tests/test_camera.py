"""Camera descriptions: schema, geometry, and raws read through them (real ESIS1 and SDSS files)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from scipy import ndimage

from dcflow.errors import InputDataError
from dcflow.instruments import cfht_sim
from dcflow.instruments.camera import (
    CAMERA_DIR,
    camera_from_mapping,
    camera_names,
    load_camera,
    read_amplifiers,
)
from dcflow.instruments.sdss import sdss_data_id
from dcflow.io import read_table
from dcflow.stages.sensor_layout import esis1

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ESIS = SHARED / "fe55-esis1"
SDSS = SHARED / "sdss-stripe82" / "6377" / "40"
PTC_REFERENCE = {"00": 2.529, "10": 2.508, "01": 2.530, "11": 2.512}

needs_esis = pytest.mark.skipif(
    not (ESIS / "ESIS1_00002.fit.gz").exists(), reason=f"real ESIS1 frames absent from {ESIS}"
)
needs_sdss = pytest.mark.skipif(not SDSS.exists(), reason=f"SDSS run 6377 absent from {SDSS}")


def test_every_shipped_description_loads():
    assert camera_names() == ["cfht_sim", "esis1", "lsst_e2v", "sdss"]
    shapes = {name: load_camera(name).detectors[0].raw_shape for name in camera_names()}
    assert shapes == {
        "cfht_sim": (4628, 2112),
        "esis1": (1040, 2152),
        "lsst_e2v": (4096, 4608),
        "sdss": (1489, 2048),
    }
    assert len(load_camera("lsst_e2v").detectors[0].amps) == 16
    assert load_camera("sdss").detector(6).raw_shape == (1489, 2048)


def test_schema_errors_name_the_file_and_the_entry(tmp_path):
    document = yaml.safe_load((CAMERA_DIR / "esis1.yaml").read_text())
    document["detectors"][0]["amplifier_defaults"]["prescan_colls"] = 50
    with pytest.raises(
        ValueError, match=r"bad\.yaml: .*detectors/0/amplifier_defaults.*prescan_colls"
    ):
        camera_from_mapping(document, source="bad.yaml")
    document = yaml.safe_load((CAMERA_DIR / "esis1.yaml").read_text())
    document["detectors"][0]["amplifiers"][1]["position"] = [0, 0]
    with pytest.raises(ValueError, match="share a grid position"):
        camera_from_mapping(document, source="bad.yaml")
    document = yaml.safe_load((CAMERA_DIR / "esis1.yaml").read_text())
    document["detectors"][0]["amplifier_defaults"]["prescan_trim"] = [25, 25]
    with pytest.raises(ValueError, match=r"amplifier 00: prescan_trim \[25, 25\] leaves none"):
        camera_from_mapping(document, source="bad.yaml")
    with pytest.raises(FileNotFoundError, match="shipped: cfht_sim, esis1, lsst_e2v, sdss"):
        load_camera("nosuchcam")


def test_descriptions_reproduce_the_code_built_layouts():
    assert load_camera("esis1").detector(0).detector_layout() == esis1().detector_layout()
    sim = cfht_sim.ccd_layout(cfht_sim.SimConfig())
    assert load_camera("cfht_sim").detector(35).detector_layout() == sim


# --------------------------------------------------------------------------------------------
# LSST-style 16-amplifier sensor, simulated: each amplifier gets its own bias and a ramp in
# readout coordinates, and the raw is built here by hand (bottom row as read, top row mirrored
# in y) so the description is checked against an independent construction.


def _lsst_raw(rng):
    rows, pre, data_cols, over, par = 2048, 10, 512, 54, 46
    nx = pre + data_cols + over
    raw = np.zeros((2 * rows, 8 * nx), dtype=np.float32)
    truth = {}
    for iy in range(2):
        for ix in range(8):
            name = f"C{iy}{ix}"
            bias = 1000.0 + 37.0 * (8 * iy + ix)
            r, c = np.mgrid[0:rows, 0:nx].astype(np.float32)
            block = np.full((rows, nx), bias, dtype=np.float32)
            signal = 5.0 * (8 * iy + ix) + 0.01 * r + 0.1 * (c - pre)
            live = (r < rows - par) & (c >= pre) & (c < pre + data_cols)
            block[live] += signal[live]
            # deferred charge: the first serial overscan column holds 1 % of the last data column
            block[: rows - par, pre + data_cols] += 0.01 * signal[: rows - par, pre + data_cols - 1]
            block += rng.normal(0.0, 0.5, block.shape).astype(np.float32)
            truth[name] = (bias, signal[: rows - par, pre : pre + data_cols])
            stored = block[::-1, :] if iy == 1 else block
            raw[iy * rows : (iy + 1) * rows, ix * nx : (ix + 1) * nx] = stored
    return raw, truth


def test_lsst_sensor_amplifiers_come_back_in_readout_order():
    raw, truth = _lsst_raw(np.random.default_rng(5))
    grid = load_camera("lsst_e2v").detector(94)
    amps = read_amplifiers(raw, grid)
    assert list(amps) == [f"C{iy}{ix}" for iy in range(2) for ix in range(8)]
    for name, amp in amps.items():
        bias, signal = truth[name]
        assert amp.data.shape == (2002, 512)
        assert amp.prescan.shape == (2002, 10) and amp.parallel_overscan.shape == (46, 512)
        assert abs(np.median(amp.prescan) - bias) < 0.05
        assert abs(np.median(amp.parallel_overscan) - bias) < 0.05
        # the ramp grows along readout rows and columns in every amplifier: residual = noise
        residual = amp.data - bias - signal
        assert abs(residual.mean()) < 0.01 and 0.45 < residual.std() < 0.55
        # deferred charge trails into the first overscan column read, not the last
        trail = np.median(amp.serial_overscan[:, 0]) - bias
        assert trail == pytest.approx(0.01 * np.median(signal[:, -1]), abs=0.05)
        assert abs(np.median(amp.serial_overscan[:, -1]) - bias) < 0.05
    layout = grid.detector_layout()
    assembled = np.zeros(layout.assembled_shape, dtype=np.float32)
    for amp in layout.amps:
        assembled[amp.assembled] = raw[amp.data] - truth[amp.name][0]
    # the top half is mirrored in y: its first row read is the top row of the assembled CCD
    np.testing.assert_allclose(assembled[-1, 512:1024], truth["C11"][1][0], atol=3)
    np.testing.assert_allclose(assembled[0, 512:1024], truth["C01"][1][0], atol=3)
    with pytest.raises(ValueError, match=r"shape \(ny, nx\)=\(4096, 4608\)"):
        read_amplifiers(raw[:, :-1], grid)


# --------------------------------------------------------------------------------------------
# Real ESIS1 frames read through their description


@pytest.fixture(scope="module")
def esis_frames():
    names = ["ESIS1_00002.fit.gz", "led/ESIS1_04803.fit.gz", "led/ESIS1_04860.fit.gz"]
    return {n: fits.getdata(ESIS / n).astype(np.float64) for n in names}


@needs_esis
def test_esis1_bias_per_tap_is_the_prescan_median(esis_frames):
    grid = load_camera("esis1").detector(0)
    # direct medians of the 50 prescan columns, from the README: left taps' prescan at the
    # left edge, right taps' at the right edge; rows 0-519 bottom, 520-1039 top
    direct = {
        "00": (slice(0, 520), slice(0, 50)),
        "10": (slice(0, 520), slice(2102, 2152)),
        "01": (slice(520, 1040), slice(0, 50)),
        "11": (slice(520, 1040), slice(2102, 2152)),
    }
    for raw in esis_frames.values():
        amps = read_amplifiers(raw, grid)
        levels = {n: float(np.median(a.prescan)) for n, a in amps.items()}
        for name, region in direct.items():
            # measured: differences 0-1 DN; levels 3447-3807 DN
            assert abs(levels[name] - np.median(raw[region])) <= 1.0, (name, levels)
        assert min(levels.values()) > 3400 and max(levels.values()) < 3900
        assert max(levels.values()) - min(levels.values()) > 100  # different per tap


@needs_esis
def test_esis1_taps_are_oriented_in_readout_order(esis_frames):
    grid = load_camera("esis1").detector(0)
    for raw in esis_frames.values():
        for name, amp in read_amplifiers(raw, grid).items():
            bias = np.median(amp.prescan)
            first_read = np.median(amp.block[10:, 0]) - bias
            last_read = np.median(amp.block[10:, 49]) - bias
            # measured: the first pixel read in a row sits 13-24 DN high in every tap
            assert 10 < first_read < 30, (name, first_read)
            assert abs(last_read) < 3, (name, last_read)
    # LED flat: the first rows read, next to the serial register, are not live
    for name, amp in read_amplifiers(esis_frames["led/ESIS1_04803.fit.gz"], grid).items():
        signal = np.median(amp.block[:, 50:1074], axis=1) - np.median(amp.prescan)
        # measured: rows 0-6 hold 0.36-0.39 of rows 10-12 in every tap
        assert np.max(signal[:7]) < 0.5 * np.min(signal[10:13]), (name, signal[:13])
        assert np.min(np.median(amp.data, axis=1) - np.median(amp.prescan)) > 0.8 * np.min(
            signal[10:13]
        )


@needs_esis
def test_esis1_fe55_events_have_the_same_statistics_in_every_tap(esis_frames):
    grid = load_camera("esis1").detector(0)
    modes, fractions = {}, {}
    for name, amp in read_amplifiers(esis_frames["ESIS1_00002.fit.gz"], grid).items():
        bias = np.median(amp.prescan)
        image = amp.data - bias
        peaks = (image == ndimage.maximum_filter(image, 5)) & (image > 100)
        peaks[:2] = peaks[-2:] = False
        peaks[:, :2] = peaks[:, -2:] = False
        r, c = np.nonzero(peaks)
        sums = (ndimage.uniform_filter(image, 3) * 9)[r, c]
        counts, edges = np.histogram(sums, bins=np.arange(400, 900, 10))
        modes[name] = edges[np.argmax(counts)] + 5
        k_alpha = np.abs(sums - modes[name]) < 40
        fractions[name] = float(np.median(image[r, c][k_alpha] / sums[k_alpha]))
        assert len(r) > 300 and k_alpha.sum() > 30
        assert np.sum(amp.prescan - bias > 100) == 0  # no X-ray lands in the prescan
    mean = np.mean(list(modes.values()))
    # measured: K-alpha 3x3 sums 565-595 DN, brightest pixel 0.51-0.58 of the sum
    for name in modes:
        assert abs(modes[name] / mean - 1) < 0.05, modes
        assert 0.45 < fractions[name] < 0.65, fractions


@needs_esis
def test_fe55_gain_script_reads_esis1_through_its_description(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "fe55_gain", Path(__file__).resolve().parents[1] / "scripts" / "fe55_gain.py"
    )
    gain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gain)
    raw = tmp_path / "ESIS1_00002.fits"
    with fits.open(ESIS / "ESIS1_00002.fit.gz") as hdus:
        hdus.writeto(raw)
    kwargs = {
        "table_path": str(tmp_path / "g.fits"),
        "events_path": str(tmp_path / "e.fits"),
        "plot_path": str(tmp_path / "g.png"),
    }
    with pytest.raises(InputDataError, match=r"ESIS1_00002\.fits: missing header keyword"):
        gain.main(raw_path=str(raw), fe55={}, analysis={}, **kwargs)
    # the campaign's fe55 section names the camera (the workflow's params); a few bootstrap
    # resamples, not the default 30: their statistics are test_fe55_real's subject, and each
    # resample of the four taps costs ~1 s of CPU
    analysis = {"kalpha_yield_e": 1602.3, "resamples": 6}
    gain.main(raw_path=str(raw), fe55={"camera": "esis1"}, analysis=analysis, **kwargs)
    table = read_table(kwargs["table_path"])
    assert list(table["amp"]) == ["00", "10", "01", "11"]
    trusted = [row for row in table if row["trusted"]]
    assert trusted
    for row in trusted:
        # measured: tap 00 at 0.999 and 01 at 0.972 of the photon-transfer gain
        assert abs(row["gain_e_per_adu"] / PTC_REFERENCE[row["amp"]] - 1) < 0.035
    with pytest.raises(InputDataError, match=r"raw shape .* but camera lsst_e2v gives"):
        gain.main(raw_path=str(raw), fe55={}, analysis={}, camera="lsst_e2v", **kwargs)


# --------------------------------------------------------------------------------------------
# SDSS data ids and companions from the description, on the real run 6377 headers


@needs_sdss
def test_sdss_data_ids_from_the_description_match_the_instrument():
    camera = load_camera("sdss")
    for band in "ugriz":
        path = SDSS / "corr" / "4" / f"fpC-006377-{band}4-0399.fit.gz"
        data_id, metadata = camera.read_data_id(fits.getheader(path), str(path))
        expected = sdss_data_id(6377, 4, 399, band)
        assert {k: data_id[k] for k in expected} == expected
        assert (data_id["run"], data_id["rerun"], data_id["camcol"], data_id["field"]) == (
            6377,
            40,
            4,
            399,
        )
        assert metadata["exptime"] == pytest.approx(53.907456)
        assert 53998 < metadata["mjd"] < 53999  # 2006-09-20
        for kind, folder in (("fpM", "objcs"), ("psField", "objcs"), ("tsField", "calibChunks")):
            companion = SDSS / folder / "4" / camera.companion_name(kind, data_id)
            assert companion.exists(), companion
            assert camera.companion_mismatches(kind, data_id, fits.getheader(companion)) == []
    header = fits.getheader(SDSS / "objcs" / "4" / "psField-006377-4-0399.fit")
    header["RUN"] = 6378
    assert camera.companion_mismatches("psField", data_id, header) == ["RUN=6378 (raw run=6377)"]
    fpc = fits.getheader(SDSS / "corr" / "4" / "fpC-006377-r4-0399.fit.gz")
    fpc["RUN"] = 6378
    with pytest.raises(ValueError, match="RUN gives run=6378 but the file name gives 6377"):
        camera.read_data_id(fpc, "x/40/corr/4/fpC-006377-r4-0399.fit.gz")
    del fpc["CAMCOL"]
    with pytest.raises(ValueError, match="missing header keyword CAMCOL"):
        camera.read_data_id(fpc, "x/40/corr/4/fpC-006378-r4-0399.fit.gz")
