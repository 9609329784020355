"""The `dcflow` command: thin verbs over `dcflow.orchestration`.

Verbs: simulate, ingest, run, demo (campaign set-up and running), plan, status, failed, rerun,
cancel, ping, report (campaign control), db index / db analyze, query (catalog database).
Arguments after ``--`` pass to Snakemake untouched.

Exit codes: 0 success; 1 a run or check found a failure (a job failed, files were rejected, the
ledger is unreadable); 2 bad command line or config; 3 failed tiles are waiting (status,
failed); 4 the backend is unreachable or not ready (ping). Errors a user can fix are
`dcflow.errors.CampaignError`s, reported once in `main` as ``dcflow <verb>: <message>`` with
the error's exit code; anything else is a bug and ends in a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from dcflow.errors import BackendUnreachableError, CampaignError
from dcflow.layout import Layout
from dcflow.orchestration.campaign_files import load_campaign_config
from dcflow.orchestration.cancel import cancel_campaign
from dcflow.orchestration.catalogs import analyze_catalogs, index_catalogs, query_catalogs
from dcflow.orchestration.pictures import campaign_pictures
from dcflow.orchestration.ping import ping_profile
from dcflow.orchestration.plan_status import (
    failed_and_untrusted,
    plan_campaign,
    status_campaign,
)
from dcflow.orchestration.prepare import ingest_campaign, ingest_files, simulate_campaign
from dcflow.orchestration.report import report_campaign
from dcflow.orchestration.rerun import rerun_failed
from dcflow.orchestration.run import run_campaign
from dcflow.orchestration.sharded import run_sharded
from dcflow.plan import Plan
from dcflow.status import CampaignStatus, FailedTile, UntrustedResult

__all__ = [
    "EXIT_FAILED",
    "EXIT_TILES_FAILED",
    "EXIT_UNREACHABLE",
    "EXIT_UNTRUSTED",
    "EXIT_USAGE",
    "PICTURE_MAX_JOBS",
    "VERBS",
    "main",
]

EXIT_FAILED = 1
"""A verb ran and found a failure (a job failed, files were rejected)."""
EXIT_USAGE = 2
"""Bad command line or config."""
EXIT_TILES_FAILED = 3
"""`status` / `failed`: some tiles' last attempt failed and their outputs are missing."""
EXIT_UNREACHABLE = 4
"""`ping`: the backend does not answer or cannot take jobs now."""
EXIT_UNTRUSTED = 5
"""`status` / `failed`: no tile failed, but outputs exist that their stage judged untrusted
(a Fe55 gain whose fit failed its verdict): not a clean success."""

