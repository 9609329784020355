"""What the `dcflow` verbs do, as functions with explicit parameters (the CLI only parses)."""

from __future__ import annotations

import contextlib
import glob
import html
import importlib
import json
import logging
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from dcflow.campaign.driver_lock import DriverBusyError, sharded_driver_running
from dcflow.campaign.index import CampaignIndex
from dcflow.campaign.registry import (
    IngestReport,
    ingest,
    record_from_standard_header,
)
from dcflow.config_schema import load_config
from dcflow.configs import from_mapping
from dcflow.layout import Layout
from dcflow.ledger import (
    Attempt,
    Ledger,
    MemoryPolicy,
    parse_tile,
    pid_start_time,
    read_benchmark,
    tile_of,
)
from dcflow.pipeline.graph import JobGraph
from dcflow.pipeline.spec import STAGES
from dcflow.plan import Plan, parse_dry_run_counts
from dcflow.states import ACTIVE_STATES, JobState
from dcflow.status import (
    CampaignStatus,
    Check,
    FailedTile,
    PingResult,
    campaign_status,
    failed_tiles,
    marker_jobid,
    ping_dirac,
    ping_gridengine,
)

__all__ = [
    "DRY_RUN_ARGS",
    "GRIDENGINE_EXECUTORS",
    "REPO_ROOT",
    "ProgressPrinter",
    "StageBenchmark",
    "benchmark_html",
    "benchmark_summary",
    "campaign_pictures",
    "cancel_campaign",
    "cancel_runs",
    "failed_campaign",
    "ingest_campaign",
    "memory_override_args",
    "memory_policy",
    "open_campaign",
    "ping_profile",
    "plan_campaign",
    "profile_backend",
    "profile_dir",
    "profile_settings",
    "progress_lines",
    "raw_glob",
    "report_campaign",
    "rerun_failed",
    "rerun_targets",
    "rule_defaults",
    "run_campaign",
    "run_snakemake",
    "simulate_campaign",
    "snakemake_argv",
    "snakemake_dry_run_counts",
    "status_campaign",
]

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
    ValueError
        If the profile is neither a directory nor a name under profiles/.
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


# --- campaign control: ledger-backed run, plan, rerun, report (issue 4) -----------------------


def open_campaign(
    config_path: str | Path, workdir: str | Path | None = None
) -> tuple[dict, Layout, CampaignIndex]:
    """Load a campaign config and index it (`CampaignIndex`: arrays, no object per job).

    With ``workdir``, relative layout roots are taken relative to it (Snakemake's
    ``--directory``) instead of the current directory.

    Raises
    ------
    FileNotFoundError
        If the config or the registry (run `dcflow ingest`) is missing.
    ValueError
        If the config is invalid.
    """
    config = load_config(config_path)
    layout = Layout.from_config(config)
    if workdir is not None:
        layout = Layout(
            input_root=str(Path(workdir) / layout.input_root),
            output_root=str(Path(workdir) / layout.output_root),
            templates=layout.templates,
        )
    return config, layout, CampaignIndex.from_config(config, layout)


def profile_dir(profile: str) -> Path:
    """A profile's directory: ``profile`` itself or ``profiles/<profile>`` of the checkout.

    Raises
    ------
    ValueError
        If neither is a directory.
    """
    path = Path(profile)
    if not path.is_dir():
        path = REPO_ROOT / "profiles" / profile
    if not path.is_dir():
        raise ValueError(f"profile {profile!r}: no such directory (nor under profiles/)")
    return path


def profile_settings(profile: str) -> dict:
    """The profile's ``config.yaml`` (Snakemake settings) as a dict."""
    config_file = profile_dir(profile) / "config.yaml"
    if not config_file.is_file():
        return {}
    with open(config_file) as handle:
        return yaml.safe_load(handle) or {}


def profile_backend(profile: str) -> str:
    """The backend a profile runs jobs on: its ``executor`` (``local`` if unset)."""
    return str(profile_settings(profile).get("executor", "local"))


