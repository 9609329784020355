"""Chaos campaign: a sharded noop campaign run while faults drawn from a seed are injected.

Two runs of the same campaign (`tests/noop_campaigns.py`, with a few corrupted raws: one
truncated, one with an all-NaN amplifier, one missing a header keyword):

1. a **reference** run, fault-free (``dcflow run --sharded`` once): its wall time, its output
   files and their checksums, its failed tiles (the corrupted inputs' jobs);
2. a **chaos** run, on its own output disk, while faults are injected at times drawn from
   ``--seed``: jobs failing once with random exit codes or out of memory (the
   ``DCFLOW_FAULTS`` knob, fire-once; on Grid Engine a real allocation past the job's
   h_vmem, mode ``vmem``), running jobs killed (``qdel`` on Grid Engine, SIGKILL of
   the job's process locally), the driver SIGKILLed with its process group (twice) and once
   its main process only (its shard Snakemakes left alive), one shard Snakemake SIGKILLed, the
   output disk full (ENOSPC) for ``--enospc-seconds`` (a size-limited tmpfs mounted by the
   benchmark as root, filled with a ballast file); on Grid Engine ``sge_execd`` stopped for
   60 s and ``sge_qmaster`` restarted (under ``flock /tmp/ge.lock``, state restored; after the
   restart sge_execd holds back the end of DRMAA jobs for 600 s, its delayed job reporting, which
   the chaos wall time then includes); on DIRAC
   running jobs killed through the WMS (an operator's kill), a pilot SIGKILLed with the job it
   runs (its JobAgent and everything below; the pilot loop starts a new one, the StalledJobAgent
   marks the orphaned job Stalled) and the DIRAC services restarted (``scripts/dirac-restart
   services`` under ``flock /tmp/dirac.lock``: JobManager, Matcher, JobMonitoring, JobStateUpdate,
   sandboxes... all down for the restart's duration). After a
   driver kill, ``dcflow run --sharded`` again; at the end ``dcflow rerun --failed``
   (``--include-class transient_io`` once the disk has room again) and ``dcflow run --sharded``
   until nothing but the corrupted inputs' tiles is left.

Then it prints the table of issue 20: duplicated successful runs, duplicate submissions of a
job (two live attempts of one job at once), outputs lost or partial against the reference
(missing, extra, or different content), finished jobs redone (an attempt started after a
success of the same job, or an output modified after its job first succeeded), failed tiles that are
not the corrupted inputs' and corrupted inputs not named in their tile's failure, the ledger
against the disk (jobs with a success in the ledger vs jobs whose outputs exist; ``dcflow
status`` done count vs the same), and the wall time against the reference.

Usage: ``.venv/bin/python benchmarks/chaos.py [--backend local|sge|dirac] [--seed 20]
[--visits-per-filter 6] [--job-seconds 2] [--workdir DIR]``; ``sge`` needs
``source $DCFLOW_RUN_DIR/gridengine/env.sh``; ``dirac`` reads ``$DCFLOW_RUN_DIR/dirac/env.sh``
(scripts/dirac-up) and restarts the shared DIRAC's services once: run it at a smaller scale
(``--visits-per-filter 1 --ccds 1 --tracts 1``); a pilot kill needs its StalledJobAgent (left
out, and said so, otherwise). ``--faults kill_pilot,dirac_service`` injects only the timed
faults named; ``--visits-per-filter 0`` runs the sensor (Fe55) shard alone, ``--fail-rate 0``
fails no job on purpose. ENOSPC needs root (skipped, and said so, otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from noop_campaigns import write_noop_campaign  # noqa: E402

from dcflow.config_schema import load_config  # noqa: E402
from dcflow.joblog import FAULTS_ENV, FAULTS_ONCE_ENV  # noqa: E402
from dcflow.layout import Layout  # noqa: E402
from dcflow.orchestration.snakemake_cli import SNAKEMAKE_ENTRY  # noqa: E402

__all__ = ["ChaosResult", "corrupt_inputs", "main", "run_chaos", "table_lines"]

DCFLOW = str(Path(sys.executable).with_name("dcflow"))
SHARDS = {
    "visits_per_shard": 4,
    "patches_per_shard": 4,
    "max_concurrent_shards": 3,
    "max_queued_jobs": 8,
}
NOT_PRODUCTS = ("logs", "benchmarks", ".dcflow", "shards", "plan", "report")
CORRUPTIONS = ("truncated", "nan_amplifier", "missing_key")
FE55_SENSORS = (0, 1, 2, 3)
OUTAGES: list[threading.Thread] = []  # Grid Engine outages in progress


@dataclass
class ChaosResult:
    """What a chaos run measured (the table's rows) and what happened."""

    backend: str
    seed: int
    n_jobs: int
    reference_wall_s: float
    chaos_wall_s: float
    duplicated_successes: int
    duplicate_submissions: int
    outputs_lost_or_partial: int
    finished_jobs_redone: int
    corrupted_not_named: int
    other_failed: int
    ledger_vs_disk: int
    status_vs_disk: int
    faults: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def zeros(self) -> dict[str, int]:
        """The figures that must be 0."""
        return {
            "duplicated successful runs": self.duplicated_successes,
            "duplicate batch submissions": self.duplicate_submissions,
            "outputs lost or partial": self.outputs_lost_or_partial,
            "finished jobs redone": self.finished_jobs_redone,
            "corrupted inputs not named in a failure": self.corrupted_not_named,
            "other tiles failed at the end": self.other_failed,
            "ledger successes != files on disk": self.ledger_vs_disk,
            "`dcflow status` done != files on disk": self.status_vs_disk,
        }


# --- campaign and corruptions -------------------------------------------------------------


def write_campaign(root: Path, *, visits_per_filter: int, n_ccds: int, n_tracts: int) -> Path:
    """A sharded noop campaign under ``root``; its config path."""
    return write_noop_campaign(
        root,
        name="chaos",
        visits_per_filter=visits_per_filter,
        n_ccds=n_ccds,
        n_tracts=n_tracts,
        fe55_sensors=FE55_SENSORS,
        shards=dict(SHARDS),
    )


def corrupt_inputs(config_path: Path, rng: random.Random) -> dict[str, str]:
    """Corrupt one sensor raw per kind (after ingest: the registry knows them); path -> kind.

    ``truncated``: cut to 1000 bytes (less than a FITS block); ``nan_amplifier``: two amplifier
    HDUs, one all NaN; ``missing_key``: FILTER removed from the primary header. Sensor raws
    (Fe55 and photon-transfer frames, one sensor each) are chosen because a bad science raw
    fails its visit's shard and so blocks every coadd shard downstream of it, leaving most
    of the campaign unexercised by the other faults.
    """
    layout = Layout.from_config(load_config(config_path))
    sensors = rng.sample(list(FE55_SENSORS), len(CORRUPTIONS))
    datasets = rng.sample(["fe55_raw", "fe55_flat", "fe55_bias"], len(CORRUPTIONS))
    corrupted: dict[str, str] = {}
    for kind, ccd, dataset in zip(CORRUPTIONS, sensors, datasets, strict=True):
        path = Path(layout.path(dataset, ccd=ccd, exposure=rng.randrange(2)))
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[:1000])
        elif kind == "nan_amplifier":
            header = fits.getheader(path)
            good = np.ones((8, 16), dtype=np.float32)
            bad = np.full((8, 16), np.nan, dtype=np.float32)
            fits.HDUList(
                [
                    fits.PrimaryHDU(header=header),
                    fits.ImageHDU(good, name="AMP_A"),
                    fits.ImageHDU(bad, name="AMP_B"),
                ]
            ).writeto(path, overwrite=True)
        else:
            with fits.open(path, mode="update") as hdus:
                del hdus[0].header["FILTER"]
        corrupted[str(path)] = kind
    return corrupted


