"""Unit tests of the shared core: data ids, layout, geometry, atomic io, config fields."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from dcflow.configs import check_fields, config_field, dataclass_schema, from_mapping
from dcflow.dataids import format_data_id, normalize_data_id
from dcflow.errors import CalibrationError, InputDataError, StageError
from dcflow.exposure import Exposure
from dcflow.geometry import DetectorLayout, parse_section
from dcflow.io import (
    read_exposure,
    read_exposure_set,
    read_fits,
    read_table,
    write_exposure,
    write_exposure_set,
    write_table,
)
from dcflow.layout import Layout


def test_data_id_normalised_and_formatted():
    assert normalize_data_id({"visit": "0042", "ccd": 3, "filter": "r"}) == {
        "visit": 42,
        "ccd": 3,
        "filter": "r",
    }
    assert format_data_id({"ccd": 3, "visit": 42}) == "visit=42_ccd=3"


@pytest.mark.parametrize(
    ("data_id", "message"),
    [
        ({"visit": "x1"}, "visit='x1' is not an integer"),
        ({"visit": -1}, "negative"),
        ({"filter": "r; rm -rf /"}, "unsafe in a path"),
        ({"colour": "red"}, "unknown data id key 'colour'"),
    ],
)
def test_data_id_rejects_bad_values(data_id, message):
    with pytest.raises(ValueError, match=message):
        normalize_data_id(data_id)


def test_layout_paths_and_patterns():
    layout = Layout(input_root="/in", output_root="/out")
    assert layout.path("calexp", visit=7, ccd=2) == "/out/calexp/7/calexp_7_2.fits"
    assert layout.path("raw", instrument="cfht_sim", visit=7, ccd=2).startswith("/in/cfht_sim/")
    assert layout.pattern("calexp", ccd=2) == "/out/calexp/{visit}/calexp_{visit}_2.fits"
    with pytest.raises(KeyError, match="needs data id key"):
        layout.path("calexp", visit=7)
    with pytest.raises(KeyError, match="unknown dataset type 'calexpp'"):
        layout.path("calexpp", visit=7, ccd=1)


def test_regular_layout_round_trips_through_header():
    layout = DetectorLayout.regular(n_amps=2, amp_nx=40, ny=30, overscan_cols=8, overscan_rows=4)
    assert layout.raw_shape == (34, 96)
    assert layout.assembled_shape == (30, 80)
    header = fits.Header()
    header.update(layout.header_cards())
    rebuilt = DetectorLayout.from_header(header, layout.raw_shape)
    assert rebuilt == layout
    # the second amplifier reads from the right: its overscan sits left of its data
    amp_b = layout.amps[1]
    assert amp_b.flip_x and amp_b.serial_overscan[1].stop == amp_b.data[1].start


def test_sensor_test_layout_with_prescan():
    layout = DetectorLayout.regular(n_amps=4, amp_nx=64, ny=50, prescan_cols=50, overscan_cols=2)
    assert layout.raw_shape == (50, 4 * (50 + 64 + 2))
    assert all(a.prescan is not None for a in layout.amps)
    assert parse_section(layout.amps[0].header_cards()["DATASECA"]) == (51, 114, 1, 50)


def test_layout_from_header_names_missing_keyword():
    header = fits.Header({"AMPNAMES": "A"})
    with pytest.raises(KeyError, match="DATASECA"):
        DetectorLayout.from_header(header, (10, 10))


def test_exposure_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    exposure = Exposure(
        image=rng.normal(size=(20, 30)).astype(np.float32),
        mask=np.arange(600, dtype=np.int32).reshape(20, 30),
        variance=np.ones((20, 30), np.float32),
        header=fits.Header({"FILTER": "r"}),
    )
    write_exposure(exposure, tmp_path / "e.fits")
    back = read_exposure(tmp_path / "e.fits")
    np.testing.assert_array_equal(back.image, exposure.image)
    np.testing.assert_array_equal(back.mask, exposure.mask)
    assert back.header["FILTER"] == "r"
    assert [p.name for p in tmp_path.iterdir()] == ["e.fits"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "e.fits").stat().st_mode & 0o777 == 0o666 & ~umask


def test_exposure_set_round_trip(tmp_path):
    """Members keep their pixels, headers and extra planes apart; an empty set is a file."""
    rng = np.random.default_rng(2)
    members = []
    for k in range(3):
        exposure = Exposure(
            image=rng.normal(size=(12, 17)).astype(np.float32),
            mask=np.full((12, 17), k, np.int32),
            variance=np.full((12, 17), 1.0 + k, np.float32),
            header=fits.Header({"ALTNIGHT": 60000 + k}),
        )
        members.append((exposure, {"COVERAGE": np.full((2, 3, 4), k / 4.0, np.float32)}))
    write_exposure_set(members, tmp_path / "set.fits")
    back = read_exposure_set(tmp_path / "set.fits")
    assert len(back) == 3
    for (exposure, planes), (got, got_planes) in zip(members, back, strict=True):
        np.testing.assert_array_equal(got.image, exposure.image)
        np.testing.assert_array_equal(got.mask, exposure.mask)
        np.testing.assert_array_equal(got.variance, exposure.variance)
        np.testing.assert_array_equal(got_planes["COVERAGE"], planes["COVERAGE"])
        assert got.header["ALTNIGHT"] == exposure.header["ALTNIGHT"]
    write_exposure_set([], tmp_path / "empty.fits")
    assert read_exposure_set(tmp_path / "empty.fits") == []
    with pytest.raises(InputDataError, match=r"e\.fits: missing header keyword\(s\) NMEMBERS"):
        write_exposure(members[0][0], tmp_path / "e.fits")
        read_exposure_set(tmp_path / "e.fits")
    primary = fits.PrimaryHDU()
    primary.header["NMEMBERS"] = 1
    image = fits.ImageHDU(np.zeros((2, 2), np.float32), name="IMAGE", ver=1)
    fits.HDUList([primary, image]).writeto(tmp_path / "half.fits")
    with pytest.raises(InputDataError, match="member 1 lacks HDU\\(s\\) MASK, VARIANCE"):
        read_exposure_set(tmp_path / "half.fits")


def test_truncated_fits_is_named(tmp_path):
    path = tmp_path / "t.fits"
    fits.PrimaryHDU(np.zeros((100, 100), np.float32)).writeto(path)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(InputDataError, match=r"t\.fits: unreadable or truncated"):
        read_fits(path)
    with pytest.raises(InputDataError, match="does not exist"):
        read_fits(tmp_path / "missing.fits")


def test_killed_writer_leaves_no_complete_looking_file(tmp_path):
    """SIGKILL in the middle of a large write: the final name never appears."""
    target = tmp_path / "big.fits"
    code = textwrap.dedent(
        f"""
        import numpy as np, os, signal
        from astropy.io import fits
        import dcflow.io as io
        original = fits.HDUList.writeto
        def slow(self, path, **kw):
            original(self, path, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        fits.HDUList.writeto = slow
        io.write_fits(fits.HDUList([fits.PrimaryHDU(np.zeros((500, 500)))]), {str(target)!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", code], check=False)
    assert result.returncode == -signal.SIGKILL
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.startswith(".big.fits.") and p.suffix == ".tmp" for p in leftovers)


def test_table_round_trip(tmp_path):
    table = Table({"a": [1, 2], "b": [0.5, 1.5]})
    write_table(table, tmp_path / "t.fits")
    assert list(read_table(tmp_path / "t.fits")["b"]) == [0.5, 1.5]


@dataclasses.dataclass(frozen=True, slots=True)
class _Demo:
    size: int = config_field(3, "Box size (pixels).", minimum=1, maximum=9)
    mode: str = config_field("a", "Mode.", choices={"a": "first", "b": "second"})
    radii: tuple[float, ...] = config_field((1.0, 2.0), "Radii (arcsec).", exclusive_minimum=0)

    def __post_init__(self):
        check_fields(self)


def test_config_fields_bounds_and_schema():
    with pytest.raises(ValueError, match=r"_Demo.size must be <= 9; got 10"):
        _Demo(size=10)
    with pytest.raises(ValueError, match=r"_Demo.mode must be one of a, b"):
        _Demo(mode="c")
    with pytest.raises(ValueError, match=r"_Demo.radii must be > 0"):
        _Demo(radii=(1.0, 0.0))
    with pytest.raises(ValueError, match="unknown key"):
        from_mapping(_Demo, {"sise": 3})
    assert from_mapping(_Demo, {"radii": [3.0]}).radii == (3.0,)
    schema = dataclass_schema(_Demo)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["size"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 9,
        "description": "Box size (pixels).",
        "default": 3,
    }
    assert schema["properties"]["mode"]["enum"] == ["a", "b"]
    assert schema["properties"]["radii"]["items"]["exclusiveMinimum"] == 0


@pytest.mark.parametrize("cls", [StageError, InputDataError, CalibrationError])
def test_stage_error_metadata_round_trips_through_json(cls):
    error = cls("too few matches", n_matched=3, fit_rms_mas=812.5, band="r")
    assert json.loads(json.dumps(error.metadata)) == error.metadata
    with pytest.raises(TypeError, match="metadata 'bad'"):
        cls("x", bad=[1])