def memory_policy(
    profile: str | None, *, factor: float | None = None, cap_mb: int | None = None
) -> MemoryPolicy:
    """Memory escalation policy: defaults, then the profile's ``dcflow.yaml``, then arguments.

    A profile may hold ``dcflow.yaml`` with ``memory_escalation: {factor: 2.0, cap_mb: 64000}``
    (site settings Snakemake itself does not read).
    """
    values: dict = {}
    if profile:
        extra = profile_dir(profile) / "dcflow.yaml"
        if extra.is_file():
            with open(extra) as handle:
                values.update((yaml.safe_load(handle) or {}).get("memory_escalation", {}))
    if factor is not None:
        values["factor"] = factor
    if cap_mb is not None:
        values["cap_mb"] = cap_mb
    return from_mapping(MemoryPolicy, values)


def rule_defaults(profile: str | None) -> dict[str, dict[str, int]]:
    """Per rule ``mem_mb`` and ``runtime`` (min) defaults.

    The pipeline spec's values (every stage has both).
    """
    fallback: dict[str, int] = {}
    if profile:
        for item in profile_settings(profile).get("default-resources", []) or []:
            key, _, value = str(item).partition("=")
            if value.strip().isdigit():
                fallback[key.strip()] = int(value)
    out: dict[str, dict[str, int]] = {}
    for s in STAGES:
        out[s.rule] = {
            **{k: v for k, v in fallback.items() if k in ("mem_mb", "runtime")},
            "mem_mb": s.mem_mb,
            "runtime": s.runtime,
        }
    return out


def memory_override_args(
    requests: dict[tuple[str, str], int], defaults: dict[str, dict[str, int]]
) -> list[str]:
    """``--set-resources`` arguments giving escalated tiles their mem_mb, per rule.

    Each value is a Python expression Snakemake evaluates per job: a lookup of the job's tile
    (`dcflow.ledger.tile_of` of its wildcards) in the escalated tiles, else the rule default.
    Tiles of rules whose default is unknown get the largest escalation of the rule.
    """
    by_rule: dict[str, dict[str, int]] = {}
    for (rule, tile), mem_mb in sorted(requests.items()):
        by_rule.setdefault(rule, {})[tile] = mem_mb
    args: list[str] = []
    for rule, tiles in by_rule.items():
        default = defaults.get(rule, {}).get("mem_mb", max(tiles.values()))
        lookup = (
            f"{tiles!r}.get(__import__('dcflow.ledger', fromlist=['tile_of'])"
            f".tile_of(dict(wildcards.items())), {default})"
        )
        args.append(f"{rule}:mem_mb={lookup}")
    return ["--set-resources", *args] if args else []


def _quiet_hides_progress(snakemake_args: list[str]) -> bool:
    if "--quiet" not in snakemake_args and "-q" not in snakemake_args:
        return False
    flag = "--quiet" if "--quiet" in snakemake_args else "-q"
    following = snakemake_args[snakemake_args.index(flag) + 1 :]
    values = [v for v in following[:3] if not v.startswith("-")]
    return not values or any(v in ("all", "progress") for v in values)


