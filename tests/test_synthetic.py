"""The synthetic DC2013-scale campaign generator, the campaign index and vectorized overlaps."""

from __future__ import annotations

import gzip
import sqlite3

import numpy as np
import pytest

from dcflow.campaign.index import CampaignIndex
from dcflow.campaign.registry import Registry
from dcflow.campaign.skymap import (
    SkyMapConfig,
    make_tracts,
    patches_for_pointings,
    patches_for_pointings_loop,
    tract_wcs,
)
from dcflow.campaign.synthetic import (
    DC2013_RAW_FILES,
    SyntheticSpec,
    dc2013_spec,
    main,
    output_paths,
    touch_raws,
    tract_centres,
    write_campaign,
    write_inventory,
)
from dcflow.config_schema import load_config
from dcflow.configs import from_mapping

SMALL = {
    "n_visits": 60,
    "n_ccds": 4,
    "filters": ("g", "r", "i"),
    "n_bias": 3,
    "n_flat": 2,
    "n_pointings": 6,
    "pointing_spacing_deg": 0.12,
    "pixel_scale_arcsec": 1.0,
    "patch_inner_pixels": 200,
    "patch_border_pixels": 10,
    "n_patches": 3,
    "field_radius_deg": 0.08,
}


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 1.0])
def test_dc2013_spec_has_the_requested_number_of_raws(fraction):
    spec = dc2013_spec(fraction)
    assert abs(spec.n_raws - DC2013_RAW_FILES * fraction) <= 0.01 * DC2013_RAW_FILES * fraction
    assert spec.n_ccds == 36 and spec.filters == ("u", "g", "r", "i", "z")
    if fraction >= 0.01:  # DC2013 density: about 300 visits per pointing
        assert 250 <= spec.n_visits / spec.pointings <= 350


def test_full_scale_footprint_is_a_stripe_of_about_a_hundred_tracts():
    spec = dc2013_spec(1.0)
    ra, dec = tract_centres(spec)
    assert 100 <= len(ra) <= 400
    assert max(dec) - min(dec) < 5.0  # a strip along the equator
    assert spec.tract_side_deg == pytest.approx(1.654, abs=0.01)


def test_spec_validation_names_the_field():
    with pytest.raises(ValueError, match="n_ccds must be >= 1; got 0"):
        SyntheticSpec(n_visits=3, n_ccds=0)
    with pytest.raises(ValueError, match="first_calib_visit=10: calibration visits overlap"):
        SyntheticSpec(n_visits=30, first_visit=1, first_calib_visit=10)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 10\]; got 0"):
        dc2013_spec(0)


def test_registry_rows_every_visit_has_every_ccd(tmp_path):
    spec = SyntheticSpec(**SMALL)
    config_path = write_campaign(spec, tmp_path / "c")
    config = load_config(config_path)
    assert config["campaign"]["payload"] == "noop"
    assert not config["fe55"].get("sensors")  # no Fe55 stage unless asked
    conn = sqlite3.connect(tmp_path / "c" / "output" / "registry.sqlite3")
    count = dict(conn.execute("SELECT obstype, COUNT(*) FROM raw GROUP BY obstype").fetchall())
    assert count == {"object": 60 * 4, "bias": 3 * 4, "flat": 2 * 3 * 4}
    assert sum(count.values()) == spec.n_raws
    per_visit = conn.execute(
        "SELECT COUNT(DISTINCT ccd), COUNT(DISTINCT filter) FROM raw GROUP BY visit"
    ).fetchall()
    assert set(per_visit) == {(4, 1)}
    bands = conn.execute(
        "SELECT filter, COUNT(DISTINCT visit) FROM raw WHERE obstype = 'object' GROUP BY filter"
    ).fetchall()
    assert dict(bands) == {"g": 24, "r": 18, "i": 18}  # 10 epochs of 6 pointings, cycling gri
    conn.close()
    index = CampaignIndex.from_config(config)
    assert index.filters == ("g", "i", "r")
    assert index.ccds.tolist() == [0, 1, 2, 3]
    assert index.bias_raws.tolist() == [3] * 4 and (index.flat_raws == 2).all()
    # every visit lands on the sky map, and each patch is 3 x 3 in a tract
    assert index.forced_visit_mask.all()
    assert set(index.patch_x.tolist()) <= {0, 1, 2} and set(index.patch_y.tolist()) <= {0, 1, 2}


def test_index_overlaps_equal_the_campaign_targets(tmp_path):
    config = load_config(write_campaign(SyntheticSpec(**SMALL), tmp_path / "c"))
    index = CampaignIndex.from_config(config)
    registry = Registry(index.registry_path)
    pointings = [
        (r.visit, r.ra_deg, r.dec_deg) for r in registry.records(obstype="object") if r.ccd == 0
    ]
    registry.close()
    skymap = from_mapping(SkyMapConfig, config["skymap"])
    expected = patches_for_pointings(
        make_tracts(skymap), pointings, field_radius_deg=skymap.field_radius_deg
    )
    mine: dict[tuple[int, str], list[int]] = {}
    for v, p in zip(index.pair_visit.tolist(), index.pair_patch.tolist(), strict=True):
        mine.setdefault((int(index.patch_tract[p]), index.patch_name(p)), []).append(
            int(index.visits[v])
        )
    assert list(mine) == list(expected)  # same patch order
    assert mine == {k: list(v) for k, v in expected.items()}


