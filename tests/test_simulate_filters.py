"""`dcflow simulate` for any filter list: per-band settings derived, or a message in user keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from campaigns import write_campaign_config

from dcflow.instruments.cfht_sim import SimConfig

DCFLOW = Path(sys.executable).parent / "dcflow"
SMALL = {"n_ccds": 1, "ccd_nx": 512, "ccd_ny": 1024, "visits_per_filter": 2}


def _simulate(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DCFLOW), "simulate", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_per_filter_settings_are_derived_for_any_filter_list():
    assert SimConfig().zero_point_1s_mag == (26.9, 26.6)  # the defaults of before
    assert SimConfig().sky_mag_arcsec2 == (22.0, 21.2)
    config = SimConfig(filters=("i", "u", "r"))
    assert config.zero_point_1s_mag == (26.3, 25.6, 26.6)
    assert config.sky_mag_arcsec2 == (20.5, 22.7, 21.2)
    # a value the user gives wins
    assert SimConfig(filters=("r",), zero_point_1s_mag=(27.0,)).zero_point_1s_mag == (27.0,)


@pytest.mark.parametrize(("band", "zp_1s"), [("r", 26.6), ("i", 26.3)])
def test_simulate_one_filter_writes_frames_with_that_bands_zero_point(tmp_path, band, zp_1s):
    config = write_campaign_config(tmp_path, filters=[band], **SMALL)
    result = _simulate(config)
    assert result.returncode == 0, result.stderr
    raws = sorted((tmp_path / "input" / "cfht_sim" / "raw").rglob("raw_*.fits"))
    filters = [fits.getheader(p)["FILTER"] for p in raws]
    # 2 biases, 2 flats and 2 science visits of the one band
    assert sorted(filters) == sorted(["none", "none", band, band, band, band])
    visits = Table.read(tmp_path / "input" / "cfht_sim" / "truth.fits", hdu="VISITS")
    assert list(visits["filter"]) == [band, band]
    # zp_mag = zp_1s + 2.5 log10(exptime * transparency * median flat); transparency is drawn
    # in [0.85, 1] and the flat's median is < 1, so the 1 s zero point comes back slightly low
    one_second = np.asarray(visits["zp_mag"]) - 2.5 * np.log10(60.0)
    assert np.all(one_second <= zp_1s) and np.all(one_second > zp_1s - 0.35), one_second


def test_a_list_of_the_wrong_length_is_named_in_the_users_keys(tmp_path):
    config = write_campaign_config(tmp_path, filters=["r"], zero_point_1s_mag=[26.9, 26.6], **SMALL)
    result = _simulate(config)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("dcflow simulate: ")
    assert (
        "simulation.zero_point_1s_mag must give one value per filter of simulation.filters ['r']"
        in message
    )
    assert "got [26.9, 26.6]" in message and "leave simulation.zero_point_1s_mag out" in message
    assert "SimConfig" not in message
    text = yaml.safe_load(config.read_text())
    assert "sky_mag_arcsec2" not in text["simulation"]  # never named: the user did not write it
    assert "sky_mag_arcsec2" not in message