# --- what is on disk and in the ledger ----------------------------------------------------


def products(output_root: Path, campaign_root: Path) -> dict[str, str]:
    """Product files under the output root (relative path -> checksum of root-free content)."""
    found: dict[str, str] = {}
    for path in output_root.rglob("*"):
        rel = path.relative_to(output_root)
        if not path.is_file() or rel.parts[0] in NOT_PRODUCTS or "ledger" in rel.name:
            continue
        if rel.name.startswith("registry") or rel.parts[0] == "index" or rel.suffix == ".tmp":
            continue
        text = path.read_bytes().replace(str(campaign_root).encode(), b"<root>")
        found[str(rel)] = hashlib.sha256(text).hexdigest()
    return found


def rewritten_after_success(attempts: list[dict], work: Path, slack_s: float = 2.0) -> int:
    """Outputs modified after their job's first success ended: a finished job redone.

    An output written by an attempt that then failed or was lost, and written again by the
    attempt that succeeded, is not counted: that job had not finished.
    """
    first_ok: dict[tuple, tuple[float, list[str]]] = {}
    for a in attempts:
        key = (a["rule"], a["data_id"])
        if a["state"] == "succeeded" and a["finished"] and a["outputs"] and key not in first_ok:
            first_ok[key] = (a["finished"], json.loads(a["outputs"]))
    count = 0
    for finished, outputs in first_ok.values():
        for output in outputs:
            with contextlib.suppress(FileNotFoundError):
                count += (work / output).stat().st_mtime > finished + slack_s
    return count


