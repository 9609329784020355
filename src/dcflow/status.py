"""Campaign status, failed tiles and backend checks: what ``dcflow status / failed / ping`` say.

Status joins two views: the plan (what is complete on disk, from one scan of the output tree)
and the run ledger (what is running, failed or was lost). It works while a run goes and after
it stopped or died: a run whose driver is gone is closed first and its unfinished attempts
become `JobState.LOST`, so "running" never counts jobs nobody watches.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from dcflow.campaign.snapshots import PlanSnapshot
from dcflow.errors import InputDataError
from dcflow.failures import FailureClass, FailurePolicy
from dcflow.io import read_fits
from dcflow.ledger import Attempt, Ledger, Run, tile_of
from dcflow.pipeline.graph import JobGraph
from dcflow.pipeline.spec import TARGET_RULE
from dcflow.states import ACTIVE_STATES, JobState

__all__ = [
    "CampaignStatus",
    "Check",
    "FailedTile",
    "PingResult",
    "QueueInstance",
    "StageStatus",
    "UntrustedResult",
    "campaign_status",
    "failed_tiles",
    "job_states",
    "log_tail",
    "marker_jobid",
    "parse_proxy_timeleft",
    "parse_qstat_f",
    "ping_dirac",
    "ping_gridengine",
    "read_env_file",
    "untrusted_results",
]


@dataclass(frozen=True, slots=True)
class StageStatus:
    """Counts of one stage (and filter, tract) by state."""

    stage: str
    filter: str | None
    tract: int | None
    total: int
    done: int
    to_run: int
    running: int
    failed: int
    lost: int


@dataclass(frozen=True, slots=True)
class CampaignStatus:
    """What ``dcflow status`` reports.

    Attributes
    ----------
    rows : tuple of StageStatus
        Per stage x filter x tract.
    running : tuple of Attempt
        Attempts submitted or running under a live driver (with backend ids).
    live_runs : tuple of int
        Ledger runs whose driver is alive.
    reaped_runs : tuple of int
        Runs found dead and closed by this call.
    last_run : Run or None
        The most recent run.
    throughput_per_h : float or None
        Jobs succeeded per hour over the last hour of activity.
    eta_h : float or None
        Hours left at that throughput.
    untrusted : tuple of UntrustedResult
        Outputs on disk whose stage judged (part of) them untrusted (`untrusted_results`).
    """

    rows: tuple[StageStatus, ...]
    running: tuple[Attempt, ...]
    live_runs: tuple[int, ...]
    reaped_runs: tuple[int, ...]
    last_run: Run | None
    throughput_per_h: float | None
    eta_h: float | None
    disk_seen_at: float | None = None
    """When the plan these counts start from scanned the outputs (later: the ledger's news)."""
    untrusted: tuple[UntrustedResult, ...] = ()
    failure_classes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Per stage, failed tiles per `dcflow.failures.FailureClass` (`Ledger.failure_counts`)."""

    @property
    def n_failed(self) -> int:
        """Tiles whose last attempt failed and whose outputs are still missing."""
        return sum(r.failed for r in self.rows)

    @property
    def complete(self) -> bool:
        """True if nothing is left to run (see ``untrusted`` before calling it a success)."""
        return all(r.to_run == 0 for r in self.rows)

    @property
    def n_untrusted(self) -> int:
        """Outputs whose stage judged them untrusted."""
        return len(self.untrusted)

    def to_json(self) -> str:
        """Machine-readable status."""
        return json.dumps(
            {
                "complete": self.complete,
                "n_failed": self.n_failed,
                "n_untrusted": self.n_untrusted,
                "untrusted": [asdict(u) for u in self.untrusted],
                "failure_classes": {k: dict(v) for k, v in self.failure_classes.items()},
                "rows": [asdict(r) for r in self.rows],
                "running": [
                    {
                        "rule": a.rule,
                        "data_id": a.data_id,
                        "state": a.state.value,
                        "backend": a.backend,
                        "backend_jobid": a.backend_jobid,
                        "run_id": a.run_id,
                        "since": a.started or a.submitted,
                    }
                    for a in self.running
                ],
                "live_runs": list(self.live_runs),
                "reaped_runs": list(self.reaped_runs),
                "throughput_per_h": self.throughput_per_h,
                "eta_h": self.eta_h,
                "disk_seen_at": self.disk_seen_at,
            },
            indent=2,
        )


@dataclass(frozen=True, slots=True)
class UntrustedResult:
    """An output that exists, but whose stage judged some of its rows untrusted.

    Attributes
    ----------
    rule, data_id : str
        The job that wrote it (``data_id`` as in the ledger).
    path : str
        The output file.
    n_untrusted : int
        Rows judged untrusted (the header keyword the pipeline spec names, e.g. ``NUNTRUST``).
    reasons : tuple of str
        ``"<amp>: <verdict>"`` per untrusted row, or why the file could not be read.
    """

    rule: str
    data_id: str
    path: str
    n_untrusted: int
    reasons: tuple[str, ...]


def untrusted_results(
    outputs: Sequence[tuple[str, Mapping[str, object], str, str]],
) -> list[UntrustedResult]:
    """The outputs among ``outputs`` that exist and carry an untrusted verdict.

    Parameters
    ----------
    outputs : sequence of (rule, data id, path, keyword)
        Outputs with a verdict (`dcflow.pipeline.graph.JobGraph.verdict_outputs`): FITS tables
        whose HDU 1 header counts untrusted rows under ``keyword`` and whose ``trusted`` and
        ``verdict`` columns say which and why.

    Returns
    -------
    list of UntrustedResult
        Missing files are left out (the plan counts them to run); a file that cannot be read
        as such a table is reported untrusted with the reason, never taken as a success.
    """
    found = []
    for rule, data_id, path, keyword in outputs:
        if not os.path.exists(path):
            continue
        tile = tile_of(data_id)
        try:
            hdus = read_fits(path)
            if len(hdus) < 2 or keyword not in hdus[1].header:
                raise InputDataError(f"{path}: no {keyword} in the table header")
            n_untrusted = int(hdus[1].header[keyword])
            rows = hdus[1].data
            names = rows.columns.names if rows is not None else []
            reasons = tuple(
                f"{row['amp'] if 'amp' in names else i}: {row['verdict']}"
                for i, row in enumerate(rows if rows is not None else [])
                if "trusted" in names and "verdict" in names and not bool(row["trusted"])
            )
        except (InputDataError, ValueError) as exc:
            found.append(UntrustedResult(rule, tile, str(path), 0, (f"unreadable: {exc}",)))
            continue
        if n_untrusted:
            found.append(UntrustedResult(rule, tile, str(path), n_untrusted, reasons))
    return found


MAX_MARKER_READS = 1000
"""Running attempts above which status does not read Snakemake's markers for missing job ids."""


def marker_jobid(workdir: str | os.PathLike, output: str) -> str | None:
    """The backend job id Snakemake stored in the incomplete marker of a running job's output.

    Snakemake writes ``{"external_jobid": ...}`` when an executor registers a submitted job,
    whatever the executor: a fallback when the executor did not log its ids for the ledger.
    """
    marker = Path(workdir) / ".snakemake" / "incomplete"
    # Snakemake names the marker by the output as its rule spells it: relative to the working
    # directory for a relative output root, absolute for an absolute one.
    spellings = [output]
    if os.path.isabs(output):
        spellings.insert(0, os.path.relpath(output, workdir))
    for spelling in spellings:
        name = base64.urlsafe_b64encode(spelling.encode()).decode()
        if len(name) > 254:
            continue  # split marker names: not worth a walk here
        try:
            value = json.loads((marker / name).read_text()).get("external_jobid")
        except (OSError, ValueError, AttributeError):
            continue
        return None if value is None else str(value)
    return None


def campaign_status(
    graph: JobGraph,
    snapshot: PlanSnapshot,
    ledger: Ledger,
    *,
    window_s: float = 3600.0,
    workdir: str | os.PathLike | None = None,
    untrusted: Sequence[UntrustedResult] = (),
) -> CampaignStatus:
    """Join a plan's needrun arrays (disk) and the ledger (attempts) into counts by state.

    A job the plan found to run but whose last attempt succeeded after the plan's scan is
    done; running, failed and lost count the jobs still to run whose last attempt is in that
    state. Closes runs whose driver died first (their active attempts become lost). With
    ``workdir``, running attempts without a backend job id get the one Snakemake stored in
    their output's incomplete marker (`marker_jobid`). ``untrusted`` (`untrusted_results`) is
    carried into the status as it is. Arrays throughout: a ledger of 10^6 attempts against a
    DC2013 campaign takes seconds.
    """
    reaped = ledger.reap_dead_runs()
    runs = ledger.runs()
    live = tuple(r.run_id for r in runs if r.finished is None)
    rows: list[StageStatus] = []
    anything_left = False
    for rule, masks in job_states(graph, snapshot, ledger, live).items():
        anything_left |= bool(masks["to_run"].any())
        for band, tract, total, n in graph.group_counts(rule, masks):
            rows.append(StageStatus(rule, band, tract, total, total - n["to_run"], **n))
    rows.append(
        StageStatus(TARGET_RULE, None, None, 1, int(not anything_left), int(anything_left), 0, 0, 0)
    )
    running = tuple(a for a in ledger.attempts(states=ACTIVE_STATES) if a.run_id in live)
    if workdir is not None and len(running) <= MAX_MARKER_READS:
        running = tuple(
            a
            if a.backend_jobid or not a.outputs
            else replace(a, backend_jobid=marker_jobid(workdir, a.outputs[0]))
            for a in running
        )
    rate = ledger.throughput_per_h(window_s=window_s)
    left = sum(r.to_run for r in rows)
    eta = left / rate if rate else (0.0 if left == 0 else None)
    return CampaignStatus(
        rows=tuple(rows),
        running=running,
        live_runs=live,
        reaped_runs=tuple(reaped),
        last_run=runs[-1] if runs else None,
        throughput_per_h=rate,
        eta_h=eta,
        disk_seen_at=snapshot.scanned_at,
        untrusted=tuple(untrusted),
        failure_classes=ledger.failure_counts(),
    )


def job_states(
    graph: JobGraph, snapshot: PlanSnapshot, ledger: Ledger, live: Sequence[int]
) -> dict[str, dict[str, np.ndarray]]:
    """Per stage, one boolean per job for each of ``to_run``, ``running``, ``failed``, ``lost``.

    ``to_run`` is the plan's needrun array less the jobs that succeeded after the plan's scan,
    plus the jobs whose last attempt is running or failed (a failed job's outputs are gone);
    the others are among ``to_run``, by the state of the job's last attempt (running: under one
    of the ``live`` runs). Two indexed ledger queries and array lookups: seconds for a ledger
    of 10^6 attempts against a DC2013 campaign.
    """
    done_since = ledger.succeeded_since(snapshot.scanned_at)
    unsettled: dict[str, list[tuple]] = {}
    for rule, tile, state, run_id in ledger.unsettled_tiles():
        unsettled.setdefault(rule, []).append((tile, state, run_id))
    active = [s.value for s in ACTIVE_STATES]
    out = {}
    for s in graph.stages:
        n_jobs = graph.jobs(s.rule).n_jobs
        need = np.array(snapshot.need.get(s.rule, np.zeros(n_jobs, dtype=bool)), dtype=bool)
        if s.rule in done_since:
            jobs = graph.find_tiles(s.rule, done_since[s.rule])
            need[jobs[jobs >= 0]] = False
        masks = {name: np.zeros(n_jobs, dtype=bool) for name in ("running", "failed", "lost")}
        entries = unsettled.get(s.rule, [])
        if entries:
            jobs = graph.find_tiles(s.rule, [e[0] for e in entries])
            state = np.array([e[1] for e in entries])
            run_id = np.array([e[2] for e in entries], dtype=np.int64)
            known = jobs >= 0
            where = {
                "running": known & np.isin(state, active) & np.isin(run_id, list(live)),
                "failed": known & (state == JobState.FAILED.value),
                "lost": known & (state == JobState.LOST.value),
            }
            need[jobs[where["running"] | where["failed"]]] = True
            for name, found in where.items():
                masks[name][jobs[found]] = True
                masks[name] &= need
        out[s.rule] = {"to_run": need, **masks}
    return out


@dataclass(frozen=True, slots=True)
class FailedTile:
    """A tile whose last attempt failed, with what an operator needs to act on it."""

    rule: str
    data_id: str
    attempts: int
    exit_code: int | None
    error_class: str | None
    reason: str | None
    failure_class: str
    action: str
    memory_failure: bool
    mem_mb_requested: int | None
    backend: str | None
    backend_jobid: str | None
    log_path: str | None
    log_tail: tuple[str, ...]
    outputs: tuple[str, ...]
    run_id: int


def log_tail(
    path: str | os.PathLike | None, n_lines: int = 10, *, max_bytes: int = 65536
) -> tuple[str, ...]:
    """The last ``n_lines`` lines of a log (reads at most ``max_bytes`` from its end)."""
    if not path:
        return ()
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ()
    return tuple(text.splitlines()[-n_lines:])


def _tract_of(attempt: Attempt) -> int | None:
    tract = attempt.wildcards.get("tract")
    return None if tract is None else int(tract)


def failed_tiles(
    ledger: Ledger,
    *,
    stage: str | None = None,
    tract: int | None = None,
    on_disk: Callable[[str], bool] | None = os.path.exists,
    n_lines: int = 10,
    count_attempts: bool = True,
    policy: FailurePolicy | None = None,
) -> list[FailedTile]:
    """Tiles whose last attempt failed, optionally of one stage (rule) and tract.

    Tiles whose every output is now on disk (``on_disk``; None: do not look) are left out:
    a later run made them. Only failed attempts are read, never a plan: one indexed query and
    a stat per output of a failed tile (and, with ``count_attempts``, one count per tile;
    without, ``attempts`` is 0). ``action`` is what ``policy`` (the defaults when None) does
    with the tile's failure class.
    """
    policy = FailurePolicy() if policy is None else policy
    attempts = [
        a
        for a in ledger.failed_tiles()
        if a.state is JobState.FAILED
        and (stage is None or a.rule == stage)
        and (tract is None or _tract_of(a) == tract)
        and not (on_disk is not None and a.outputs and all(map(on_disk, a.outputs)))
    ]
    counts = (
        ledger.tile_attempt_counts((str(a.rule), str(a.data_id)) for a in attempts)
        if count_attempts
        else {}
    )
    return [
        FailedTile(
            rule=str(a.rule),
            data_id=str(a.data_id),
            attempts=counts.get((str(a.rule), str(a.data_id)), 0),
            exit_code=a.exit_code,
            error_class=a.error_class,
            reason=a.reason,
            failure_class=a.failure_class or FailureClass.UNKNOWN.value,
            action=policy.action(a.failure_class or FailureClass.UNKNOWN).value,
            memory_failure=a.memory_failure,
            mem_mb_requested=a.mem_mb_requested,
            backend=a.backend,
            backend_jobid=a.backend_jobid,
            log_path=a.log_path,
            log_tail=log_tail(a.log_path, n_lines),
            outputs=a.outputs,
            run_id=a.run_id,
        )
        for a in attempts
    ]


# --- backend checks (dcflow ping) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One check of a backend: its name, whether it passed and what was found."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class PingResult:
    """The checks of one backend; ``ok`` if all passed."""

    backend: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True if every check passed."""
        return all(c.ok for c in self.checks)


@dataclass(frozen=True, slots=True)
class QueueInstance:
    """One queue instance of ``qstat -f``: ``queue@host``, slots and state letters."""

    name: str
    slots_used: int
    slots_total: int
    states: str

    @property
    def usable(self) -> bool:
        """True unless in error (E), disabled (d), unreachable (u) or suspended (sSCAD)."""
        return not set(self.states) & set("EduSsCAD")


_QUEUE_LINE = re.compile(
    r"^(?P<name>\S+@\S+)\s+\S+\s+(?:(?P<resv>\d+)/)?(?P<used>\d+)/(?P<total>\d+)\s+\S+\s+\S+"
    r"(?:\s+(?P<states>[a-zA-Z]+))?\s*$"
)


def parse_qstat_f(text: str) -> list[QueueInstance]:
    """Queue instances of ``qstat -f`` output (header and job lines are skipped)."""
    out = []
    for line in text.splitlines():
        match = _QUEUE_LINE.match(line.strip())
        if match:
            out.append(
                QueueInstance(
                    name=match["name"],
                    slots_used=int(match["used"]),
                    slots_total=int(match["total"]),
                    states=match["states"] or "",
                )
            )
    return out


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """``export KEY="value"`` lines of a shell env file (as written by scripts/*-up)."""
    env = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r"^\s*export\s+(\w+)=(.*)$", line)
        if match:
            env[match[1]] = match[2].strip().strip("\"'")
    return env


def _run(argv: list[str], env: Mapping[str, str], timeout_s: float) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            argv,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(argv)}: no answer within {timeout_s:.0f} s"
    return proc.returncode, (proc.stdout + proc.stderr)


def ping_gridengine(
    *, env_file: str | os.PathLike | None = None, queue: str | None = None, timeout_s: float = 20
) -> PingResult:
    """Check that Grid Engine accepts jobs.

    The qmaster must answer ``qstat -f`` and at least one queue instance (of ``queue``, if
    given) must be usable (not in error, disabled, unreachable or suspended).
    """
    env = dict(os.environ)
    if "SGE_ROOT" not in env and env_file and Path(env_file).is_file():
        env.update(read_env_file(env_file))
    if shutil.which("qstat", path=env.get("PATH")) is None:
        return PingResult("gridengine", (Check("qstat", False, "qstat not found on PATH"),))
    code, text = _run(["qstat", "-f"], env, timeout_s)
    if code != 0:
        detail = f"qmaster did not answer (qstat -f exit {code}): {text.strip()[:300]}"
        return PingResult("gridengine", (Check("qmaster", False, detail),))
    checks = [Check("qmaster", True, "qstat -f answered")]
    instances = [q for q in parse_qstat_f(text) if queue is None or q.name.split("@")[0] == queue]
    bad = [q for q in instances if not q.usable]
    good = [q for q in instances if q.usable]
    if not instances:
        checks.append(Check("queues", False, f"no queue instance{' of ' + queue if queue else ''}"))
    elif not good:
        listing = ", ".join(f"{q.name} ({q.states})" for q in bad)
        checks.append(Check("queues", False, f"no usable queue instance: {listing}"))
    else:
        slots = sum(q.slots_total - q.slots_used for q in good)
        detail = f"{len(good)} usable queue instance(s), {slots} free slot(s)"
        if bad:
            detail += "; not usable: " + ", ".join(f"{q.name} ({q.states})" for q in bad)
        checks.append(Check("queues", True, detail))
    return PingResult("gridengine", tuple(checks))


def parse_proxy_timeleft(text: str) -> float | None:
    """Seconds left on a proxy from ``dirac-proxy-info`` output (``timeleft : HH:MM:SS``)."""
    match = re.search(r"timeleft\s*:\s*(\d+):(\d{2}):(\d{2})", text)
    if not match:
        return None
    hours, minutes, seconds = (int(g) for g in match.groups())
    return hours * 3600.0 + minutes * 60.0 + seconds


DIRAC_SERVICES = ("WorkloadManagement/JobManager", "WorkloadManagement/JobMonitoring")
"""Services a campaign needs to answer: submission and status."""


def ping_dirac(
    *,
    env_file: str | os.PathLike | None = None,
    min_proxy_hours: float = 24.0,
    services: Sequence[str] = DIRAC_SERVICES,
    timeout_s: float = 60,
) -> PingResult:
    """Check that DIRAC accepts jobs.

    The proxy must be valid for ``min_proxy_hours`` and the WMS services must answer a ping.
    """
    env = dict(os.environ)
    if env_file and Path(env_file).is_file():
        env.update({k: v for k, v in read_env_file(env_file).items() if k not in os.environ})
    server_python = env.get("DCFLOW_DIRAC_SERVER_PYTHON")
    if server_python:
        env["PATH"] = str(Path(server_python).parent) + os.pathsep + env.get("PATH", "")
    if "DIRACSYSCONFIG" not in env:
        where = f"{env_file} is missing" if env_file else "no env file given"
        detail = f"no DIRAC environment: DIRACSYSCONFIG unset and {where} (scripts/dirac-up)"
        return PingResult("dirac", (Check("environment", False, detail),))
    if shutil.which("dirac-proxy-info", path=env.get("PATH")) is None:
        detail = "dirac-proxy-info not found (no DIRAC client: scripts/install-dirac-client)"
        return PingResult("dirac", (Check("client", False, detail),))
    checks = []
    code, text = _run(["dirac-proxy-info"], env, timeout_s)
    left = parse_proxy_timeleft(text) if code == 0 else None
    if left is None:
        checks.append(Check("proxy", False, f"no valid proxy (exit {code}): {text.strip()[-300:]}"))
    else:
        ok = left >= min_proxy_hours * 3600.0
        detail = f"proxy valid for {left / 3600.0:.1f} h (need {min_proxy_hours:g} h)"
        checks.append(Check("proxy", ok, detail if ok else detail + ": renew it"))
    for service in services:
        system, name = service.split("/")
        code, text = _run(["dirac-framework-ping-service", system, name], env, timeout_s)
        ok = code == 0 and "'OK': True" in text
        detail = "answered" if ok else f"no answer (exit {code}): {text.strip()[-300:]}"
        checks.append(Check(service, ok, detail))
    return PingResult("dirac", tuple(checks))