def run_campaign(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: list[str],
    targets: list[str] | None = None,
    workdir: str | Path | None = None,
    shard: str | None = None,
    mem_factor: float | None = None,
    mem_cap_mb: int | None = None,
    progress: bool = True,
    progress_seconds: float = 2.0,
) -> int:
    """Run the campaign through Snakemake with the run ledger; return Snakemake's exit code.

    Every job attempt is written to the campaign's ledger by the ``dcflow`` logger plugin;
    tiles whose last attempt failed for memory ask for more (`MemoryPolicy`); a progress bar
    per stage is printed while it runs. ``snakemake_args`` pass through untouched (a
    ``--quiet`` that hides progress also hides job completions from the ledger: warned).

    Raises
    ------
    DriverBusyError
        If ``shard`` is None and a sharded driver runs in ``workdir``.
    """
    config = load_config(config_path)
    layout = Layout.from_config(config)
    workdir = Path(workdir or os.getcwd()).resolve()
    backend = profile_backend(profile) if profile else "local"
    policy = memory_policy(profile, factor=mem_factor, cap_mb=mem_cap_mb)
    ledger_file = Path(layout.path("ledger"))
    if not ledger_file.is_absolute():
        ledger_file = workdir / ledger_file
    if _quiet_hides_progress(snakemake_args):
        log.warning("--quiet hides job completions: the ledger will not see jobs succeed")
    holder = None if shard else sharded_driver_running(workdir)
    if holder:
        # its shards run without Snakemake's lock (dcflow.campaign.driver_lock)
        raise DriverBusyError(
            f"a sharded driver ({holder}) runs in {workdir}: a plain run beside it could "
            "write the same outputs; wait for it to end"
        )
    with Ledger(ledger_file) as ledger:
        ledger.reap_dead_runs()
        locks = workdir / ".snakemake" / "locks"
        stale_lock = (
            locks.is_dir()
            and any(locks.iterdir())
            and not any(r.finished is None for r in ledger.runs())
        )
        requests = ledger.memory_requests(policy)
        extra = memory_override_args(requests, rule_defaults(profile)) if requests else []
        for (rule, tile), mem_mb in sorted(requests.items()):
            log.info("memory escalation: %s %s asks for mem_mb=%d", rule, tile, mem_mb)
        run_id = ledger.start_run(
            campaign=config["campaign"]["name"],
            shard=shard or "all",
            profile=profile,
            backend=backend,
            argv=[*snakemake_args, *(targets or [])],
        )
    argv = snakemake_argv(config_path, profile=None, workdir=workdir)
    if stale_lock:
        # no run of this campaign is alive (dead drivers were closed above): a killed driver
        # left its Snakemake lock behind
        log.info("stale Snakemake lock in %s (no live run in the ledger): unlocking", workdir)
        subprocess.run([*argv, "--unlock"], check=False, capture_output=True)
    if profile:
        argv += ["--profile", str(profile_dir(profile))]
    argv += [
        "--logger",
        "dcflow",
        "--logger-dcflow-ledger",
        str(ledger_file),
        "--logger-dcflow-run-id",
        str(run_id),
        "--logger-dcflow-backend",
        backend,
        "--logger-dcflow-shard",
        shard or "all",
    ]
    # targets first and our --set-resources (nargs +) last, so neither swallows the other
    argv += list(targets or []) + list(snakemake_args) + extra
    log.info("running (ledger run %d): %s", run_id, shlex.join(argv))
    child = subprocess.Popen(argv)
    with Ledger(ledger_file) as ledger:
        ledger.set_run_pid(run_id, child.pid)
        watcher = ProgressPrinter(
            ledger_file, run_id, period_s=progress_seconds, workdir=workdir, show=progress
        )
        watcher.start()
        try:
            code = child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            code = child.wait()
        finally:
            watcher.stop()
        ledger.finish_run(run_id, code)
    return code


