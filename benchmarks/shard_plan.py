"""Per-shard Snakemake planning cost on a DC2013-scale synthetic campaign.

Writes (or reuses) the synthetic campaign of `dcflow.campaign.synthetic` at ``--fraction`` of
DC2013, builds its shards (`dcflow.orchestration.sharded.plan_shards`), touches only what one
visit shard and two patch-group shards read (the visit shard's raws and the master calibs; the
groups' calexps), and times ``snakemake -n --quiet`` of each in shard mode: the first visit
shard, a typical patch group (median job count) and the largest one, printing wall time, CPU
time (user + system: steadier than wall on a shared machine) and the Snakemake process's peak
RSS. Targets (issue 8): <= 10 s and <= 500 MB per shard.

    python benchmarks/shard_plan.py --fraction 1.0 --out /tmp/dc2013
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from child_usage import run_measured

from dcflow.campaign.manifest import write_manifest
from dcflow.campaign.shards import Shard, manifest_of
from dcflow.campaign.synthetic import dc2013_spec, touch_raws, write_campaign
from dcflow.config_schema import load_config
from dcflow.layout import Layout
from dcflow.orchestration.sharded import plan_shards
from dcflow.orchestration.snakemake_cli import snakemake_argv

__all__ = ["main"]


def _touch(paths: list[str]) -> None:
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()


def _dry_run(config_path: Path, manifest: Path, shard: Shard) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of one shard's ``snakemake -n``."""
    args = ["-n", "--quiet", "--cores", "1", "--config", f"shard={manifest}"]
    args += ["--allowed-rules", *shard.rules, "all"]
    argv = snakemake_argv(
        config_path, profile=None, snakemake_args=args, workdir=config_path.parent
    )
    log = manifest.with_suffix(".dry_run.log")
    measured = run_measured(argv, log=log)
    if measured.returncode:
        raise RuntimeError(f"{shard.shard_id}: snakemake -n failed:\n{log.read_text()[-3000:]}")
    return measured.wall_s, measured.cpu_s, measured.peak_mb


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one line per measured shard."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=1.0, help="of DC2013 (4.4 M raws)")
    parser.add_argument("--out", required=True, help="campaign directory (reused if present)")
    parser.add_argument("--visits-per-shard", type=int, default=200)
    parser.add_argument(
        "--patches-per-shard", type=int, default=None, help="default: the config's (ShardConfig)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    config_path = out / "config.yaml"
    if not config_path.exists():
        start = time.perf_counter()
        spec = dc2013_spec(args.fraction)
        write_campaign(spec, out)
        print(f"campaign: {spec.n_raws} raws written in {time.perf_counter() - start:.1f} s")
    config = load_config(config_path)
    config["shards"] = {**config.get("shards", {}), "visits_per_shard": args.visits_per_shard}
    if args.patches_per_shard is not None:
        config["shards"]["patches_per_shard"] = args.patches_per_shard
    start = time.perf_counter()
    shards, _, _, layout, _, axes = plan_shards(config, out)
    n_jobs = sum(s.n_jobs for s in shards)
    print(
        f"shards: {len(shards)} ({n_jobs} jobs, {len(axes.visits)} visits, "
        f"{len(axes.patch_tract)} patches) built in {time.perf_counter() - start:.1f} s; "
        f"largest {max(s.n_jobs for s in shards)} jobs"
    )
    visit_shard = next(s for s in shards if s.kind == "visits")
    groups = sorted((s for s in shards if s.kind == "patches"), key=lambda s: s.n_jobs)
    typical, largest = groups[len(groups) // 2], groups[-1]
    print(
        f"patch groups: {len(groups)}, jobs per group: median {typical.n_jobs}, "
        f"largest {largest.n_jobs}"
    )
    rule_layout = Layout.from_config(config)
    touch_raws(config_path, visits=np.array(visit_shard.visits), calibs=False)
    calibs = next(s for s in shards if s.kind == "calibs")
    _touch(list(calibs.targets))
    _touch(
        [
            rule_layout.path("flat", filter=b, ccd=c)
            for b in axes.filters
            for c in axes.ccds.tolist()
        ]
    )
    _touch([rule_layout.path("refcat", instrument=config["campaign"]["instrument"])])
    group_visits = sorted({*typical.visits, *largest.visits})
    calexps = [
        rule_layout.path("calexp", visit=v, ccd=c) for v in group_visits for c in axes.ccds.tolist()
    ]
    _touch(calexps)
    print(f"touched {len(visit_shard.visits) * len(axes.ccds)} raws and {len(calexps)} calexps")
    for label, shard in (("visit", visit_shard), ("typical", typical), ("largest", largest)):
        manifest = write_manifest(manifest_of(shard, axes), layout)
        wall, cpu_s, rss_mb = _dry_run(config_path, manifest, shard)
        verdict = "ok" if wall <= 10.0 and rss_mb <= 500.0 else "OVER TARGET"
        print(
            f"{label} {shard.shard_id}: {shard.n_jobs} jobs ({len(shard.visits)} visits), "
            f"snakemake -n {wall:.1f} s wall, {cpu_s:.1f} s CPU, peak RSS {rss_mb:.0f} MB "
            f"[{verdict}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
