"""Master bias and flat: recover the simulated patterns to their noise; clipping; errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.io import fits

from dcflow.configs import from_mapping
from dcflow.errors import InputDataError
from dcflow.exposure import MaskPlane
from dcflow.instruments import cfht_sim, raw_ccd_from_hdu
from dcflow.instruments.cfht_sim import SimConfig
from dcflow.stages.calibs import (
    CalibConfig,
    bias_from_exposure,
    calib_to_exposure,
    combine_bias,
    combine_flat,
    flat_from_exposure,
    sigma_clipped_mean,
)
from dcflow.stages.isr import assemble_ccd

CONFIG = SimConfig(
    n_ccds=1, ccd_nx=256, ccd_ny=400, overscan_rows=4, n_bias=5, n_flat=4, visits_per_filter=1
)


def assembled(config, obstype, band=None):
    specs = [
        s
        for s in cfht_sim.campaign_exposures(config)
        if s.obstype == obstype and (band is None or s.band == band)
    ]
    frames = []
    for spec in specs:
        sim = cfht_sim.simulate_ccd(config, spec, 0)
        raw = raw_ccd_from_hdu(fits.PrimaryHDU(data=sim.raw, header=sim.header))
        frames.append(assemble_ccd(raw).image)
    return frames


@pytest.fixture(scope="module")
def bias():
    return combine_bias(assembled(CONFIG, "bias"))


def true_bias_e(config):
    """The static bias structure in electrons on the assembled grid (columns x gain)."""
    elec = cfht_sim.ccd_electronics(config, 0)
    gains = np.where(np.arange(config.ccd_nx) < config.ccd_nx // 2, elec.gain_e_per_adu["A"],
                     elec.gain_e_per_adu["B"])  # fmt: skip
    return np.broadcast_to(elec.bias_columns_adu * gains, (config.ccd_ny, config.ccd_nx)), elec


def test_master_bias_recovers_column_structure_to_its_noise(bias):
    truth, elec = true_bias_e(CONFIG)
    residual = bias.image - truth
    assert abs(np.mean(residual)) < 0.05
    # Noise per amplifier: read noise / sqrt(n), plus the per-row overscan noise
    for cols, amp in ((slice(0, 128), "A"), (slice(128, 256), "B")):
        rms = np.std(residual[:, cols])
        expected = np.sqrt(np.mean(bias.variance[:, cols]))
        assert rms == pytest.approx(expected, rel=0.15)
        assert expected == pytest.approx(elec.read_noise_e[amp] / np.sqrt(5), rel=0.1)
    assert bias.n_frames == 5
    assert bias.noise_e == pytest.approx(np.mean(list(elec.read_noise_e.values())), rel=0.3)
    # the structure itself is well above the noise: the master matters
    assert np.std(truth) > 2 * np.std(residual)


def test_master_flat_recovers_pattern_and_dead_columns(bias):
    flat = combine_flat(assembled(CONFIG, "flat", "g"), bias=bias)
    truth = cfht_sim.flat_pattern(CONFIG, 0)
    truth = truth / np.median(truth)
    good = flat.mask == 0
    rms = np.std((flat.image - truth)[good])
    expected = np.sqrt(np.mean(flat.variance[good]))
    assert rms == pytest.approx(expected, rel=0.15)
    # flat level per frame 25000 e- x 4 frames: ~0.3 % per pixel
    assert 0.002 < rms < 0.005
    assert np.median(flat.image[good]) == pytest.approx(1.0, abs=1e-3)
    assert flat.level_e == pytest.approx(
        CONFIG.flat_level_e * np.median(cfht_sim.flat_pattern(CONFIG, 0)), rel=0.01
    )
    dead = cfht_sim.ccd_electronics(CONFIG, 0).bad_columns
    bad_columns = np.flatnonzero(np.all(flat.mask & MaskPlane.BAD, axis=0))
    assert tuple(bad_columns) == dead
    assert flat.n_bad == len(dead) * CONFIG.ccd_ny
    assert np.all(flat.image[:, list(dead)] == 1.0)


def test_clipping_rejects_a_cosmic_ray_in_one_frame():
    rng = np.random.default_rng(0)
    frames = [rng.normal(0.0, 5.0, (800, 40)).astype(np.float32) for _ in range(5)]
    frames[2][10, 10] += 5000.0
    master = combine_bias(frames)
    clean = np.mean([f[10, 10] for i, f in enumerate(frames) if i != 2])
    assert master.image[10, 10] == pytest.approx(clean, abs=1e-3)
    assert master.n_rejected >= 1
    _, count, sigma, _ = sigma_clipped_mean(np.stack(frames), clip_sigma=3.0, iterations=2)
    assert count[10, 10] == 4
    assert sigma == pytest.approx(np.full(40, 5.0), rel=0.15)


def test_errors_name_the_problem():
    frame = np.zeros((20, 10), dtype=np.float32)
    with pytest.raises(InputDataError, match=r"1 frame\(s\) given, at least min_frames=2"):
        combine_bias([frame])
    with pytest.raises(ValueError, match=r"frames\[1\] shape \(20, 11\) differs"):
        combine_bias([frame, np.zeros((20, 11), dtype=np.float32)])
    bad = frame.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputDataError, match=r"frames\[1\] holds non-finite values"):
        combine_bias([frame, bad])
    with pytest.raises(
        InputDataError, match=r"frames\[0\]: median flat level 0.0 e- is not positive"
    ):
        combine_flat([frame, frame])
    with pytest.raises(ValueError, match="must be 2-d"):
        combine_bias([np.zeros(5), np.zeros(5)])
    small = combine_bias([frame, frame])
    with pytest.raises(
        ValueError, match=r"bias shape \(20, 10\) differs from the flat frames' \(8, 8\)"
    ):
        combine_flat([np.ones((8, 8)), np.ones((8, 8))], bias=small)
    with pytest.raises(ValueError, match="clip_sigma must be > 0"):
        from_mapping(CalibConfig, {"clip_sigma": 0})


def test_single_frame_allowed_when_configured():
    config = CalibConfig(min_frames=1)
    frame = np.full((6, 8), 3.0, dtype=np.float32)
    assert np.all(combine_bias([frame], config=config).image == 3.0)
    flat = combine_flat([frame * 1000], config=dataclasses.replace(config))
    assert np.all(flat.image == 1.0) and flat.level_e == pytest.approx(3000.0)


def test_masters_round_trip_through_exposure_files(tmp_path, bias):
    from dcflow import io

    flat = combine_flat(assembled(CONFIG, "flat", "r"), bias=bias)
    header = fits.Header({"CCDNUM": 0, "FILTER": "r"})
    io.write_exposure(calib_to_exposure(bias, header=header), tmp_path / "bias.fits")
    io.write_exposure(calib_to_exposure(flat, header=header), tmp_path / "flat.fits")
    bias_back = bias_from_exposure(io.read_exposure(tmp_path / "bias.fits"))
    flat_back = flat_from_exposure(io.read_exposure(tmp_path / "flat.fits"))
    assert np.array_equal(bias_back.image, bias.image)
    assert np.array_equal(bias_back.variance, bias.variance)
    assert bias_back.noise_e == pytest.approx(bias.noise_e)
    assert np.array_equal(flat_back.mask, flat.mask) and flat_back.n_bad == flat.n_bad
    assert flat_back.level_e == pytest.approx(flat.level_e)
    with pytest.raises(InputDataError, match="expected a master bias, got CALTYPE='flat'"):
        bias_from_exposure(io.read_exposure(tmp_path / "flat.fits"))