class ProgressPrinter:
    """Watches a run from the ledger while it goes.

    Prints one progress bar per stage whenever counts change, and fills in the backend job
    ids that Snakemake stored in its incomplete markers (for executors that do not log them).
    """

    def __init__(
        self,
        ledger_path: str | Path,
        run_id: int,
        *,
        period_s: float = 2.0,
        workdir: str | Path | None = None,
        show: bool = True,
    ) -> None:
        self.ledger_path = str(ledger_path)
        self.run_id = run_id
        self.period_s = period_s
        self.workdir = workdir
        self.show = show
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._last: tuple = ()

    def start(self) -> None:
        """Start printing in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Print a last time and stop."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.print_once()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.print_once()

    def print_once(self) -> None:
        """Print the bars if anything changed since the last call."""
        try:
            with Ledger(self.ledger_path) as ledger:
                run = ledger.run(self.run_id)
                attempts = ledger.attempts(run_id=self.run_id)
                if self.workdir is not None:
                    for a in attempts:
                        if a.state in ACTIVE_STATES and not a.backend_jobid and a.outputs:
                            jobid = marker_jobid(self.workdir, a.outputs[0])
                            if jobid:
                                ledger.set_attempt_backend_id(a.attempt_id, jobid)
        except (sqlite3.Error, KeyError) as exc:
            log.debug("progress: ledger not readable yet: %s", exc)
            return
        if not self.show:
            return
        lines = progress_lines(run.planned, attempts)
        key = tuple(lines)
        if lines and key != self._last:
            self._last = key
            print("\n".join(lines), flush=True)


def progress_lines(planned: dict[str, int], attempts: list[Attempt], width: int = 30) -> list[str]:
    """Text progress bars, one per stage: done/planned, running and failed counts."""
    lines = []
    for rule, total in planned.items():
        mine = [a for a in attempts if a.rule == rule]
        done = sum(a.state is JobState.SUCCEEDED for a in mine)
        failed = sum(a.state is JobState.FAILED for a in mine)
        running = sum(a.state in (JobState.RUNNING, JobState.SUBMITTED) for a in mine)
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        lines.append(
            f"  {rule:<20} [{bar}] {done:>5}/{total:<5} running {running:<4} failed {failed}"
        )
    return ["progress:", *lines] if lines else []


def plan_campaign(
    config_path: str | Path,
    *,
    profile: str | None = "local",
    workdir: str | Path | None = None,
    inventory: str | Path | None = None,
    mtimes: bool | None = None,
) -> Plan:
    """The campaign's dry-run plan (`dcflow.campaign.analytic`), with CPU estimates from the ledger.

    Parameters
    ----------
    config_path : path-like
        The campaign config.
    profile : str or None
        Profile whose default resources give rules without a literal ``runtime``.
    workdir : path-like, optional
        Snakemake's working directory (default: the current one).
    inventory : path-like, optional
        A file list of the outputs (one path per line, ``.gz`` allowed) to read instead of
        walking the output tree.
    mtimes : bool, optional
        Whether a tree walk stats files (Snakemake's mtime trigger; default: small campaigns).
    """
    from dcflow.campaign.analytic import plan_index
    from dcflow.campaign.index import CampaignIndex

    start = time.perf_counter()
    workdir = Path(workdir or os.getcwd()).resolve()
    config = load_config(config_path)
    layout = Layout.from_config(config)
    layout = Layout(
        input_root=str(workdir / layout.input_root),
        output_root=str(workdir / layout.output_root),
        templates=layout.templates,
    )
    index = CampaignIndex.from_config(config, layout)
    ledger_file = _ledger_file(layout, workdir)
    measured: dict[str, tuple[float, int]] = {}
    if ledger_file.exists():
        with Ledger(ledger_file) as ledger:
            measured = ledger.mean_runtimes()
    defaults = {r: v["runtime"] for r, v in rule_defaults(profile).items() if "runtime" in v}
    return plan_index(
        index,
        workdir=workdir,
        inventory=inventory,
        mtimes=mtimes,
        mean_runtimes_s=measured,
        default_runtimes_min=defaults,
        start_time=start,
    )


def _rooted_layout(config_path: str | Path, workdir: Path) -> Layout:
    """The campaign's layout with relative roots under ``workdir`` (no registry read)."""
    layout = Layout.from_config(load_config(config_path))
    return Layout(
        input_root=str(workdir / layout.input_root),
        output_root=str(workdir / layout.output_root),
        templates=layout.templates,
    )


def _ledger_file(layout: Layout, workdir: Path) -> Path:
    path = Path(layout.path("ledger"))
    return path if path.is_absolute() else workdir / path


def status_campaign(
    config_path: str | Path, *, profile: str | None = "local", workdir: str | Path | None = None
) -> CampaignStatus:
    """The campaign's status: the plan (disk) joined with the ledger (attempts)."""
    workdir = Path(workdir or os.getcwd()).resolve()
    layout = _rooted_layout(config_path, workdir)
    plan = plan_campaign(config_path, profile=profile, workdir=workdir)
    with Ledger(_ledger_file(layout, workdir)) as ledger:
        return campaign_status(plan, ledger, workdir=workdir)


def failed_campaign(
    config_path: str | Path,
    *,
    stage: str | None = None,
    tract: int | None = None,
    workdir: str | Path | None = None,
    n_lines: int = 10,
) -> list[FailedTile]:
    """Failed tiles of the campaign whose outputs are still missing (optionally filtered)."""
    workdir = Path(workdir or os.getcwd()).resolve()
    layout = _rooted_layout(config_path, workdir)
    plan = plan_campaign(config_path, profile=None, workdir=workdir)
    with Ledger(_ledger_file(layout, workdir)) as ledger:
        return failed_tiles(ledger, stage=stage, tract=tract, plan=plan, n_lines=n_lines)


def rerun_targets(
    graph: JobGraph,
    failed: set[tuple[str, str]],
    need: Mapping[str, np.ndarray] | None,
) -> tuple[list[str], set[tuple[str, str]]]:
    """Targets that rerun exactly the failed tiles and the missing jobs downstream of them.

    Parameters
    ----------
    graph : JobGraph
        The campaign's job graph (arrays: no object per job).
    failed : set of (rule, data_id)
        Tiles to rerun.
    need : mapping, optional
        Per rule, the jobs that must run per the plan (outputs missing): downstream tiles are
        rerun only if they are among them (all downstream jobs when None).

    Returns
    -------
    targets : list of str
        Output files to ask Snakemake for (the outputs of the selected jobs).
    selected : set of (rule, data_id)
        The tiles those targets make run.
    """
    by_rule: dict[str, list[str]] = {}
    for rule, tile in failed:
        by_rule.setdefault(rule, []).append(tile)
    seeds: dict[str, np.ndarray] = {}
    for rule, tiles in by_rule.items():
        if not graph.active(rule):
            continue
        found = graph.find_jobs(rule, [parse_tile(t) for t in tiles])
        flags = np.zeros(graph.jobs(rule).n_jobs, dtype=bool)
        flags[found[found >= 0]] = True
        seeds[rule] = flags
    selected = graph.downstream(seeds, need)
    targets: list[str] = []
    keys: set[tuple[str, str]] = set()
    for s in graph.stages:
        for j in np.flatnonzero(selected[s.rule]).tolist():
            keys.add((s.rule, tile_of(graph.data_id(s.rule, j))))
            targets += [
                p for item in s.outputs for p in graph.output_paths(s.rule, item.dataset, j)
            ]
    return targets, keys


def rerun_failed(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: list[str],
    stage: str | None = None,
    tract: int | None = None,
    workdir: str | Path | None = None,
    mem_factor: float | None = None,
    mem_cap_mb: int | None = None,
    progress: bool = True,
) -> tuple[int, set[tuple[str, str]]]:
    """Rerun the failed tiles (and the missing jobs downstream of them) through `run_campaign`.

    The campaign is not replanned through Snakemake's default target: the outputs of the
    selected jobs are passed as targets, so Snakemake builds a DAG of those jobs only. Unless
    ``snakemake_args`` name ``--rerun-triggers``, only modification times trigger reruns, so
    tiles that succeeded are not redone because a param or script changed since.

    Returns
    -------
    code : int
        Snakemake's exit code (0 if there was nothing to rerun).
    selected : set of (rule, data_id)
        The tiles asked for.
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    _, layout, index = open_campaign(config_path, workdir)
    plan = plan_campaign(config_path, profile=profile, workdir=workdir)
    with Ledger(_ledger_file(layout, workdir)) as ledger:
        ledger.reap_dead_runs()
        failed = failed_tiles(ledger, stage=stage, tract=tract, plan=plan, n_lines=0)
    keys = {(f.rule, f.data_id) for f in failed}
    if not keys:
        return 0, set()
    targets, selected = rerun_targets(JobGraph(index), keys, plan.need)
    targets = [os.path.relpath(t, workdir) for t in targets]  # as the rules name them
    extra = list(snakemake_args)
    if "--rerun-triggers" not in extra:
        # exactly those jobs: a params or code change since the good tiles ran must not pull
        # them in again through the targets' inputs (pass --rerun-triggers to override)
        extra = ["--rerun-triggers", "mtime", *extra]
    code = run_campaign(
        config_path,
        profile=profile,
        snakemake_args=extra,
        targets=targets,
        workdir=workdir,
        shard="rerun-failed",
        mem_factor=mem_factor,
        mem_cap_mb=mem_cap_mb,
        progress=progress,
    )
    return code, selected


GRIDENGINE_EXECUTORS = frozenset({"gridengine", "drmaa", "cluster-generic", "sge"})
"""Executors that submit to Grid Engine."""


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
        cores = settings.get("cores", os.cpu_count())
        return PingResult("local", (Check("local", True, f"local processes, {cores} cores"),))
    return PingResult(backend, (Check("backend", False, f"no check known for {backend!r}"),))


def _ccd_offsets_deg(config: dict, ccds: list[int]) -> dict[int, tuple[float, float, float, float]]:
    """Per CCD: centre offset (xi, eta) from the pointing and size (w, h), deg."""
    if config["campaign"]["instrument"] == "cfht_sim":
        from dcflow.instruments.cfht_sim import SimConfig, ccd_origin_pix

        sim = from_mapping(SimConfig, config.get("simulation", {}))
        scale = sim.pixel_scale_arcsec / 3600.0
        out = {}
        for ccd in ccds:
            u0, v0 = ccd_origin_pix(sim, ccd)
            u_c, v_c = u0 + sim.ccd_nx / 2.0, v0 + sim.ccd_ny / 2.0
            out[ccd] = (-u_c * scale, v_c * scale, sim.ccd_nx * scale, sim.ccd_ny * scale)
        return out
    side = max(1, int(np.ceil(np.sqrt(len(ccds)))))
    size = 0.2  # deg: a nominal CCD for instruments without a focal-plane model here
    return {
        ccd: ((i % side - (side - 1) / 2) * size, (i // side - (side - 1) / 2) * size, size, size)
        for i, ccd in enumerate(ccds)
    }


def campaign_pictures(
    config_path: str | Path,
    out_dir: str | Path,
    *,
    profile: str | None = "local",
    workdir: str | Path | None = None,
) -> tuple[str, str]:
    """Write the rule graph and the sky picture (visits/CCDs) coloured by state, as PNG.

    Returns the two paths (``rule_graph.png``, ``sky.png`` in ``out_dir``).
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    from dcflow.plots_campaign import (  # matplotlib: imported only when drawing
        CcdTile,
        rule_graph_figure,
        save_png,
        sky_figure,
    )

    config, layout, index = open_campaign(config_path, workdir)
    graph = JobGraph(index)
    jobs = graph.job_specs()
    records = graph.registry.records(obstype="object")
    ccds = [int(c) for c in index.ccds]
    plan = plan_campaign(config_path, profile=profile, workdir=workdir)
    failed: set[tuple[str, str]] = set()
    running: set[tuple[str, str]] = set()
    ledger_file = _ledger_file(layout, workdir)
    if ledger_file.exists():
        with Ledger(ledger_file) as ledger:
            status = campaign_status(plan, ledger)
            failed = {(f.rule, f.data_id) for f in failed_tiles(ledger, plan=plan, n_lines=0)}
            running = {(str(a.rule), str(a.data_id)) for a in status.running}
    out = Path(out_dir)
    graph = save_png(
        rule_graph_figure(
            jobs, plan.to_run, failed=failed, running=running, title=config["campaign"]["name"]
        ),
        out / "rule_graph.png",
    )
    visit_state: dict[int, str] = {}
    for job in jobs:
        visit = job.data_id.get("visit")
        if visit is None:
            continue
        key = (job.rule, tile_of(job.data_id))
        state = (
            "failed"
            if key in failed
            else "running"
            if key in running
            else "to run"
            if key in plan.to_run
            else "done"
        )
        order = ("done", "to run", "running", "failed")
        old = visit_state.get(int(visit), "done")
        visit_state[int(visit)] = max(old, state, key=order.index)
    offsets = _ccd_offsets_deg(config, ccds)
    tiles = []
    for record in records:
        if record.ra_deg is None or record.dec_deg is None or record.ccd not in offsets:
            continue
        xi, eta, width, height = offsets[record.ccd]
        cos_dec = max(np.cos(np.radians(record.dec_deg)), 0.1)
        tiles.append(
            CcdTile(
                visit=record.visit,
                ccd=record.ccd,
                band=record.filter,
                ra_deg=record.ra_deg + xi / cos_dec,
                dec_deg=record.dec_deg + eta,
                width_deg=width / cos_dec,
                height_deg=height,
                state=visit_state.get(record.visit, "to run"),
            )
        )
    sky = save_png(sky_figure(tiles, title=config["campaign"]["name"]), out / "sky.png")
    return graph, sky


@dataclass(frozen=True, slots=True)
class StageBenchmark:
    """Measured cost of one stage's jobs, from their Snakemake benchmark files."""

    stage: str
    n_jobs: int
    wall_s_total: float
    wall_s_max: float
    cpu_s_total: float
    max_rss_mb_mean: float
    max_rss_mb_max: float
    io_in_mb_total: float
    io_out_mb_total: float


def benchmark_summary(benchmark_root: str | Path) -> list[StageBenchmark]:
    """Per stage (rule directory under ``benchmark_root``): CPU, memory and I/O of its jobs."""
    out = []
    root = Path(benchmark_root)
    if not root.is_dir():
        return out
    for rule_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        records = [r for r in map(read_benchmark, sorted(rule_dir.glob("*.tsv"))) if r]
        if not records:
            continue
        rss = [r.max_rss_mb for r in records if r.max_rss_mb is not None]
        out.append(
            StageBenchmark(
                stage=rule_dir.name,
                n_jobs=len(records),
                wall_s_total=sum(r.runtime_s for r in records),
                wall_s_max=max(r.runtime_s for r in records),
                cpu_s_total=sum(r.cpu_s or 0.0 for r in records),
                max_rss_mb_mean=float(np.mean(rss)) if rss else float("nan"),
                max_rss_mb_max=max(rss) if rss else float("nan"),
                io_in_mb_total=sum(r.io_in_mb or 0.0 for r in records),
                io_out_mb_total=sum(r.io_out_mb or 0.0 for r in records),
            )
        )
    return out


def benchmark_html(stages: list[StageBenchmark], title: str) -> str:
    """An HTML page with the per-stage benchmark table (the campaign's hardware overhead)."""
    head = (
        "<tr><th>stage</th><th>jobs</th><th>wall total (s)</th><th>wall max (s)</th>"
        "<th>CPU total (s)</th><th>CPU/wall</th><th>max RSS mean (MB)</th>"
        "<th>max RSS max (MB)</th><th>read (MB)</th><th>written (MB)</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{html.escape(s.stage)}</td><td>{s.n_jobs}</td><td>{s.wall_s_total:.1f}</td>"
        f"<td>{s.wall_s_max:.1f}</td><td>{s.cpu_s_total:.1f}</td>"
        f"<td>{s.cpu_s_total / s.wall_s_total if s.wall_s_total else 0:.2f}</td>"
        f"<td>{s.max_rss_mb_mean:.0f}</td><td>{s.max_rss_mb_max:.0f}</td>"
        f"<td>{s.io_in_mb_total:.1f}</td><td>{s.io_out_mb_total:.1f}</td></tr>"
        for s in stages
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>td,th{padding:4px 10px;border:1px solid #ccc;text-align:right}"
        "table{border-collapse:collapse}</style></head><body>"
        f"<h1>{html.escape(title)}: measured cost per stage</h1>"
        "<p>From Snakemake's benchmark files (one per job): wall time, CPU time, peak resident "
        "memory and I/O.</p>"
        f"<table>{head}{rows}</table></body></html>"
    )


def report_campaign(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: list[str],
    output: str | Path | None = None,
    workdir: str | Path | None = None,
) -> tuple[int, str, str, list[StageBenchmark]]:
    """Write Snakemake's HTML report and the per-stage benchmark summary beside it.

    The per-stage CPU, memory and I/O figures are shown on the report's landing page
    (``--report-metadata``) and written as their own page and TSV.

    Returns Snakemake's exit code, the report path, the benchmark page path and the summary.
    The benchmark table is also written as ``<report stem>_benchmarks.tsv``.
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    config = load_config(config_path)
    layout = _rooted_layout(config_path, workdir)
    report = Path(output) if output else Path(layout.output_root) / "report" / "report.html"
    report = report if report.is_absolute() else workdir / report
    report.parent.mkdir(parents=True, exist_ok=True)
    bench_root = Path(layout.pattern("benchmark", rule="R", tile="T")).parent.parent
    bench_root = bench_root if bench_root.is_absolute() else workdir / bench_root
    stages = benchmark_summary(bench_root)
    page = report.with_name(report.stem + "_benchmarks.html")
    page.write_text(benchmark_html(stages, config["campaign"]["name"]))
    with open(report.with_name(report.stem + "_benchmarks.tsv"), "w") as handle:
        names = list(StageBenchmark.__dataclass_fields__)
        handle.write("\t".join(names) + "\n")
        for stage in stages:
            handle.write("\t".join(str(getattr(stage, n)) for n in names) + "\n")
    # the per-stage figures also go on the landing page of Snakemake's own report
    metadata = report.with_name(report.stem + "_metadata.yaml")
    lines = [f"campaign: {json.dumps(config['campaign']['name'])}"]
    for stage in stages:
        text = (
            f"{stage.n_jobs} jobs; CPU {stage.cpu_s_total:.1f} s (wall {stage.wall_s_total:.1f} s,"
            f" longest {stage.wall_s_max:.1f} s); max RSS {stage.max_rss_mb_max:.0f} MB"
            f" (mean {stage.max_rss_mb_mean:.0f} MB); read {stage.io_in_mb_total:.1f} MB,"
            f" written {stage.io_out_mb_total:.1f} MB"
        )
        lines.append(f"{json.dumps('stage ' + stage.stage)}: {json.dumps(text)}")
    metadata.write_text("\n".join(lines) + "\n")
    code = run_snakemake(
        config_path,
        profile=profile,
        snakemake_args=[
            "--report",
            str(report),
            "--report-metadata",
            str(metadata),
            *snakemake_args,
        ],
        workdir=workdir,
    )
    return code, str(report), str(page), stages


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc children lists), deepest last."""
    out: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop(0)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out += children
            queue += children
    return out


def _wait_gone(pid: int, start: str | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid_start_time(pid) != start or start is None:
            return True
        time.sleep(0.2)
    return False


def cancel_runs(
    ledger_path: str | Path, *, timeout_s: float = 60.0, grace_s: float = 10.0
) -> tuple[list[int], int]:
    """Cancel the live runs of a ledger on this host.

    Returns the ids of the runs stopped and the number of attempts cancelled. Each run's
    Snakemake process gets SIGINT, as for Ctrl-C: Snakemake cancels its jobs through its
    executor (qdel for Grid Engine, a kill for DIRAC) and exits. Local job processes still
    running ``grace_s`` later (the local executor waits for them) get SIGTERM. The run's
    unfinished attempts are recorded as cancelled.

    Raises
    ------
    TimeoutError
        If a run's Snakemake process is still alive ``timeout_s`` after the signal.
    """
    stopped: list[int] = []
    n_cancelled = 0
    with Ledger(ledger_path) as ledger:
        ledger.reap_dead_runs()
        for run in ledger.runs():
            if run.finished is not None or run.pid is None or run.host != socket.gethostname():
                continue
            children = _descendants(run.pid)
            signalled = time.time()
            log.info("cancel: run %d, Snakemake pid %d gets SIGINT", run.run_id, run.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGINT)
            if not _wait_gone(run.pid, run.pid_start, min(grace_s, timeout_s)):
                # the local executor waits for its running jobs: stop them
                for child in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGTERM)
            if not _wait_gone(run.pid, run.pid_start, timeout_s):
                raise TimeoutError(
                    f"run {run.run_id}: Snakemake (pid {run.pid}) still alive {timeout_s:.0f} s "
                    "after SIGINT"
                )
            for child in children:  # job processes that outlived Snakemake's cancel
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            n_cancelled += ledger.cancel_run(run.run_id, since=signalled)
            stopped.append(run.run_id)
    return stopped, n_cancelled


def cancel_campaign(
    config_path: str | Path, *, workdir: str | Path | None = None, timeout_s: float = 60.0
) -> tuple[list[int], int]:
    """`cancel_runs` on the campaign's ledger."""
    config = load_config(config_path)
    workdir = Path(workdir or os.getcwd()).resolve()
    return cancel_runs(_ledger_file(Layout.from_config(config), workdir), timeout_s=timeout_s)
