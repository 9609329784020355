"""`dcflow report`: one self-contained HTML page an operator can read and mail.

The page joins what a campaign has to show: its status, the science validation (figures,
numbers, targets, pass/fail), coadd and difference-image thumbnails, the sky map and rule
graph, measured cost per stage, and failed tiles. Every picture is embedded (base64 PNG), so
the file stands alone; a home section links to every other section.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcflow.errors import InputDataError
from dcflow.failures import FailureAction
from dcflow.io import write_text
from dcflow.ledger import Attempt, read_benchmark
from dcflow.orchestration.campaign_files import (
    REPO_ROOT,
    campaign_ledger_path,
    load_campaign_config,
    open_ledger,
    rooted_layout,
)
from dcflow.states import JobState

__all__ = [
    "MAX_THUMBNAILS",
    "CampaignReport",
    "StageBenchmark",
    "StageLedgerCost",
    "benchmark_summary",
    "ledger_costs",
    "report_campaign",
]

log = logging.getLogger(__name__)

MAX_THUMBNAILS = 48
"""Thumbnails per image dataset (coadds, difference images): the page stays a few MB."""

THUMBNAIL_DATASETS = (
    ("deepCoadd", "Coadds (deepCoadd)"),
    ("deepDiff", "Difference images (deepDiff)"),
)
"""Image datasets shown as thumbnails, when the campaign writes them."""


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


@dataclass(frozen=True, slots=True)
class StageLedgerCost:
    """One stage's attempts in the ledger: memory asked against used, time lost to failures."""

    stage: str
    n_attempts: int
    n_failed: int
    mem_mb_requested_max: float
    mem_mb_used_max: float
    failed_wall_s: float


@dataclass(frozen=True, slots=True)
class CampaignReport:
    """What `report_campaign` wrote: the page, its sections and the figures measured."""

    path: str
    sections: tuple[str, ...]
    n_images: int
    stages: tuple[StageBenchmark, ...]
    n_failed: int


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


def ledger_costs(attempts: Sequence[Attempt]) -> list[StageLedgerCost]:
    """Per stage: attempts, failures, largest memory asked and used, wall time of failures."""
    by_stage: dict[str, list[Attempt]] = {}
    for a in attempts:
        if a.rule:
            by_stage.setdefault(a.rule, []).append(a)
    out = []
    for stage, mine in sorted(by_stage.items()):
        failed = [a for a in mine if a.state is JobState.FAILED]
        asked = [a.mem_mb_requested for a in mine if a.mem_mb_requested is not None]
        used = [a.mem_mb_used for a in mine if a.mem_mb_used is not None]
        out.append(
            StageLedgerCost(
                stage=stage,
                n_attempts=len(mine),
                n_failed=len(failed),
                mem_mb_requested_max=float(max(asked)) if asked else math.nan,
                mem_mb_used_max=float(max(used)) if used else math.nan,
                failed_wall_s=sum(
                    (a.finished - a.started) for a in failed if a.finished and a.started
                ),
            )
        )
    return out


