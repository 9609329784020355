"""rules/fe55.smk run by Snakemake on ingested sensor exposures, simulated and real.

Inputs are never outputs: sensor exposures are written by `dcflow simulate` (or are a lab
camera's real frames), enter the registry through `dcflow ingest`, and no workflow rule
writes under the input root. The pipeline spec's Fe55 jobs are checked against
``snakemake -n`` and ``dcflow plan``, then run with their scripts and logs.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from dcflow.campaign.index import CampaignIndex
from dcflow.campaign.registry import Registry
from dcflow.config_schema import load_config
from dcflow.errors import ForeignInputError, InputMissingError
from dcflow.io import read_table
from dcflow.layout import Layout
from dcflow.orchestration.prepare import ingest_campaign, ingest_files, simulate_campaign
from dcflow.orchestration.snakemake_cli import run_snakemake, snakemake_dry_run_counts
from dcflow.pipeline.graph import JobGraph

DCFLOW = Path(sys.executable).parent / "dcflow"
ESIS1 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fe55-esis1"
PTC_REFERENCE = {"00": 2.529, "10": 2.508, "01": 2.530, "11": 2.512}
"""msfc-ccd's photon-transfer gains of the shared LED pair (ESIS1 README)."""

FE55 = {
    "n_amps": 4,
    "amp_nx": 160,
    "ny": 320,
    "prescan_cols": 50,
    "overscan_cols": 2,
    "sensors": [2],
    "exposures": 2,
    "events_per_amp": 450,
    "seed": 9,
}