PICTURE_MAX_JOBS = 50_000
"""`plan` draws its pictures (one Python object per job) only up to this many jobs."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="config.yaml", help="campaign config (config.yaml)")
    profile = argparse.ArgumentParser(add_help=False)
    profile.add_argument("--profile", default="local", help="profile name or directory")
    shard = argparse.ArgumentParser(add_help=False)
    shard.add_argument("--shard", default=None, help="shard label recorded in the run ledger")
    memory = argparse.ArgumentParser(add_help=False)
    memory.add_argument(
        "--mem-factor",
        type=float,
        default=None,
        help="mem_mb multiplier after a memory failure (default: profile dcflow.yaml, else 2)",
    )
    memory.add_argument(
        "--mem-cap-mb",
        type=int,
        default=None,
        help="largest escalated mem_mb (default: profile dcflow.yaml, else 64000)",
    )
    memory.add_argument(
        "--no-progress", action="store_true", help="do not print progress bars per stage"
    )
    passthrough = argparse.ArgumentParser(add_help=False)
    passthrough.add_argument(
        "snakemake_args", nargs=argparse.REMAINDER, help="after --: passed to snakemake"
    )
    selection = argparse.ArgumentParser(add_help=False)
    selection.add_argument("--stage", default=None, help="only this stage (rule)")
    selection.add_argument("--tract", type=int, default=None, help="only this tract")

    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("simulate", parents=[common], help="write a simulated campaign's raw data")
    cmd = sub.add_parser(
        "ingest", parents=[common], help="register raw files in the campaign registry"
    )
    cmd.add_argument(
        "sources",
        nargs="*",
        help="directories (walked) or files to ingest; none: the raw template under input_root",
    )
    cmd.add_argument(
        "--file-list", action="append", default=[], help="text file naming one file per line"
    )
    cmd.add_argument(
        "--camera", default=None, help="camera description name or YAML (default: instrument)"
    )
    cmd.add_argument(
        "--workers", type=int, default=None, help="processes reading headers (default: CPUs)"
    )
    for verb, text in (
        ("run", "run the campaign through Snakemake (run ledger, progress per stage)"),
        ("demo", "simulate, ingest and run the campaign locally"),
    ):
        cmd = sub.add_parser(verb, parents=[common, profile, shard, memory, passthrough], help=text)
        if verb == "run":
            cmd.add_argument(
                "--sharded",
                action="store_true",
                help="run shard by shard (config section shards): bounded DAGs, markers",
            )
    cmd = sub.add_parser(
        "plan", parents=[common, profile], help="jobs per stage: total, done, to run; CPU hours"
    )
    cmd.add_argument("--json", action="store_true", help="print the plan as JSON")
    cmd.add_argument(
        "--pictures",
        default=None,
        help="directory for rule_graph.png and sky.png (default: <output_root>/plan)",
    )
    cmd.add_argument("--no-pictures", action="store_true", help="skip the PNG pictures")
    cmd.add_argument(
        "--inventory",
        default=None,
        help="file list of the outputs (one path per line, .gz allowed) instead of a tree walk",
    )
    cmd = sub.add_parser(
        "status", parents=[common, profile], help="counts by state, running jobs, throughput, ETA"
    )
    cmd.add_argument("--json", action="store_true", help="print the status as JSON")
    cmd = sub.add_parser(
        "failed", parents=[common, selection], help="failed tiles with reason and log tail"
    )
    cmd.add_argument("--lines", type=int, default=10, help="log lines to show per tile")
    cmd.add_argument("--json", action="store_true", help="print the tiles as JSON")
    cmd = sub.add_parser(
        "rerun",
        parents=[common, profile, selection, memory, passthrough],
        help="rerun failed tiles (and missing downstream jobs)",
    )
    cmd.add_argument("--failed", action="store_true", required=True, help="rerun failed tiles")
    cmd = sub.add_parser(
        "cancel", parents=[common], help="stop the campaign's live runs and their jobs"
    )
    cmd.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each run to stop"
    )
    cmd = sub.add_parser("ping", parents=[profile], help="check the profile's backend takes jobs")
    cmd.add_argument(
        "--min-proxy-hours", type=float, default=24.0, help="DIRAC: proxy lifetime needed, h"
    )
    cmd = sub.add_parser(
        "report",
        parents=[common, profile, passthrough],
        help="Snakemake HTML report + per-stage CPU/memory/IO from benchmark files",
    )
    cmd.add_argument("--output", default=None, help="report file (<output_root>/report/...)")
    cmd = sub.add_parser("db", parents=[common], help="catalog database: build indexes, statistics")
    cmd.add_argument(
        "action",
        choices=("index", "analyze"),
        help="index: spatial and tile indexes after the bulk load; analyze: planner statistics",
    )
    cmd = sub.add_parser("query", parents=[common], help="run SQL on the catalog database")
    cmd.add_argument("sql", help="one SQL statement (examples: README, Catalog database)")
    cmd.add_argument(
        "--output", default=None, help="write the rows to .csv, .parquet, .fits or .ecsv"
    )
    return parser


def _strip_separator(args: list[str]) -> list[str]:
    return args[1:] if args[:1] == ["--"] else args


def _print_plan(plan: Plan) -> None:
    print(f"{'stage':<20} {'filter':<7} {'tract':<6} {'total':>7} {'done':>7} {'to run':>7}")
    for row in plan.rows:
        print(
            f"{row.stage:<20} {row.filter or '-':<7} {'-' if row.tract is None else row.tract:<6}"
            f" {row.total:>7} {row.done:>7} {row.to_run:>7}"
        )
    print(
        f"{'total':<36} {plan.n_total:>7} {plan.n_done:>7} {plan.n_to_run:>7}"
        f"   ~{plan.cpu_hours:.2f} CPU h to run"
    )
    sources = ", ".join(f"{rule}: {src}" for rule, src in plan.runtime_source.items())
    print(f"runtime estimates: {sources}")
    print(f"planned in {plan.seconds:.2f} s ({plan.n_files} files scanned)")


def _print_status(status: CampaignStatus) -> None:
    print(
        f"{'stage':<20} {'filter':<7} {'total':>7} {'done':>7} {'to run':>7} "
        f"{'running':>8} {'failed':>7} {'lost':>5}"
    )
    for r in status.rows:
        print(
            f"{r.stage:<20} {r.filter or '-':<7} {r.total:>7} {r.done:>7} {r.to_run:>7} "
            f"{r.running:>8} {r.failed:>7} {r.lost:>5}"
        )
    for a in status.running:
        since = a.started or a.submitted or time.time()
        print(
            f"  running: {a.rule} {a.data_id} on {a.backend} job {a.backend_jobid or '-'} "
            f"for {time.time() - since:.0f} s (run {a.run_id})"
        )
    if status.reaped_runs:
        print(f"runs whose driver died (attempts marked lost): {list(status.reaped_runs)}")
    rate = f"{status.throughput_per_h:.1f} jobs/h" if status.throughput_per_h else "n/a"
    eta = f"{status.eta_h:.2f} h" if status.eta_h is not None else "n/a"
    live = ", ".join(map(str, status.live_runs)) or "none"
    print(f"throughput {rate}, ETA {eta}; live runs: {live}")
    if status.disk_seen_at is not None:
        age = time.time() - status.disk_seen_at
        if age > 60:
            seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(status.disk_seen_at))
            print(f"outputs as scanned by the plan of {seen}, with the ledger's attempts since")
    _print_untrusted(status.untrusted)
    if not status.complete:
        print(f"{status.n_failed} failed tile(s)")
    elif status.untrusted:
        print(f"campaign complete, but {status.n_untrusted} output(s) untrusted")
    else:
        print("campaign complete")


def _print_untrusted(untrusted: Sequence[UntrustedResult]) -> None:
    for u in untrusted:
        print(f"UNTRUSTED {u.rule} {u.data_id}: {u.n_untrusted} row(s), {u.path}")
        for reason in u.reasons:
            print(f"    | {reason}")


def _print_failed(tiles: list[FailedTile], untrusted: Sequence[UntrustedResult]) -> None:
    _print_untrusted(untrusted)
    if not tiles:
        print("no failed tiles")
    for tile in tiles:
        why = f"{tile.error_class}: {tile.reason}" if tile.error_class else tile.reason
        memory = f" [memory, asked {tile.mem_mb_requested} MB]" if tile.memory_failure else ""
        print(
            f"{tile.rule} {tile.data_id}: {tile.attempts} attempt(s), exit {tile.exit_code}, "
            f"{why}{memory}"
        )
        print(f"  log: {tile.log_path}  (backend {tile.backend} job {tile.backend_jobid or '-'})")
        for line in tile.log_tail:
            print(f"    | {line}")


def _failed_json(tiles: list[FailedTile], untrusted: Sequence[UntrustedResult]) -> str:
    items = [{"kind": "failed", **asdict(t)} for t in tiles]
    items += [{"kind": "untrusted", **asdict(u)} for u in untrusted]
    return json.dumps(items, indent=2, default=str)


def _simulate(args: argparse.Namespace, extra: list[str]) -> int:
    written = simulate_campaign(args.config)
    print(f"simulated campaign: {len(written)} new files")
    return 0


def _ingest(args: argparse.Namespace, extra: list[str]) -> int:
    if getattr(args, "sources", None) or getattr(args, "file_list", None):
        return _ingest_files(args)
    report = ingest_campaign(args.config)
    print(
        f"ingest: {report.n_added} added, {report.n_known} known, "
        f"{len(report.rejected)} rejected ({report.seconds:.1f} s)"
    )
    for path, reason in report.rejected:
        print(f"  rejected {path}: {reason}", file=sys.stderr)
    return EXIT_FAILED if report.rejected else 0


class ProgressLine:
    """A progress bar on one terminal line (a line per tenth when not a terminal)."""

    def __init__(self, label: str, *, stream, width: int = 30) -> None:
        self.label, self.stream, self.width = label, stream, width
        self.start = time.perf_counter()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.shown = -1
        self.drawn = False

    def update(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` with the rate so far."""
        tenth = 10 * done // max(total, 1)
        if not self.tty and tenth == self.shown:
            return
        self.shown = tenth
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        text = f"{self.label} [{bar}] {done}/{total} ({rate:,.0f} files/s)"
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """End the bar's line."""
        if self.tty and self.drawn:
            self.stream.write("\n")