def ledger_attempts(ledger: Path) -> list[dict]:
    """Every attempt of the ledger except the target rule's, as dicts."""
    with sqlite3.connect(ledger) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT a.attempt_id, a.run_id, a.rule, a.data_id, a.state, a.submitted, a.started,"
            " a.finished, a.backend_jobid, a.exit_code, a.reason, a.error_class, a.log_path,"
            " a.outputs, r.finished AS run_finished FROM attempts a JOIN runs r USING (run_id)"
            " WHERE a.rule != 'all' ORDER BY a.attempt_id"
        ).fetchall()
    return [dict(r) for r in rows]


def duplicated_successes(attempts: list[dict]) -> int:
    """Jobs with more than one succeeded attempt (each extra one counts)."""
    ok = Counter((a["rule"], a["data_id"]) for a in attempts if a["state"] == "succeeded")
    return sum(n - 1 for n in ok.values() if n > 1)


def overlapping_attempts(attempts: list[dict], end: float) -> int:
    """Attempts of one job live at the same time as an earlier one (a duplicate submission).

    Two attempts with the same backend job id are one batch job adopted by a restarted
    driver, not a duplicate.
    """
    by_job: dict[tuple, list[tuple[float, float, str | None]]] = {}
    for a in attempts:
        start = a["submitted"] or a["started"]
        if start is None:
            continue
        # a lost attempt (its driver died) ended when its run was found dead, at the latest
        span = (start, a["finished"] or a["run_finished"] or end, a["backend_jobid"])
        by_job.setdefault((a["rule"], a["data_id"]), []).append(span)
    count = 0
    for spans in by_job.values():
        spans.sort()
        for (_, end0, id0), (start1, _, id1) in itertools.pairwise(spans):
            adopted = id0 is not None and id0 == id1
            count += start1 < end0 - 0.5 and not adopted  # the ledger's clock is per process
    return count


def redone_after_success(attempts: list[dict]) -> int:
    """Attempts started after an earlier attempt of the same job had succeeded."""
    first_ok: dict[tuple, float] = {}
    redone = 0
    for a in attempts:
        key = (a["rule"], a["data_id"])
        start = a["submitted"] or a["started"]
        if key in first_ok and start is not None and start > first_ok[key]:
            redone += 1
        if a["state"] == "succeeded" and a["finished"]:
            first_ok[key] = min(first_ok.get(key, a["finished"]), a["finished"])
    return redone


def final_failed(config: Path, work: Path) -> list[dict]:
    """``dcflow failed --json``'s tiles."""
    done = subprocess.run(
        [DCFLOW, "failed", "--config", str(config), "--json", "--lines", "30"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    if not done.stdout.strip():
        return []
    return [t for t in json.loads(done.stdout) if t.get("kind") == "failed"]


def status_done(config: Path, work: Path) -> int:
    """Jobs ``dcflow status --json`` counts as done."""
    done = subprocess.run(
        [DCFLOW, "status", "--config", str(config), "--json"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    data = json.loads(done.stdout)
    return sum(r["done"] for r in data["rows"])


def jobs_on_disk(attempts: list[dict], work: Path) -> set[tuple[str, str]]:
    """Jobs all of whose declared outputs exist (outputs as the ledger recorded them)."""
    outputs: dict[tuple, list[str]] = {}
    for a in attempts:
        if a["outputs"]:
            outputs[(a["rule"], a["data_id"])] = json.loads(a["outputs"])
    return {
        key for key, paths in outputs.items() if paths and all((work / p).exists() for p in paths)
    }


# --- the processes of a run ---------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def descendants(root_pid: int) -> list[int]:
    """Every live process below ``root_pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def snakemakes_below(pid: int) -> list[int]:
    """Snakemake processes started by the driver ``pid`` (its shards, or a rerun's)."""
    return [p for p in descendants(pid) if SNAKEMAKE_ENTRY in " ".join(_cmdline(p))]


def in_workdir(pid: int, work: Path) -> bool:
    """True if the process runs in ``work`` (so it is this campaign's)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve() == work
    except OSError:
        return False


def campaign_processes(work: Path, what: str) -> list[int]:
    """This campaign's processes of one kind: ``job`` (a noop payload), ``shard`` (a shard
    Snakemake started by the driver)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = _cmdline(int(entry.name))
        text = " ".join(argv)
        if what == "job":
            hit = "noop.py" in text and "snakemake" not in (argv[:1] or [""])[0]
        else:
            hit = SNAKEMAKE_ENTRY in text and " shard=" in text  # --config shard=<manifest>
        if hit and in_workdir(int(entry.name), work):
            found.append(int(entry.name))
    return found


# --- the run ------------------------------------------------------------------------------


class Disk:
    """The chaos run's output disk: a size-limited tmpfs, filled for a while (root only)."""

    def __init__(self, mount: Path, size_mb: int) -> None:
        self.mount = mount
        self.size_mb = size_mb
        self.mounted = False
        self.ballast = mount / "ballast.fill"

    def __enter__(self) -> Disk:
        self.mount.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "chaos", str(self.mount)],
                capture_output=True,
                text=True,
                check=False,
            )
            self.mounted = done.returncode == 0
        return self

    def fill(self) -> None:
        """Write a ballast file until the disk is full (ENOSPC for everyone)."""
        with open(self.ballast, "wb") as handle:
            chunk = b"\0" * (1 << 20)
            with contextlib.suppress(OSError):
                while True:
                    handle.write(chunk)
                    handle.flush()

    def free(self) -> None:
        """Remove the ballast."""
        self.ballast.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mount)], check=False)