def _write_config(tmp_path: Path, campaign: dict, **sections) -> Path:
    config = {
        "campaign": campaign,
        "layout": {"input_root": str(tmp_path / "input"), "output_root": str(tmp_path / "out")},
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _plan_counts(config_path: Path, cwd: Path) -> dict[str, int]:
    plan = subprocess.run(
        [str(DCFLOW), "plan", "--config", str(config_path), "--json", "--no-pictures"],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    return {k: v for k, v in json.loads(plan.stdout)["to_run_by_rule"].items() if v}


@pytest.mark.slow
def test_simulated_sensors_are_inputs_ingested_then_run_end_to_end(tmp_path):
    config_path = _write_config(tmp_path, {"name": "fe55only", "instrument": "fe55_sim"}, fe55=FE55)
    with pytest.raises(InputMissingError, match=r"no raw file under the input root matches"):
        ingest_campaign(config_path)  # nothing simulated yet: an empty ingest is an error
    written = simulate_campaign(config_path)
    assert len(written) == 2 * 4  # per exposure: raw, flat pair, bias pair, truth
    report = ingest_campaign(config_path)
    assert (report.n_added, report.n_known, report.rejected) == (6, 0, ())
    registry = Registry(Layout.from_config(load_config(config_path)).path("registry"))
    kinds = Counter(r.obstype for r in registry.records())
    assert kinds == {"fe55": 2, "sensor_flat": 2, "sensor_bias": 2}
    registry.close()

    dry = snakemake_dry_run_counts(config_path, workdir=tmp_path)
    graph = JobGraph(CampaignIndex.from_config(load_config(config_path)))
    planned = Counter(job.rule for job in graph.job_specs())
    assert dry == dict(planned) == _plan_counts(config_path, tmp_path)
    assert planned == {"fe55_gain": 2, "photon_transfer": 1, "fe55_summary": 1, "all": 1}
    inputs = _digests(tmp_path / "input")
    code = run_snakemake(
        config_path, profile="local", snakemake_args=["--cores", "2", "--quiet", "rules"],
        workdir=tmp_path,
    )  # fmt: skip
    assert code == 0
    assert _digests(tmp_path / "input") == inputs  # no rule writes under the input root
    out = tmp_path / "out"
    summary = read_table(out / "fe55/summary/fe55_summary_2.fits")
    truth = read_table(tmp_path / "input/fe55/truth/2/fe55_truth_2_0.fits")
    assert list(summary["amp"]) == list(truth["amp"]) == ["A", "B", "C", "D"]
    assert "gain_truth_e_per_adu" not in summary.colnames  # the summary reads no truth
    assert np.all(summary["n_exposures"] == 2)
    assert np.all(np.abs(summary["gain_e_per_adu"] / truth["gain_e_per_adu"] - 1) < 0.005)
    assert np.all(np.abs(summary["fe55_over_ptc"] - 1) < 0.015)
    assert (out / "fe55/plots/2/fe55_summary_2.png").read_bytes()[:4] == b"\x89PNG"
    for exposure in (0, 1):
        png = out / f"fe55/plots/2/fe55_hist_2_{exposure}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        log = (out / f"logs/fe55_gain/ccd=2_exposure={exposure}.log").read_text()
        assert "amp D: gain" in log
        assert (out / f"benchmarks/fe55_gain/ccd=2_exposure={exposure}.tsv").exists()


def test_simulate_refuses_to_overwrite_a_file_it_did_not_write(tmp_path):
    fe55 = {**FE55, "amp_nx": 64, "ny": 128, "events_per_amp": 50, "exposures": 1}
    config_path = _write_config(tmp_path, {"name": "foreign", "instrument": "fe55_sim"}, fe55=fe55)
    layout = Layout.from_config(load_config(config_path))
    real = Path(layout.path("fe55_raw", ccd=2, exposure=0))
    real.parent.mkdir(parents=True)
    fits.PrimaryHDU(np.zeros((4, 4), dtype=np.uint16)).writeto(real)
    before = real.read_bytes()
    with pytest.raises(ForeignInputError, match=rf"{re.escape(str(real))}: not written by dcflow"):
        simulate_campaign(config_path)
    assert real.read_bytes() == before
    assert not Path(layout.path("fe55_flat", ccd=2, exposure=0)).exists()
    cli = subprocess.run(
        [str(DCFLOW), "simulate", "--config", str(config_path)], capture_output=True, text=True
    )
    assert cli.returncode == 1 and f"{real}: not written by dcflow simulate" in cli.stderr
    # its own files, even damaged, are the simulator's to rewrite
    real.unlink()
    simulate_campaign(config_path)
    raw = Path(layout.path("fe55_raw", ccd=2, exposure=0))
    raw.write_bytes(b"SIMPLE  =  T")
    simulate_campaign(config_path)
    assert fits.getheader(raw)["OBSTYPE"] == "fe55"


@pytest.mark.slow
@pytest.mark.skipif(not ESIS1.exists(), reason=f"real ESIS1 frames absent from {ESIS1}")
def test_real_lab_frames_enter_through_ingest_and_survive_the_run(tmp_path):
    inputs = tmp_path / "input"
    for sub, names in (
        ("xray", ["ESIS1_00002.fit.gz"]),
        ("flat", ["led/ESIS1_04803.fit.gz", "led/ESIS1_04804.fit.gz"]),
        ("dark", ["led/ESIS1_04860.fit.gz", "led/ESIS1_04861.fit.gz"]),
    ):
        (inputs / sub).mkdir(parents=True)
        for name in names:
            shutil.copyfile(ESIS1 / name, inputs / sub / Path(name).name)
    config_path = _write_config(
        tmp_path,
        {"name": "esis1lab", "instrument": "esis1"},
        fe55={"camera": "esis1"},
        # a few bootstrap resamples, not the default 30 (test_fe55_real's subject): each
        # resample of the four taps costs ~1 s of CPU, in fe55_gain and again in fe55_summary
        fe55_gain={"kalpha_yield_e": 1602.3, "resamples": 6},
    )
    with pytest.raises(InputMissingError, match=r"no raw file under the input root"):
        ingest_campaign(config_path)  # the lab's names fit no simulated template
    for sub, obstype in (("xray", "fe55"), ("flat", "sensor_flat"), ("dark", "sensor_bias")):
        summary = ingest_files(config_path, [inputs / sub], workers=1, obstype=obstype)
        assert (summary.n_added, summary.rejected) == (1 if sub == "xray" else 2, ())
    before = _digests(inputs)

    dry = snakemake_dry_run_counts(config_path, workdir=tmp_path)
    assert dry == _plan_counts(config_path, tmp_path)
    assert dry == {"fe55_gain": 1, "photon_transfer": 1, "fe55_summary": 1, "all": 1}
    argv = [str(DCFLOW), "run", "--config", str(config_path), "--profile", "local"]
    run = subprocess.run(
        [*argv, "--", "--cores", "2"], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert _digests(inputs) == before  # the real frames survive the run byte for byte

    out = tmp_path / "out" / "fe55"
    # exposure and sensor come from the camera description (IMG_ISN, one CCD)
    gains = read_table(out / "gain/0/fe55_gain_0_2.fits")
    ptc = read_table(out / "ptc/fe55_ptc_0.fits")
    summary = read_table(out / "summary/fe55_summary_0.fits")
    assert list(summary["amp"]) == list(ptc["amp"]) == list(PTC_REFERENCE)
    reference = np.array([PTC_REFERENCE[a] for a in ptc["amp"]])
    assert np.all(np.abs(ptc["gain_e_per_adu"] / reference - 1) < 0.01)
    assert np.all(np.isfinite(gains["gain_e_per_adu"]))
    assert np.all(np.isfinite(summary["fe55_over_ptc"]))
    # a tap is either within 1.5 % of photon transfer or flagged with its reason
    close = np.abs(summary["fe55_over_ptc"] - 1) < 0.015
    assert np.all(close | ~summary["trusted"])
    assert all(v for v, t in zip(summary["verdict"], summary["trusted"], strict=True) if not t)
