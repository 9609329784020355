"""What ``dcflow serve`` shows of one campaign, kept current from the ledger's new rows.

`dcflow status` joins the plan's needrun arrays with the ledger in seconds at DC2013 scale
(10^6 attempts); a page that updates every few seconds cannot redo that. A `CampaignBoard`
does the join once, with the rules of `dcflow.status.job_states`, then follows the ledger
through a read-only connection: each refresh reads the attempts newer than the last one seen
and those that ended since its previous read (the ledger's state-and-time index): an
attempt changes only by ending, or by becoming lost when its run ends, which the board derives
from the runs. It then moves the counts of the jobs those rows touch. Counts per stage x filter
x tract and per sky patch, per-stage costs and the throughput are running sums or kept arrays,
so a refresh costs what changed, not the ledger.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcflow.campaign.snapshots import PlanSnapshot
from dcflow.failures import FailureClass, FailurePolicy
from dcflow.ledger import Ledger
from dcflow.pipeline.graph import JobGraph
from dcflow.pipeline.spec import TARGET_RULE
from dcflow.states import ACTIVE_STATES, TERMINAL_STATES, JobState
from dcflow.status import StageStatus, log_tail

__all__ = [
    "BoardView",
    "CampaignBoard",
    "FailedEntry",
    "PatchState",
    "StageCost",
]

_STATES = list(JobState)
_CODE = {s.value: i for i, s in enumerate(_STATES)}
_ACTIVE_CODES = np.array([_CODE[s.value] for s in ACTIVE_STATES])
_FAILED = _CODE[JobState.FAILED.value]
_LOST = _CODE[JobState.LOST.value]
_SUCCEEDED = _CODE[JobState.SUCCEEDED.value]
_FAILED_TEXT = JobState.FAILED.value
_SUCCEEDED_TEXT = JobState.SUCCEEDED.value
_MASKS = ("to_run", "running", "failed", "lost")
_COLUMNS = (
    "attempt_id",
    "rule",
    "data_id",
    "state",
    "run_id",
    "finished",
    "mem_mb_requested",
    "mem_mb_used",
    "threads",
    "runtime_s",
    "cpu_s",
    "started",
    "submitted",
)
FINISH_SLACK_S = 60.0
"""How long before its previous read a refresh looks again for attempts that ended, s: the
ledger's writers stamp an end with their log record's time, which may precede its commit."""
THROUGHPUT_WINDOW_S = 3600.0
"""The throughput counts the successes of the last hour of activity (as ``dcflow status``)."""
MAX_FAILED_SHOWN = 50
"""Failed tiles listed with their log tail (the most recent); the count covers them all."""
MAX_SKY_CELLS = 2000
"""Patches above which the sky map shows tracts (a DC2013 campaign has ~10^4 patches)."""


@dataclass(frozen=True, slots=True)
class StageCost:
    """What a stage's finished attempts asked for and used.

    Attributes
    ----------
    stage : str
        The rule.
    attempts, failed_attempts : int
        Finished attempts, and those that failed.
    mem_mb_asked_mean, mem_mb_used_mean, mem_mb_used_max : float or None
        Memory asked (``mem_mb`` resource) and used (benchmark max RSS), MB.
    cpu_efficiency : float or None
        CPU time over wall time x threads, where all three were measured.
    runtime_h, failed_runtime_h : float
        Wall time of all finished attempts, and of the failed ones, hours.
    mean_success_s : float or None
        Mean wall time of a succeeded attempt, s (the basis of the CPU-hours left).
    """

    stage: str
    attempts: int
    failed_attempts: int
    mem_mb_asked_mean: float | None
    mem_mb_used_mean: float | None
    mem_mb_used_max: float | None
    cpu_efficiency: float | None
    runtime_h: float
    failed_runtime_h: float
    mean_success_s: float | None


@dataclass(frozen=True, slots=True)
class FailedEntry:
    """A tile whose last attempt failed, with what an operator needs to act on it."""

    stage: str
    data_id: str
    attempt_id: int
    exit_code: int | None
    error_class: str | None
    failure_class: str
    """`dcflow.failures.FailureClass` value of the attempt (``unknown`` when unclassified)."""
    action: str
    """What ``rerun --failed`` does with the tile (`dcflow.failures.FailureAction` value)."""
    reason: str | None
    log_path: str | None
    log_tail: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PatchState:
    """Jobs of every patch-level stage on one sky patch, by state (``done = total - to_run``)."""

    tract: int
    patch_x: int
    patch_y: int
    total: int
    to_run: int
    running: int
    failed: int


@dataclass(frozen=True, slots=True)
class BoardView:
    """One consistent picture of the campaign, as the page renders it.

    ``rows`` are `dcflow status`'s rows (same stages, groups and counts).
    """

    name: str
    config_path: str
    rows: tuple[StageStatus, ...]
    costs: tuple[StageCost, ...]
    failed: tuple[FailedEntry, ...]
    n_failed: int
    failure_classes: Mapping[str, Mapping[str, int]]
    """Per stage, failed tiles per failure class (all of them, not only those shown)."""
    failure_actions: Mapping[str, str]
    """The action of each failure class (the board's `FailurePolicy`)."""
    patches: tuple[PatchState, ...]
    tract_centres_deg: Mapping[int, tuple[float, float]]
    n_patches_side: int
    live_runs: tuple[int, ...]
    throughput_per_h: float | None
    eta_h: float | None
    cpu_h_left: float | None
    """CPU hours the jobs left of stages with measured successes need, at their mean."""
    jobs_unmeasured: int
    """Jobs left of stages without a measured success yet (not in ``cpu_h_left``)."""
    last_attempt_id: int
    refreshed_at: float

    @property
    def stages(self) -> list[str]:
        """Stages in pipeline order."""
        return list(dict.fromkeys(r.stage for r in self.rows))

    def stage_totals(self) -> dict[str, StageStatus]:
        """Per stage, its rows summed over filters and tracts."""
        out: dict[str, StageStatus] = {}
        for r in self.rows:
            prev = out.get(r.stage)
            if prev is None:
                out[r.stage] = StageStatus(
                    r.stage, None, None, r.total, r.done, r.to_run, r.running, r.failed, r.lost
                )
            else:
                out[r.stage] = StageStatus(
                    r.stage,
                    None,
                    None,
                    prev.total + r.total,
                    prev.done + r.done,
                    prev.to_run + r.to_run,
                    prev.running + r.running,
                    prev.failed + r.failed,
                    prev.lost + r.lost,
                )
        return out


class _StageTrack:
    """Per-job state arrays of one stage and the running counts made from them."""

    def __init__(self, graph: JobGraph, rule: str, need: np.ndarray) -> None:
        n = graph.jobs(rule).n_jobs
        self.rule = rule
        self.base_need = np.array(need if need is not None else np.zeros(n), dtype=bool)
        self.ok_since = np.zeros(n, dtype=bool)
        self.last_id = np.full(n, -1, dtype=np.int64)
        self.last_state = np.full(n, -1, dtype=np.int8)
        self.last_run = np.full(n, -1, dtype=np.int64)
        self.key, self.labels = graph.group_keys(rule)
        self.totals = np.bincount(self.key, minlength=len(self.labels))
        patch = graph.jobs(rule).columns.get("patch")
        self.patch = None if patch is None else np.asarray(patch, dtype=np.int64)
        self.patch_totals = None if patch is None else np.bincount(self.patch)
        self.masks: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self._rows: list[StageStatus] | None = None
        self.patch_counts: dict[str, np.ndarray] = {}

    def states_of(self, jobs: np.ndarray | slice, live: np.ndarray) -> dict[str, np.ndarray]:
        """The masks of ``jobs`` (`dcflow.status.job_states`' rules, after its reaping)."""
        state = self.last_state[jobs]
        active = np.isin(state, _ACTIVE_CODES)
        watched = np.isin(self.last_run[jobs], live)
        running = active & watched
        failed = state == _FAILED
        need = (self.base_need[jobs] & ~self.ok_since[jobs]) | running | failed
        # an active attempt of a dead run is lost: what status finds once it has reaped the run
        lost = ((state == _LOST) | (active & ~watched)) & need
        return {"to_run": need, "running": running, "failed": failed, "lost": lost}

    def recount(self, live: np.ndarray, n_patches: int) -> None:
        """All masks and counts afresh (at start, and when the set of live runs changes)."""
        self.masks = self.states_of(slice(None), live)
        self._rows = None
        size = len(self.labels)
        self.counts = {k: np.bincount(self.key[m], minlength=size) for k, m in self.masks.items()}
        if self.patch is not None:
            self.patch_counts = {
                k: np.bincount(self.patch[m], minlength=n_patches) for k, m in self.masks.items()
            }

    def update(self, jobs: np.ndarray, live: np.ndarray) -> None:
        """Move the counts of ``jobs`` (unique indices) from their old masks to their new."""
        new = self.states_of(jobs, live)
        for name, now in new.items():
            was = self.masks[name][jobs]
            delta = now.astype(np.int64) - was.astype(np.int64)
            changed = delta != 0
            if not changed.any():
                continue
            np.add.at(self.counts[name], self.key[jobs[changed]], delta[changed])
            if self.patch is not None:
                np.add.at(self.patch_counts[name], self.patch[jobs[changed]], delta[changed])
            self.masks[name][jobs] = now
            self._rows = None

    def rows(self) -> list[StageStatus]:
        """`dcflow status` rows of this stage (groups without jobs left out), kept till a change."""
        if self._rows is not None:
            return self._rows
        out = []
        for k in np.flatnonzero(self.totals).tolist():
            band, tract = self.labels[k]
            n = {name: int(self.counts[name][k]) for name in _MASKS}
            total = int(self.totals[k])
            out.append(StageStatus(self.rule, band, tract, total, total - n["to_run"], **n))
        return out
        self._rows = out


class _CostSums:
    """Running sums of one stage's finished attempts."""

    __slots__ = (
        "attempts",
        "cpu_s",
        "cpu_wall_s",
        "failed",
        "failed_runtime_s",
        "mem_asked",
        "mem_used",
        "mem_used_max",
        "n_asked",
        "n_used",
        "runtime_s",
        "success_runtime_s",
        "successes_timed",
    )

    def __init__(self) -> None:
        self.attempts = self.failed = self.n_asked = self.n_used = self.successes_timed = 0
        self.mem_asked = self.mem_used = self.runtime_s = self.failed_runtime_s = 0.0
        self.cpu_s = self.cpu_wall_s = self.success_runtime_s = 0.0
        self.mem_used_max: float | None = None

    def add(self, row: Sequence) -> None:
        state, asked, used, threads, runtime, cpu = row[3], *row[6:11]
        self.attempts += 1
        if asked is not None:
            self.n_asked += 1
            self.mem_asked += asked
        if used is not None:
            self.n_used += 1
            self.mem_used += used
            self.mem_used_max = used if self.mem_used_max is None else max(self.mem_used_max, used)
        if runtime is not None:
            self.runtime_s += runtime
            if state == _FAILED_TEXT:
                self.failed_runtime_s += runtime
            if state == _SUCCEEDED_TEXT:
                self.success_runtime_s += runtime
                self.successes_timed += 1
            if cpu is not None:
                self.cpu_s += cpu
                self.cpu_wall_s += runtime * (threads or 1)
        if state == _FAILED_TEXT:
            self.failed += 1

    def cost(self, stage: str) -> StageCost:
        return StageCost(
            stage=stage,
            attempts=self.attempts,
            failed_attempts=self.failed,
            mem_mb_asked_mean=self.mem_asked / self.n_asked if self.n_asked else None,
            mem_mb_used_mean=self.mem_used / self.n_used if self.n_used else None,
            mem_mb_used_max=self.mem_used_max,
            cpu_efficiency=self.cpu_s / self.cpu_wall_s if self.cpu_wall_s > 0 else None,
            runtime_h=self.runtime_s / 3600.0,
            failed_runtime_h=self.failed_runtime_s / 3600.0,
            mean_success_s=(
                self.success_runtime_s / self.successes_timed if self.successes_timed else None
            ),
        )


class CampaignBoard:
    """The live state of one campaign, read from its plan snapshot and its ledger.

    Parameters
    ----------
    name : str
        The campaign's name (shown, and its URL path).
    config_path : path-like
        The campaign config (shown in the rerun commands).
    graph : JobGraph
        The campaign's jobs.
    snapshot : PlanSnapshot
        The needrun arrays the counts start from.
    ledger_path : path-like
        The run ledger, opened read-only (it may not exist yet: the board waits for it).
    workdir : path-like
        Snakemake's working directory (log paths in the ledger are relative to it).
    policy : FailurePolicy, optional
        The action of each failure class (default: `FailurePolicy`'s defaults).
    """

    def __init__(
        self,
        name: str,
        config_path: str | os.PathLike,
        graph: JobGraph,
        snapshot: PlanSnapshot,
        ledger_path: str | os.PathLike,
        workdir: str | os.PathLike,
        *,
        policy: FailurePolicy | None = None,
    ) -> None:
        self.name = name
        self.policy = policy or FailurePolicy()
        self._class_of: dict[int, tuple[str, str]] = {}
        self.config_path = str(config_path)
        self.graph = graph
        self.snapshot = snapshot
        self.ledger_path = Path(ledger_path)
        self.workdir = Path(workdir)
        self._ledger: Ledger | None = None
        self._lock = threading.Lock()
        self._n_patches = len(graph.index.patch_tract)
        self._tracks = {
            s.rule: _StageTrack(graph, s.rule, snapshot.need.get(s.rule))
            for s in graph.stages
            if graph.jobs(s.rule).n_jobs
        }
        self._live = np.zeros(0, dtype=np.int64)
        self._costs: dict[str, _CostSums] = {}
        self._open_ids: set[int] = set()
        self._unnamed: set[int] = set()
        self._read_at: float | None = None
        self._last_id = 0
        self._success_ends: list[np.ndarray] = [np.zeros(0)]
        self._starts: list[np.ndarray] = [np.zeros(0)]
        for track in self._tracks.values():
            track.recount(self._live, self._n_patches)

    def close(self) -> None:
        """Close the ledger connection."""
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def _connect(self) -> Ledger | None:
        if self._ledger is None and self.ledger_path.is_file():
            self._ledger = Ledger(self.ledger_path, read_only=True)
        return self._ledger

    def refresh(self) -> int:
        """Read what the ledger gained or changed since the last refresh; returns the rows read."""
        with self._lock:
            ledger = self._connect()
            if ledger is None:
                return 0
            live = np.array(
                sorted(r.run_id for r in ledger.runs() if r.finished is None and r.is_alive()),
                dtype=np.int64,
            )
            since = None if self._read_at is None else self._read_at - FINISH_SLACK_S
            self._read_at = time.time()
            rows = ledger.attempt_rows(
                after_id=self._last_id, finished_since=since, ids=self._unnamed, columns=_COLUMNS
            )
            # rows that ended long ago were applied already: only news and open attempts count
            rows = [r for r in rows if r[0] > self._last_id or r[0] in self._open_ids]
            live_changed = not np.array_equal(live, self._live)
            self._live = live
            self._apply(rows, recount=live_changed)
            return len(rows)

    def _apply(self, rows: list, *, recount: bool) -> None:
        by_rule: dict[str, list] = {}
        terminal = {s.value for s in TERMINAL_STATES}
        for row in rows:
            attempt_id, rule, state = row[0], row[1], row[3]
            self._last_id = max(self._last_id, attempt_id)
            if state in terminal:
                self._open_ids.discard(attempt_id)
                if rule is not None:
                    sums = self._costs.get(rule)
                    if sums is None:
                        sums = self._costs[rule] = _CostSums()
                    sums.add(row)
            else:
                self._open_ids.add(attempt_id)
            # a job's attempt is inserted, then named (rule, tile) in a second write: read an
            # unnamed open attempt again until it has its name
            if rule is None and state not in terminal:
                self._unnamed.add(attempt_id)
            else:
                self._unnamed.discard(attempt_id)
            if rule in self._tracks:
                by_rule.setdefault(rule, []).append(row)
        succeeded = JobState.SUCCEEDED.value
        ends = [r[5] for r in rows if r[3] == succeeded and r[5] is not None and r[1] is not None]
        starts = [r[11] if r[11] is not None else r[12] for r in rows]
        self._success_ends.append(np.array(ends, dtype=float))
        self._starts.append(np.array([t for t in starts if t is not None], dtype=float))
        for rule, found in by_rule.items():
            self._apply_stage(self._tracks[rule], found, update=not recount)
        if recount:
            for track in self._tracks.values():
                track.recount(self._live, self._n_patches)

    def _apply_stage(self, track: _StageTrack, rows: list, *, update: bool) -> None:
        jobs = self.graph.find_tiles(track.rule, [str(r[2]) for r in rows])
        known = jobs >= 0
        if not known.any():
            return
        rows = [r for r, k in zip(rows, known, strict=True) if k]
        jobs = jobs[known]
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        state = np.array([_CODE[r[3]] for r in rows], dtype=np.int8)
        run = np.array([r[4] for r in rows], dtype=np.int64)
        finished = np.array([np.nan if r[5] is None else r[5] for r in rows], dtype=float)
        track.ok_since[jobs[(state == _SUCCEEDED) & (finished >= self.snapshot.scanned_at)]] = True
        order = np.argsort(ids)[::-1]  # newest first: np.unique keeps each job's first = newest
        touched, first = np.unique(jobs[order], return_index=True)
        newest = order[first]
        newer = ids[newest] >= track.last_id[touched]
        track.last_id[touched[newer]] = ids[newest[newer]]
        track.last_state[touched[newer]] = state[newest[newer]]
        track.last_run[touched[newer]] = run[newest[newer]]
        if update:
            track.update(touched, self._live)

    def throughput_per_h(self, *, now: float | None = None) -> float | None:
        """Jobs succeeded per hour over the last hour of activity (None without any success).

        `dcflow.ledger.Ledger.throughput_per_h`'s rule, from the ends and starts the board
        has read (that method scans the ledger: seconds at 10^6 attempts).
        """
        if len(self._success_ends) > 1:
            self._success_ends = [np.concatenate(self._success_ends)]
        if len(self._starts) > 1:
            self._starts = [np.concatenate(self._starts)]
        ends, starts = self._success_ends[0], self._starts[0]
        if ends.size == 0:
            return None
        last = float(ends.max())
        end = max(last, time.time() if now is None else now) if self._live.size else last
        begin = end - THROUGHPUT_WINDOW_S
        n_done = int(np.count_nonzero(ends >= begin))
        recent = starts[starts >= begin]
        first = float(recent.min()) if recent.size else begin
        return n_done / max(end - max(begin, first), 1.0) * 3600.0

    def _failure_classes(self, ledger: Ledger, failed_ids: np.ndarray) -> dict[str, dict]:
        """Per stage, failed tiles per class; a failed attempt's class is read once, then kept."""
        wanted = failed_ids.tolist()
        missing = [i for i in wanted if i not in self._class_of]
        if missing:
            rows = ledger.attempt_rows(
                after_id=2**62, ids=missing, columns=("attempt_id", "rule", "failure_class")
            )
            for attempt_id, rule, name in rows:
                self._class_of[attempt_id] = (str(rule), name or FailureClass.UNKNOWN.value)
        self._class_of = {i: self._class_of[i] for i in wanted if i in self._class_of}
        out: dict[str, dict[str, int]] = {}
        for rule, name in self._class_of.values():
            per = out.setdefault(rule, {})
            per[name] = per.get(name, 0) + 1
        return out

    def _failed_entries(self, ledger: Ledger) -> tuple[list[FailedEntry], int, dict]:
        ids = []
        for track in self._tracks.values():
            ids.append(track.last_id[track.masks["failed"]])
        failed_ids = np.sort(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)
        classes = self._failure_classes(ledger, failed_ids)
        shown = failed_ids[::-1][:MAX_FAILED_SHOWN].tolist()
        columns = (
            "attempt_id",
            "rule",
            "data_id",
            "exit_code",
            "error_class",
            "reason",
            "log_path",
            "failure_class",
        )
        rows = ledger.attempt_rows(after_id=2**62, ids=shown, columns=columns)
        rows.sort(key=lambda r: -r[0])
        entries = [
            FailedEntry(
                stage=str(r[1]),
                data_id=str(r[2]),
                attempt_id=int(r[0]),
                exit_code=r[3],
                error_class=r[4],
                failure_class=r[7] or FailureClass.UNKNOWN.value,
                action=self.policy.action(r[7] or FailureClass.UNKNOWN).value,
                reason=r[5],
                log_path=r[6],
                log_tail=log_tail(self.workdir / r[6], 8) if r[6] else (),
            )
            for r in rows
        ]
        return entries, int(failed_ids.size), classes

    def _patches(self) -> tuple[list[PatchState], int]:
        """Sky cells and cells per tract side: patches, or whole tracts above `MAX_SKY_CELLS`."""
        index = self.graph.index
        sums = {name: np.zeros(self._n_patches, dtype=np.int64) for name in ("total", *_MASKS)}
        for track in self._tracks.values():
            if track.patch is None:
                continue
            sums["total"][: track.patch_totals.size] += track.patch_totals
            for name in _MASKS:
                sums[name] += track.patch_counts[name]
        side = index.skymap.n_patches if index.skymap is not None else 1
        tract = np.asarray(index.patch_tract, dtype=np.int64)
        x = np.asarray(index.patch_x, dtype=np.int64)
        y = np.asarray(index.patch_y, dtype=np.int64)
        if np.count_nonzero(sums["total"]) > MAX_SKY_CELLS and tract.size:
            sums = {
                k: np.bincount(tract, weights=v, minlength=int(tract.max()) + 1).astype(np.int64)
                for k, v in sums.items()
            }
            tract = np.arange(sums["total"].size)
            x = y = np.zeros(tract.size, dtype=np.int64)
            side = 1
        keep = np.flatnonzero(sums["total"])
        columns = [tract[keep], x[keep], y[keep], *(sums[k][keep] for k in ("total", *_MASKS[:3]))]
        cells = [PatchState(*values) for values in zip(*(c.tolist() for c in columns), strict=True)]
        return cells, side

    def view(self) -> BoardView:
        """The campaign as it is now (after a `refresh`)."""
        with self._lock:
            rows: list[StageStatus] = []
            for track in self._tracks.values():
                rows += track.rows()
            left = sum(r.to_run for r in rows)
            rows.append(
                StageStatus(TARGET_RULE, None, None, 1, int(left == 0), int(left > 0), 0, 0, 0)
            )
            ledger = self._connect()
            rate = self.throughput_per_h()
            failed, n_failed, classes = (
                self._failed_entries(ledger) if ledger is not None else ([], 0, {})
            )
            costs = [c.cost(rule) for rule, c in self._costs.items()]
            mean_s = {c.stage: c.mean_success_s for c in costs}
            to_run = {}
            for r in rows:
                to_run[r.stage] = to_run.get(r.stage, 0) + r.to_run
            known = [to_run[s] * mean_s[s] for s in to_run if mean_s.get(s) is not None]
            cpu_h_left = sum(known) / 3600.0 if known else None
            unmeasured = sum(
                n for s, n in to_run.items() if mean_s.get(s) is None and s != TARGET_RULE
            )
            index = self.graph.index
            cells, side = self._patches()
            return BoardView(
                name=self.name,
                config_path=self.config_path,
                rows=tuple(rows),
                costs=tuple(costs),
                failed=tuple(failed),
                n_failed=n_failed,
                failure_classes=classes,
                failure_actions=self.policy.as_dict(),
                patches=tuple(cells),
                tract_centres_deg={t.tract_id: (t.ra_deg, t.dec_deg) for t in index.tracts},
                n_patches_side=side,
                live_runs=tuple(int(r) for r in self._live),
                throughput_per_h=rate,
                eta_h=left / rate if rate else (0.0 if left == 0 else None),
                cpu_h_left=cpu_h_left,
                jobs_unmeasured=unmeasured,
                last_attempt_id=self._last_id,
                refreshed_at=time.time(),
            )