def draw_job_faults(
    rng: random.Random, tiles: list[tuple[str, str]], rate: float, memory_mode: str = "memory"
) -> dict:
    """``rate`` of the tiles fail once: a random exit code or out of memory; {(rule,tile): mode}.

    At least two when ``rate`` is above 0, none at 0. ``memory_mode``: ``vmem`` on Grid Engine
    (a real allocation past h_vmem), ``memory`` (a MemoryError raised) where no limit is set.
    """
    n = max(2, round(rate * len(tiles))) if rate > 0 else 0
    chosen = rng.sample(tiles, min(n, len(tiles)))
    faults = {}
    for i, tile in enumerate(chosen):
        faults[tile] = memory_mode if i % 3 == 0 else f"exit{rng.choice([1, 2, 3, 42, 70, 99])}"
    return faults


class Campaign:
    """One campaign directory driven through the `dcflow` command."""

    def __init__(self, config: Path, profile: str, env: dict[str, str], extra: list[str]):
        self.config = config
        self.work = config.parent
        self.profile = profile
        self.env = env
        self.extra = extra
        self.driver: subprocess.Popen | None = None
        self.verb = "run"
        self.log = open(self.work / "chaos-driver.log", "a")  # noqa: SIM115

    def argv(self, verb: str, *more: str) -> list[str]:
        argv = [DCFLOW, *verb.split(), "--config", str(self.config), "--profile", self.profile]
        argv += ["--no-progress", *more] if verb != "rerun" else list(more)
        return [*argv, "--", *self.extra] if self.extra else argv

    def start(self, verb: str = "run") -> None:
        """Start the driver: ``run`` (``dcflow run --sharded``) or ``rerun``.

        ``rerun`` is ``dcflow rerun --failed`` with the full disk's tiles (they hold for
        review by default: the operator has freed the disk).
        """
        argv = (
            self.argv("run", "--sharded")
            if verb == "run"
            else self.argv("rerun", "--failed", "--include-class", "transient_io")
        )
        self.verb = verb
        self.log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv[1:3])}\n")
        self.log.flush()
        self.driver = subprocess.Popen(
            argv,
            cwd=self.work,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout: float | None = None) -> int | None:
        assert self.driver is not None
        try:
            return self.driver.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


def kill_running_job(work: Path, rng: random.Random, backend: str) -> bool:
    """Kill one running job of the campaign: qdel on Grid Engine, SIGKILL locally."""
    if backend == "sge":
        ids = running_gridengine_jobs(work)
        if not ids:
            return False
        subprocess.run(["qdel", rng.choice(ids)], capture_output=True, check=False)
        return True
    pids = campaign_processes(work, "job")
    if not pids:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(rng.choice(pids), signal.SIGKILL)
    return True


def running_gridengine_jobs(work: Path) -> list[str]:
    """Grid Engine ids of this campaign's running jobs (its submission records x qstat)."""
    from snakemake_executor_plugin_gridengine.status import parse_qstat_xml

    ours: set[str] = set()
    for path in (work / ".snakemake").rglob("submissions.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                ours.add(str(json.loads(line).get("job_id")))
    done = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, check=False)
    if done.returncode:
        return []
    states = parse_qstat_xml(done.stdout)
    return [j for j, s in states.items() if str(j) in ours and "r" in s]


LOCK_BUSY = 75
"""flock's exit code when /tmp/ge.lock stayed busy (``-E``): the fault was not injected."""


def run_dir() -> Path:
    """Where the shared test services live (``DCFLOW_RUN_DIR``, else the checkout's run/)."""
    return Path(os.environ.get("DCFLOW_RUN_DIR", str(REPO / "run")))


def dirac_env() -> dict[str, str]:
    """The DIRAC client's environment from ``$DCFLOW_RUN_DIR/dirac/env.sh`` (scripts/dirac-up)."""
    env_file = run_dir() / "dirac" / "env.sh"
    if not env_file.is_file():
        raise SystemExit(f"no DIRAC client environment: {env_file} is missing (scripts/dirac-up)")
    env = {}
    for line in env_file.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip().strip('"')
    return env


