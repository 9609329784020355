"""rules/fe55.smk run by Snakemake: simulate -> gain per exposure -> summary per sensor.

The harness Snakefile below stands in for rules/common.smk: it defines the path helpers and
the input functions that rules/fe55.smk expects (the lines proposed for common.smk), so the
rules are exercised as Snakemake runs them, scripts and logs included, and the planner's
Fe55 job list (`dcflow.fe55_targets.fe55_jobs`) is checked against ``snakemake -n``.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from dcflow.fe55_targets import fe55_config, fe55_jobs
from dcflow.io import read_table
from dcflow.layout import Layout
from dcflow.plan import parse_dry_run_counts

REPO = Path(__file__).resolve().parents[1]

HARNESS = """\
from dcflow.fe55_targets import fe55_config, fe55_inputs, fe55_targets
from dcflow.layout import Layout

LAYOUT = Layout(input_root=config["input_root"], output_root=config["output_root"])
FE55 = fe55_config(config)


wildcard_constraints:
    ccd=r"\\d+",
    exposure=r"\\d+",


def path(dataset_type, **fixed):
    return LAYOUT.pattern(dataset_type, **fixed)


def log_path(rule, tile):
    return LAYOUT.pattern("log", rule=rule, tile=tile)


def benchmark_path(rule, tile):
    return LAYOUT.pattern("benchmark", rule=rule, tile=tile)


def stage_script(stage):
    return f"../scripts/{stage}.py"


def get_fe55_gains(wildcards):
    return fe55_inputs(FE55, LAYOUT, "fe55_gain", int(wildcards.ccd))


def get_fe55_truths(wildcards):
    return fe55_inputs(FE55, LAYOUT, "fe55_truth", int(wildcards.ccd))


def get_fe55_targets(wildcards):
    return fe55_targets(FE55, LAYOUT)


include: "{rules}"


rule all:
    input:
        get_fe55_targets,
"""


@pytest.mark.slow
def test_fe55_rules_run_end_to_end(tmp_path):
    config = {
        "input_root": str(tmp_path / "input"),
        "output_root": str(tmp_path / "out"),
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
        "fe55_gain": {},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "Snakefile").write_text(
        HARNESS.replace("{rules}", str(REPO / "rules" / "fe55.smk"))
    )
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--snakefile", "Snakefile",
               "--configfile", "config.yaml"]  # fmt: skip
    dry = subprocess.run(
        [*command, "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    # the planner's job list for Fe55 is Snakemake's
    layout = Layout(input_root=config["input_root"], output_root=config["output_root"])
    planned = Counter(job.rule for job in fe55_jobs(fe55_config(config), layout))
    assert parse_dry_run_counts(dry.stdout + dry.stderr) == {**planned, "all": 1}
    assert planned == {"fe55_simulate": 2, "fe55_gain": 2, "fe55_summary": 1}
    run = subprocess.run(
        [*command, "--quiet", "rules"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "out"
    summary = read_table(out / "fe55/summary/fe55_summary_2.fits")
    assert list(summary["amp"]) == ["A", "B", "C", "D"]
    assert np.all(summary["n_exposures"] == 2)
    assert np.all(np.abs(summary["gain_e_per_adu"] / summary["gain_truth_e_per_adu"] - 1) < 0.005)
    for exposure in (0, 1):
        assert (tmp_path / f"input/fe55/raw/2/fe55_raw_2_{exposure}.fits").exists()
        png = out / f"fe55/plots/2/fe55_hist_2_{exposure}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        log = (out / f"logs/fe55_gain/ccd=2_exposure={exposure}.log").read_text()
        assert "amp D: gain" in log
        assert (out / f"benchmarks/fe55_gain/ccd=2_exposure={exposure}.tsv").exists()