def _ingest_files(args: argparse.Namespace) -> int:
    bar = ProgressLine("ingest: headers", stream=sys.stderr)
    summary = ingest_files(
        args.config,
        args.sources,
        file_lists=args.file_list,
        camera=args.camera,
        workers=args.workers,
        progress=bar.update,
    )
    bar.close()
    print(
        f"ingest: {summary.n_raws} raw file(s) of {summary.n_files} FITS file(s): "
        f"{summary.n_added} new, {summary.n_known} already registered, "
        f"{len(summary.rejected)} rejected; {summary.n_companions} companion(s) matched "
        f"({summary.seconds:.1f} s)"
    )
    for path, reason in summary.rejected:
        print(f"  rejected {reason if path in reason else path + ': ' + reason}", file=sys.stderr)
    return EXIT_FAILED if summary.rejected else 0


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.sharded:
        result = run_sharded(
            args.config,
            profile=args.profile,
            snakemake_args=extra,
            mem_factor=args.mem_factor,
            mem_cap_mb=args.mem_cap_mb,
            progress=not args.no_progress,
        )
        return 0 if result.exit_code == 0 else EXIT_FAILED
    code = run_campaign(
        args.config,
        profile=args.profile,
        snakemake_args=extra,
        shard=args.shard,
        mem_factor=args.mem_factor,
        mem_cap_mb=args.mem_cap_mb,
        progress=not args.no_progress,
    )
    return EXIT_FAILED if code else 0


