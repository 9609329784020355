"""The spine end to end: simulate, ingest, Snakemake, and the outputs scored against truth."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from astropy.io import fits
from campaigns import run_workflow, write_campaign_config

from dcflow.config_schema import load_config
from dcflow.io import read_exposure, read_table
from dcflow.layout import Layout
from dcflow.orchestration.prepare import ingest_campaign, simulate_campaign

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign")
    config_path = write_campaign_config(root, skymap=True)
    simulate_campaign(config_path)
    report = ingest_campaign(config_path)
    assert report.rejected == ()
    code = run_workflow(config_path)
    return config_path, Layout.from_config(load_config(config_path)), code


def test_workflow_succeeds_and_writes_every_product(campaign):
    _, layout, code = campaign
    assert code == 0
    for visit in (1001, 1002, 1003, 1004):
        for ccd in (0, 1):
            calexp = read_exposure(layout.path("calexp", visit=visit, ccd=ccd))
            assert calexp.header["BUNIT"] == "electron"
            assert np.isfinite(calexp.header["ZP"]) and 0.4 < calexp.header["PSFFWHM"] < 1.6
            src = read_table(layout.path("src", visit=visit, ccd=ccd))
            assert len(src) > 50
    log = layout.path("log", rule="process_visit", tile="visit=1001")
    with open(log) as handle:
        assert "sources, zero point" in handle.read()
    bench = layout.path("benchmark", rule="process_visit", tile="visit=1001")
    assert os.path.getsize(bench) > 0


def test_outputs_match_truth(campaign):
    """Issue 2's science targets, over every visit of the campaign."""
    _, layout, code = campaign
    assert code == 0
    with open(layout.path("science_validation")) as handle:
        metrics = json.load(handle)["visits"]
    assert len(metrics) == 4
    n_acc = np.array([m["n_accuracy"] for m in metrics.values()])
    assert n_acc.sum() >= 60, "too few S/N > 100 stars to measure accuracy"
    astrom = np.sqrt(
        np.sum(n_acc * np.array([m["astrom_rms_mas"] for m in metrics.values()]) ** 2) / n_acc.sum()
    )
    photom = np.sqrt(
        np.sum(n_acc * np.array([m["mag_rms_mmag"] for m in metrics.values()]) ** 2) / n_acc.sum()
    )
    median = np.abs([m["mag_median_mmag"] for m in metrics.values()])
    assert astrom <= 20.0, f"astrometric rms {astrom:.1f} mas"
    assert photom <= 10.0, f"photometric rms {photom:.1f} mmag"
    assert median.max() <= 5.0, f"median magnitude offsets {median} mmag"
    for visit, m in metrics.items():
        assert m["completeness"] >= 0.95, f"visit {visit}: completeness {m['completeness']}"
        assert m["n_completeness"] >= 50
    assert os.path.getsize(layout.path("science_validation_plot")) > 20_000


def test_objects_and_forced_photometry_match_truth(campaign):
    """The sky-map half on the same campaign: Objects against truth, forced fluxes per visit."""
    _, layout, code = campaign
    assert code == 0
    truth = read_table(layout.path("truth", instrument="cfht_sim"))
    objects = read_table(layout.path("object", tract=0, patch="0,0"))
    assert len(objects) > 300 and len(set(objects["object_id"])) == len(objects)
    matched, sep = _match(objects, truth)
    snr = np.asarray(objects["r_psf_flux"] / objects["r_psf_flux_err"])
    bright = matched & (snr > 100)
    assert bright.sum() >= 30
    assert np.sqrt(np.mean(sep[bright] ** 2)) <= 20.0, "Object astrometric rms vs truth (mas)"
    assert matched.mean() >= 0.95
    # forced photometry: one row per Object on every CCD, fluxes where the Object lies on it
    for visit in (1003, 1004):
        rows = [read_table(layout.path("forced_src", visit=visit, ccd=c)) for c in (0, 1)]
        assert all(len(t) == len(objects) for t in rows)
        ratio = []
        for table in rows:
            ok = np.isfinite(np.asarray(table["psf_flux"]))
            x, y = np.asarray(table["x"]), np.asarray(table["y"])
            on_ccd = (x >= 10) & (x < 1024 - 10) & (y >= 10) & (y < 2048 - 10)
            far_off = (x < -20) | (x >= 1024 + 20) | (y < -20) | (y >= 2048 + 20)
            assert not ok[far_off].any(), "a flux for an Object off the CCD"
            assert ok[on_ccd].mean() >= 0.95, "Objects on the CCD without a forced flux"
            good = ok & (snr > 100) & matched
            flux = np.asarray(table["psf_flux"])[good]
            ratio.append(flux / np.asarray(objects["r_psf_flux"])[good])
        assert abs(np.median(np.concatenate(ratio)) - 1) < 0.02, "forced vs coadd flux scale"


def _match(table, truth):
    from astropy.coordinates import SkyCoord

    coords = SkyCoord(table["ra_deg"], table["dec_deg"], unit="deg")
    truth_coords = SkyCoord(truth["ra_deg"], truth["dec_deg"], unit="deg")
    _, sep, _ = coords.match_to_catalog_sky(truth_coords)
    sep_mas = sep.to_value("mas")
    return sep_mas < 500, sep_mas


