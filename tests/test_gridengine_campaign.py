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

from dcflow.config_schema import load_config
from dcflow.layout import Layout
from dcflow.orchestration.prepare import ingest_campaign, simulate_campaign
from dcflow.orchestration.snakemake_cli import run_snakemake
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