def _png_data(figure) -> str:
    """A figure as a data: URI (and closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _file_data(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _img(src: str, alt: str, *, css: str = "") -> str:
    return f"<img src='{src}' alt='{html.escape(alt)}' class='{css}'>"


def _caption_text(caption: str) -> str:
    """A caption file of workflow/report/ as plain paragraphs (its reStructuredText is prose)."""
    path = REPO_ROOT / "workflow" / "report" / caption
    if not path.is_file():
        return ""
    paragraphs = [" ".join(p.split()) for p in path.read_text().split("\n\n") if p.strip()]
    return "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], *, escape: bool = True) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c) if escape else c}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def _status_section(config_path, workdir: Path) -> str:
    from dcflow.orchestration.plan_status import status_campaign

    status = status_campaign(config_path, profile=None, workdir=workdir)
    rows = [
        (r.stage, r.filter or "-", str(r.total), str(r.done), str(r.to_run), str(r.failed))
        for r in status.rows
    ]
    n_total = sum(r.total for r in status.rows)
    n_done = sum(r.done for r in status.rows)
    verdict = (
        "complete"
        if status.complete and not status.untrusted
        else f"{status.n_failed} failed tile(s), {status.n_untrusted} untrusted output(s)"
    )
    return f"<p><b>{n_done} of {n_total} jobs done</b>; {html.escape(verdict)}.</p>" + _table(
        ("stage", "filter", "jobs", "done", "to run", "failed"), rows
    )


def _validation_section(graph, layout) -> tuple[str, int]:
    """Figures of every report output of the pipeline spec, and the validation verdicts."""
    from dcflow.validation_plots import (
        SCIENCE_TARGETS,
        target_verdicts,
        validation_summary_figure,
    )

    parts, n_images = [], 0
    metrics_path = Path(layout.path("science_validation"))
    if metrics_path.is_file():
        try:
            visits = json.loads(metrics_path.read_text())["visits"]
        except (OSError, ValueError, KeyError) as exc:
            raise InputDataError(f"{metrics_path}: not a science validation file ({exc})") from exc
        verdicts = target_verdicts(visits)
        n_pass = sum(all(v.values()) for v in verdicts.values())
        parts.append(
            f"<p><b>{n_pass} of {len(visits)} visits meet every target</b> "
            f"({html.escape(str(metrics_path))}).</p>"
        )
        head = ["visit", "band"] + [f"{t.label} (target {t.text})" for t in SCIENCE_TARGETS]
        rows = []
        for visit in sorted(visits):
            cells = [html.escape(visit), html.escape(str(visits[visit].get("band", "")))]
            for t in SCIENCE_TARGETS:
                ok = verdicts[visit][t.metric]
                value = float(visits[visit].get(t.metric, math.nan))
                digits = 3 if t.metric == "completeness" else 1
                cells.append(
                    f"<span class='{'pass' if ok else 'fail'}'>{_fmt(value, digits)} "
                    f"{'pass' if ok else 'FAIL'}</span>"
                )
            rows.append(cells)
        parts.append(_table(head, rows, escape=False))
        if visits:
            parts.append(_img(_png_data(validation_summary_figure(visits)), "validation per visit"))
            n_images += 1
    for stage in graph.stages:
        for item in stage.outputs:
            if not item.caption:
                continue
            for job in range(graph.jobs(stage.rule).n_jobs):
                for path in graph.output_paths(stage.rule, item.dataset, job):
                    if os.path.isfile(path) and os.path.getsize(path):
                        parts.append(
                            f"<h3>{html.escape(item.category or item.dataset)}: "
                            f"{html.escape(os.path.basename(path))}</h3>"
                            + _caption_text(item.caption)
                            + _img(_file_data(path), item.dataset)
                        )
                        n_images += 1
    if not parts:
        parts.append("<p>No validation output yet: run the campaign first.</p>")
    return "".join(parts), n_images


def _thumbnail_section(graph, dataset: str) -> tuple[str, int]:
    from dcflow.io import read_exposure
    from dcflow.plots_campaign import thumbnail_figure

    n_files, present = 0, []
    for stage in graph.stages:
        for item in stage.outputs:
            if item.dataset != dataset or not graph.active(stage.rule):
                continue
            for job in range(graph.jobs(stage.rule).n_jobs):
                paths = graph.output_paths(stage.rule, dataset, job)
                n_files += len(paths)
                if len(present) < MAX_THUMBNAILS:  # a big campaign is not stat'ed file by file
                    present += [p for p in paths if os.path.isfile(p)]
    if not present:
        return "", 0
    cells = []
    for path in present[:MAX_THUMBNAILS]:
        name = Path(path).stem
        try:
            image = read_exposure(path).image
        except InputDataError as exc:  # one unreadable file is shown as such, not a failed page
            cells.append(f"<figure><p class='fail'>{html.escape(str(exc))}</p></figure>")
            continue
        cells.append(
            f"<figure>{_img(_png_data(thumbnail_figure(image, title=name)), name, css='thumb')}"
            f"<figcaption>{html.escape(path)}</figcaption></figure>"
        )
    note = f"<p>The first {len(cells)} {html.escape(dataset)} files written, of {n_files}.</p>"
    return note + "<div class='grid'>" + "".join(cells) + "</div>", len(cells)


def _cost_section(
    stages: Sequence[StageBenchmark], costs: Sequence[StageLedgerCost], tsv_name: str
) -> str:
    rows = [
        (
            s.stage,
            str(s.n_jobs),
            _fmt(s.wall_s_total),
            _fmt(s.wall_s_max),
            _fmt(s.cpu_s_total),
            _fmt(s.cpu_s_total / s.wall_s_total if s.wall_s_total else math.nan, 2),
            _fmt(s.max_rss_mb_mean, 0),
            _fmt(s.max_rss_mb_max, 0),
            _fmt(s.io_in_mb_total),
            _fmt(s.io_out_mb_total),
        )
        for s in stages
    ]
    bench = _table(
        (
            "stage",
            "jobs",
            "wall total (s)",
            "wall max (s)",
            "CPU total (s)",
            "CPU / wall",
            "peak RSS mean (MB)",
            "peak RSS max (MB)",
            "read (MB)",
            "written (MB)",
        ),
        rows,
    )
    ledger_rows = [
        (
            c.stage,
            str(c.n_attempts),
            str(c.n_failed),
            _fmt(c.mem_mb_requested_max, 0),
            _fmt(c.mem_mb_used_max, 0),
            _fmt(c.mem_mb_used_max / c.mem_mb_requested_max, 2) if c.mem_mb_requested_max else "-",
            _fmt(c.failed_wall_s),
        )
        for c in costs
    ]
    ledger_table = _table(
        (
            "stage",
            "attempts",
            "failed",
            "memory asked max (MB)",
            "memory used max (MB)",
            "used / asked",
            "wall time of failed attempts (s)",
        ),
        ledger_rows,
    )
    return (
        "<p>From Snakemake's benchmark files (one per job): wall time, CPU time, peak "
        "resident memory and I/O. CPU / wall below the job's threads means idle cores "
        f"(<a href='{html.escape(tsv_name)}'>the table as TSV</a>).</p>"
        + (bench if stages else "<p>No benchmark files yet.</p>")
        + "<h3>Memory asked and used, time lost to failures (run ledger)</h3>"
        + (ledger_table if costs else "<p>No attempts in the ledger yet.</p>")
    )


def _class_table(tiles) -> str:
    """Failed tiles per stage and failure class, with the action `rerun --failed` takes."""
    counts: Counter = Counter((t.rule, t.failure_class, t.action) for t in tiles)
    rows = [
        (rule, name, str(n), action, "yes" if FailureAction(action).reruns() else "no")
        for (rule, name, action), n in sorted(counts.items())
    ]
    header = ("stage", "failure class", "tiles", "action", "rerun --failed reruns them")
    return "<h3 id='failure-classes'>By failure class</h3>" + _table(header, rows)


def _failed_section(config_path, workdir: Path) -> tuple[str, int]:
    from dcflow.orchestration.plan_status import failed_and_untrusted

    tiles, untrusted = failed_and_untrusted(config_path, workdir=workdir, n_lines=10)
    parts = [_class_table(tiles)] if tiles else []
    for tile in tiles:
        why = f"{tile.error_class}: {tile.reason}" if tile.error_class else (tile.reason or "")
        parts.append(
            f"<h3>{html.escape(tile.rule)} {html.escape(tile.data_id)}</h3>"
            f"<p>class <b class='failure-class'>{html.escape(tile.failure_class)}</b> "
            f"(action {html.escape(tile.action)}); {tile.attempts} attempt(s), exit "
            f"{tile.exit_code}, {html.escape(why)}; log {html.escape(str(tile.log_path))}</p>"
            f"<pre>{html.escape(chr(10).join(tile.log_tail))}</pre>"
        )
    for u in untrusted:
        parts.append(
            f"<h3>untrusted: {html.escape(u.rule)} {html.escape(u.data_id)}</h3>"
            f"<p>{u.n_untrusted} row(s) in {html.escape(u.path)}</p>"
            f"<pre>{html.escape(chr(10).join(u.reasons))}</pre>"
        )
    if tiles:
        parts.insert(0, "<p>Rerun them with <code>dcflow rerun --failed</code>.</p>")
    if not parts:
        parts.append("<p>No failed tiles and no untrusted outputs.</p>")
    return "".join(parts), len(tiles)


_STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0}td,th{padding:3px 8px;border:1px solid #ccc;"
    "text-align:right;font-size:90%}th{background:#f0f0f0}td:first-child{text-align:left}"
    ".pass{color:#1a7f1a}.fail{color:#c00;font-weight:bold}img{max-width:100%}"
    ".grid{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;width:270px}"
    "figcaption{font-size:70%;word-break:break-all}pre{background:#f6f6f6;padding:6px;"
    "overflow-x:auto;font-size:80%}nav li{margin:2px 0}section{border-top:1px solid #ddd}"
)


def report_campaign(
    config_path: str | Path,
    *,
    output: str | Path | None = None,
    workdir: str | Path | None = None,
) -> CampaignReport:
    """Write the campaign's one-page HTML report; return what it holds.

    Also writes the per-stage benchmark table as ``<report stem>_benchmarks.tsv`` beside the
    page, and the plan pictures under ``<output_root>/plan``.

    Raises
    ------
    CampaignError
        If the config or registry is missing or invalid (`load_campaign_config`).
    InputDataError
        If the science validation file exists but cannot be read.
    """
    from dcflow.orchestration.pictures import campaign_pictures
    from dcflow.orchestration.plan_status import current_need

    workdir = Path(workdir or os.getcwd()).resolve()
    config = load_campaign_config(config_path)
    name = config["campaign"]["name"]
    layout = rooted_layout(config_path, workdir)
    report = Path(output) if output else Path(layout.output_root) / "report" / "report.html"
    report = report if report.is_absolute() else workdir / report
    bench_root = Path(layout.pattern("benchmark", rule="R", tile="T")).parent.parent
    bench_root = bench_root if bench_root.is_absolute() else workdir / bench_root
    stages = benchmark_summary(bench_root)
    ledger_file = campaign_ledger_path(layout, workdir)
    attempts: list[Attempt] = []
    if ledger_file.exists():
        with open_ledger(ledger_file) as ledger:
            attempts = ledger.attempts()
    _, graph, _ = current_need(config_path, workdir)
    plan_dir = Path(layout.output_root) / "plan"
    rule_graph, sky = campaign_pictures(config_path, plan_dir, workdir=workdir)
    sections: list[tuple[str, str, str]] = [
        ("status", "Status", _status_section(config_path, workdir))
    ]
    validation, n_images = _validation_section(graph, layout)
    sections.append(("validation", "Science validation", validation))
    for dataset, title in THUMBNAIL_DATASETS:
        body, n = _thumbnail_section(graph, dataset)
        if body:
            sections.append((dataset, title, body))
            n_images += n
    sections.append(
        (
            "sky",
            "Sky map",
            "<p>Every visit's CCDs by the state of their jobs, with the sky map's tracts "
            "and patches.</p>" + _img(_file_data(sky), "sky map"),
        )
    )
    sections.append(
        (
            "plan",
            "Plan: rule graph",
            "<p>One box per stage: jobs done of all, coloured by state.</p>"
            + _img(_file_data(rule_graph), "rule graph"),
        )
    )
    n_images += 2
    tsv = report.with_name(report.stem + "_benchmarks.tsv")
    cost = _cost_section(stages, ledger_costs(attempts), tsv.name)
    sections.append(("cost", "Cost per stage", cost))
    failed_body, n_failed = _failed_section(config_path, workdir)
    sections.append(("failed", f"Failed tiles ({n_failed})", failed_body))
    nav = "".join(
        f"<li><a href='#{key}'>{html.escape(title)}</a></li>" for key, title, _ in sections
    )
    body = "".join(
        f"<section id='{key}'><h2>{html.escape(title)}</h2>{content}"
        "<p><a href='#home'>back to top</a></p></section>"
        for key, title, content in sections
    )
    made = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(name)}: campaign report</title><style>{_STYLE}</style></head>"
        f"<body><section id='home'><h1>{html.escape(name)}: campaign report</h1>"
        f"<p>Written {made} from {html.escape(str(workdir))}.</p><nav><ul>{nav}</ul></nav>"
        f"</section>{body}</body></html>"
    )
    report.parent.mkdir(parents=True, exist_ok=True)
    write_text(page, report)
    names = list(StageBenchmark.__dataclass_fields__)
    rows = ["\t".join(names)] + ["\t".join(str(getattr(s, n)) for n in names) for s in stages]
    write_text("\n".join(rows) + "\n", tsv)
    return CampaignReport(
        path=str(report),
        sections=tuple(key for key, _, _ in sections),
        n_images=n_images,
        stages=tuple(stages),
        n_failed=n_failed,
    )
