"""Scale run on the real Grid Engine cluster: a sharded noop campaign of thousands of jobs.

Needs the project's cluster configured with a few hundred slots
(``DCFLOW_GE_SLOTS=300 scripts/gridengine-up``) and its environment
(``source run/gridengine/env.sh``). Prints figures, asserts nothing.

What runs: a synthetic DC2013-shaped campaign (`dcflow.campaign.synthetic`, ``--fraction`` of
DC2013's 4.4 M raws; empty raw files) with ``campaign.payload: noop``, driven by
``dcflow run --sharded --profile sge`` with the plugin's ``noop-direct`` mode: each Grid Engine
job holds its slot ``--job-seconds`` (a sleep standing in for work) and writes its outputs from
the job script, so hundreds of jobs fit at once on this 2-core host (a Snakemake process per
job costs 2-4 CPU s and ~150 MB here; that cost is measured by benchmarks/gridengine_submit.py).

Measured:

* jobs completed (ledger), wall time, sustained jobs/s over the steady part (from the first
  time the queue held >= 90 % of the cap to the last);
* the driver's CPU per job: CPU time of ``dcflow run --sharded`` and every process it waited
  for (its shard Snakemakes: DAGs, submission, status checks, ledger), from `run_measured`; Grid
  Engine jobs run under sge_execd and are not counted;
* queue occupancy: ``qstat`` sampled every ``--sample-seconds``: jobs queued or running against
  ``shards.max_queued_jobs``, time-weighted over the run and over the steady part;
* submissions per job (ledger attempts and the plugin's submission records): 1.0 expected.

* busy slots: jobs running (not queued) against ``--slots``, time-weighted from the first
  minute to the 95th-percentile finish, and the share of that time with >= 90 % running.

Usage: ``.venv/bin/python benchmarks/scale_run.py [--fraction 0.001] [--cap 300]
[--slots 300] [--job-seconds 20] [--concurrent 4] [--visits-per-shard 16] [--workdir DIR]``

The full run of issue 20 (700 slots kept >= 90 % busy, driver CPU <= 30 ms per job), with
``DCFLOW_GE_SLOTS=700`` (gid_range 65400-66200), about 2.5 h::

    scale_run.py --fraction 0.003 --done calibs --slots 700 --cap 770 --job-seconds 300 \
        --concurrent 4 --visits-per-shard 64 --patches-per-shard 8

Why these settings:

* ``--fraction 0.003 --done calibs``: 20,549 jobs (307 process_visit, 18,775 make_warp, 340
  coadds, 68 measurements, 307 + 307 forced photometry and diffim, 68 associations, 375 loads,
  1 validation). The calibrations exist (a reprocessing campaign): made here, bias (36 jobs)
  then flat (180 jobs) would be two job lengths with at most 216 of 700 slots busy, 10 minutes
  at 300 s a job, before any science job may start; no campaign size widens them.
* The head of the DAG is still one job length of process_visit alone (307 jobs, 44 % of the
  slots) before the warps open; 700 visits would fill it but make 47 k jobs (5.6 h). Then
  18,775 warps keep the cap full; the tail (coadd, measure, then forced photometry, diffim,
  association and loads of every visit, which read every patch group of this one-pointing
  footprint) is about 1,400 jobs in narrow levels, mostly inside the last 5 % excepted.
* ``--cap 770`` (1.1 x slots): ~70 jobs wait in the queue, so a freed slot is refilled by the
  Grid Engine scheduler (1 s) rather than after Snakemake's next status check and submission.
* ``--visits-per-shard 64 --patches-per-shard 8``: 37 shards (5 visits, 10 patches of up to
  2,473 jobs, 5 forced, 5 catalogs, 10 alerts, calibs, final) instead of 98 with 16 and 4: each
  shard Snakemake costs about the same to start whatever its size (imports, Snakefile, campaign
  index with its visit/patch overlaps, DAG; measured at load ~6: 5.1 CPU s for a 62-job visits
  shard, 5.5 s for a 493-job patches shard, 4-4.1 s up to the DAG for forced and alerts
  shards), so at ~4.5 s a shard the start-ups cost ~8 ms per job instead of ~21.
* ``--concurrent 4``: a starting shard gets at least a quarter of the cap (192 jobs); up to
  12 shard Snakemakes (draining tails beside filling shards).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from child_usage import run_measured

from dcflow.orchestration.snakemake_cli import SNAKEMAKE_ENTRY
from snakemake_executor_plugin_gridengine.reattach import state_dir
from snakemake_executor_plugin_gridengine.status import parse_qstat_xml

REPO = Path(__file__).resolve().parents[1]
DCFLOW = Path(sys.executable).with_name("dcflow")


def generate(workdir: Path, fraction: float, settings: dict, done: str = "none") -> Path:
    """A synthetic campaign in ``workdir`` with placeholder raws; its config path.

    ``done``: what exists already (`dcflow.campaign.synthetic.DONE_STATES`).
    """
    subprocess.run(
        [
            *(sys.executable, "-m", "dcflow.campaign.synthetic"),
            *("--fraction", str(fraction), "--out", str(workdir), "--touch-raws"),
            *("--done", done),
        ],
        check=True,
        capture_output=True,
    )
    config_path = workdir / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["shards"] = settings
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path


class PeriodicSampler:
    """Calls ``sample()`` every ``period_s`` in a daemon thread, between start() and stop()."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period_s)

    def sample(self) -> None:
        raise NotImplementedError


