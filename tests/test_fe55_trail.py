"""The one-sided charge trail beyond the signal box: measured, and flagged when it biases the gain.

Deferred charge or transfer inefficiency leaves part of each event's charge in pixels read
after it, beyond a 5x5 box: the event sums miss it and the Fe55 gain comes out high by as
much, with a line as narrow as ever (no other check sees it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dcflow.instruments.fe55_sim import HARD_SENSOR, simulate_fe55_exposure
from dcflow.stages.fe55 import measure_fe55_gain
from dcflow.stages.xray_events import trail_bands

TRAIL_FRACTION = 0.06


def _trail_rows(raw: np.ndarray, amp, fraction: float) -> np.ndarray:
    """Move ``fraction`` of every imaging pixel's charge, in equal parts, into the 3rd to 7th
    pixels read after it along its row (the bias is flat along a row, so it is unchanged)."""
    out = raw.astype(float).copy()
    rows, cols = amp.data
    block = out[rows, cols][:, ::-1] if amp.flip_x else out[rows, cols]
    trailed = block * (1.0 - fraction)
    for shift in range(3, 8):
        trailed[:, shift:] += fraction / 5 * block[:, :-shift]
        trailed[:, :shift] += fraction / 5 * block[:, :shift]
    out[rows, cols] = trailed[:, ::-1] if amp.flip_x else trailed
    return out


@pytest.fixture(scope="module")
def sim():
    return simulate_fe55_exposure(dataclasses.replace(HARD_SENSOR, seed=3), ccd=0, exposure=0)


def test_trail_bands_measure_a_one_sided_trail_and_cancel_a_symmetric_cloud():
    image = np.zeros((40, 40))
    image[19:22, 19:22] = 10.0  # symmetric cloud around (20, 20)
    image[18:23, 25:28] = 2.0  # 30 ADU trailing along +x, 3-7 px from the peak
    trail_x, trail_y = trail_bands(
        image, np.array([20, 2]), np.array([20, 20]), box_half_pix=2, length_pix=5
    )
    assert trail_x[0] == pytest.approx(30.0)
    assert trail_y[0] == pytest.approx(0.0)
    assert np.isfinite(trail_x[1]) and np.isnan(trail_y[1])  # its y bands leave the image


def test_clean_sensor_has_no_trail_and_no_trail_verdict(sim):
    result = measure_fe55_gain(sim.raw, sim.layout)
    for amp in result.amps:
        for fraction, err in (
            (amp.trail_fraction_x, amp.trail_err_x),
            (amp.trail_fraction_y, amp.trail_err_y),
        ):
            assert abs(fraction) < 4 * err
            assert err < 0.005
        assert "charge trail" not in amp.verdict


def test_trail_is_measured_and_the_high_gain_it_causes_is_flagged(sim):
    amp = sim.layout.amps[1]
    raw = _trail_rows(sim.raw, amp, TRAIL_FRACTION)
    result = measure_fe55_gain(raw, sim.layout)
    trailed = result.amps[1]
    truth = float(sim.truth["gain_e_per_adu"][1])
    # the gain is high by about the charge lost, and the trail says how much, on the side read after
    assert trailed.gain_e_per_adu / truth - 1 > 0.5 * TRAIL_FRACTION
    sign = -1.0 if amp.flip_x else 1.0
    assert sign * trailed.trail_fraction_x == pytest.approx(
        TRAIL_FRACTION, abs=4 * trailed.trail_err_x + 0.01
    )
    assert "charge trail beyond the signal box along x" in trailed.verdict
    assert not trailed.trusted
    assert "charge trail" not in result.amps[0].verdict