def test_catalog_database_holds_every_tile_once(campaign):
    """load_visit_catalogs / load_patch_catalogs: rows per CCD and patch equal the FITS tables."""
    from dcflow.catalog_db.embedded import EmbeddedDatabase

    _, layout, code = campaign
    assert code == 0
    with EmbeddedDatabase(layout.path("catalog_db")) as db:
        for visit in (1001, 1002, 1003, 1004):
            for ccd in (0, 1):
                where = f"visit = {visit} AND ccd = {ccd}"
                for kind in ("src", "forced_src"):
                    path = layout.path(kind, visit=visit, ccd=ccd)
                    expected = len(read_table(path)) if os.path.exists(path) else 0
                    got = db.query(f"SELECT count(*) AS n FROM {kind} WHERE {where}")["n"][0]
                    assert got == expected, f"{kind} {where}"
            with open(layout.path("catalog_load_visit", visit=visit)) as handle:
                marker = json.load(handle)
            assert marker["rows"]["src"] == db.tile_rows("src")[f"visit={visit}"]
        objects = db.query("SELECT tract, patch, count(*) AS n FROM object GROUP BY tract, patch")
        assert len(objects) >= 1
        for tract, patch, n in zip(objects["tract"], objects["patch"], objects["n"], strict=True):
            assert n == len(read_table(layout.path("object", tract=int(tract), patch=patch)))
        assert db.query("SELECT count(*) AS n FROM src WHERE healpix < 0")["n"][0] == 0


def test_rerun_is_a_no_op(campaign):
    config_path, layout, _ = campaign
    before = os.path.getmtime(layout.path("calexp", visit=1001, ccd=0))
    assert run_workflow(config_path) == 0
    assert os.path.getmtime(layout.path("calexp", visit=1001, ccd=0)) == before


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


def _nan_amplifier(path):
    with fits.open(path) as hdus:
        header = hdus[0].header.copy()
        data = hdus[0].data.astype(np.float32)
    data[:, : data.shape[1] // 2] = np.nan
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)


def _drop_keyword(path, key):
    with fits.open(path, mode="update") as hdus:
        del hdus[0].header[key]


@pytest.fixture(scope="module")
def broken_campaign(tmp_path_factory):
    """g: visit 1001 truncated, 1002 good; r: 1003 NaN amplifier, 1004 missing GAINA;
    i: no flat exposures for ccd 1, so 1005 and 1006 cannot be processed."""
    root = tmp_path_factory.mktemp("broken")
    config_path = write_campaign_config(
        root,
        name="broken",
        ccd_nx=1024,
        ccd_ny=1024,
        filters=["g", "r", "i"],
        zero_point_1s_mag=[26.9, 26.6, 26.3],
        sky_mag_arcsec2=[22.0, 21.2, 20.5],
    )
    simulate_campaign(config_path)
    layout = Layout.from_config(load_config(config_path))
    raw = {
        (v, c): layout.path("raw", instrument="cfht_sim", visit=v, ccd=c)
        for v in range(1001, 1007)
        for c in (0, 1)
    }
    flats_i = [
        p
        for p in (
            layout.path("raw", instrument="cfht_sim", visit=v, ccd=1) for v in range(9000, 9100)
        )
        if os.path.exists(p)
        and fits.getheader(p)["OBSTYPE"] == "flat"
        and fits.getheader(p)["FILTER"] == "i"
    ]
    assert len(flats_i) == 2
    for path in flats_i:
        os.remove(path)
    assert ingest_campaign(config_path).rejected == ()
    _truncate(raw[1001, 0])
    _nan_amplifier(raw[1003, 1])
    _drop_keyword(raw[1004, 0], "GAINA")
    code = run_workflow(config_path)
    return layout, raw, code


def _log(layout, rule, tile):
    with open(layout.path("log", rule=rule, tile=tile)) as handle:
        return handle.read()


def test_bad_inputs_fail_their_tiles_only(broken_campaign):
    layout, raw, code = broken_campaign
    assert code != 0
    assert raw[1001, 0] in _log(layout, "process_visit", "visit=1001")
    assert "unreadable or truncated FITS file" in _log(layout, "process_visit", "visit=1001")
    log_1003 = _log(layout, "process_visit", "visit=1003")
    assert raw[1003, 1] in log_1003 and "amplifier A" in log_1003 and "NaN" in log_1003
    log_1004 = _log(layout, "process_visit", "visit=1004")
    assert raw[1004, 0] in log_1004 and "GAINA" in log_1004
    flat_log = _log(layout, "flat", "filter=i_ccd=1")
    assert layout.path("flat", filter="i", ccd=1) in flat_log
    assert "0 flat exposure(s)" in flat_log
    # the good visit of the campaign finished
    for ccd in (0, 1):
        assert read_exposure(layout.path("calexp", visit=1002, ccd=ccd)).header["ZP"] > 20
    # nothing partial: no output of a failed visit, no temporary file anywhere
    for visit in (1001, 1003, 1004, 1005, 1006):
        for ccd in (0, 1):
            assert not os.path.exists(layout.path("calexp", visit=visit, ccd=ccd))
            assert not os.path.exists(layout.path("src", visit=visit, ccd=ccd))
    leftovers = [
        os.path.join(d, f)
        for d, _, files in os.walk(layout.output_root)
        for f in files
        if f.endswith(".tmp")
    ]
    assert leftovers == []