def test_index_rejects_a_visit_without_every_ccd(tmp_path):
    config_path = write_campaign(SyntheticSpec(**SMALL), tmp_path / "c")
    registry = tmp_path / "c" / "output" / "registry.sqlite3"
    conn = sqlite3.connect(registry)
    with conn:
        conn.execute("DELETE FROM raw WHERE visit = 1000007 AND ccd IN (1, 3)")
    conn.close()
    with pytest.raises(KeyError, match=r"visit 1000007 has no raw for ccd\(s\) \[1, 3\] in .*"):
        CampaignIndex.from_config(load_config(config_path))


def test_vectorized_overlaps_equal_the_per_visit_loop_at_tract_edges():
    config = SkyMapConfig(
        tract_ra_deg=(359.6, 0.5, 0.3, 120.0),
        tract_dec_deg=(0.0, 0.4, 62.0, -88.0),
        pixel_scale_arcsec=2.0,
        patch_inner_pixels=300,
        patch_border_pixels=20,
        n_patches=4,
        field_radius_deg=0.3,
    )
    tracts = make_tracts(config)
    rng = np.random.default_rng(5)
    pointings = []
    for tract in tracts:
        size = tract.size_pixels
        grid = np.arange(-200, size + 201, 40) - 0.5  # patch edges, tract edges and corners
        px = np.concatenate(
            [rng.uniform(-500, size + 500, 150), grid, grid, np.full(grid.size, -0.5)]
        )
        py = np.concatenate([rng.uniform(-500, size + 500, 150), grid, grid[::-1], grid])
        ra, dec = tract_wcs(tract).all_pix2world(px, py, 0)
        pointings += [
            (len(pointings) + k, float(r), float(d))
            for k, (r, d) in enumerate(zip(ra, dec, strict=True))
        ]
    pointings.append((3, 10.0, 10.0))  # a repeated visit: its first pointing counts
    fast = patches_for_pointings(tracts, pointings, field_radius_deg=config.field_radius_deg)
    slow = patches_for_pointings_loop(tracts, pointings, field_radius_deg=config.field_radius_deg)
    assert fast == slow
    assert sum(len(v) for v in fast.values()) > 2000  # the test exercises many overlaps
    assert {t for t, _ in fast} == {0, 1, 2, 3}


def test_inventories_tree_and_list_hold_the_same_outputs(tmp_path):
    spec = SyntheticSpec(**SMALL, fe55_sensors=(1,))
    config_path = write_campaign(spec, tmp_path / "c")
    n_raws = touch_raws(config_path)
    assert n_raws == spec.n_raws + 2 * 3 + 2  # sensor 1's 2 Fe55, flat, bias files; catalogs
    index = CampaignIndex.from_config(load_config(config_path))
    half = [p for _, paths in output_paths(config_path, "half") for p in paths]
    n_half = index.n_visits // 2
    assert len(half) == (
        len(index.ccds) * (1 + len(index.filters))  # biases, flats
        + 2 * n_half * len(index.ccds)  # calexp, src
        + int((index.pair_visit < n_half).sum())  # warps
    )
    assert not any("Coadd" in p or "forced_src" in p or "object" in p for p in half)
    calibs = [p for _, paths in output_paths(config_path, "calibs") for p in paths]
    assert len(calibs) == len(index.ccds) * (1 + len(index.filters))  # biases, flats only
    assert set(calibs) < set(half)
    list_path = tmp_path / "all.txt.gz"
    n_all = write_inventory(config_path, "all", list_path=list_path)
    with gzip.open(list_path, "rt") as handle:
        listed = handle.read().split()
    assert len(listed) == len(set(listed)) == n_all
    n_coadds = int((index.patch_band_visits > 0).sum())
    expected = (
        len(index.ccds) * (1 + len(index.filters))
        + 3 * index.n_visits * len(index.ccds)  # calexp, src, forced_src
        + index.n_pairs
        + 2  # science validation json + png
        + 3 * n_coadds  # deepCoadd, templateCoadd, templateCoadd_otherNights
        + 2 * index.n_patches
        + 2 * index.n_visits * len(index.ccds)
        + index.n_visits  # deepDiff, diaSrc; plot
        + 3 * index.n_patches  # diaObject, diaSourceTable, diaTracklet
        + index.n_visits
        + index.n_patches  # catalog load markers
        + 2 * 3  # Fe55: 2 exposures x (gain, events, plot); their raws are inputs
        + 2  # the sensor's photon-transfer table and plot
        + 2  # and the sensor's summary table and picture
    )
    assert n_all == expected


def test_command_line_writes_a_campaign(tmp_path, capsys):
    assert (
        main(
            [
                "--fraction",
                "0.0005",
                "--n-ccds",
                "2",
                "--out",
                str(tmp_path / "c"),
                "--done",
                "half",
                "--inventory-list",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    spec = dc2013_spec(0.0005, n_ccds=2)
    assert f"registry: {spec.n_raws} raws" in out
    assert (tmp_path / "c" / "inventory_half.txt.gz").exists()