def dirac_job_id(pid: int) -> str | None:
    """The DIRAC job id a payload process runs for (the JobWrapper's ``JOBID``), or None."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"JOBID="):
            return item.removeprefix(b"JOBID=").decode()
    return None


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def pilot_of(pid: int) -> int | None:
    """The private pilot's JobAgent process above a payload process, or None."""
    while pid > 1:
        if "WorkloadManagement/JobAgent" in " ".join(_cmdline(pid)):
            return pid
        pid = _parent(pid)
    return None


def kill_dirac_job(work: Path, rng: random.Random, what: str) -> bool:
    """Kill one running job of the campaign on DIRAC.

    ``what``: ``job``, DIRAC's kill of the job (an operator's ``dirac-wms-job-kill``); ``pilot``,
    SIGKILL of the pilot running it: its JobAgent, JobWrapper and payload all at once, as when
    a site kills a pilot; DIRAC hears nothing more of the job.
    """
    pids = campaign_processes(work, "job")
    if not pids:
        return False
    pid = rng.choice(pids)
    if what == "job":
        job_id = dirac_job_id(pid)
        if job_id is None:
            return False
        from snakemake_executor_plugin_dirac.wms import DiracError, DiracWMS

        try:
            DiracWMS().kill([job_id])
        except DiracError:
            return False  # the services are restarting: later
        return True
    agent = pilot_of(pid)
    if agent is None:
        return False
    for victim in [agent, *descendants(agent)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    return True


def dirac_fault(log) -> int:
    """Restart the DIRAC services (scripts/dirac-restart services) under /tmp/dirac.lock.

    Returns dirac-restart's exit code, or `LOCK_BUSY` if another restart held the lock for
    120 s.
    """
    done = subprocess.run(
        ["flock", "-o", "-E", str(LOCK_BUSY), "-w", "120", "/tmp/dirac.lock",
         str(REPO / "scripts" / "dirac-restart"), "services"],
        env={**os.environ, "DCFLOW_RUN_DIR": str(run_dir())},
        stdout=log,
        stderr=subprocess.STDOUT,
        check=False,
        timeout=600,
    )  # fmt: skip
    return done.returncode


def stalled_agent_running() -> bool:
    """Whether the loopback DIRAC runs its StalledJobAgent (scripts/dirac-up since issue 20).

    Without it a job whose pilot was killed stays Running for good: its driver would wait on
    it forever.
    """
    try:
        pid, start = (run_dir() / "dirac" / "pids" / "stalled.pid").read_text().split()
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == start
    except (OSError, ValueError, IndexError):
        return False


def chosen_events(events: list, faults: str | None, backend: str, notes: list) -> list:
    """The timed faults to inject: those named in ``faults`` (comma-separated; None: all).

    A pilot kill is left out, and said so, when the loopback DIRAC runs no StalledJobAgent.
    """
    if faults is not None:
        wanted = set(faults.split(","))
        events = [e for e in events if e[1] in wanted]
    pilots = any(kind == "kill_pilot" for _, kind in events)
    if backend == "dirac" and pilots and not stalled_agent_running():
        events = [e for e in events if e[1] != "kill_pilot"]
        notes.append(
            "kill_pilot not injected: the loopback DIRAC runs no StalledJobAgent (started "
            "by an older scripts/dirac-up), so a killed pilot's job would stay Running"
        )
    return events


def gridengine_fault(kind: str, log) -> int:
    """Stop sge_execd for 60 s, or restart sge_qmaster, under /tmp/ge.lock (8 slots restored).

    The daemons are found by the pid files scripts/gridengine-up keeps, and started again by
    it. Returns the exit code: 0, `LOCK_BUSY` if the lock (shared with other users of the
    cluster) was busy for 120 s, or gridengine-up's when its check after the restart failed
    (the daemon was stopped and started again all the same).
    """
    pids = run_dir() / "gridengine"
    up = f"DCFLOW_GE_SLOTS=8 DCFLOW_RUN_DIR={run_dir()} {REPO}/scripts/gridengine-up"
    if kind == "execd":
        script = f"kill $(cat {pids}/sge_execd.pid) && sleep 60 && {up}"
    else:
        script = f"kill $(cat {pids}/sge_qmaster.pid) && sleep 5 && {up}"
    done = subprocess.run(
        ["flock", "-o", "-E", str(LOCK_BUSY), "-w", "120", "/tmp/ge.lock", "bash", "-c", script],
        stdout=log,
        stderr=subprocess.STDOUT,
        check=False,
        timeout=900,
    )
    return done.returncode


def run_reference(root: Path, args, profile: str, env: dict, extra: list[str]):
    """The fault-free run: wall time, products, failed tiles.

    Kept in ``root``: a second chaos run in the same work directory reuses it
    (``reference.json`` holds its wall time and corrupted files).
    """
    saved = root / "reference.json"
    config = root / "config.yaml"
    if saved.exists():
        kept = json.loads(saved.read_text())
        wall, corrupted = kept["wall_s"], kept["corrupted"]
    else:
        config = write_campaign(
            root, visits_per_filter=args.visits_per_filter, n_ccds=args.ccds, n_tracts=args.tracts
        )
        corrupted = corrupt_inputs(config, random.Random(args.seed))
        campaign = Campaign(config, profile, env, extra)
        t0 = time.monotonic()
        campaign.start()
        campaign.wait()
        wall = time.monotonic() - t0
        saved.write_text(json.dumps({"wall_s": wall, "corrupted": corrupted}))
    return {
        "config": config,
        "wall": wall,
        "products": products(root / "output", root),
        "attempts": ledger_attempts(root / "output" / "ledger.sqlite3"),
        "corrupted": corrupted,
        "failed": final_failed(config, root),
    }


def run_chaos(args, *, backend: str = "local", out=print) -> ChaosResult:
    """Reference run, then the chaos run; the table's figures."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dcflow-chaos-")).resolve()
    profile = {"local": "local", "sge": "sge", "dirac": "dirac"}[backend]
    if backend == "dirac":
        os.environ.update(dirac_env())  # for the chaos's own DIRAC client (its kills) too
    base_env = {**os.environ, "DCFLOW_NOOP_SECONDS": str(args.job_seconds)}
    extra = ["--cores", str(args.cores)] if backend == "local" else []
    out(f"workdir {work}, backend {backend}, seed {args.seed}")
    # The products do not depend on the backend (a noop payload; test_dirac_campaign shows
    # DIRAC's byte-identical to local): a test may take its reference from the local backend.
    ref_backend = getattr(args, "reference_backend", None) or backend
    ref_extra = ["--cores", str(args.cores)] if ref_backend == "local" else []
    ref = run_reference(work / "reference", args, ref_backend, base_env, ref_extra)
    tiles = sorted(
        {(Path(a["log_path"]).parent.name, Path(a["log_path"]).name.removesuffix(".log"))
         for a in ref["attempts"] if a["log_path"]}
    )  # fmt: skip
    n_jobs = len({(a["rule"], a["data_id"]) for a in ref["attempts"]})
    out(
        f"reference: {n_jobs} jobs in {ref['wall']:.1f} s, {len(ref['products'])} products, "
        f"{len(ref['failed'])} failed tiles (corrupted inputs: {len(ref['corrupted'])})"
    )

    rng = random.Random(args.seed)
    root = work / "chaos"
    root.mkdir(parents=True, exist_ok=True)
    disk = Disk(root / "output", args.disk_mb)
    result_faults: Counter = Counter()
    notes: list[str] = []
    if ref_backend != backend:
        notes.append(f"reference run on {ref_backend}: the wall times are not comparable")
    with disk:
        config = write_campaign(
            root, visits_per_filter=args.visits_per_filter, n_ccds=args.ccds, n_tracts=args.tracts
        )
        corrupted = corrupt_inputs(config, random.Random(args.seed))  # as the reference's
        memory_mode = "vmem" if backend == "sge" else "memory"
        job_faults = draw_job_faults(rng, tiles, args.fail_rate, memory_mode)
        env = {
            **base_env,
            FAULTS_ENV: ";".join(f"{r}:{t}:{m}" for (r, t), m in job_faults.items()),
            FAULTS_ONCE_ENV: str(work / "faults-fired"),
        }
        for mode in job_faults.values():
            memory = mode in ("memory", "vmem")
            result_faults[f"job fails once ({mode})" if memory else "job exits"] += 1
        campaign = Campaign(config, profile, env, extra)
        horizon = max(getattr(args, "horizon_s", None) or ref["wall"], 10.0)
        events = sorted(
            [(rng.uniform(0.15, 0.35) * horizon, "kill_driver_group"),
             (rng.uniform(0.45, 0.6) * horizon, "kill_driver_main"),
             (rng.uniform(0.7, 0.85) * horizon, "kill_driver_group"),
             (rng.uniform(0.1, 0.9) * horizon, "kill_shard"),
             (rng.uniform(0.2, 0.5) * horizon, "enospc")]
            + [(rng.uniform(0.05, 0.95) * horizon, "kill_job")
               for _ in range(max(1, round(args.kill_rate * n_jobs)))]
            + ([(rng.uniform(0.3, 0.6) * horizon, "execd"),
                (rng.uniform(0.6, 0.9) * horizon, "qmaster")] if backend == "sge" else [])
            + ([(rng.uniform(0.1, 0.5) * horizon, "kill_pilot"),
                (rng.uniform(0.5, 0.9) * horizon, "kill_pilot"),
                (rng.uniform(0.3, 0.7) * horizon, "dirac_service")] if backend == "dirac" else [])
        )  # fmt: skip
        events = chosen_events(events, getattr(args, "faults", None), backend, notes)
        t0 = time.monotonic()
        campaign.start()
        full_until = None
        killed = False
        while events or campaign.wait(0) is None:
            time.sleep(0.5)
            now = time.monotonic() - t0
            if full_until is not None and time.monotonic() > full_until:
                disk.free()
                full_until = None
                out(f"  {now:6.1f} s  disk has room again")
            if campaign.wait(0) is not None:
                events = [e for e in events if e[0] < 4 * horizon]
                if not events:
                    break
                # what an operator does: `dcflow run` after the driver died; after a run
                # that ended on failed tiles, `dcflow rerun --failed`, then `dcflow run`
                campaign.start("run" if killed or campaign.verb == "rerun" else "rerun")
                killed = False
                continue
            if not events or events[0][0] > now:
                continue
            _, kind = events.pop(0)
            fired = fire(kind, campaign, disk, rng, backend, notes)
            if fired and kind == "enospc":
                full_until = time.monotonic() + args.enospc_seconds
            killed = killed or (fired and kind.startswith("kill_driver"))
            if fired:
                result_faults[kind] += 1
                out(f"  {now:6.1f} s  {kind}")
            elif kind != "enospc" and now < 4 * horizon:
                events.append((now + 1.0, kind))  # nothing running to hit yet: later
                events.sort()
            else:
                notes.append(f"{kind}: not landed (nothing running to hit)")
        if full_until is not None:
            disk.free()
        for thread in OUTAGES:
            thread.join()
        # the operator's loop: rerun what failed (the full disk's tiles once it has room
        # again: transient_io holds for review by default) and run what is left
        previous = None
        for _ in range(args.max_rounds):
            failed = final_failed(config, root)
            now_state = (len(products(root / "output", root)), len(failed))
            if all(_names_corrupted(t, corrupted) for t in failed) and now_state == previous:
                break  # only the corrupted inputs' tiles fail, and a round changed nothing
            previous = now_state
            campaign.start("rerun")
            campaign.wait()
            campaign.start("run")
            campaign.wait()
        wall = time.monotonic() - t0
        attempts = ledger_attempts(root / "output" / "ledger.sqlite3")
        chaos_products = products(root / "output", root)
        failed = final_failed(config, root)
        on_disk = jobs_on_disk(attempts, root)
        succeeded = {(a["rule"], a["data_id"]) for a in attempts if a["state"] == "succeeded"}
        status = status_done(config, root)
        rewritten = rewritten_after_success(attempts, root)
        if disk.mounted:  # keep the output disk's content for a post-mortem
            shutil.copytree(root / "output", work / "chaos-output", dirs_exist_ok=True)
    lost = sum(
        1 for name, digest in ref["products"].items() if chaos_products.get(name) != digest
    ) + len(set(chaos_products) - set(ref["products"]))
    named = {path for path in corrupted if any(_names_path(t, path) for t in failed)}
    other = [t for t in failed if not _names_corrupted(t, corrupted)]
    for rule, data_id in sorted(succeeded ^ on_disk):
        states = [a["state"] for a in attempts if (a["rule"], a["data_id"]) == (rule, data_id)]
        where = (
            "ledger success, outputs missing"
            if (rule, data_id) in succeeded
            else ("outputs on disk, no ledger success")
        )
        notes.append(f"{rule}:{data_id}: {where} (attempts: {', '.join(states)})")
    if other:
        notes.append(
            "other failed tiles: " + ", ".join(f"{t['rule']}:{t['data_id']}" for t in other)
        )
    return ChaosResult(
        backend=backend,
        seed=args.seed,
        n_jobs=n_jobs,
        reference_wall_s=ref["wall"],
        chaos_wall_s=wall,
        duplicated_successes=duplicated_successes(attempts),
        duplicate_submissions=overlapping_attempts(attempts, time.time()),
        outputs_lost_or_partial=lost,
        finished_jobs_redone=redone_after_success(attempts) + rewritten,
        corrupted_not_named=len(corrupted) - len(named),
        other_failed=len(other),
        ledger_vs_disk=len(succeeded ^ on_disk),
        status_vs_disk=abs(status - len(on_disk)),
        faults=result_faults,
        notes=notes,
    )


def _tile_text(tile: dict) -> str:
    return " ".join([str(tile.get("reason") or ""), *map(str, tile.get("log_tail") or [])])


def _names_path(tile: dict, path: str) -> bool:
    return path in _tile_text(tile) or os.path.relpath(path) in _tile_text(tile)


def _names_corrupted(tile: dict, corrupted: dict[str, str]) -> bool:
    text = _tile_text(tile)
    return any(Path(p).name in text for p in corrupted)


def fire(kind: str, campaign: Campaign, disk: Disk, rng, backend: str, notes: list) -> bool:
    """Inject one fault now; False if it cannot land yet (nothing running)."""
    driver = campaign.driver
    if kind == "kill_job" and backend == "dirac":
        return kill_dirac_job(campaign.work, rng, "job")
    if kind == "kill_job":
        return kill_running_job(campaign.work, rng, backend)
    if kind == "kill_pilot":
        return kill_dirac_job(campaign.work, rng, "pilot")
    if kind in ("kill_driver_group", "kill_driver_main"):
        if driver is None or driver.poll() is not None or not snakemakes_below(driver.pid):
            return False
        if kind == "kill_driver_group":
            os.killpg(driver.pid, signal.SIGKILL)
        else:
            os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        return True
    if kind == "kill_shard":
        shards = campaign_processes(campaign.work, "shard")
        if not shards:
            return False
        os.kill(rng.choice(shards), signal.SIGKILL)
        return True
    if kind == "enospc":
        if not disk.mounted:
            notes.append("ENOSPC not injected: needs root to mount a tmpfs")
            return True
        disk.fill()
        return True
    if kind in ("execd", "qmaster", "dirac_service"):  # in a thread: the others go on meanwhile

        def outage() -> None:
            if kind == "dirac_service":
                code = dirac_fault(campaign.log)
                if code == LOCK_BUSY:
                    notes.append("DIRAC services not restarted: /tmp/dirac.lock busy for 120 s")
                elif code:
                    notes.append(f"scripts/dirac-restart services exited {code} (chaos-driver.log)")
                return
            code = gridengine_fault(kind, campaign.log)
            if code == LOCK_BUSY:
                notes.append(f"{kind} fault not injected: /tmp/ge.lock busy for 120 s")
            elif code:
                notes.append(
                    f"{kind} fault: the kill, or gridengine-up's restart and check after it,"
                    f" exited {code} (chaos-driver.log says which)"
                )

        thread = threading.Thread(target=outage)
        thread.start()
        OUTAGES.append(thread)
        return True
    raise ValueError(kind)


def table_lines(result: ChaosResult) -> list[str]:
    """The issue's table."""
    lines = [
        f"chaos campaign: backend {result.backend}, seed {result.seed}, {result.n_jobs} jobs",
        "faults injected: " + ", ".join(f"{k} x{v}" for k, v in sorted(result.faults.items())),
        f"{'figure':45s} {'value':>8s}",
    ]
    lines += [f"{name:45s} {value:8d}" for name, value in result.zeros().items()]
    ratio = result.chaos_wall_s / result.reference_wall_s if result.reference_wall_s else 0
    lines.append(
        f"{'wall time, chaos vs fault-free (s)':45s} {result.chaos_wall_s:8.1f} vs "
        f"{result.reference_wall_s:.1f} ({ratio:.1f} x)"
    )
    lines += [f"note: {n}" for n in result.notes]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("local", "sge", "dirac"), default="local")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--visits-per-filter", type=int, default=6)
    parser.add_argument("--ccds", type=int, default=2)
    parser.add_argument("--tracts", type=int, default=2)
    parser.add_argument("--job-seconds", type=float, default=2.0, help="noop job duration")
    parser.add_argument("--cores", type=int, default=4, help="local: jobs at once per shard")
    parser.add_argument("--fail-rate", type=float, default=0.05, help="jobs failing once")
    parser.add_argument("--kill-rate", type=float, default=0.10, help="running jobs killed")
    parser.add_argument("--enospc-seconds", type=float, default=20.0)
    parser.add_argument("--disk-mb", type=int, default=64, help="chaos output disk size")
    parser.add_argument("--max-rounds", type=int, default=4, help="rerun/run rounds at most")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--reference-backend",
        choices=("local", "sge", "dirac"),
        default=None,
        help="backend of the fault-free run (default: --backend); its wall time is then "
        "not comparable",
    )
    parser.add_argument(
        "--faults",
        default=None,
        help="comma-separated timed faults to inject (kill_driver_group, kill_driver_main, "
        "kill_shard, enospc, kill_job, execd, qmaster, kill_pilot, dirac_service; default: "
        "all of the backend's)",
    )
    parser.add_argument(
        "--horizon-s", type=float, default=None, help="faults land within (default: reference wall)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unmount the disk on the way out
    result = run_chaos(args, backend=args.backend)
    print("\n".join(table_lines(result)))
    return 0 if not any(result.zeros().values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
