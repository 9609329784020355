"""Snakemake's command line for a campaign, and running it (plain runs and the dry run)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from dcflow.orchestration.campaign_files import REPO_ROOT
from dcflow.orchestration.profiles import profile_dir
from dcflow.plan import parse_dry_run_counts

__all__ = [
    "DRY_RUN_ARGS",
    "SNAKEMAKE_ENTRY",
    "run_snakemake",
    "snakemake_argv",
    "snakemake_dry_run_counts",
]

SNAKEMAKE_ENTRY = "dcflow.orchestration.snakemake_main"
"""The module every campaign Snakemake runs as (``python -m``): Snakemake's own command line with
its scheduler's timers coalesced (see that module)."""

log = logging.getLogger(__name__)


def snakemake_argv(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: Sequence[str] = (),
    workdir: str | Path | None = None,
) -> list[str]:
    """The command line that runs the campaign's workflow through Snakemake.

    ``snakemake_args`` pass through untouched; ``profile`` may be a name under profiles/ or a
    directory.

    Raises
    ------
    ProfileUnknownError
        If the profile is neither a directory nor a name under profiles/.
    """
    argv = [
        sys.executable,
        "-m",
        SNAKEMAKE_ENTRY,
        "--snakefile",
        str(REPO_ROOT / "Snakefile"),
        "--configfile",
        str(Path(config_path).resolve()),
        "--directory",
        str(Path(workdir or os.getcwd()).resolve()),
    ]
    if profile:
        argv += ["--profile", str(profile_dir(profile))]
    return [*argv, *snakemake_args]


def run_snakemake(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: list[str],
    workdir: str | Path | None = None,
) -> int:
    """Run the campaign's workflow through Snakemake (`snakemake_argv`); return its exit code."""
    argv = snakemake_argv(
        config_path, profile=profile, snakemake_args=snakemake_args, workdir=workdir
    )
    log.info("running: %s", " ".join(argv))
    return subprocess.run(argv, check=False).returncode


DRY_RUN_ARGS = ("-n", "--rerun-triggers", "mtime")
"""Snakemake's dry run as the planner models it: mtime triggers only (no params/code reruns)."""


def snakemake_dry_run_counts(
    config_path: str | Path, *, workdir: str | Path | None = None
) -> dict[str, int]:
    """Jobs per rule that ``snakemake -n`` (local profile, `DRY_RUN_ARGS`) would run.

    The reference the planners are checked against.

    Raises
    ------
    RuntimeError
        If Snakemake fails; the message holds the end of its output.
    """
    workdir = Path(workdir or Path(config_path).parent)
    argv = snakemake_argv(
        config_path, profile="local", snakemake_args=list(DRY_RUN_ARGS), workdir=workdir
    )
    proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake -n exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return parse_dry_run_counts(proc.stdout + proc.stderr)
