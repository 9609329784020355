"""Grid Engine submission benchmark: the gridengine executor plugin against a plain qsub loop.

Needs the project's cluster (scripts/gridengine-up) and its environment
(``source run/gridengine/env.sh``). Prints figures, asserts nothing. Measured, in one run:

* loop: ``qsub -b y /bin/true`` in a sequential loop (``--loop-jobs``, default 100): submission
  rate, and end-to-end rate (first qsub until every job has left qstat).
* plugin submission: Snakemake with ``--executor gridengine`` on a workflow of ``--jobs`` (default
  1000) trivial jobs of one rule, submitted on hold (``-h``, so nothing runs) and then cancelled
  (Ctrl-C: one qdel). Rate = jobs / (ledger complete - executor start), the executor start being
  the driver marker's mtime (after Snakemake built the DAG; Snakemake's own job selection is
  included); also the rate inside the plugin's run_jobs (its closing log line). For DRMAA with
  and without arrays and for qsub with arrays (qsub without arrays is the loop).
* plugin end to end: the same 1000 jobs run to completion, grouped ``--group-size`` per batch
  job (every Grid Engine job runs a Snakemake process, ~2-4 CPU-seconds here, so 1000 single
  jobs would take ~25 min on 2 cores); and ``--single-jobs`` (default 40) ungrouped jobs.

Usage: ``.venv/bin/python benchmarks/gridengine_submit.py [--jobs 1000] [--loop-jobs 100]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from snakemake_executor_plugin_gridengine.cancel import cancel_jobs
from snakemake_executor_plugin_gridengine.reattach import SubmissionLedger
from snakemake_executor_plugin_gridengine.status import parse_qstat_xml

SNAKEFILE = """
rule all:
    input: expand("out/{{i}}.txt", i=range({n}))

rule trivial:
    output: "out/{{i}}.txt"
    resources: mem_mb=1000, runtime=5
    shell: "touch {{output}}"
