"""Seconds and peak memory of `dcflow status`, `failed` and `rerun --failed`'s target selection
on a DC2013-sized campaign with a ledger of 10^6 attempts.

Usage: .venv/bin/python benchmarks/status_scale.py [--fraction 1] [--attempts 1000000]
       [--scratch DIR] [--reuse]  (--reuse: also the ledger and plan snapshot of a previous run)

Writes (or reuses, `plan_scale.py`'s scratch layout) the synthetic campaign at ``--fraction``
of DC2013, plans it once (`dcflow plan`: it keeps the index and the plan's needrun arrays under
the output root), then fills its ledger with ``--attempts`` attempts over real jobs of the
campaign, in workflow order: most succeeded after the plan (so status must move them to
done), 5 % failed once before succeeding, 2 % whose last attempt failed, 1 % running under a
live run (this process). Each verb then runs in its own subprocess (wall time and peak RSS,
``VmHWM``), and beside it the alternative: the same status after a full replan (what status
did before the plan snapshots). Issue 13's targets: each verb <= 10 s and <= 2 GB at 100 %.
Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from child_usage import own_peak_mb, run_measured

FAILED_SHARE = 0.02
RETRIED_SHARE = 0.05
RUNNING_SHARE = 0.01


def measure(verb: str, config: str) -> None:
    """Child mode: run one verb, print one JSON line."""
    from dcflow.orchestration.plan_status import failed_campaign, status_campaign
    from dcflow.orchestration.rerun import select_failed

    workdir = Path(config).parent
    start = time.perf_counter()
    if verb == "status":
        status = status_campaign(config, workdir=workdir, replan=False)
        result = {"to_run": sum(r.to_run for r in status.rows), "failed": status.n_failed}
        result["running"] = sum(r.running for r in status.rows)
    elif verb == "status-replan":
        status = status_campaign(config, workdir=workdir, replan=True)
        result = {"to_run": sum(r.to_run for r in status.rows), "failed": status.n_failed}
        result["running"] = sum(r.running for r in status.rows)
    elif verb == "failed":
        result = {"failed": len(failed_campaign(config, workdir=workdir, n_lines=0))}
    elif verb == "rerun-select":
        selection = select_failed(config, workdir, replan=False)
        result = {"selected": selection.n_jobs if selection is not None else 0}
    else:
        raise SystemExit(f"unknown verb {verb!r}")
    result.update(seconds=time.perf_counter() - start, peak_mb=own_peak_mb())
    print(json.dumps(result))


def fill_ledger(config: Path, n_attempts: int) -> dict[str, int]:
    """Write ``n_attempts`` attempts over the campaign's jobs into its ledger (one transaction)."""
    import numpy as np

    from dcflow.ledger import Ledger, tile_of
    from dcflow.orchestration.plan_status import indexed_campaign
    from dcflow.pipeline.graph import JobGraph
    from dcflow.states import JobState

    workdir = config.parent
    _, layout, index = indexed_campaign(config, workdir)
    graph = JobGraph(index)
    ledger_path = Path(layout.path("ledger"))
    ledger_path.unlink(missing_ok=True)
    with Ledger(ledger_path) as ledger:
        old_run = ledger.start_run(campaign="bench", profile="local", backend="local")
        live_run = ledger.start_run(campaign="bench", profile="local", backend="local")
    rng = np.random.default_rng(13)
    now = time.time() + 1.0  # after the plan's scan: the successes are news to it
    rows: list[tuple] = []
    counts = {"succeeded": 0, "failed": 0, "running": 0, "retried": 0}
    n_tiles = int(n_attempts / (1 + RETRIED_SHARE))
    jobid = 0
    for s in graph.stages:
        n = min(graph.jobs(s.rule).n_jobs, n_tiles - len(rows))
        for j in range(max(n, 0)):
            data_id = graph.data_id(s.rule, j)
            tile = tile_of(data_id)
            wildcards = json.dumps({k: str(v) for k, v in data_id.items()})
            draw = rng.random()
            outputs = json.dumps(
                [p for item in s.outputs for p in graph.output_paths(s.rule, item.dataset, j)]
            )
            jobid += 1
            if draw < RETRIED_SHARE:
                rows.append((old_run, jobid, s.rule, tile, wildcards, "failed", 1, outputs, now))
                counts["retried"] += 1
            if draw < FAILED_SHARE:
                state, run, code = JobState.FAILED.value, old_run, 1
            elif draw < FAILED_SHARE + RUNNING_SHARE:
                state, run, code = JobState.RUNNING.value, live_run, None
            else:
                state, run, code = JobState.SUCCEEDED.value, old_run, 0
            counts[state] = counts.get(state, 0) + 1
            rows.append((run, jobid, s.rule, tile, wildcards, state, code, outputs, now + 1))
        if len(rows) >= n_attempts:
            break
    conn = sqlite3.connect(ledger_path)
    with conn:
        conn.executemany(
            "INSERT INTO attempts (run_id, jobid, rule, data_id, wildcards, state, exit_code,"
            " outputs, finished) VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )
        conn.execute("UPDATE runs SET finished = ? WHERE run_id = ?", (now + 2, old_run))
    conn.close()
    counts["attempts"] = len(rows)
    return counts


def refresh_ledger(ledger_path: Path) -> None:
    """Make a reused ledger's news new again: successes after the latest plan snapshot, the
    live run this process (its running attempts running again), as `fill_ledger` left them."""
    from dcflow.ledger import pid_start_time

    now = time.time() + 1.0
    conn = sqlite3.connect(ledger_path)
    with conn:
        conn.execute("UPDATE attempts SET finished = ? WHERE state = 'succeeded'", (now,))
        live_run = conn.execute("SELECT MAX(run_id) FROM runs").fetchone()[0]
        conn.execute(
            "UPDATE runs SET finished = NULL, exit_code = NULL, pid = ?, pid_start = ?"
            " WHERE run_id = ?",
            (os.getpid(), pid_start_time(os.getpid()), live_run),
        )
        conn.execute(
            "UPDATE attempts SET state = 'running' WHERE run_id = ? AND state = 'lost'",
            (live_run,),
        )
    conn.close()


def run_child(verb: str, config: Path) -> dict:
    log = config.parent / f"status_scale_{verb}.log"
    measured = run_measured([sys.executable, __file__, "--measure", verb, str(config)], log=log)
    text = log.read_text()
    if measured.returncode != 0:
        raise RuntimeError(f"{verb}: exit {measured.returncode}\n{text[-3000:]}")
    return json.loads(text.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--scratch", default="/tmp/dcflow-plan-scale", help="generated data")
    parser.add_argument("--reuse", action="store_true", help="reuse a campaign already written")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure)
        return 0
    from plan_scale import prepare

    root = Path(args.scratch)
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; scratch {root}", flush=True)
    config = prepare(args.fraction, root, reuse=args.reuse, done_list=False)
    ledger = config.parent / "output" / "ledger.sqlite3"
    if args.reuse and ledger.exists() and (config.parent / "output" / ".dcflow").exists():
        refresh_ledger(ledger)
        print("  reusing the plan snapshot and the ledger written before", flush=True)
    else:
        for name in ("index.npz", "plan.npz"):
            (config.parent / "output" / ".dcflow" / name).unlink(missing_ok=True)
        measured = run_measured(
            [sys.executable, "-m", "dcflow.cli", "plan", "--config", str(config), "--no-pictures"],
            log=config.parent / "status_scale_plan.log",
            cwd=config.parent,
        )
        print(
            f"  dcflow plan (cold: builds and keeps the index and the plan's arrays): "
            f"{measured.wall_s:.1f} s, peak {measured.peak_mb:.0f} MB, exit {measured.returncode}",
            flush=True,
        )
        start = time.perf_counter()
        counts = fill_ledger(config, args.attempts)
        print(
            f"  ledger: {counts['attempts']:,} attempts ({counts['succeeded']:,} succeeded, "
            f"{counts['failed']:,} failed last, {counts['running']:,} running, "
            f"{counts['retried']:,} retried) written in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
    from dcflow.ledger import Ledger

    with Ledger(ledger):  # a ledger of an older dcflow gets its indexes here, not in a verb
        pass
    for verb in ("status", "failed", "rerun-select", "status-replan"):
        result = run_child(verb, config)
        figures = ", ".join(f"{k} {v:,}" for k, v in result.items() if isinstance(v, int))
        verdict = (
            ""
            if verb == "status-replan"
            else f"  [target <= 10 s, <= 2048 MB: "
            f"{'met' if result['seconds'] <= 10 and result['peak_mb'] <= 2048 else 'NOT met'}]"
        )
        print(
            f"  {verb:<14} {result['seconds']:6.1f} s, peak {result['peak_mb']:6.0f} MB; "
            f"{figures}{verdict}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
