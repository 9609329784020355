"""`dcflow run --sharded`: drive a campaign's shards with bounded concurrency and backpressure.

The shards (`dcflow.campaign.shards.build_shards`) run in topological order, each through
`dcflow.orchestration.run.run_campaign` (ledger run labelled with the shard id, so the ledger,
``dcflow status``, memory escalation and the backend's reattachment keep working).

Concurrency follows the jobs left, not a fixed shard count (`shard_grant`): shards draining
their tail (a patch group's few coadds after its warps) hold only their jobs left, and the
next shards start in the part of the cap they freed, however many run;
``shards.max_concurrent_shards`` sets a starting shard's least share of the cap and bounds the
Snakemake processes alive to `PROCESSES_PER_SHARD_SHARE` times it.

Backpressure: the running shards together never hold more than ``shards.max_queued_jobs``
batch jobs (with the local executor, never more than its cores). A running shard holds
`reserved_jobs` of that cap: its ``--jobs``, or its jobs left when fewer (a shard can never
have more queued or running), read from the ledger every few seconds. A starting shard gets
as much of the free cap as it can use (`starting_shard_jobs`), but not less than an equal
share, so the queue stays full while shards overlap: one fills its widest stage while others
drain.

No planning pass blocks the first submission: a shard is hashed and compared with its marker
only when the driver reaches it (its upstream shards settled and room in the cap), while a
thread hashes the next shards ahead (`dcflow.campaign.shards.ShardHasher`); at DC2013 scale
hashing all 12,359 shards first took 46 s.

A shard that succeeds is marked with its hash; a failed shard blocks its downstream shards
while the others go on. After a killed driver, the next one clears what the dead one left
(stale Snakemake locks; on Grid Engine the plugin's `recover`, which also records jobs that
ended meanwhile) and reruns the unmarked shards: finished shards are skipped by their markers,
and jobs still queued or running on Grid Engine are adopted by the plugin, not submitted again.

SIGINT or SIGTERM to the driver stops every running shard's Snakemake and the processes under
it (`dcflow.orchestration.cancel.stop_process_tree`: SIGINT, so Snakemake cancels its jobs, then
SIGTERM and SIGKILL after the grace periods); a Ctrl-C from a terminal already reached them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dcflow.campaign.driver_lock import hold_driver_lock
from dcflow.campaign.index import CampaignIndex, write_shard_index
from dcflow.campaign.manifest import shards_dir, write_manifest
from dcflow.campaign.shards import (
    Shard,
    ShardConfig,
    ShardHasher,
    build_shards,
    is_current,
    manifest_of,
    shard_hashes,
    shard_of_job,
    shards_left,
    write_marker,
)
from dcflow.configs import from_mapping
from dcflow.failures import FailurePolicy
from dcflow.layout import Layout
from dcflow.ledger import Ledger, Run, parse_tile, pid_start_time
from dcflow.orchestration.campaign_files import load_campaign_config
from dcflow.orchestration.cancel import stop_process_tree
from dcflow.orchestration.profiles import GRIDENGINE_EXECUTORS, profile_backend, profile_settings
from dcflow.orchestration.run import run_campaign
from dcflow.orchestration.settle import settle_from_disk
from dcflow.plan import clear_incomplete_marks
from dcflow.states import JobState
from dcflow.status import failed_tiles

__all__ = [
    "PROCESSES_PER_SHARD_SHARE",
    "SHARD_SNAKEMAKE_DEFAULTS",
    "ShardOutcome",
    "ShardedRun",
    "clear_stale_state",
    "finish_blocked_shards",
    "orphan_shards",
    "plan_shards",
    "reserved_jobs",
    "run_sharded",
    "settle_orphan_submissions",
    "shard_grant",
    "shard_jobs_budget",
    "shards_to_finish",
    "starting_shard_jobs",
]

log = logging.getLogger(__name__)

FINISHED_OK = ("done", "up to date")
"""Shard states whose products downstream shards may read."""

BLOCKING = ("failed", "blocked", "skipped")
"""Shard states that block the shards downstream (a skipped shard reached is not current)."""

SHARD_SNAKEMAKE_DEFAULTS = ("--scheduler", "greedy")
"""Snakemake options every shard gets before the user's own (which may override them)."""

PROCESSES_PER_SHARD_SHARE = 3
"""Shard Snakemakes alive at once, per ``shards.max_concurrent_shards``: shards draining their
tail (a few coadds after their warps) run beside the next ones, but each Snakemake holds its DAG
in memory (~150-300 MB), so their number stays bounded."""


