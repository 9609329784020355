"""Fe55 and photon-transfer gains on a simulator as hard as a real sensor.

2 x 2 mirrored taps, half the X-rays absorbed deep (diffuse, 40-100 % of their charge: the
partial-charge continuum), serial deferred charge, dead rows, hot pixels and cosmic rays.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dcflow.instruments.fe55_sim import (
    Fe55SimConfig,
    amp_gains,
    simulate_fe55_exposure,
    simulate_flat_pairs,
)
from dcflow.stages.fe55 import Fe55Config, measure_fe55_gain
from dcflow.stages.photon_transfer import measure_photon_transfer

HARD = Fe55SimConfig(
    amp_rows=2,
    n_amps=2,
    amp_nx=512,
    ny=1024,
    events_per_amp=1500,
    partial_charge_fraction=0.5,
    deferred_charge=0.002,
    dead_rows_per_amp=3,
    hot_pixels_per_amp=10,
    cosmic_rays_per_amp=5,
)
SEEDS = range(10)


@pytest.fixture(scope="module")
def runs():
    out = []
    for seed in SEEDS:
        sim = simulate_fe55_exposure(dataclasses.replace(HARD, seed=seed), ccd=0, exposure=0)
        out.append((sim, measure_fe55_gain(sim.raw, sim.layout).table()))
    return out


def test_gain_within_half_a_percent_over_ten_seeds_and_errors_cover_the_truth(runs):
    deviations, pulls = [], []
    for sim, table in runs:
        assert list(table["amp"]) == ["00", "10", "01", "11"]
        truth = np.asarray(sim.truth["gain_e_per_adu"])
        gain = np.asarray(table["gain_e_per_adu"])
        deviations.append(gain / truth - 1)
        pulls.append((gain - truth) / table["gain_err_e_per_adu"])
        assert np.all(table["trusted"]), list(table["verdict"])
    deviations, pulls = np.concatenate(deviations), np.concatenate(pulls)
    # measured: max 0.27 %, pulls rms 1.01 over 40 amplifiers (before the 7x7 isolation
    # square and the narrow-line start: 0.29 %, 1.05)
    assert np.max(np.abs(deviations)) < 0.005
    assert 0.7 < np.sqrt(np.mean(pulls**2)) < 1.4
    assert np.mean(np.abs(pulls) < 2) > 0.85


def test_the_partial_charge_continuum_is_there(runs):
    _, table = runs[0]
    # half the X-rays are diffuse: graded events are far fewer than candidates
    assert np.all(table["n_graded"] < 0.6 * table["n_candidates"])
    assert np.all(table["shelf_fraction"] >= 0)


def test_verdict_flags_a_wrong_yield_a_wrong_bias_and_too_few_events(runs):
    sim, _ = runs[0]
    # the K-alpha yield of a warm sensor: every gain 1.6 % high but the fit itself is fine;
    # only photon transfer catches it (summary test below)
    warm = measure_fe55_gain(sim.raw, sim.layout, config=Fe55Config(temperature_k=293.0))
    ratio = np.asarray(warm.table()["gain_e_per_adu"]) / sim.truth["gain_e_per_adu"]
    np.testing.assert_allclose(ratio, 1616.3 / 1591.2, rtol=0.005)
    # a line width far from the expected one (a box of 3x3 summing a 5x5 cloud's charge
    # with a wrong expectation) is flagged: ask for a tolerance no fit meets
    strict = measure_fe55_gain(sim.raw, sim.layout, config=Fe55Config(max_width_deviation=0.001))
    assert not any(a.trusted for a in strict.amps)
    assert all("x expected" in a.verdict for a in strict.amps)
    # too few events for a trusted gain: 150 X-rays per amplifier against a floor of 100
    # K-alpha events
    small = dataclasses.replace(HARD, events_per_amp=150)
    few = simulate_fe55_exposure(small, ccd=0, exposure=0)
    table = measure_fe55_gain(few.raw, few.layout, config=Fe55Config(min_kalpha_events=100)).table()
    assert table.meta["NUNTRUST"] > 0
    assert any("too few K-alpha events" in v for v in table["verdict"])


def test_photon_transfer_within_half_a_percent_at_several_levels():
    # without deferred charge: a trail correlates neighbours and lowers the difference
    # variance by ~2x its fraction (0.4 % at 0.002), which pixel covariances would recover
    layout = HARD.layout()
    gains = amp_gains(4, gain_e_per_adu=1.6, gain_spread=0.1, seed=1, ccd=0)
    pairs, bias_pair = simulate_flat_pairs(
        layout, gains, levels_e=[5000.0, 20000.0, 40000.0], seed=1
    )
    result = measure_photon_transfer(pairs, bias_pair, layout)
    table = result.table()
    deviation = np.asarray(table["gain_e_per_adu"]) / gains - 1
    assert np.all(np.abs(deviation) < 0.005), deviation
    assert np.all(np.abs(deviation) < 4 * table["gain_err_e_per_adu"] / table["gain_e_per_adu"])
    np.testing.assert_allclose(table["read_noise_e"], 5.0, rtol=0.05)
    assert np.all(table["trusted"]) and table.meta["NUNTRUST"] == 0
    assert np.all(table["n_pairs"] == 3)
