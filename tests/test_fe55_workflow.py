"""rules/fe55.smk run by Snakemake: simulate -> gain per exposure -> summary per sensor.

A sensor-test campaign (Fe55 exposures, no science visits) through the project's own
Snakefile: the pipeline spec's Fe55 jobs are checked against ``snakemake -n``, then run with
their scripts and logs.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import yaml

from dcflow.campaign.index import CampaignIndex
from dcflow.config_schema import load_config
from dcflow.io import read_table
from dcflow.orchestration.prepare import ingest_campaign
from dcflow.orchestration.snakemake_cli import run_snakemake, snakemake_dry_run_counts
from dcflow.pipeline.graph import JobGraph


@pytest.mark.slow
def test_fe55_rules_run_end_to_end(tmp_path):
    config = {
        "campaign": {"name": "fe55only", "instrument": "cfht_sim"},
        "layout": {"input_root": str(tmp_path / "input"), "output_root": str(tmp_path / "out")},
        "fe55": {
            "n_amps": 4,
            "amp_nx": 160,
            "ny": 320,
            "prescan_cols": 50,
            "overscan_cols": 2,
            "sensors": [2],
            "exposures": 2,
            "events_per_amp": 450,
            "seed": 9,
        },
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert ingest_campaign(config_path).n_added == 0  # a sensor-test campaign: no visits
    dry = snakemake_dry_run_counts(config_path, workdir=tmp_path)
    # the pipeline spec's Fe55 jobs are Snakemake's, and nothing else runs
    graph = JobGraph(CampaignIndex.from_config(load_config(config_path)))
    planned = Counter(job.rule for job in graph.job_specs())
    assert dry == dict(planned)
    assert planned == {
        "fe55_simulate": 2,
        "fe55_gain": 2,
        "photon_transfer": 1,
        "fe55_summary": 1,
        "all": 1,
    }
    code = run_snakemake(
        config_path, profile="local", snakemake_args=["--cores", "2", "--quiet", "rules"],
        workdir=tmp_path,
    )  # fmt: skip
    assert code == 0
    out = tmp_path / "out"
    summary = read_table(out / "fe55/summary/fe55_summary_2.fits")
    assert list(summary["amp"]) == ["A", "B", "C", "D"]
    assert np.all(summary["n_exposures"] == 2)
    assert np.all(np.abs(summary["gain_e_per_adu"] / summary["gain_truth_e_per_adu"] - 1) < 0.005)
    assert np.all(np.abs(summary["fe55_over_ptc"] - 1) < 0.015)
    assert (out / "fe55/ptc/fe55_ptc_2.fits").exists()
    for exposure in (0, 1):
        assert (tmp_path / f"input/fe55/raw/2/fe55_raw_2_{exposure}.fits").exists()
        png = out / f"fe55/plots/2/fe55_hist_2_{exposure}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        log = (out / f"logs/fe55_gain/ccd=2_exposure={exposure}.log").read_text()
        assert "amp D: gain" in log
        assert (out / f"benchmarks/fe55_gain/ccd=2_exposure={exposure}.tsv").exists()
