"""Seconds and peak memory of `dcflow plan` (the analytic planner) up to DC2013 scale.

Usage: .venv/bin/python benchmarks/plan_scale.py [--fractions 0.01 0.1 1] [--scratch DIR]
       [--reuse] [--no-snakemake] [--done-list] [--baseline REV]

For each fraction of DC2013 (4.4 M raw files), writes a synthetic campaign
(`dcflow.campaign.synthetic`: registry rows, config, no images) under the scratch directory,
then measures `dcflow.plan_campaign` fresh (empty output tree) and half done (the first
half of the visits processed and warped), each in its own subprocess and cold (the index
that `dcflow plan` keeps under the output root removed first; the half-done plan is also
timed with the index kept by the plan before it) (wall time from reading
the config to the plan, peak RSS from ``VmHWM``: benchmarks/child_usage.py says why not
``ru_maxrss``). Half done is a real tree of empty files at 1 % and a gzipped file list
(``--inventory``) above. With ``--done-list`` the fully done state (a ~21 M line list at
100 %) is measured too.

At the smallest fraction it also times one ``snakemake -n`` of the same campaign (raws touched
as empty files; ``--rerun-triggers mtime``), checks that the job counts agree, and prints the
ratio; larger fractions print what Snakemake would need by the cost model of notes/scale.md
and by the per-job cost just measured (this workflow's warps list 36 calexps each: it costs
Snakemake more per job than the notes' synthetic workflow). Prints figures; it is not a test.
Targets (issue 8): full DC2013 plan <= 5 min and <= 8 GB, fresh and half done. With
``--baseline REV`` the same campaigns are also planned by the code of git revision REV (a
detached worktree under the scratch directory) and the ratios printed side by side (issue 13:
within 1.3x of f1ee213, the planner before the pipeline spec).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from child_usage import own_peak_mb, run_measured

REPO = Path(__file__).resolve().parents[1]

# notes/scale.md, coarse rules: ~0.6 s + 0.364 ms per job + 0.125 ms per output file;
# ~80 MB + 11.4 KB per job + 2.6 KB per output file.
SNAKEMAKE_S = (0.6, 0.364e-3, 0.125e-3)
SNAKEMAKE_MB = (80.0, 11.4 / 1024, 2.6 / 1024)


def measure(config: str, inventory: str | None) -> None:
    """Child mode: plan once, print one JSON line."""
    try:
        from dcflow.orchestration.plan_status import plan_campaign
    except ImportError:  # a --baseline revision from before dcflow.orchestration
        from dcflow.driver import plan_campaign

    start = time.perf_counter()
    plan = plan_campaign(config, profile=None, workdir=Path(config).parent, inventory=inventory)
    seconds = time.perf_counter() - start
    peak_mb = own_peak_mb()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": peak_mb,
                "n_total": plan.n_total,
                "n_to_run": plan.n_to_run,
                "n_files": plan.n_files,
                "to_run": plan.to_run_by_rule(),
            }
        )
    )


def run_child(argv: list[str], log: Path, *, src: Path | None = None) -> dict:
    """Run this script's ``--measure`` mode (with ``src`` first on the path: another revision)."""
    env = None if src is None else {"PYTHONPATH": f"{src}:{Path(__file__).parent}"}
    measured = run_measured([sys.executable, __file__, *argv], log=log, env=env)
    text = log.read_text()
    if measured.returncode != 0:
        raise RuntimeError(f"{argv}: exit {measured.returncode}\n{text[-3000:]}")
    return json.loads(text.strip().splitlines()[-1])


def snakemake_dry_run(config: Path) -> tuple[float, float, dict[str, int]]:
    """Wall s, peak RSS MB and job counts of one ``snakemake -n`` of the campaign."""
    from dcflow.orchestration.snakemake_cli import DRY_RUN_ARGS, snakemake_argv
    from dcflow.plan import parse_dry_run_counts

    argv = snakemake_argv(
        config, profile="local", snakemake_args=DRY_RUN_ARGS, workdir=config.parent
    )
    log = config.parent / "snakemake_dry_run.log"
    measured = run_measured(argv, log=log, cwd=config.parent)
    if measured.returncode != 0:
        raise RuntimeError(f"snakemake -n failed, see {log}")
    return measured.wall_s, measured.peak_mb, parse_dry_run_counts(log.read_text())


