"""Seconds of the JobSpec planner (`plan_jobs`) against `snakemake -n` on the same campaign.

Usage: .venv/bin/python benchmarks/plan.py [--visits N] [--ccds C] [--done F] [--snakemake]

Builds a synthetic campaign without pixels: a registry of N science visits x C CCDs (plus
biases and flats, rows inserted directly), and an output tree where the first fraction F of
the visits' calexp/src files and every calib exist as empty files. Then times, in this
process: the job graph (`JobGraph.job_specs`), the output scan + needrun (`plan_jobs`); and, with
``--snakemake``, Snakemake's own dry run of the same campaign (a subprocess), checking that the
job counts agree (``--rerun-triggers mtime``: the outputs here were not made by Snakemake, so
it has no metadata for them). Prints figures; it is not a test. The analytic planner that
`dcflow plan` uses at campaign scale is measured by benchmarks/plan_scale.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from dcflow.layout import Layout
from dcflow.orchestration.snakemake_cli import DRY_RUN_ARGS, snakemake_argv
from dcflow.plan import parse_dry_run_counts, plan_jobs

BANDS = ("u", "g", "r", "i", "z")


def make_campaign(root: Path, n_visits: int, n_ccds: int, done_fraction: float) -> Path:
    """Write config.yaml, a registry and a partly filled output tree under ``root``."""
    config = {
        "campaign": {"name": "bench", "instrument": "cfht_sim"},
        "layout": {"input_root": "in", "output_root": "out"},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    layout = Layout.from_config(config)
    registry = root / layout.path("registry")
    registry.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for ccd in range(n_ccds):
        rows += [(9000 + i, ccd, "bias", "none") for i in range(3)]
        rows += [
            (9100 + 10 * b + i, ccd, "flat", band) for b, band in enumerate(BANDS) for i in range(3)
        ]
        rows += [(1000 + v, ccd, "object", BANDS[v % 5]) for v in range(n_visits)]
    conn = sqlite3.connect(registry)
    conn.execute(
        "CREATE TABLE raw (instrument TEXT, visit INTEGER, ccd INTEGER, obstype TEXT,"
        " filter TEXT, exptime REAL, mjd REAL, airmass REAL, ra_deg REAL, dec_deg REAL,"
        " path TEXT UNIQUE, PRIMARY KEY (instrument, visit, ccd))"
    )
    conn.executemany(
        "INSERT INTO raw VALUES ('cfht_sim',?,?,?,?,60,60000,1.2,150,2,?)",
        conn_rows(rows),
    )
    conn.commit()
    conn.close()
    os.chdir(root)
    inputs = [
        layout.path("refcat", instrument="cfht_sim"),
        layout.path("truth", instrument="cfht_sim"),
    ]
    inputs += [r[4] for r in conn_rows(rows)]
    for path in inputs:  # inputs first: older than every output
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
    time.sleep(0.05)
    done = [1000 + v for v in range(int(n_visits * done_fraction))]
    paths = [layout.path("bias", ccd=c) for c in range(n_ccds)]
    paths += [layout.path("flat", filter=b, ccd=c) for b in BANDS for c in range(n_ccds)]
    paths += [
        layout.path(t, visit=v, ccd=c)
        for v in done
        for c in range(n_ccds)
        for t in ("calexp", "src")
    ]
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
    return root / "config.yaml"


def conn_rows(rows: list[tuple]) -> list[tuple]:
    """Registry rows with their raw paths, as inserted."""
    return [(v, c, t, f, f"in/cfht_sim/raw/{v}/raw_{v}_{c}.fits") for v, c, t, f in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=2000)
    parser.add_argument("--ccds", type=int, default=36)
    parser.add_argument("--done", type=float, default=0.5)
    parser.add_argument("--snakemake", action="store_true", help="also time snakemake -n")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dcflow-plan-bench-") as tmp:
        t0 = time.perf_counter()
        config = make_campaign(Path(tmp), args.visits, args.ccds, args.done)
        print(
            f"campaign: {args.visits} visits x {args.ccds} CCDs, {args.done:.0%} done "
            f"(set up in {time.perf_counter() - t0:.1f} s)"
        )
        from dcflow.orchestration.campaign_files import open_campaign

        t0 = time.perf_counter()
        from dcflow.pipeline.graph import JobGraph

        _, layout, index = open_campaign(config)
        jobs = JobGraph(index).job_specs()
        t_jobs = time.perf_counter() - t0
        plan = plan_jobs(jobs, output_root=layout.output_root, workdir=tmp)
        n_outputs = sum(len(j.outputs) for j in jobs)
        print(
            f"job graph: {len(jobs)} jobs, {n_outputs} outputs in {t_jobs:.2f} s "
            f"({t_jobs / len(jobs) * 1e3:.3f} ms/job)"
        )
        print(
            f"scan + needrun: {plan.n_files} files, {plan.n_to_run} jobs to run "
            f"in {plan.seconds:.2f} s ({plan.seconds / n_outputs * 1e6:.1f} us/output)"
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"planner total {t_jobs + plan.seconds:.2f} s, peak RSS {peak:.0f} MB")
        if args.snakemake:
            argv = snakemake_argv(config, profile="local", snakemake_args=DRY_RUN_ARGS, workdir=tmp)
            t0 = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            t_sm = time.perf_counter() - t0
            counts = parse_dry_run_counts(proc.stdout + proc.stderr)
            same = counts == plan.to_run_by_rule()
            print(
                f"snakemake -n: {sum(counts.values())} jobs to run in {t_sm:.1f} s "
                f"(exit {proc.returncode}); counts equal the planner's: {same}; "
                f"planner is {t_sm / (t_jobs + plan.seconds):.0f}x faster"
            )


if __name__ == "__main__":
    main()
