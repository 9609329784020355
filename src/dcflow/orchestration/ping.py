"""`dcflow ping`: whether the profile's backend takes jobs."""

from __future__ import annotations

import os
from pathlib import Path

from dcflow.orchestration.campaign_files import REPO_ROOT
from dcflow.orchestration.profiles import GRIDENGINE_EXECUTORS, profile_settings
from dcflow.status import Check, PingResult, ping_dirac, ping_gridengine

__all__ = ["ping_profile"]


def ping_profile(profile: str, *, min_proxy_hours: float = 24.0) -> PingResult:
    """Check that the profile's backend accepts jobs.

    Grid Engine: `dcflow.status.ping_gridengine`; DIRAC: `dcflow.status.ping_dirac`; the
    local executor always does. Service environments come from ``$DCFLOW_RUN_DIR/<backend>/
    env.sh`` (written by scripts/gridengine-up and scripts/dirac-up) unless already set.
    """
    settings = profile_settings(profile)
    backend = str(settings.get("executor", "local"))
    run_dir = Path(os.environ.get("DCFLOW_RUN_DIR", REPO_ROOT / "run"))
    if backend in GRIDENGINE_EXECUTORS:
        queue = settings.get("gridengine-queue")
        return ping_gridengine(env_file=run_dir / "gridengine" / "env.sh", queue=queue)
    if backend == "dirac":
        return ping_dirac(env_file=run_dir / "dirac" / "env.sh", min_proxy_hours=min_proxy_hours)
    if backend == "local":
        cores = settings.get("cores", "all")
        cores = f"{os.cpu_count()} (all)" if cores == "all" else cores
        return PingResult("local", (Check("local", True, f"local processes, {cores} cores"),))
    return PingResult(backend, (Check("backend", False, f"no check known for {backend!r}"),))
