"""Tiny simulated campaigns for workflow tests: a config file in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import yaml

from dcflow.orchestration.snakemake_cli import run_snakemake


def write_campaign_config(
    root: Path, *, name: str = "test", skymap: bool = False, **simulation
) -> Path:
    """Write a campaign config whose inputs and outputs live under ``root``."""
    sim = {
        "seed": 7,
        "n_ccds": 2,
        "ccd_nx": 1024,
        "ccd_ny": 2048,
        "filters": ["g", "r"],
        "visits_per_filter": 2,
        "n_bias": 2,
        "n_flat": 2,
    }
    sim.update(simulation)
    config = {
        "campaign": {"name": name, "instrument": "cfht_sim"},
        "layout": {"input_root": str(root / "input"), "output_root": str(root / "output")},
        "simulation": sim,
    }
    if skymap:
        # one patch holding the whole 2-CCD field (simulator's default field centre)
        config["skymap"] = {
            "tract_ra_deg": [150.0],
            "tract_dec_deg": [2.2],
            "patch_inner_pixels": 2400,
            "patch_border_pixels": 50,
            "n_patches": 1,
            "field_radius_deg": 0.08,
        }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_workflow(config_path: Path, *extra: str) -> int:
    """Run the campaign's Snakemake workflow with the local profile; return the exit code."""
    return run_snakemake(
        config_path,
        profile="local",
        snakemake_args=["--cores", "2", *extra],
        workdir=config_path.parent,
    )
