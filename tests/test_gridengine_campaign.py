"""A small simulated campaign through profiles/sge gives the same catalogs as the local run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from campaigns import write_campaign_config
from test_pipeline import HOSTILE, hostile_campaign

from dcflow.campaign.index import CampaignIndex
from dcflow.config_schema import load_config
from dcflow.layout import Layout
from dcflow.orchestration.plan_status import failed_campaign, status_campaign
from dcflow.orchestration.prepare import ingest_campaign, simulate_campaign
from dcflow.orchestration.run import run_campaign
from dcflow.orchestration.snakemake_cli import run_snakemake
from dcflow.pipeline.graph import JobGraph
from snakemake_executor_plugin_gridengine.reattach import SubmissionLedger

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = Path(os.environ.get("DCFLOW_RUN_DIR", REPO / "run")) / "gridengine" / "env.sh"

pytestmark = [pytest.mark.gridengine, pytest.mark.root, pytest.mark.slow]


def _cluster_env() -> dict[str, str] | None:
    """The cluster's client environment from run/gridengine/env.sh, or None without a cluster."""
    if not ENV_FILE.exists() or shutil.which("qstat") is None:
        return None
    env = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value
    probe = subprocess.run(
        ["qstat", "-g", "c"], capture_output=True, env={**os.environ, **env}, timeout=30
    )
    return env if probe.returncode == 0 else None


CLUSTER_ENV = _cluster_env()


def _tables(path: Path) -> dict[str, np.ndarray]:
    """Every binary table HDU of a FITS file, by extension index and name."""
    with fits.open(path) as hdus:
        return {
            f"{i}:{hdu.name}": np.asarray(hdu.data)
            for i, hdu in enumerate(hdus)
            if isinstance(hdu, fits.BinTableHDU)
        }


def _catalogs(output: Path) -> dict[str, dict[str, np.ndarray]]:
    found = {}
    for path in sorted(output.rglob("*.fits")):
        tables = _tables(path)
        if tables:
            found[str(path.relative_to(output))] = tables
    return found


@pytest.mark.skipif(
    CLUSTER_ENV is None, reason="no Grid Engine: run scripts/gridengine-up as root (make test does)"
)
def test_campaign_through_profiles_sge_matches_the_local_run(tmp_path, monkeypatch):
    for key, value in CLUSTER_ENV.items():  # the DRMAA driver needs them when it starts
        monkeypatch.setenv(key, value)
    outputs = {}
    for profile in ("local", "sge"):
        root = tmp_path / profile
        root.mkdir()
        config = write_campaign_config(root, visits_per_filter=1)
        simulate_campaign(config)
        ingest_campaign(config)
        code = run_snakemake(
            config, profile=profile, snakemake_args=["--quiet", "rules"], workdir=root
        )
        assert code == 0, f"{profile} run failed"
        outputs[profile] = root / "output"

    # Every job of the Grid Engine run went through Grid Engine and ended with exit status 0.
    ledger = SubmissionLedger(tmp_path / "sge" / ".snakemake" / "gridengine" / "submissions.jsonl")
    submissions, finished = ledger.read()
    assert {s.rule for s in submissions} >= {"process_visit"}
    assert set(finished) == {s.job_id for s in submissions}
    assert set(finished.values()) == {"succeeded"}

    local, sge = _catalogs(outputs["local"]), _catalogs(outputs["sge"])
    assert any(name.startswith("src/") for name in local), "the local run wrote no src catalog"
    assert sorted(sge) == sorted(local)
    for name, tables in local.items():
        assert sorted(sge[name]) == sorted(tables), name
        for hdu, data in tables.items():
            other = sge[name][hdu]
            assert data.dtype == other.dtype, f"{name}[{hdu}]"
            assert data.tobytes() == other.tobytes(), f"{name}[{hdu}] differs"
    metrics = {}
    for profile in ("local", "sge"):
        layout = Layout.from_config(load_config(tmp_path / profile / "config.yaml"))
        with open(layout.path("science_validation")) as handle:
            metrics[profile] = json.load(handle)
    assert metrics["sge"] == metrics["local"]


@pytest.mark.skipif(
    CLUSTER_ENV is None, reason="no Grid Engine: run scripts/gridengine-up as root (make test does)"
)
def test_command_payload_through_profiles_sge_with_hostile_paths(tmp_path, monkeypatch):
    # Site commands (payload.commands) on Grid Engine, output root holding spaces, quotes, `;`,
    # `$(...)` and backquotes: process_visit's command writes its outputs, make_warp's exits 0
    # writing nothing. One run through `dcflow run`'s API, so the run ledger records both.
    for key, value in CLUSTER_ENV.items():
        monkeypatch.setenv(key, value)
    site = 'for f in {output.calexps} {output.srcs}; do printf \'%s %s\' {visit} "$f" > "$f"; done'
    config_path = hostile_campaign(
        tmp_path, {"process_visit": site, "make_warp": "true {output.warp}"}
    )
    work = config_path.parent
    graph = JobGraph(CampaignIndex.from_config(load_config(config_path)))
    # every visit's calexps and two warps (of ~60): a dozen Grid Engine jobs, retries included
    calexps = {
        graph.data_id("process_visit", j)["visit"]: graph.output_paths("process_visit", "calexp", j)
        for j in range(graph.jobs("process_visit").n_jobs)
    }
    warps = [graph.output_paths("make_warp", "warp", j)[0] for j in range(2)]
    targets = [p for paths in calexps.values() for p in paths] + warps
    code = run_campaign(
        config_path,
        profile="sge",
        snakemake_args=[],
        targets=targets,
        workdir=work,
        progress=False,
    )
    assert code != 0

    for visit, paths in calexps.items():
        for path in paths:
            assert HOSTILE in path
            assert Path(path).read_text() == f"{visit} {path}"  # written by the site command
    assert not any(Path(p).exists() for p in warps)

    # Grid Engine ran every job: process_visit succeeded, make_warp failed on every attempt
    ledger = SubmissionLedger(work / ".snakemake" / "gridengine" / "submissions.jsonl")
    submissions, finished = ledger.read()
    by_rule: dict[str, set[str]] = {}
    for s in submissions:
        by_rule.setdefault(s.rule, set()).add(finished.get(s.job_id))
    assert by_rule["process_visit"] == {"succeeded"}
    assert by_rule["make_warp"] == {"failed"}

    # the run ledger (what `dcflow failed` reads) names the missing file of each failed warp
    failed = failed_campaign(config_path, workdir=work)
    assert {t.rule for t in failed} == {"make_warp"}
    assert len(failed) == len(warps)
    for tile in failed:
        assert tile.backend == "gridengine" and tile.backend_jobid
        assert tile.error_class == "CommandPayloadError"
        assert "exited 0 without writing" in tile.reason
        assert any(p in tile.reason for p in warps), tile.reason
        assert tile.attempts == 2  # the profile's one retry ran, and failed the same way
    status = status_campaign(config_path, profile="sge", workdir=work)
    assert not status.complete
    assert sum(r.failed for r in status.rows if r.stage == "make_warp") == len(warps)
