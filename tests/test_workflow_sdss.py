"""The SDSS Stripe 82 campaign through the same Snakefile as the simulated camera."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dcflow.campaign.index import CampaignIndex
from dcflow.config_schema import load_config
from dcflow.instruments import sdss
from dcflow.io import read_exposure, read_fits
from dcflow.layout import Layout
from dcflow.orchestration.prepare import ingest_campaign
from dcflow.orchestration.snakemake_cli import run_snakemake
from dcflow.pipeline.graph import JobGraph

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sdss-stripe82"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"SDSS Stripe 82 data not found at {DATA}"),
]


@pytest.fixture(scope="module")
def sdss_campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdss")
    config = yaml.safe_load((REPO / "config" / "sdss-stripe82.yaml").read_text())
    config["layout"]["input_root"] = str(DATA)
    config["layout"]["output_root"] = str(root / "out")
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    report = ingest_campaign(config_path)
    assert (report.n_added, report.rejected) == (5, ())
    code = run_snakemake(
        config_path, profile="local", snakemake_args=["--cores", "2"], workdir=root
    )
    loaded = load_config(config_path)
    return JobGraph(CampaignIndex.from_config(loaded)), Layout.from_config(loaded), code


def test_sdss_frames_calibrated_like_sdss(sdss_campaign):
    graph, layout, code = sdss_campaign
    assert code == 0
    assert not graph.index.needs_calibs and not graph.index.has_truth
    assert {s.rule for s in graph.stages} == {"process_visit", "load_visit_catalogs"}
    visits = graph.registry.science_visits()
    assert sorted(band for _, band in visits) == ["g", "i", "r", "u", "z"]
    for visit, band in visits:
        calexp = read_exposure(layout.path("calexp", visit=visit, ccd=4))
        inputs = graph.input_paths("process_visit", graph.job_of("process_visit", {"visit": visit}))
        fpc = read_fits(inputs["raws"][0])
        calibration = sdss.frame_calibration(
            read_fits(inputs["psfields"][0]), read_fits(inputs["tsfields"][0]), band=band
        )
        expected = sdss.sdss_zero_point(fpc[0].header, calibration).tsfield_zp_mag
        tolerance = 0.05 if band == "u" else 0.025
        assert abs(calexp.header["ZP"] - expected) <= tolerance, (band, calexp.header["ZP"])
        astrom_limit_mas = 60 if band in "gri" else 100
        assert calexp.header["ASTRMS"] < astrom_limit_mas, (band, calexp.header["ASTRMS"])