def baseline_src(rev: str, root: Path) -> Path:
    """``src`` of a detached worktree of revision ``rev`` under ``root`` (made once)."""
    import subprocess

    tree = root / f"baseline-{rev}"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
    return tree / "src"


def compare(label: str, ours: dict, theirs: dict) -> None:
    """One line: this revision's and the baseline's seconds and peak MB, and the ratios."""
    print(
        f"  {label:<10} baseline {theirs['seconds']:7.1f} s, {theirs['peak_mb']:7.0f} MB; "
        f"ratio ours/baseline {ours['seconds'] / theirs['seconds']:.2f}x time, "
        f"{ours['peak_mb'] / theirs['peak_mb']:.2f}x memory; same to-run counts: "
        f"{ours['to_run'] == theirs['to_run']}",
        flush=True,
    )


def model(n_jobs: int, n_files: int) -> tuple[float, float]:
    """Snakemake dry-run hours and GB by notes/scale.md's coarse-rule cost model."""
    s = SNAKEMAKE_S[0] + SNAKEMAKE_S[1] * n_jobs + SNAKEMAKE_S[2] * n_files
    mb = SNAKEMAKE_MB[0] + SNAKEMAKE_MB[1] * n_jobs + SNAKEMAKE_MB[2] * n_files
    return s / 3600.0, mb / 1024.0


def output_files(jobs: dict[str, int], n_ccds: int = 36) -> int:
    """Output files of a campaign from its job counts per rule (the pipeline spec's outputs)."""
    from dcflow.layout import Layout
    from dcflow.pipeline.spec import STAGES

    layout = Layout(input_root="in", output_root="out")
    per_job = {
        s.rule: sum(
            n_ccds if "ccd" in layout.fields(o.dataset) and "ccd" not in s.keys else 1
            for o in s.outputs
        )
        for s in STAGES
    }
    return sum(n * per_job.get(rule, 0) for rule, n in jobs.items())


