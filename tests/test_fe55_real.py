"""Fe55 and photon-transfer gains of a real camera (MSFC ESIS1 frames in ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from dcflow.stages.fe55 import Fe55Config, measure_fe55_gain, summarize_gains
from dcflow.stages.photon_transfer import measure_photon_transfer
from dcflow.stages.sensor_layout import esis1

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fe55-esis1"
PTC_REFERENCE = {"00": 2.529, "10": 2.508, "01": 2.530, "11": 2.512}

pytestmark = pytest.mark.skipif(
    not (DATA / "ESIS1_00002.fit.gz").exists(), reason=f"real ESIS1 frames absent from {DATA}"
)


@pytest.fixture(scope="module")
def frames():
    led = [fits.getdata(DATA / "led" / f"ESIS1_0{n}.fit.gz") for n in (4803, 4804, 4860, 4861)]
    return fits.getdata(DATA / "ESIS1_00002.fit.gz"), led


@pytest.fixture(scope="module")
def ptc(frames):
    _, led = frames
    return measure_photon_transfer([(led[0], led[1])], (led[2], led[3]), esis1().detector_layout())


def test_layout_matches_the_camera(frames):
    raw, _ = frames
    layout = esis1().detector_layout()
    assert raw.shape == layout.raw_shape == (1040, 2152)
    assert [a.name for a in layout.amps] == ["00", "10", "01", "11"]
    # right taps are mirrored: their prescan at the right edge, overscan next to the middle
    assert (
        layout.amps[1].prescan[1].stop == 2150 and layout.amps[1].serial_overscan[1].start == 1076
    )
    assert layout.amps[2].data[0] == slice(520, 1030)


def test_photon_transfer_within_half_a_percent_of_the_reference(ptc):
    table = ptc.table()
    ratio = np.array(
        [g / PTC_REFERENCE[a] for a, g in zip(table["amp"], table["gain_e_per_adu"], strict=True)]
    )
    # measured: 0.9997-1.0002
    assert np.all(np.abs(ratio - 1) < 0.005), ratio
    assert np.all(table["trusted"])
    np.testing.assert_allclose(table["read_noise_adu"], 4.1, atol=0.3)


def test_fe55_trusted_taps_agree_with_photon_transfer_and_the_rest_are_flagged(frames, ptc):
    raw, _ = frames
    result = measure_fe55_gain(
        raw, esis1().detector_layout(), config=Fe55Config(kalpha_yield_e=1602.3)
    )
    table = result.table()
    ptc_gain = {a.amp: a.gain_e_per_adu for a in ptc.amps}
    trusted = [a for a in result.amps if a.trusted]
    # measured: 00 trusted at 0.999 of PTC, 01 trusted at 0.972 (31 K-alpha events, +-1.1 %);
    # 10 (19 K-alpha events, width 0.67) and 11 (3 events) untrusted
    assert len(trusted) >= 1
    for amp in trusted:
        assert abs(amp.gain_e_per_adu / ptc_gain[amp.amp] - 1) < 0.035
        assert abs(amp.width_ratio - 1) < 0.3
    untrusted = [a for a in result.amps if not a.trusted]
    assert table.meta["NUNTRUST"] == len(untrusted) >= 1
    assert all(a.verdict != "ok" for a in untrusted)
    assert "11" in {a.amp for a in untrusted}
    summary = summarize_gains([table], ptc=ptc.table(), max_ptc_deviation=0.015)
    # the summary flags every tap whose Fe55 gain departs from photon transfer by > 1.5 %
    for row in summary:
        if abs(row["fe55_over_ptc"] - 1) > 0.015:
            assert not row["trusted"] and "Fe55/PTC" in row["verdict"]
    assert summary.meta["NUNTRUST"] >= table.meta["NUNTRUST"]