"""


def live_ids() -> set[str]:
    out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, check=True).stdout
    return set(parse_qstat_xml(out))


def wait_gone(ids: set[str], timeout_s: float = 600) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        live = live_ids()
        if not any(i in live or i.split(".")[0] in live for i in ids):
            return time.monotonic()
        time.sleep(0.2)
    raise RuntimeError(f"jobs still in qstat after {timeout_s} s")


def qsub_loop(n: int, workdir: Path) -> dict[str, float]:
    """Plain sequential qsub of n trivial jobs; submission and end-to-end rates."""
    ids = set()
    t0 = time.monotonic()
    for i in range(n):
        argv = ["qsub", "-terse", "-b", "y", "-N", f"bench.loop{i}", "-wd", str(workdir)]
        argv += ["-o", "/dev/null", "-j", "y", "/bin/true"]
        ids.add(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip())
    t_sub = time.monotonic()
    t_end = wait_gone(ids)
    return {"jobs": n, "submit_rate": n / (t_sub - t0), "e2e_rate": n / (t_end - t0)}


def snakemake_argv(workdir: Path, backend: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(workdir / "Snakefile"),
        "--directory",
        str(workdir),
        "--executor",
        "gridengine",
        "--gridengine-backend",
        backend,
        "--seconds-between-status-checks",
        "1",
        "--quiet",
        "rules",
        "progress",
        *extra,
    ]


def make_workflow(root: Path, name: str, n: int) -> Path:
    workdir = root / name
    workdir.mkdir()
    (workdir / "Snakefile").write_text(SNAKEFILE.format(n=n))
    return workdir


def plugin_submission(root: Path, name: str, n: int, backend: str, arrays: bool) -> dict:
    """Submit n held jobs through the plugin, then cancel them; the submission rate."""
    workdir = make_workflow(root, name, n)
    argv = snakemake_argv(
        workdir,
        backend,
        "--jobs",
        str(n),
        "--gridengine-extra-args=-h",
        f"--gridengine-array-min-jobs={2 if arrays else 0}",
    )
    state = workdir / ".snakemake" / "gridengine"
    ledger = SubmissionLedger(state / "submissions.jsonl")
    t0 = time.monotonic()
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    executor_start = None
    while True:
        if executor_start is None:
            markers = list((state / "drivers").glob("*.json")) if state.exists() else []
            if markers:
                executor_start = markers[0].stat().st_mtime
        if ledger.path.exists() and len(ledger.read()[0]) >= n:
            ledger_done = ledger.path.stat().st_mtime
            break
        if driver.poll() is not None:
            raise RuntimeError(f"snakemake ended early: {driver.stderr.read()[-2000:]}")
        time.sleep(0.05)
    wall_all = time.monotonic() - t0
    driver.send_signal(signal.SIGINT)  # Snakemake cancels: the plugin's one qdel
    try:
        _, stderr = driver.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        driver.kill()
        _, stderr = driver.communicate()
    m = re.search(r"(\d+) jobs submitted in ([0-9.]+) s", stderr)
    plugin_rate = int(m.group(1)) / float(m.group(2)) if m else float("nan")
    ids = {s.job_id for s in ledger.read()[0]}
    time.sleep(1)
    leftover = {i for i in ids if i in live_ids()}
    if leftover:
        cancel_jobs(leftover)
    return {
        "jobs": n,
        "backend": backend,
        "arrays": arrays,
        "submit_rate": n / (ledger_done - executor_start),
        "plugin_rate": plugin_rate,
        "seconds_from_snakemake_start": wall_all,
        "left_after_cancel": len(leftover),
    }


def plugin_end_to_end(root: Path, name: str, n: int, backend: str, group_size: int) -> dict:
    """Run n trivial jobs to completion through the plugin (grouped when group_size > 1)."""
    workdir = make_workflow(root, name, n)
    extra = ["--jobs", "100"]
    if group_size > 1:
        extra += ["--groups", "trivial=g", "--group-components", f"g={group_size}", "--cores", "2"]
    t0 = time.monotonic()
    proc = subprocess.run(snakemake_argv(workdir, backend, *extra), capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake failed: {proc.stderr[-3000:]}")
    done = len(list((workdir / "out").iterdir()))
    batch_jobs = len(
        SubmissionLedger(workdir / ".snakemake/gridengine/submissions.jsonl").read()[0]
    )
    return {
        "jobs": n,
        "outputs": done,
        "grid_engine_jobs": batch_jobs,
        "group_size": group_size,
        "e2e_rate": n / wall,
        "seconds": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--loop-jobs", type=int, default=100)
    parser.add_argument("--group-size", type=int, default=50)
    parser.add_argument("--single-jobs", type=int, default=40)
    args = parser.parse_args()
    if "SGE_ROOT" not in os.environ:
        parser.error("source run/gridengine/env.sh first (SGE_ROOT is not set)")
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="ge-bench-") as tmp:
        root = Path(tmp)
        results["qsub_loop"] = loop = qsub_loop(args.loop_jobs, root)
        print(
            f"qsub loop ({args.loop_jobs} jobs): {loop['submit_rate']:.1f} jobs/s submitted, "
            f"{loop['e2e_rate']:.1f} jobs/s end to end",
            flush=True,
        )
        for backend, arrays in (("drmaa", True), ("drmaa", False), ("qsub", True)):
            key = f"plugin_submit_{backend}_{'arrays' if arrays else 'single'}"
            r = plugin_submission(root, key, args.jobs, backend, arrays)
            results[key] = r
            print(
                f"plugin {backend:5s} {'arrays' if arrays else 'single'} ({args.jobs} jobs): "
                f"{r['submit_rate']:.0f} jobs/s submitted "
                f"(x{r['submit_rate'] / loop['submit_rate']:.0f} the qsub loop; "
                f"{r['plugin_rate']:.0f} jobs/s inside the plugin's run_jobs); "
                f"all submitted {r['seconds_from_snakemake_start']:.1f} s after snakemake "
                f"started; {r['left_after_cancel']} left after cancel",
                flush=True,
            )
        r = plugin_end_to_end(root, "e2e_grouped", args.jobs, "drmaa", args.group_size)
        results["plugin_e2e_grouped"] = r
        print(
            f"plugin drmaa end to end ({args.jobs} jobs in {r['grid_engine_jobs']} batch jobs "
            f"of {args.group_size}): {r['e2e_rate']:.1f} jobs/s "
            f"(x{r['e2e_rate'] / loop['e2e_rate']:.2f} the qsub loop), {r['seconds']:.0f} s",
            flush=True,
        )
        if args.single_jobs:
            r = plugin_end_to_end(root, "e2e_single", args.single_jobs, "drmaa", 1)
            results["plugin_e2e_single"] = r
            print(
                f"plugin drmaa end to end ({args.single_jobs} ungrouped jobs, one Snakemake "
                f"process each): {r['e2e_rate']:.2f} jobs/s "
                f"(x{r['e2e_rate'] / loop['e2e_rate']:.2f} the qsub loop)",
                flush=True,
            )
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