@dataclass(frozen=True, slots=True)
class ShardOutcome:
    """How one shard ended in a sharded run.

    ``state`` is ``done`` (ran now and succeeded), ``up to date`` (its marker matched: not
    run), ``failed`` (its Snakemake exited non-zero), ``blocked`` (an upstream shard failed),
    ``interrupted`` (stopped by Ctrl-C), ``not started``, or ``skipped`` (not asked for: a run
    of some shards only, `finish_blocked_shards`).
    """

    shard_id: str
    state: str
    exit_code: int | None = None
    run_id: int | None = None
    jobs: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ShardedRun:
    """The outcome of `run_sharded`: every shard's state and where to look."""

    outcomes: tuple[ShardOutcome, ...]
    ledger: str
    logs: str
    markers: str
    interrupted: bool

    @property
    def exit_code(self) -> int:
        """0 if every shard asked for is done or up to date, 130 after Ctrl-C, else 1."""
        if self.interrupted:
            return 130
        return 0 if all(o.state in (*FINISHED_OK, "skipped") for o in self.outcomes) else 1

    def count(self, state: str) -> int:
        """Number of shards in ``state``."""
        return sum(o.state == state for o in self.outcomes)

    def summary_lines(self) -> list[str]:
        """A human summary: counts, then every shard not done with its reason."""
        states = ("done", "up to date", "failed", "blocked", "interrupted", "not started")
        states += ("skipped",)
        counts = ", ".join(f"{self.count(s)} {s}" for s in states if self.count(s))
        lines = [f"sharded run: {len(self.outcomes)} shards: {counts}"]
        for o in self.outcomes:
            if o.state not in (*FINISHED_OK, "skipped"):
                run = f" (ledger run {o.run_id})" if o.run_id is not None else ""
                code = f" exit {o.exit_code}" if o.exit_code is not None else ""
                lines.append(f"  {o.state:<12} {o.shard_id}{code}{run} {o.detail}".rstrip())
        lines.append(f"ledger: {self.ledger} (dcflow status / failed); job logs: {self.logs}")
        lines.append(f"shard markers and manifests: {self.markers}")
        return lines


def _rooted(layout: Layout, workdir: Path) -> Layout:
    """The layout with relative roots taken under ``workdir`` (for the driver's own I/O)."""
    return Layout(
        input_root=str(workdir / layout.input_root),
        output_root=str(workdir / layout.output_root),
        templates=layout.templates,
    )


def plan_shards(
    config: dict, workdir: Path
) -> tuple[list[Shard], dict[str, str], list[Shard], Layout, ShardConfig, object]:
    """Shards of a campaign, their hashes, those left to run, the rooted layout and settings.

    Shard targets use the config's own layout (paths as the rules name them); markers and
    manifests are read and written under ``workdir``.
    """
    shards, io_layout, settings, index = _build(config, workdir)
    hashes = shard_hashes(shards, index, config)
    return shards, hashes, shards_left(shards, hashes, io_layout), io_layout, settings, index


def _build(config: dict, workdir: Path) -> tuple[list[Shard], Layout, ShardConfig, CampaignIndex]:
    """Shards of a campaign (not hashed), the rooted layout, the settings and the index."""
    layout = Layout.from_config(config)
    io_layout = _rooted(layout, workdir)
    settings = from_mapping(ShardConfig, config.get("shards", {}))
    index = CampaignIndex.from_config(config, io_layout)
    shards = build_shards(
        index,
        layout,
        visits_per_shard=settings.visits_per_shard,
        patches_per_shard=settings.patches_per_shard,
    )
    return shards, io_layout, settings, index


def shard_jobs_budget(max_queued_jobs: int, profile: str | None) -> int:
    """Total ``--jobs`` over running shards: the cap, and at most the cores when local."""
    if profile is None or profile_backend(profile) == "local":
        cores = (profile_settings(profile) if profile else {}).get("cores")
        if cores in (None, "all"):  # Snakemake's "all": every core of the machine
            cores = os.cpu_count() or 1
        return max(1, min(max_queued_jobs, int(cores)))
    return max_queued_jobs


