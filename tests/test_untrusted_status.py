"""An untrusted Fe55 gain is never reported as a clean success by ``dcflow status`` / ``failed``.

The gain tables and sensor summaries carry a verdict (``trusted``/``verdict`` columns and the
``NUNTRUST`` header, `dcflow.stages.fe55`); the pipeline spec names the outputs that do, and
status and failed read them from disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from astropy.table import Table
from test_plan_analytic import make

from dcflow.campaign.index import CampaignIndex
from dcflow.campaign.synthetic import touch_raws, write_inventory
from dcflow.config_schema import load_config
from dcflow.io import write_table
from dcflow.pipeline.graph import JobGraph
from dcflow.stages.fe55 import summarize_gains
from dcflow.status import untrusted_results

DCFLOW = str(Path(sys.executable).parent / "dcflow")
AMPS = ["C00", "C01"]


def _gain_table(gains: list[float]) -> Table:
    """A gain table as `measure_fe55_gain` writes it, every amplifier trusted."""
    table = Table()
    table["amp"] = AMPS
    table["gain_e_per_adu"] = gains
    table["gain_err_e_per_adu"] = [0.002] * len(gains)
    table["peak_sigma_e"] = [60.0] * len(gains)
    table["n_events"] = [5000] * len(gains)
    table["trusted"] = [True] * len(gains)
    table["verdict"] = ["ok"] * len(gains)
    table.meta["NUNTRUST"] = 0
    return table


def _ptc_table(gains: list[float]) -> Table:
    return Table({"amp": AMPS, "gain_e_per_adu": gains, "gain_err_e_per_adu": [0.003] * 2})


def _rewrite(path: str, table: Table) -> None:
    """Write ``table`` over a placeholder output, keeping its modification time (so the
    plan's mtime trigger sees the campaign as it was)."""
    mtime = os.stat(path).st_mtime
    write_table(table, path)
    os.utime(path, (mtime, mtime))


def test_untrusted_results_reads_the_verdicts(tmp_path):
    ok, bad, garbage = tmp_path / "ok.fits", tmp_path / "bad.fits", tmp_path / "garbage.fits"
    write_table(_gain_table([1.6, 1.6]), ok)
    # Fe55 8 % above photon transfer on C01: the stage's own verdict marks it untrusted
    summary = summarize_gains([_gain_table([1.60, 1.728])], ptc=_ptc_table([1.6, 1.6]))
    assert list(summary["trusted"]) == [True, False]
    write_table(summary, bad)
    garbage.write_text("not FITS")
    outputs = [
        ("fe55_gain", {"ccd": 0, "exposure": 0}, str(ok), "NUNTRUST"),
        ("fe55_summary", {"ccd": 0}, str(bad), "NUNTRUST"),
        ("fe55_summary", {"ccd": 1}, str(tmp_path / "missing.fits"), "NUNTRUST"),
        ("fe55_gain", {"ccd": 1, "exposure": 0}, str(garbage), "NUNTRUST"),
    ]
    found = {u.path: u for u in untrusted_results(outputs)}
    assert sorted(found) == sorted([str(bad), str(garbage)])
    assert found[str(bad)].rule == "fe55_summary" and found[str(bad)].data_id == "ccd=0"
    assert found[str(bad)].n_untrusted == 1
    (reason,) = found[str(bad)].reasons
    assert reason.startswith("C01: Fe55/PTC 1.080")
    assert found[str(garbage)].reasons[0].startswith("unreadable: ")


def _dcflow(work: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DCFLOW, *argv, "--config", "config.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_status_and_failed_report_an_untrusted_gain(tmp_path):
    config_path = make(tmp_path, "2ccd-gr-fe55")
    config = yaml.safe_load(config_path.read_text())
    config["campaign"]["payload"] = "full"  # built-in stages: their outputs carry verdicts
    config_path.write_text(yaml.safe_dump(config))
    touch_raws(config_path)
    write_inventory(config_path, "all", tree=True)  # every output there (empty files)
    work = config_path.parent
    graph = JobGraph(CampaignIndex.from_config(load_config(config_path)))
    outputs = graph.verdict_outputs(load_config(config_path))
    assert {rule for rule, *_ in outputs} == {"fe55_gain", "fe55_summary"}
    good_summary = summarize_gains([_gain_table([1.6, 1.6])], ptc=_ptc_table([1.6, 1.6]))
    bad_summary = summarize_gains([_gain_table([1.6, 1.728])], ptc=_ptc_table([1.6, 1.6]))
    for rule, _, path, _ in outputs:
        _rewrite(path, _gain_table([1.6, 1.6]) if rule == "fe55_gain" else good_summary)

    # every verdict ok: a clean success
    proc = _dcflow(work, "status")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.rstrip().endswith("campaign complete")

    bad_path = next(path for rule, _, path, _ in outputs if rule == "fe55_summary")
    _rewrite(bad_path, bad_summary)
    proc = _dcflow(work, "status", "--json")
    assert proc.returncode == 5, proc.stdout + proc.stderr[-2000:]
    status = json.loads(proc.stdout)
    assert status["complete"] and status["n_failed"] == 0 and status["n_untrusted"] == 1
    (untrusted,) = status["untrusted"]
    assert untrusted["path"] == bad_path and untrusted["rule"] == "fe55_summary"
    assert untrusted["reasons"][0].startswith("C01: Fe55/PTC 1.080")
    proc = _dcflow(work, "status")
    assert proc.returncode == 5
    assert "campaign complete, but 1 output(s) untrusted" in proc.stdout
    assert f"UNTRUSTED fe55_summary {untrusted['data_id']}" in proc.stdout

    proc = _dcflow(work, "failed", "--json")
    assert proc.returncode == 5
    assert [(i["kind"], i["rule"], i["path"]) for i in json.loads(proc.stdout)] == [
        ("untrusted", "fe55_summary", bad_path)
    ]
    proc = _dcflow(work, "failed", "--stage", "fe55_gain")
    assert proc.returncode == 0 and "no failed tiles" in proc.stdout
