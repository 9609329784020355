"""What the `dcflow` verbs do, as functions with explicit parameters (the CLI only parses)."""

from __future__ import annotations

import glob
import importlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from dcflow.campaign.registry import IngestReport, ingest, record_from_standard_header
from dcflow.config_schema import load_config
from dcflow.layout import Layout

__all__ = ["REPO_ROOT", "ingest_campaign", "raw_glob", "run_snakemake", "simulate_campaign"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout holding the Snakefile, rules/ and profiles/ (dcflow is installed editable)."""


def raw_glob(layout: Layout, instrument: str) -> str:
    """A glob matching every raw file of the layout's ``raw`` template."""
    pattern = layout.pattern("raw", instrument=instrument)
    return re.sub(r"\{[^}]+\}", "*", pattern)


def simulate_campaign(config_path: str | Path) -> list[str]:
    """Write the simulated raw data, reference and truth catalogs of a cfht_sim campaign.

    Raises
    ------
    ValueError
        If the campaign's instrument is not simulated.
    """
    from dcflow.configs import from_mapping
    from dcflow.instruments.cfht_sim import SimConfig
    from dcflow.simulate import write_simulated_campaign

    config = load_config(config_path)
    instrument = config["campaign"]["instrument"]
    if instrument != "cfht_sim":
        raise ValueError(f"{config_path}: instrument {instrument!r} has no simulator")
    sim_config = from_mapping(SimConfig, config["simulation"])
    return write_simulated_campaign(sim_config, Layout.from_config(config), instrument=instrument)


def ingest_campaign(config_path: str | Path) -> IngestReport:
    """Register every raw file of the campaign found under its input root."""
    config = load_config(config_path)
    layout = Layout.from_config(config)
    instrument = config["campaign"]["instrument"]
    module = importlib.import_module(f"dcflow.instruments.{instrument}")
    translate = getattr(module, "record_from_header", record_from_standard_header)
    paths = sorted(glob.glob(raw_glob(layout, instrument)))
    log.info("ingest: %d files match %s", len(paths), raw_glob(layout, instrument))
    return ingest(paths, layout.path("registry"), translate=translate)


def run_snakemake(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: list[str],
    workdir: str | Path | None = None,
) -> int:
    """Run the campaign's workflow through Snakemake; return its exit code.

    ``snakemake_args`` pass through untouched; ``profile`` may be a name under profiles/ or a
    directory.
    """
    argv = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO_ROOT / "Snakefile"),
        "--configfile",
        str(Path(config_path).resolve()),
        "--directory",
        str(Path(workdir or os.getcwd()).resolve()),
    ]
    if profile:
        profile_dir = Path(profile)
        if not profile_dir.is_dir():
            profile_dir = REPO_ROOT / "profiles" / profile
        if not profile_dir.is_dir():
            raise ValueError(f"profile {profile!r}: no such directory (nor under profiles/)")
        argv += ["--profile", str(profile_dir)]
    argv += snakemake_args
    log.info("running: %s", " ".join(argv))
    return subprocess.run(argv, check=False).returncode