def starting_shard_jobs(
    n_jobs: int, *, budget: int, in_use: int, max_concurrent_shards: int
) -> int:
    """``--jobs`` for a shard about to start; 0: not now, wait for part of the cap to free.

    The shard gets min(``n_jobs``, ``budget - in_use``): as much of the free cap as it can use,
    so the queue fills. It starts only if that is at least min(``n_jobs``, ceil(``budget`` /
    ``max_concurrent_shards``)), its share when every shard that may run holds an equal part:
    a shard started on a sliver of the cap would keep that ``--jobs`` for its whole run. The
    running shards' reservations (`reserved_jobs`) never sum to more than ``budget``.

    Parameters
    ----------
    n_jobs : int
        Jobs of the starting shard.
    budget : int
        Most jobs queued or running over all shards (`shard_jobs_budget`).
    in_use : int
        Sum of the running shards' reservations (`reserved_jobs`).
    max_concurrent_shards : int
        Most shards running at once.

    Raises
    ------
    ValueError
        If a count is out of range; the message names it.
    """
    for name, value, low in (
        ("n_jobs", n_jobs, 0),
        ("budget", budget, 1),
        ("in_use", in_use, 0),
        ("max_concurrent_shards", max_concurrent_shards, 1),
    ):
        if value < low:
            raise ValueError(f"starting_shard_jobs: {name} must be >= {low}, got {value}")
    grant = min(n_jobs, budget - in_use)
    least = min(n_jobs, -(-budget // max_concurrent_shards))
    return grant if grant >= max(1, least) else 0


def shard_grant(
    n_jobs: int,
    running: Sequence[int],
    *,
    budget: int,
    max_concurrent_shards: int,
) -> int:
    """``--jobs`` for a shard about to start beside the ``running`` ones; 0: not now.

    Concurrency follows the jobs left, not a fixed shard count: the next shard starts as soon
    as the cap the running shards leave free (their `reserved_jobs`, which shrink as they
    drain their tails) is at least its share (`starting_shard_jobs`), however many shards run;
    ``max_concurrent_shards`` sets that share (the cap over it) and bounds the Snakemake
    processes alive at once to ``PROCESSES_PER_SHARD_SHARE * max_concurrent_shards``.

    Parameters
    ----------
    n_jobs : int
        Jobs of the starting shard.
    running : sequence of int
        Per running shard, its `reserved_jobs`.
    budget : int
        Most jobs queued or running over all shards (`shard_jobs_budget`).
    max_concurrent_shards : int
        Shares of the cap (see above).
    """
    if len(running) >= PROCESSES_PER_SHARD_SHARE * max_concurrent_shards:
        return 0
    return starting_shard_jobs(
        n_jobs,
        budget=budget,
        in_use=sum(running),
        max_concurrent_shards=max_concurrent_shards,
    )


def _recover_gridengine(workdir: Path, *, wait_s: float) -> str:
    """The plugin's `recover`, repeated until every open submission is accounted for.

    A job that ended just before the restart may be in neither qstat nor accounting yet
    (qacct is flushed late); `recover` then leaves it out, the restarted executor cannot adopt
    it and Snakemake would submit it again. So wait (up to ``wait_s``) until each open
    submission is found queued, running or finished.
    """
    from snakemake_executor_plugin_gridengine.reattach import (
        SubmissionLedger,
        recover,
        state_dir,
    )

    pending = set(
        s.job_id
        for s in SubmissionLedger(state_dir(workdir) / "submissions.jsonl")
        .open_submissions()
        .values()
    )
    deadline = time.monotonic() + wait_s
    removed = ok = 0
    while True:
        report = recover(workdir)
        removed += len(report.removed_lockfiles)
        ok += len(report.finished_ok)
        pending -= {*report.finished_ok, *report.finished_failed, *report.still_active}
        if not pending or report.live_drivers or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    unresolved = f", {len(pending)} unknown to Grid Engine after {wait_s:.0f} s" if pending else ""
    return (
        f"gridengine recovery: {removed} stale lock(s) removed, {ok} job(s) finished "
        f"unwatched, {len(report.still_active)} still queued/running (adopted){unresolved}"
    )


def _orphan_submissions(workdir: Path) -> dict:
    """Open Grid Engine submissions (no recorded end) whose driver is dead, by job id."""
    from snakemake_executor_plugin_gridengine.reattach import (
        DriverMarker,
        SubmissionLedger,
        state_dir,
    )

    ledger = SubmissionLedger(state_dir(workdir) / "submissions.jsonl")
    live_patterns = {f"{m.tag}" for _, m in DriverMarker.read_all(state_dir(workdir)) if m.alive()}
    return {
        s.job_id: s
        for s in ledger.open_submissions().values()
        if not any(tag and tag in s.name_pattern for tag in live_patterns)
    }


def _recover_dirac(workdir: Path, ledger_file: Path) -> str:
    """Record the DIRAC jobs that ended while no driver watched them, and stop their reruns.

    A killed driver's attempts are lost in the ledger, their DIRAC jobs alive. Those still
    running are adopted by the restarted shards (the executor finds them in the run's
    JobGroup). Those DIRAC reports Done, and those DIRAC rescheduled after a good payload
    and that wait to run again with their outputs whole on disk (`done_on_disk`; they are
    killed so that DIRAC does not run them again), are done: their Snakemake "incomplete"
    marks are cleared here and the ledger settles them as succeeded (`settle_from_disk`),
    instead of the restarted shard running them a second time.
    """
    if not ledger_file.exists():
        return "dirac recovery: no ledger"
    with Ledger(ledger_file) as ledger:
        lost = [
            a
            for a in ledger.failed_tiles()
            if a.state is JobState.LOST and a.backend_jobid and a.outputs
        ]
    if not lost:
        return "dirac recovery: no lost job"
    from snakemake_executor_plugin_dirac.cancel import cancel_jobs
    from snakemake_executor_plugin_dirac.status import done_on_disk
    from snakemake_executor_plugin_dirac.wms import DiracError, DiracWMS

    wms = DiracWMS()
    try:
        outcomes = wms.states(a.backend_jobid for a in lost)
    except DiracError as err:
        return f"dirac recovery: states not known ({err}); lost jobs will be redone"
    done, queued = [], {}
    for attempt in lost:
        outcome = outcomes.get(str(attempt.backend_jobid))
        if outcome is None:
            continue
        if outcome.state is JobState.SUCCEEDED:
            done.append(attempt)
        elif outcome.state is JobState.SUBMITTED and done_on_disk(workdir, attempt.outputs):
            queued[str(attempt.backend_jobid)] = attempt
    killed = ""
    try:
        counts = wms.reschedule_counts(queued)
    except DiracError as err:
        counts = {}
        killed = f"; reschedule counts not known ({err})"
    rerun = [queued[job_id] for job_id, count in counts.items() if count > 0]
    if rerun:
        try:
            cancel_jobs(wms, [str(a.backend_jobid) for a in rerun])
        except DiracError as err:  # left marked: the restarted shard adopts or redoes them
            killed = f"; {len(rerun)} rescheduled but done on disk not killed: {err}"
        else:
            done.extend(rerun)
            killed = f"; {len(rerun)} of them rescheduled but done on disk, killed"
    for attempt in done:
        clear_incomplete_marks(workdir, attempt.outputs)
    return (
        f"dirac recovery: of {len(lost)} job(s) lost with their driver, {len(done)} ended "
        f"unwatched (their incomplete marks cleared){killed}"
    )


def settle_orphan_submissions(workdir: Path, *, wait_s: float = 60.0) -> int:
    """Record how orphaned Grid Engine jobs ended; return how many succeeded meanwhile.

    An orphan is an open submission (no recorded end) whose driver is dead: no live driver
    marker carries its job-name tag. One that succeeded since gets its end recorded and its
    Snakemake "incomplete" marks cleared, so the shard that owns it, started later than the
    driver's recovery, neither adopts a finished job nor submits it again. Jobs unknown to
    both qstat and accounting (accounting is flushed late) are waited for up to ``wait_s``.
    """
    from snakemake_executor_plugin_gridengine.reattach import SubmissionLedger, state_dir
    from snakemake_executor_plugin_gridengine.status import query_states

    ledger = SubmissionLedger(state_dir(workdir) / "submissions.jsonl")
    orphans = _orphan_submissions(workdir)
    deadline = time.monotonic() + wait_s
    n_ok = 0
    while orphans:
        outcomes = query_states(orphans, {s.name_pattern for s in orphans.values()})
        for job_id, outcome in outcomes.items():
            if outcome.finished:
                ledger.record_finished(job_id, outcome.state, outcome.exit_status)
                if outcome.state is JobState.SUCCEEDED:
                    clear_incomplete_marks(workdir, orphans[job_id].outputs)
                    n_ok += 1
                del orphans[job_id]
            else:
                del orphans[job_id]  # queued or running: the shard's executor adopts it
        if not orphans or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    return n_ok


def clear_stale_state(
    workdir: Path, ledger_file: Path, backend: str, *, accounting_wait_s: float = 120.0
) -> str:
    """Make the working directory restartable after a killed driver; say what was done.

    Runs whose Snakemake died are closed in the ledger. If no run is alive: on Grid Engine the
    plugin's `recover` (removes dead drivers' locks, records jobs that ended unwatched and
    clears their "incomplete" marks, leaves queued/running jobs for adoption); otherwise the
    Snakemake lock files are removed (what ``snakemake --unlock`` does, without parsing the
    whole campaign). Then the ledger is settled against the disk
    (`dcflow.orchestration.settle`): jobs that ended well unrecorded are recorded succeeded.
    """
    live = False
    if ledger_file.exists():
        with Ledger(ledger_file) as ledger:
            ledger.reap_dead_runs()
            live = any(r.is_alive() for r in ledger.runs())
    if live:
        return "a run of this campaign is alive: nothing cleared"
    if backend in GRIDENGINE_EXECUTORS:
        said = _recover_gridengine(workdir, wait_s=accounting_wait_s)
    else:
        locks = sorted((workdir / ".snakemake" / "locks").glob("*.lock"))
        for lock in locks:
            lock.unlink(missing_ok=True)
        said = f"{len(locks)} stale Snakemake lock(s) removed" if locks else "no stale state"
        if backend == "dirac":
            said += "; " + _recover_dirac(workdir, ledger_file)
    return said + _settle(ledger_file, workdir)


def _settle(ledger_file: Path, workdir: Path) -> str:
    """`settle_from_disk` on the campaign's ledger; what it did, as a clause ("" if nothing)."""
    if not ledger_file.exists():
        return ""
    with Ledger(ledger_file) as ledger:
        settled = settle_from_disk(ledger, workdir)
    if not settled:
        return ""
    return f"; {settled} attempt(s) settled from disk (outputs whole, their end unrecorded)"


def orphan_shards(
    ledger_file: Path, shard_ids: set[str], every_shard: set[str] | None = None
) -> set[str]:
    """Shards of ``shard_ids`` with a live run in the ledger (a Snakemake still running).

    Such a Snakemake was left by a driver that died (SIGKILL of its main process only);
    starting its shard again would run the shard's jobs twice at once. A live run labelled
    with none of the campaign's shards (``every_shard``, default ``shard_ids``): a ``dcflow
    rerun --failed`` (``rerun-failed``) or a plain ``dcflow run`` (``all``) whose driver died,
    may run any job of the campaign, so it holds every shard of ``shard_ids``.
    """
    if not shard_ids or not ledger_file.exists():
        return set()
    with Ledger(ledger_file) as ledger:
        live = {r.shard for r in ledger.runs() if r.is_alive()}
    if live - set(every_shard if every_shard is not None else shard_ids):
        return set(shard_ids)
    return live & set(shard_ids)


def _downstream(shards: Sequence[Shard], seeds: set[str]) -> set[str]:
    """``seeds`` and every shard downstream of them (``shards`` in topological order)."""
    out = set(seeds)
    for shard in shards:
        if any(u in out for u in shard.upstream):
            out.add(shard.shard_id)
    return out


def _failed_labels(runs: Sequence[Run]) -> set[str]:
    """Shard labels whose last ledger run ended non-zero (failed, or killed and reaped)."""
    last: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.run_id):
        if run.shard:
            last[run.shard] = run
    return {label for label, r in last.items() if r.finished is not None and r.exit_code != 0}


def shards_to_finish(
    shards: Sequence[Shard], runs: Sequence[Run], failing: Iterable[tuple[str, str]]
) -> tuple[set[str], set[str]]:
    """After failed tiles were rerun: the shards to run now, and those still held back.

    A shard whose last run ended non-zero (failed, or killed) blocked every shard downstream
    of it; all of them are to run (the driver skips those whose marker is current, and a
    shard Snakemake runs only the jobs left). A shard that holds a tile still failing
    (``failing``: its last attempt failed and its outputs are missing, because its class is
    not rerun or it failed again), and every shard downstream of it, is held back.

    Parameters
    ----------
    shards : sequence of Shard
        The campaign's shards, upstream first (`build_shards`).
    runs : sequence of Run
        The ledger's runs.
    failing : iterable of (rule, data_id)
        Tiles whose last attempt failed.
    """
    failed = _failed_labels(runs) & {s.shard_id for s in shards}
    holding = set()
    for rule, data_id in failing:
        with contextlib.suppress(KeyError, ValueError):
            holding.add(shard_of_job(rule, parse_tile(data_id), shards))
    held = _downstream(shards, {sid for sid in holding if sid is not None})
    wanted = _downstream(shards, failed)
    return wanted - held, wanted & held


def finish_blocked_shards(
    config_path: str | Path,
    *,
    profile: str | None,
    policy: FailurePolicy,
    snakemake_args: Sequence[str] = (),
    workdir: str | Path | None = None,
    mem_factor: float | None = None,
    mem_cap_mb: int | None = None,
    progress: bool = True,
    out: Callable[[str], None] = print,
) -> ShardedRun | None:
    """Run the shards a failed shard blocked, once its failed tiles were rerun.

    ``dcflow rerun --failed`` reruns the failed tiles and their missing downstream jobs; in a
    sharded campaign the shards behind a failed one were never started, and their jobs that
    do not depend on the failed tiles are missing still. This runs, through `run_sharded`,
    the failed shards and the shards downstream of them (`shards_to_finish`), each running
    only its jobs left. Returns None when there is none (or the campaign was never run
    sharded).
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    config = load_campaign_config(Path(config_path).resolve())
    ledger_file = Path(_rooted(Layout.from_config(config), workdir).path("ledger"))
    if not ledger_file.exists():
        return None
    with Ledger(ledger_file) as ledger:
        runs = ledger.runs()
        if not _failed_labels(runs):
            return None  # no labelled run failed: not sharded, or nothing blocked
        failing = [
            (t.rule, t.data_id)
            for t in failed_tiles(
                ledger,
                on_disk=lambda path: os.path.exists(workdir / path),
                n_lines=0,
                count_attempts=False,
                policy=policy,
            )
        ]
    shards, _, _, _ = _build(config, workdir)
    to_run, held = shards_to_finish(shards, runs, failing)
    if held:
        out(
            f"{len(held)} shard(s) stay behind tiles that still fail: "
            f"{', '.join(sorted(held)[:5])}{' ...' if len(held) > 5 else ''}"
        )
    if not to_run:
        return None
    out(f"finishing {len(to_run)} shard(s) a failed shard had blocked")
    return run_sharded(
        config_path,
        profile=profile,
        snakemake_args=snakemake_args,
        workdir=workdir,
        mem_factor=mem_factor,
        mem_cap_mb=mem_cap_mb,
        progress=progress,
        out=out,
        only=to_run,
    )


def _shard_argv(
    snakemake_args: Sequence[str], manifest: Path, shard: Shard, jobs: int
) -> list[str]:
    # ours last, each option ended by the next flag, so no nargs option swallows another;
    # --nolock: concurrent Snakemakes race on .snakemake/locks (dcflow.campaign.driver_lock)
    # --scheduler greedy first (a user's own choice overrides it): the default ILP scheduler
    # runs a MILP solver (a CBC process) over every ready job at each scheduling round, and a
    # shard has more ready jobs than its --jobs for most of its run
    # --scheduler-subsample --jobs: each scheduling round stats every input of every job it
    # considers (Snakemake's input sizes), 64 % of a patch shard's CPU when it considered all
    # its ready warps; a round never submits more than --jobs, so it loses no submission
    return [
        *SHARD_SNAKEMAKE_DEFAULTS,
        "--scheduler-subsample",
        str(jobs),
        *snakemake_args,
        "--nolock",
        "--config",
        f"shard={manifest}",
        "--allowed-rules",
        *shard.rules,
        "all",
        "--jobs",
        str(jobs),
    ]


class _StopSignalError(KeyboardInterrupt):
    """SIGTERM (or another stop signal) reached the sharded driver."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.name = signal.Signals(signum).name


def _raise_stop(signum: int, frame: object) -> None:
    raise _StopSignalError(signum)


class _ShardStopper:
    """Stops every running shard's Snakemake and the processes under it, each in a thread.

    `stop_process_tree` per shard: SIGINT (Snakemake cancels its jobs through its executor),
    then SIGTERM and SIGKILL after the grace periods. A shard whose Snakemake had not
    recorded its pid yet is stopped at a later call, when it has.
    """

    def __init__(self, watcher: _Progress) -> None:
        self.watcher = watcher
        self.stopped: set[int] = set()
        self.threads: list[threading.Thread] = []

    def stop_new(self, running: dict[str, dict]) -> None:
        """Start stopping each running shard not stopped yet."""
        for info in running.values():
            found = self.watcher.run_of(info["shard"].shard_id, info["since"])
            pid = found[1] if found else None
            if not pid or pid == os.getpid() or pid in self.stopped:
                continue
            start = pid_start_time(pid)
            if start is None:
                continue
            self.stopped.add(pid)
            thread = threading.Thread(target=self._stop, args=(pid, start), daemon=True)
            thread.start()
            self.threads.append(thread)

    @staticmethod
    def _stop(pid: int, start: str) -> None:
        try:
            stop_process_tree(pid, leader_gone=lambda: pid_start_time(pid) != start)
        except (OSError, RuntimeError) as exc:
            log.error("stopping shard Snakemake pid %d: %s: %s", pid, type(exc).__name__, exc)

    def join(self) -> None:
        """Wait for every stop to end."""
        for thread in self.threads:
            thread.join()


def _terminal_sent_sigint() -> bool:
    """Whether a Ctrl-C came from a terminal whose foreground group holds the shards too."""
    for stream in (sys.stdin, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if os.isatty(stream.fileno()):
                return os.tcgetpgrp(stream.fileno()) == os.getpgrp()
    return False


class _Progress:
    """Per-shard counts from the ledger (jobs planned, done, active), and progress lines."""

    def __init__(self, ledger_file: Path, out: Callable[[str], None]) -> None:
        self.ledger_file = ledger_file
        self.out = out
        self.last: dict[str, str] = {}
        self._ledger: Ledger | None = None  # kept open: the driver reads it every few seconds

    def _open(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.ledger_file)
        return self._ledger

    def close(self) -> None:
        """Close the ledger connection (reopened if used again)."""
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def run_of(self, shard_id: str, since: float) -> tuple[int, int | None] | None:
        """``(run_id, pid)`` of the shard's ledger run started at or after ``since``."""
        try:
            runs = [r for r in self._open().runs() if r.shard == shard_id and r.started >= since]
        except sqlite3.Error:
            return None
        return (runs[-1].run_id, runs[-1].pid) if runs else None

    def refresh(self, running: dict[str, dict], *, show: bool) -> None:
        """Update each running shard's ``run_id``, ``planned`` and ``done``; print changes."""
        for shard_id, info in running.items():
            if info["run_id"] is None:
                found = self.run_of(shard_id, info["since"])
                if found is None:
                    continue
                info["run_id"] = found[0]
            try:
                ledger = self._open()
                run = ledger.run(info["run_id"])
                counts = ledger.run_state_counts(info["run_id"])
            except (sqlite3.Error, KeyError):
                continue
            planned = sum(n for rule, n in run.planned.items() if rule != "all")
            info["planned"] = planned or None
            info["done"] = counts.get(JobState.SUCCEEDED, 0)
            active = counts.get(JobState.RUNNING, 0) + counts.get(JobState.SUBMITTED, 0)
            failed = counts.get(JobState.FAILED, 0)
            line = (
                f"[{shard_id}] {info['done']}/{planned or info['shard'].n_jobs} jobs done, "
                f"{active} queued/running, {failed} failed (--jobs {info['jobs']}, "
                f"ledger run {info['run_id']})"
            )
            if show and self.last.get(shard_id) != line:
                self.last[shard_id] = line
                self.out(line)


def _stop_shards(
    running: dict[str, dict],
    events: queue.Queue,
    finish: Callable[[str, int | None], None],
    stopper: _ShardStopper,
    *,
    terminal: bool,
) -> None:
    """Stop every running shard and wait for each to end (``terminal``: Ctrl-C reached them)."""
    while running:
        if not terminal:
            stopper.stop_new(running)  # again each round: a shard may only now have a pid
        try:
            sid, code = events.get(timeout=1.0)
        except queue.Empty:
            continue
        finish(sid, code)
    stopper.join()


def reserved_jobs(jobs: int, n_jobs: int, planned: int | None, done: int) -> int:
    """Batch jobs a running shard may still hold at once: its ``--jobs``, or fewer near its end.

    A shard never has more jobs queued or running than it has left, so its share of the cap
    shrinks to ``planned - done`` (``planned``: what its Snakemake said it would run, else the
    shard's job count) as it drains: a patch group whose warps are done holds its few coadd
    jobs, not the width of its warps, and the driver starts another shard in the freed part.
    """
    left = (planned if planned is not None else n_jobs) - done
    return max(0, min(jobs, left))


def run_sharded(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: Sequence[str] = (),
    workdir: str | Path | None = None,
    mem_factor: float | None = None,
    mem_cap_mb: int | None = None,
    progress: bool = True,
    progress_seconds: float = 5.0,
    out: Callable[[str], None] = print,
    only: set[str] | None = None,
) -> ShardedRun:
    """Run every shard left of the campaign (or of ``only``); return each shard's outcome.

    Parameters
    ----------
    config_path : path-like
        The campaign config (its ``shards`` section sets batch size, concurrency and cap).
    profile : str or None
        Snakemake profile name or directory (``None``: Snakemake defaults, local).
    snakemake_args : sequence of str
        Passed to every shard's Snakemake (before the shard's own ``--config shard=``,
        ``--allowed-rules`` and ``--jobs``).
    workdir : path-like, optional
        Snakemake's working directory (default: the current directory).
    progress : bool
        Print one line per running shard when its counts change.
    only : set of str, optional
        Shard ids to run (those left of them); the others are ``skipped``, and one upstream of
        a shard asked for blocks it unless its marker is current. None: every shard.

    Returns
    -------
    ShardedRun
        Per-shard outcomes; ``exit_code`` is 0 only if every shard is done or up to date.

    Raises
    ------
    DriverBusyError
        If another sharded driver runs in the working directory.
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    with hold_driver_lock(workdir):
        return _drive(
            config_path,
            profile=profile,
            snakemake_args=snakemake_args,
            workdir=workdir,
            mem_factor=mem_factor,
            mem_cap_mb=mem_cap_mb,
            progress=progress,
            progress_seconds=progress_seconds,
            out=out,
            only=only,
        )


def _drive(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: Sequence[str],
    workdir: Path,
    mem_factor: float | None,
    mem_cap_mb: int | None,
    progress: bool,
    progress_seconds: float,
    out: Callable[[str], None],
    only: set[str] | None,
) -> ShardedRun:
    """`run_sharded` with the driver lock held."""
    config_path = Path(config_path).resolve()
    config = load_campaign_config(config_path)
    shards, io_layout, settings, axes = _build(config, workdir)
    hasher = ShardHasher(shards, axes, config)
    ledger_file = Path(io_layout.path("ledger"))
    backend = profile_backend(profile) if profile else "local"
    out(clear_stale_state(workdir, ledger_file, backend))
    budget = shard_jobs_budget(settings.max_queued_jobs, profile)
    gridengine = backend in GRIDENGINE_EXECUTORS
    # "new": not yet compared with its marker (hashing every shard first took 46 s at DC2013
    # scale before the first submission); a thread hashes ahead while shards run
    state = {s.shard_id: "new" for s in shards}
    outcome: dict[str, ShardOutcome] = {}
    # shards not asked for: those upstream of one asked for are compared with their marker
    # when reached (not current: "skipped", which blocks it); the others are skipped now
    needed = set()
    if only is not None:
        needed = {u for s in shards if s.shard_id in only for u in s.upstream}
    for shard in shards:
        if only is not None and shard.shard_id not in only | needed:
            state[shard.shard_id] = "skipped"
            outcome[shard.shard_id] = ShardOutcome(shard.shard_id, "skipped")
    most_processes = settings.max_concurrent_shards * PROCESSES_PER_SHARD_SHARE
    out(
        f"{len(shards)} shards (markers checked as each is reached); each starts with at "
        f"least 1/{settings.max_concurrent_shards} of the cap, at most {most_processes} at "
        f"once, {budget} jobs queued in all"
    )
    stop_ahead = threading.Event()

    def hash_ahead() -> None:
        for shard in shards:
            if stop_ahead.is_set():
                return
            if state[shard.shard_id] != "skipped":
                hasher.hash_of(shard.shard_id)

    threading.Thread(target=hash_ahead, daemon=True).start()
    events: queue.Queue = queue.Queue()
    running: dict[str, dict] = {}
    # whether a dead driver left open Grid Engine submissions: none can appear later in this
    # run (a failed shard is not restarted), and reading every submission before each shard
    # start cost O(jobs) per shard
    orphans_open = [gridengine and bool(_orphan_submissions(workdir))]
    watcher = _Progress(ledger_file, out)

    def work(shard: Shard, jobs: int, manifest: Path) -> None:
        code: int | None = None
        try:
            code = run_campaign(
                config_path,
                profile=profile,
                snakemake_args=_shard_argv(snakemake_args, manifest, shard, jobs),
                workdir=workdir,
                shard=shard.shard_id,
                mem_factor=mem_factor,
                mem_cap_mb=mem_cap_mb,
                progress=False,
            )
        except (OSError, ValueError, RuntimeError, sqlite3.Error) as exc:
            log.error("shard %s: %s: %s", shard.shard_id, type(exc).__name__, exc)
        finally:
            events.put((shard.shard_id, code))

    def upstream_ok(shard: Shard) -> bool:
        return all(state[u] in FINISHED_OK for u in shard.upstream)

    def grant(shard: Shard) -> int:
        """``--jobs`` the shard may start with now; 0: no room (`shard_grant`)."""
        return shard_grant(
            shard.n_jobs,
            [
                reserved_jobs(info["jobs"], info["shard"].n_jobs, info["planned"], info["done"])
                for info in running.values()
            ],
            budget=budget,
            max_concurrent_shards=settings.max_concurrent_shards,
        )

    def start_ready() -> None:
        for shard in shards:
            sid = shard.shard_id
            if state[sid] not in ("new", "pending") or sid in orphans:
                continue  # an orphan's jobs are still running: never twice at once
            if only is not None and sid not in only:
                current = is_current(io_layout, sid, hasher.hash_of(sid))
                state[sid] = "up to date" if current else "skipped"
                if not current:
                    outcome[sid] = ShardOutcome(sid, "skipped", detail="(not up to date)")
                continue
            bad = [u for u in shard.upstream if state[u] in BLOCKING]
            if not bad and not all(state[u] in FINISHED_OK for u in shard.upstream):
                continue  # upstream still to run: looked at (and hashed) once they are done
            jobs = 0 if bad else grant(shard)
            if state[sid] == "new":
                if not bad and jobs < 1 and shard.n_jobs > 0:
                    continue  # no room now: compared with its marker when there is
                current = is_current(io_layout, sid, hasher.hash_of(sid))
                state[sid] = "up to date" if current else "pending"
                if current:
                    continue
            if bad:
                state[sid] = "blocked"
                outcome[sid] = ShardOutcome(sid, "blocked", detail=f"(upstream {bad[0]})")
                continue
            if jobs < 1:
                continue
            if orphans_open[0]:
                # jobs the dead driver left may have ended since the recovery above
                settle_orphan_submissions(workdir)
                orphans_open[0] = bool(_orphan_submissions(workdir))
            # the shard's Snakemake reads its index from here, not from the registry
            contents = manifest_of(shard, axes)
            manifest = write_manifest(contents, io_layout)
            write_shard_index(axes, contents, manifest)
            state[sid] = "running"
            running[sid] = {
                "shard": shard,
                "jobs": jobs,
                "since": time.time(),
                "run_id": None,
                "planned": None,
                "done": 0,
            }
            out(f"[{sid}] starting: {shard.n_jobs} jobs, --jobs {jobs}")
            threading.Thread(target=work, args=(shard, jobs, manifest), daemon=True).start()

    def finish(sid: str, code: int | None) -> None:
        info = running.pop(sid)
        found = watcher.run_of(sid, info["since"])
        run_id = found[0] if found else info["run_id"]
        if code == 0 and not interrupted:
            write_marker(io_layout, sid, hasher.hash_of(sid), run_id=run_id)
            state[sid] = "done"
        else:
            state[sid] = "interrupted" if interrupted else "failed"
        outcome[sid] = ShardOutcome(sid, state[sid], code, run_id, info["jobs"])
        out(f"[{sid}] {state[sid]} (exit {code})")

    interrupted = False
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        # SIGINT raises KeyboardInterrupt already; SIGTERM (kill, a batch system) must not
        # leave the shards' Snakemakes running on their own
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_stop)
    every_shard = {s.shard_id for s in shards}
    orphans = orphan_shards(ledger_file, every_shard)
    if orphans:
        named = sorted(orphans)
        out(
            f"{len(orphans)} shard(s) still run under a dead driver's Snakemake: each starts "
            f"again only once that Snakemake has ended ({', '.join(named[:8])}"
            f"{', ...' if len(named) > 8 else ''})"
        )
    try:
        start_ready()
        while running or orphans:
            try:
                sid, code = events.get(timeout=progress_seconds)
            except queue.Empty:
                watcher.refresh(running, show=progress)
                if orphans:
                    orphans.intersection_update(orphan_shards(ledger_file, orphans, every_shard))
                start_ready()  # draining shards may have freed part of the cap
                continue
            finish(sid, code)
            watcher.refresh(running, show=progress)
            start_ready()
    except KeyboardInterrupt as stop:
        interrupted = True
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second signal must not break the stop
            previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, signal.SIG_IGN)
        name = getattr(stop, "name", "SIGINT")
        out(f"{name}: stopping the running shards (their jobs are cancelled)")
        _stop_shards(
            running,
            events,
            finish,
            _ShardStopper(watcher),
            terminal=name == "SIGINT" and _terminal_sent_sigint(),
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stop_ahead.set()
    watcher.close()
    if not interrupted:
        settled = _settle(ledger_file, workdir)
        if settled:
            out(settled.removeprefix("; "))
    for shard in shards:
        sid = shard.shard_id
        if sid in outcome:
            continue
        if state[sid] == "new":  # never reached (interrupted, or behind a failed shard)
            state[sid] = "pending"
        if state[sid] == "up to date":
            outcome[sid] = ShardOutcome(sid, "up to date")
        elif state[sid] == "pending":
            bad = [u for u in shard.upstream if state[u] in BLOCKING]
            if bad and not interrupted:
                outcome[sid] = ShardOutcome(sid, "blocked", detail=f"(upstream {bad[0]})")
                state[sid] = "blocked"
            else:
                outcome[sid] = ShardOutcome(sid, "not started")
    result = ShardedRun(
        outcomes=tuple(outcome[s.shard_id] for s in shards),
        ledger=str(ledger_file),
        logs=str(Path(io_layout.output_root) / "logs"),
        markers=str(shards_dir(io_layout)),
        interrupted=interrupted,
    )
    for line in result.summary_lines():
        out(line)
    return result