class QueueSampler(PeriodicSampler):
    """Samples how many of the run's Grid Engine jobs are queued or running, every ``period_s``.

    The run's jobs are those the plugin recorded in ``submissions`` (its submissions.jsonl,
    read as it grows): other users' jobs on a shared cluster are not counted.
    """

    def __init__(self, period_s: float, submissions: Path) -> None:
        super().__init__(period_s)
        self.samples: list[tuple[float, int, int]] = []  # time, running, queued
        self.submissions = submissions
        self._offset = 0
        self._ours: set[str] = set()

    def _read_new_ids(self) -> None:
        try:
            with open(self.submissions, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += end
        for line in chunk[:end].splitlines():
            entry = json.loads(line) if line.strip() else {}
            if entry.get("event") == "submitted" and entry.get("job_id"):
                self._ours.add(str(entry["job_id"]))

    def sample(self) -> None:
        done = subprocess.run(
            ["qstat", "-xml", "-u", "*"], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            self._read_new_ids()
            states = [s for i, s in parse_qstat_xml(done.stdout).items() if i in self._ours]
            running = sum(1 for s in states if "q" not in s)  # r, t (not qw, hqw)
            self.samples.append((time.time(), running, len(states) - running))


class CpuBreakdown(PeriodicSampler):
    """Where the driver's CPU goes: its own process, its shard Snakemakes, their children.

    Samples (psutil, every ``period_s``) the ``dcflow run --sharded`` process and every process
    under it, keeping each one's last cumulative times: the driver's own CPU (its threads:
    shard launch, ledger polls, hashing), each shard Snakemake's own CPU (DAG, scheduling,
    submission, logger plugin ledger writes) and the CPU of the commands those Snakemakes
    waited for (``qstat``/``qacct``, the ILP solver). Approximate: up to ``period_s`` of a
    process's end is not seen; the exact total is `run_measured`'s.
    """

    def __init__(self, period_s: float) -> None:
        import psutil

        super().__init__(period_s)
        self.last: dict[tuple[int, float], tuple[str, float, float]] = {}
        self._me = psutil.Process()

    def sample(self) -> None:
        import psutil

        for proc in self._me.children(recursive=True):
            try:
                with proc.oneshot():
                    cmd = " ".join(proc.cmdline())
                    if "run --sharded" in cmd:
                        kind = "driver"
                    elif SNAKEMAKE_ENTRY in cmd:
                        kind = "shard snakemake"
                    else:
                        continue
                    times = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                    self.last[key] = (
                        kind,
                        times.user + times.system,
                        times.children_user + times.children_system,
                    )
            except psutil.Error:
                continue

    def totals(self) -> dict[str, float]:
        """CPU seconds per part: driver, shard Snakemakes, what the Snakemakes waited for."""
        out = {"driver": 0.0, "shard snakemake": 0.0, "their commands": 0.0, "processes": 0}
        for kind, own, children in self.last.values():
            out[kind] += own
            if kind == "shard snakemake":
                out["their commands"] += children
            out["processes"] += kind == "shard snakemake"
        return out


def time_weighted(samples: list[tuple[float, int, int]], start: float, end: float) -> float:
    """Mean of queued + running over [start, end], each sample held until the next."""
    total = weight = 0.0
    for (t0, run, queued), (t1, _, _) in itertools.pairwise(samples):
        lo, hi = max(t0, start), min(t1, end)
        if hi > lo:
            total += (run + queued) * (hi - lo)
            weight += hi - lo
    return total / weight if weight else float("nan")


def time_at_least(
    samples: list[tuple[float, int, int]], level: float, start: float, end: float
) -> float:
    """Fraction of [start, end] with queued + running >= ``level`` (samples held)."""
    held = total = 0.0
    for (t0, run, queued), (t1, _, _) in itertools.pairwise(samples):
        lo, hi = max(t0, start), min(t1, end)
        if hi > lo:
            total += hi - lo
            held += (hi - lo) if run + queued >= level else 0.0
    return held / total if total else float("nan")


def running_weighted(samples: list[tuple[float, int, int]], start: float, end: float) -> float:
    """Mean of running jobs (busy slots) over [start, end], each sample held until the next."""
    return time_weighted([(t, run, 0) for t, run, _ in samples], start, end)


def running_at_least(
    samples: list[tuple[float, int, int]], level: float, start: float, end: float
) -> float:
    """Fraction of [start, end] with at least ``level`` jobs running (samples held)."""
    return time_at_least([(t, run, 0) for t, run, _ in samples], level, start, end)


def ledger_counts(ledger: Path) -> dict:
    """Jobs, successes, attempts per (rule, data id) and finish times, from the run ledger."""
    with sqlite3.connect(ledger) as db:
        rows = db.execute("SELECT rule, data_id, state, finished FROM attempts").fetchall()
    per_job: dict[tuple[str, str], int] = {}
    finished: list[float] = []
    for rule, data_id, state, end in rows:
        if rule == "all":
            continue
        per_job[(rule, data_id)] = per_job.get((rule, data_id), 0) + 1
        if state == "succeeded" and end:
            finished.append(end)
    jobs = list(per_job.values())
    return {
        "jobs": len(jobs),
        "done": len(finished),
        "finished": sorted(finished),
        "attempts_per_job_max": max(jobs, default=0),
        "attempts_per_job_mean": sum(jobs) / len(jobs) if jobs else float("nan"),
    }


def submissions_per_job(workdir: Path) -> tuple[int, int]:
    """Grid Engine submission records (plugin's submissions.jsonl): records, distinct outputs."""
    records = outputs = 0
    seen: set[str] = set()
    for path in (workdir / ".snakemake").rglob("submissions.jsonl"):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("event") == "submitted" and entry.get("job_id"):
                records += 1
                key = json.dumps(entry.get("outputs"), sort_keys=True)
                outputs += key not in seen
                seen.add(key)
    return records, outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.001, help="of DC2013's raws")
    parser.add_argument("--cap", type=int, default=300, help="shards.max_queued_jobs")
    parser.add_argument("--concurrent", type=int, default=4, help="shards at once")
    parser.add_argument("--visits-per-shard", type=int, default=16)
    parser.add_argument("--patches-per-shard", type=int, default=1)
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help="Grid Engine slots (DCFLOW_GE_SLOTS) for the busy-slot figures (default: --cap)",
    )
    parser.add_argument("--job-seconds", type=float, default=20.0, help="slot time per job")
    parser.add_argument(
        "--done",
        choices=("none", "calibs"),
        default="none",
        help="calibs: the calibrations exist already (a reprocessing campaign)",
    )
    parser.add_argument("--sample-seconds", type=float, default=2.0)
    parser.add_argument("--workdir", default=None, help="campaign directory (default: a temp)")
    args = parser.parse_args()
    if not os.environ.get("SGE_ROOT"):
        print("needs the cluster environment: source run/gridengine/env.sh", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dcflow-scale-")).resolve()
    settings = {
        "visits_per_shard": args.visits_per_shard,
        "patches_per_shard": args.patches_per_shard,
        "max_concurrent_shards": args.concurrent,
        "max_queued_jobs": args.cap,
    }
    started = time.monotonic()
    config_path = generate(workdir, args.fraction, settings, args.done)
    print(f"campaign: {workdir} ({time.monotonic() - started:.1f} s to generate)")
    plan = subprocess.run(
        [str(DCFLOW), "plan", "--config", str(config_path), "--json", "--no-pictures"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    planned = json.loads(plan.stdout)
    print(f"planned: {planned['n_to_run']} jobs {planned['to_run_by_rule']}")
    sampler = QueueSampler(args.sample_seconds, state_dir(workdir) / "submissions.jsonl")
    sampler.start()
    breakdown = CpuBreakdown(args.sample_seconds)
    breakdown.start()
    argv = [str(DCFLOW), "run", "--sharded", "--profile", "sge", "--config", str(config_path)]
    argv += ["--no-progress", "--", "--gridengine-noop-direct", "True"]
    argv += ["--gridengine-noop-seconds", str(args.job_seconds)]
    log_path = workdir / "driver.log"
    t0 = time.time()
    driver = run_measured(argv, log=log_path, cwd=workdir)
    wall = time.time() - t0
    sampler.stop()
    breakdown.stop()
    code = driver.returncode
    cpu = driver.cpu_s
    counts = ledger_counts(workdir / "output" / "ledger.sqlite3")
    records, distinct = submissions_per_job(workdir)
    full = [t for t, run, queued in sampler.samples if run + queued >= 0.9 * args.cap]
    steady = (full[0], full[-1]) if full else (t0, t0 + wall)
    steady_s = steady[1] - steady[0]
    print(f"driver exit {code}; log {log_path}")
    print(f"jobs done (ledger): {counts['done']} of {counts['jobs']} planned-job tiles")
    print(f"wall {wall:.1f} s: {counts['done'] / wall:.2f} jobs/s over the whole run")
    if full and steady_s > 0:
        n_steady = sum(1 for t in counts["finished"] if steady[0] <= t <= steady[1])
        print(
            f"steady part (queue >= 90 % of {args.cap} from first to last such sample): "
            f"{steady_s:.1f} s, {n_steady} jobs finished: {n_steady / steady_s:.2f} jobs/s "
            f"(slots / job time = {args.cap / args.job_seconds:.2f} jobs/s if always full)"
        )
    print(
        f"driver CPU: {cpu:.1f} s ({driver.user_s:.1f} user + {driver.sys_s:.1f} sys), "
        f"{1000 * cpu / max(1, counts['done']):.1f} ms per job; peak RSS of one process "
        f"{driver.peak_mb:.0f} MB"
    )
    parts = breakdown.totals()
    n_done = max(1, counts["done"])
    print(
        "  of which (sampled): driver process "
        f"{1000 * parts['driver'] / n_done:.1f} ms/job, {parts['processes']} shard Snakemakes "
        f"{1000 * parts['shard snakemake'] / n_done:.1f} ms/job, the commands they ran "
        f"(qstat, qacct, solver) {1000 * parts['their commands'] / n_done:.1f} ms/job"
    )
    whole = time_weighted(sampler.samples, t0, t0 + wall)
    print(f"queue occupancy (queued + running), time-weighted: {whole:.1f} of cap {args.cap}")
    if full:
        mean_steady = time_weighted(sampler.samples, *steady)
        print(f"  over the steady part: {mean_steady:.1f} ({100 * mean_steady / args.cap:.0f} %)")
    if sampler.samples:
        print(f"  max seen: {max(r + q for _, r, q in sampler.samples)}")
        for level in (0.5, 0.75, 0.9):
            share = time_at_least(sampler.samples, level * args.cap, t0, t0 + wall)
            print(f"  time with >= {level:.0%} of the cap queued or running: {share:.0%}")
        samples_path = workdir / "queue_samples.tsv"
        samples_path.write_text(
            "time_s\trunning\tqueued\n"
            + "".join(f"{t - t0:.1f}\t{r}\t{q}\n" for t, r, q in sampler.samples)
        )
        print(f"  samples: {samples_path}")
    slots = args.slots or args.cap
    if sampler.samples and counts["finished"]:
        # the window: from the first minute to the tail (the last 5 % of jobs excepted)
        tail = counts["finished"][max(0, int(0.95 * len(counts["finished"])) - 1)]
        window = (t0 + 60.0, tail)
        busy = running_weighted(sampler.samples, *window)
        share = running_at_least(sampler.samples, 0.9 * slots, *window)
        print(
            f"busy slots (running jobs) from minute 1 to the 95th-percentile finish "
            f"({window[1] - window[0]:.0f} s): mean {busy:.1f} of {slots} "
            f"({100 * busy / slots:.1f} %), time with >= 90 % of the slots running: "
            f"{100 * share:.1f} %"
        )
    print(
        f"attempts per job: mean {counts['attempts_per_job_mean']:.3f}, "
        f"max {counts['attempts_per_job_max']}; Grid Engine submissions {records} for "
        f"{distinct} distinct jobs"
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
