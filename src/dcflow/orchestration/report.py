"""`dcflow report`: Snakemake's HTML report with the per-stage benchmark summary."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcflow.ledger import read_benchmark
from dcflow.orchestration.campaign_files import load_campaign_config, rooted_layout
from dcflow.orchestration.snakemake_cli import run_snakemake

__all__ = ["StageBenchmark", "benchmark_html", "benchmark_summary", "report_campaign"]


@dataclass(frozen=True, slots=True)
class StageBenchmark:
    """Measured cost of one stage's jobs, from their Snakemake benchmark files."""

    stage: str
    n_jobs: int
    wall_s_total: float
    wall_s_max: float
    cpu_s_total: float
    max_rss_mb_mean: float
    max_rss_mb_max: float
    io_in_mb_total: float
    io_out_mb_total: float


def benchmark_summary(benchmark_root: str | Path) -> list[StageBenchmark]:
    """Per stage (rule directory under ``benchmark_root``): CPU, memory and I/O of its jobs."""
    out = []
    root = Path(benchmark_root)
    if not root.is_dir():
        return out
    for rule_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        records = [r for r in map(read_benchmark, sorted(rule_dir.glob("*.tsv"))) if r]
        if not records:
            continue
        rss = [r.max_rss_mb for r in records if r.max_rss_mb is not None]
        out.append(
            StageBenchmark(
                stage=rule_dir.name,
                n_jobs=len(records),
                wall_s_total=sum(r.runtime_s for r in records),
                wall_s_max=max(r.runtime_s for r in records),
                cpu_s_total=sum(r.cpu_s or 0.0 for r in records),
                max_rss_mb_mean=float(np.mean(rss)) if rss else float("nan"),
                max_rss_mb_max=max(rss) if rss else float("nan"),
                io_in_mb_total=sum(r.io_in_mb or 0.0 for r in records),
                io_out_mb_total=sum(r.io_out_mb or 0.0 for r in records),
            )
        )
    return out


def benchmark_html(stages: list[StageBenchmark], title: str) -> str:
    """An HTML page with the per-stage benchmark table (the campaign's hardware overhead)."""
    head = (
        "<tr><th>stage</th><th>jobs</th><th>wall total (s)</th><th>wall max (s)</th>"
        "<th>CPU total (s)</th><th>CPU/wall</th><th>max RSS mean (MB)</th>"
        "<th>max RSS max (MB)</th><th>read (MB)</th><th>written (MB)</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{html.escape(s.stage)}</td><td>{s.n_jobs}</td><td>{s.wall_s_total:.1f}</td>"
        f"<td>{s.wall_s_max:.1f}</td><td>{s.cpu_s_total:.1f}</td>"
        f"<td>{s.cpu_s_total / s.wall_s_total if s.wall_s_total else 0:.2f}</td>"
        f"<td>{s.max_rss_mb_mean:.0f}</td><td>{s.max_rss_mb_max:.0f}</td>"
        f"<td>{s.io_in_mb_total:.1f}</td><td>{s.io_out_mb_total:.1f}</td></tr>"
        for s in stages
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>td,th{padding:4px 10px;border:1px solid #ccc;text-align:right}"
        "table{border-collapse:collapse}</style></head><body>"
        f"<h1>{html.escape(title)}: measured cost per stage</h1>"
        "<p>From Snakemake's benchmark files (one per job): wall time, CPU time, peak resident "
        "memory and I/O.</p>"
        f"<table>{head}{rows}</table></body></html>"
    )


def report_campaign(
    config_path: str | Path,
    *,
    profile: str | None,
    snakemake_args: list[str],
    output: str | Path | None = None,
    workdir: str | Path | None = None,
) -> tuple[int, str, str, list[StageBenchmark]]:
    """Write Snakemake's HTML report and the per-stage benchmark summary beside it.

    The per-stage CPU, memory and I/O figures are shown on the report's landing page
    (``--report-metadata``) and written as their own page and TSV.

    Returns Snakemake's exit code, the report path, the benchmark page path and the summary.
    The benchmark table is also written as ``<report stem>_benchmarks.tsv``.
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    config = load_campaign_config(config_path)
    layout = rooted_layout(config_path, workdir)
    report = Path(output) if output else Path(layout.output_root) / "report" / "report.html"
    report = report if report.is_absolute() else workdir / report
    report.parent.mkdir(parents=True, exist_ok=True)
    bench_root = Path(layout.pattern("benchmark", rule="R", tile="T")).parent.parent
    bench_root = bench_root if bench_root.is_absolute() else workdir / bench_root
    stages = benchmark_summary(bench_root)
    page = report.with_name(report.stem + "_benchmarks.html")
    page.write_text(benchmark_html(stages, config["campaign"]["name"]))
    with open(report.with_name(report.stem + "_benchmarks.tsv"), "w") as handle:
        names = list(StageBenchmark.__dataclass_fields__)
        handle.write("\t".join(names) + "\n")
        for stage in stages:
            handle.write("\t".join(str(getattr(stage, n)) for n in names) + "\n")
    # the per-stage figures also go on the landing page of Snakemake's own report
    metadata = report.with_name(report.stem + "_metadata.yaml")
    lines = [f"campaign: {json.dumps(config['campaign']['name'])}"]
    for stage in stages:
        text = (
            f"{stage.n_jobs} jobs; CPU {stage.cpu_s_total:.1f} s (wall {stage.wall_s_total:.1f} s,"
            f" longest {stage.wall_s_max:.1f} s); max RSS {stage.max_rss_mb_max:.0f} MB"
            f" (mean {stage.max_rss_mb_mean:.0f} MB); read {stage.io_in_mb_total:.1f} MB,"
            f" written {stage.io_out_mb_total:.1f} MB"
        )
        lines.append(f"{json.dumps('stage ' + stage.stage)}: {json.dumps(text)}")
    metadata.write_text("\n".join(lines) + "\n")
    code = run_snakemake(
        config_path,
        profile=profile,
        snakemake_args=[
            "--report",
            str(report),
            "--report-metadata",
            str(metadata),
            *snakemake_args,
        ],
        workdir=workdir,
    )
    return code, str(report), str(page), stages
