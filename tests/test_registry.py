"""The campaign registry: ingest from headers, queries, rejected files kept with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from dcflow.campaign.registry import Registry, ingest


def _raw(path, **cards):
    header = fits.Header(
        {
            "INSTRUME": "cfht_sim",
            "OBSTYPE": "object",
            "EXPNUM": 1,
            "CCDNUM": 0,
            "FILTER": "r",
            "EXPTIME": 30.0,
            "MJD-OBS": 60000.0,
        }
    )
    header.update(cards)
    for key in [k for k, v in cards.items() if v is None]:
        del header[key]
    fits.PrimaryHDU(np.zeros((4, 4), np.uint16), header=header).writeto(path)
    return str(path)


@pytest.fixture
def registry_path(tmp_path):
    paths = [
        _raw(tmp_path / f"v{visit}_c{ccd}.fits", EXPNUM=visit, CCDNUM=ccd, FILTER=band)
        for visit, band in ((10, "g"), (11, "r"))
        for ccd in (0, 1)
    ]
    paths += [
        _raw(tmp_path / f"bias{ccd}.fits", EXPNUM=1, CCDNUM=ccd, OBSTYPE="bias", FILTER="none")
        for ccd in (0, 1)
    ]
    paths.append(_raw(tmp_path / "flat_r0.fits", EXPNUM=2, CCDNUM=0, OBSTYPE="flat", FILTER="r"))
    paths.append(_raw(tmp_path / "nokey.fits", EXPNUM=None))
    paths.append(_raw(tmp_path / "evil.fits", FILTER="r;rm"))
    report = ingest(paths, tmp_path / "registry.sqlite3")
    assert report.n_added == 7
    assert sorted(p.rsplit("/", 1)[1] for p, _ in report.rejected) == ["evil.fits", "nokey.fits"]
    reasons = dict(report.rejected)
    assert "EXPNUM" in reasons[str(tmp_path / "nokey.fits")]
    assert "unsafe" in reasons[str(tmp_path / "evil.fits")]
    again = ingest(paths, tmp_path / "registry.sqlite3")
    assert (again.n_added, again.n_known) == (0, 7)
    return tmp_path / "registry.sqlite3"


def test_registry_queries(registry_path, tmp_path):
    registry = Registry(registry_path)
    assert registry.science_visits() == [(10, "g"), (11, "r")]
    assert registry.ccds() == [0, 1]
    assert registry.filters("flat") == ["r"]
    assert registry.visit_filter(11) == "r"
    assert registry.calib_paths("bias", 1) == [str(tmp_path / "bias1.fits")]
    assert registry.calib_paths("flat", 0, "r") == [str(tmp_path / "flat_r0.fits")]
    assert len(registry.rejected()) == 2
    with pytest.raises(KeyError, match="visit 99 is not in the registry"):
        registry.visit_filter(99)


def test_missing_registry_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `dcflow ingest` first"):
        Registry(tmp_path / "none.sqlite3")


def test_per_visit_queries_use_the_visit_index(registry_path):
    registry = Registry(registry_path)
    plan = registry._conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM raw WHERE visit = ? ORDER BY visit, ccd", (11,)
    ).fetchall()
    assert any("raw_by_visit" in str(row[-1]) for row in plan), [tuple(r) for r in plan]
    assert registry.raw_paths(11) == {
        0: str(registry_path.parent / "v11_c0.fits"),
        1: str(registry_path.parent / "v11_c1.fits"),
    }