def _demo(args: argparse.Namespace, extra: list[str]) -> int:
    _simulate(args, extra)
    _ingest(args, extra)  # rejected files are reported, and the demo goes on
    code = run_campaign(
        args.config,
        profile=args.profile,
        snakemake_args=extra,
        shard=args.shard,
        mem_factor=args.mem_factor,
        mem_cap_mb=args.mem_cap_mb,
        progress=not args.no_progress,
    )
    if code == 0:
        layout = Layout.from_config(load_campaign_config(args.config))
        print(
            f"demo campaign done: outputs under {layout.output_root}/ "
            f"(validation: {layout.path('science_validation')})"
        )
    return EXIT_FAILED if code else 0


def _plan(args: argparse.Namespace, extra: list[str]) -> int:
    plan = plan_campaign(args.config, profile=args.profile, inventory=args.inventory)
    pictures = None
    too_big = plan.n_total > PICTURE_MAX_JOBS and not args.pictures
    if not args.no_pictures and too_big:
        print(
            f"pictures skipped: {plan.n_total} jobs (more than {PICTURE_MAX_JOBS}; "
            "--pictures DIR draws them anyway)",
            file=sys.stderr,
        )
    elif not args.no_pictures:
        layout = Layout.from_config(load_campaign_config(args.config))
        out = args.pictures or f"{layout.output_root}/plan"
        pictures = campaign_pictures(args.config, out)
    if args.json:
        print(plan.to_json())
    else:
        _print_plan(plan)
        if pictures:
            print(f"pictures: {pictures[0]}, {pictures[1]}")
    return 0