def prepare(fraction: float, root: Path, *, reuse: bool, done_list: bool) -> Path:
    from dcflow.campaign.synthetic import dc2013_spec, write_campaign, write_inventory

    directory = root / f"dc2013_{fraction:g}"
    config = directory / "config.yaml"
    if not (reuse and config.exists()):
        shutil.rmtree(directory, ignore_errors=True)
        start = time.perf_counter()
        spec = dc2013_spec(fraction)
        write_campaign(spec, directory)
        print(
            f"  generated {spec.n_raws:,} raw rows ({spec.n_visits:,} visits) "
            f"in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
    lists = {"half": directory / "inventory_half.txt.gz"}
    if done_list:
        lists["all"] = directory / "inventory_all.txt.gz"
    for state, path in lists.items():
        if path.exists():
            continue
        start = time.perf_counter()
        n = write_inventory(config, state, list_path=path)
        print(
            f"  {state}-done list: {n:,} paths in {time.perf_counter() - start:.1f} s", flush=True
        )
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--scratch", default="/tmp/dcflow-plan-scale", help="generated data")
    parser.add_argument("--reuse", action="store_true", help="reuse campaigns already written")
    parser.add_argument("--no-snakemake", action="store_true", help="skip the snakemake -n run")
    parser.add_argument("--done-list", action="store_true", help="also the fully done state")
    parser.add_argument("--baseline", help="also plan with this git revision's code")
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], args.measure[1] if len(args.measure) > 1 else None)
        return 0
    from dcflow.campaign.synthetic import touch_raws, write_inventory

    root = Path(args.scratch)
    root.mkdir(parents=True, exist_ok=True)
    baseline = baseline_src(args.baseline, root) if args.baseline else None
    smallest = min(args.fractions)
    per_job: tuple[float, float, float] | None = None  # snakemake -n s, MB per job; fraction
    print(f"machine: {os.cpu_count()} cores; scratch {root}")
    for fraction in sorted(args.fractions):
        print(f"== {fraction:g} of DC2013 ({fraction * 4.4e6:,.0f} raws)", flush=True)
        config = prepare(fraction, root, reuse=args.reuse, done_list=args.done_list)
        directory = config.parent
        index_cache = directory / "output" / ".dcflow" / "index.npz"
        index_cache.unlink(missing_ok=True)  # cold: the index is built, then kept
        fresh = run_child(["--measure", str(config)], directory / "plan_fresh.log")
        print(
            f"  fresh:     plan {fresh['seconds']:7.1f} s, peak {fresh['peak_mb']:7.0f} MB;"
            f" {fresh['n_total']:,} jobs, {fresh['n_to_run']:,} to run",
            flush=True,
        )
        warm = run_child(
            ["--measure", str(config), str(directory / "inventory_half.txt.gz")],
            directory / "plan_half_list_warm.log",
        )
        index_cache.unlink(missing_ok=True)
        half = run_child(
            ["--measure", str(config), str(directory / "inventory_half.txt.gz")],
            directory / "plan_half_list.log",
        )
        print(
            f"  half done: plan {half['seconds']:7.1f} s, peak {half['peak_mb']:7.0f} MB;"
            f" {half['n_files']:,} listed files, {half['n_to_run']:,} to run (file list)",
            flush=True,
        )
        print(
            f"  half done, index kept from the previous plan: {warm['seconds']:7.1f} s,"
            f" peak {warm['peak_mb']:7.0f} MB; same to-run counts:"
            f" {warm['to_run'] == half['to_run']}",
            flush=True,
        )
        if baseline is not None:
            old = run_child(["--measure", str(config)], directory / "base_fresh.log", src=baseline)
            compare("fresh:", fresh, old)
            old = run_child(
                ["--measure", str(config), str(directory / "inventory_half.txt.gz")],
                directory / "base_half.log",
                src=baseline,
            )
            compare("half done:", half, old)
        if args.done_list:
            done = run_child(
                ["--measure", str(config), str(directory / "inventory_all.txt.gz")],
                directory / "plan_done_list.log",
            )
            print(
                f"  done:      plan {done['seconds']:7.1f} s, peak {done['peak_mb']:7.0f} MB;"
                f" {done['n_files']:,} listed files, {done['n_to_run']:,} to run (file list)",
                flush=True,
            )
        n_jobs = fresh["n_total"]
        n_outputs = output_files(fresh["to_run"])
        if fraction == smallest and not args.no_snakemake:
            print("  snakemake -n (fresh; raws touched as empty files) ...", flush=True)
            touch_raws(config)
            sm_s, sm_mb, counts = snakemake_dry_run(config)
            same = counts == fresh["to_run"]
            per_job = (sm_s / n_jobs, sm_mb / n_jobs, fraction)
            print(
                f"  snakemake -n fresh: {sm_s:7.1f} s, peak {sm_mb:7.0f} MB; same counts as "
                f"the planner: {same}; ratio snakemake/planner: {sm_s / fresh['seconds']:.1f}x "
                f"time, {sm_mb / fresh['peak_mb']:.1f}x memory",
                flush=True,
            )
            start = time.perf_counter()
            write_inventory(config, "half", tree=True)
            print(f"  half-done tree written in {time.perf_counter() - start:.1f} s", flush=True)
            tree = run_child(["--measure", str(config)], directory / "plan_half_tree.log")
            print(
                f"  half done: plan {tree['seconds']:7.1f} s, peak {tree['peak_mb']:7.0f} MB"
                f" (tree walk, {tree['n_files']:,} names)",
                flush=True,
            )
            sm_s, sm_mb, counts = snakemake_dry_run(config)
            same = counts == tree["to_run"]
            print(
                f"  snakemake -n half: {sm_s:7.1f} s, peak {sm_mb:7.0f} MB; same counts: {same};"
                f" ratio {sm_s / tree['seconds']:.1f}x time, {sm_mb / tree['peak_mb']:.1f}x memory",
                flush=True,
            )
            if n_outputs:
                hours, gb = model(n_jobs, n_outputs)
                print(
                    f"  (notes/scale.md's cost model at this size: {hours * 3600:.0f} s, "
                    f"{gb:.1f} GB; measured here: {1e3 * per_job[0]:.2f} ms and "
                    f"{1024 * per_job[1]:.0f} KB per job)"
                )
        else:
            n_files = output_files(fresh["to_run"])
            hours, gb = model(n_jobs, n_files)
            print(
                f"  snakemake -n: not run: would need ~{hours:.1f} h / ~{gb:.0f} GB by "
                f"notes/scale.md's cost model ({n_jobs:,} jobs, {n_files:,} output files)",
                flush=True,
            )
            if per_job is not None:
                print(
                    f"    ~{per_job[0] * n_jobs / 3600:.1f} h / ~{per_job[1] * n_jobs / 1024:.0f}"
                    f" GB at the per-job cost measured at {per_job[2]:g}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