def _status(args: argparse.Namespace, extra: list[str]) -> int:
    status = status_campaign(args.config, profile=args.profile)
    if args.json:
        print(status.to_json())
    else:
        _print_status(status)
    if status.n_failed:
        return EXIT_TILES_FAILED
    return EXIT_UNTRUSTED if status.untrusted else 0


def _failed(args: argparse.Namespace, extra: list[str]) -> int:
    tiles, untrusted = failed_and_untrusted(
        args.config, stage=args.stage, tract=args.tract, n_lines=args.lines
    )
    if args.json:
        print(_failed_json(tiles, untrusted))
    else:
        _print_failed(tiles, untrusted)
    if tiles:
        return EXIT_TILES_FAILED
    return EXIT_UNTRUSTED if untrusted else 0


def _rerun(args: argparse.Namespace, extra: list[str]) -> int:
    code, selected = rerun_failed(
        args.config,
        profile=args.profile,
        snakemake_args=extra,
        stage=args.stage,
        tract=args.tract,
        mem_factor=args.mem_factor,
        mem_cap_mb=args.mem_cap_mb,
        progress=not args.no_progress,
    )
    print(f"rerun: {len(selected)} job(s) asked for" if selected else "nothing to rerun")
    return EXIT_FAILED if code else 0


def _cancel(args: argparse.Namespace, extra: list[str]) -> int:
    stopped, n_jobs = cancel_campaign(args.config, timeout_s=args.timeout)
    print(f"cancelled runs {stopped}: {n_jobs} job attempt(s)" if stopped else "no live run")
    return 0


def _ping(args: argparse.Namespace, extra: list[str]) -> int:
    result = ping_profile(args.profile, min_proxy_hours=args.min_proxy_hours)
    for check in result.checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {result.backend} {check.name}: {check.detail}")
    if not result.ok:
        failing = "; ".join(f"{c.name}: {c.detail}" for c in result.checks if not c.ok)
        raise BackendUnreachableError(f"{result.backend} does not take jobs ({failing})")
    return 0


def _report(args: argparse.Namespace, extra: list[str]) -> int:
    code, report_path, page, stages = report_campaign(
        args.config, profile=args.profile, snakemake_args=extra, output=args.output
    )
    for stage in stages:
        print(
            f"{stage.stage:<20} {stage.n_jobs:>5} jobs  CPU {stage.cpu_s_total:8.1f} s  "
            f"max RSS {stage.max_rss_mb_max:7.0f} MB  read {stage.io_in_mb_total:7.1f} MB"
            f"  written {stage.io_out_mb_total:7.1f} MB"
        )
    print(f"report: {report_path}; per-stage benchmarks: {page}")
    return EXIT_FAILED if code else 0


def _db(args: argparse.Namespace, extra: list[str]) -> int:
    if args.action == "index":
        for name in index_catalogs(args.config):
            print(f"index {name}: present")
    else:
        analyze_catalogs(args.config)
        print("statistics refreshed")
    return 0


def _query(args: argparse.Namespace, extra: list[str]) -> int:
    rows = query_catalogs(args.config, args.sql, output=args.output)
    if args.output:
        print(f"{len(rows)} rows written to {args.output}")
    else:
        rows.pprint(max_lines=-1, max_width=-1)
    return 0


VERBS: dict[str, Callable[[argparse.Namespace, list[str]], int]] = {
    "simulate": _simulate,
    "ingest": _ingest,
    "run": _run,
    "demo": _demo,
    "plan": _plan,
    "status": _status,
    "failed": _failed,
    "rerun": _rerun,
    "cancel": _cancel,
    "ping": _ping,
    "report": _report,
    "db": _db,
    "query": _query,
}
"""Each verb's function: the parsed arguments and the Snakemake arguments in, the exit code out."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dcflow` command; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    extra = _strip_separator(list(getattr(args, "snakemake_args", []) or []))
    try:
        return VERBS[args.verb](args, extra)
    except CampaignError as exc:
        print(f"dcflow {args.verb}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
