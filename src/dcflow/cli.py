"""The `dcflow` command: thin verbs over `dcflow.orchestration`.

Verbs: simulate, ingest, run, demo (campaign set-up and running), plan, status, failed, rerun,
cancel, ping, report (campaign control), db index / db analyze, query (catalog database).
Arguments after ``--`` pass to Snakemake untouched.

Exit codes: 0 success; 1 a run or check found a failure (a job failed, files were rejected, the
ledger is unreadable); 2 bad command line or config; 3 failed tiles are waiting (status,
failed); 4 the backend is unreachable or not ready (ping); 5 outputs judged untrusted (status,
failed); 130 a run stopped by SIGINT or SIGTERM (rerunning resumes). Errors a user can fix are
`dcflow.errors.CampaignError`s, reported once in `main` as ``dcflow <verb>: <message>`` with
the error's exit code; anything else is a bug and ends in a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict

from dcflow.campaign.registry import SENSOR_OBSTYPES
from dcflow.errors import BackendUnreachableError, CampaignError
from dcflow.failures import FailureClass
from dcflow.layout import Layout
from dcflow.orchestration.campaign_files import load_campaign_config
from dcflow.orchestration.cancel import INTERRUPT_GRACE_S, TERMINATE_GRACE_S, cancel_campaign
from dcflow.orchestration.catalogs import analyze_catalogs, index_catalogs, query_catalogs
from dcflow.orchestration.pictures import campaign_pictures
from dcflow.orchestration.ping import ping_profile
from dcflow.orchestration.plan_status import (
    failed_and_untrusted,
    plan_campaign,
    status_campaign,
)
from dcflow.orchestration.prepare import ingest_campaign, ingest_files, simulate_campaign
from dcflow.orchestration.profiles import failure_policy
from dcflow.orchestration.report import report_campaign
from dcflow.orchestration.rerun import rerun_failed
from dcflow.orchestration.run import RunOutcome, launch_campaign
from dcflow.orchestration.sharded import finish_blocked_shards, run_sharded
from dcflow.pipeline.spec import STAGES
from dcflow.plan import Plan
from dcflow.status import CampaignStatus, FailedTile, UntrustedResult

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
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

EXIT_INTERRUPTED = 130
"""`run`, `demo`, `rerun`: stopped by SIGINT (Ctrl-C) or SIGTERM; rerunning resumes."""

PICTURE_MAX_JOBS = 50_000
"""`plan` draws its pictures (one Python object per job) only up to this many jobs."""


DESCRIPTION = """\
Run a survey reprocessing campaign (a Snakemake workflow) and watch it: plan it, run it on
this machine, Grid Engine or DIRAC, see its status and failed tiles, rerun them, cancel it,
and write its report. `dcflow <verb> --help` shows each verb's options and examples.
"""

EPILOG = """\
a first campaign:
  dcflow demo                           simulate, ingest and run config.yaml here
  dcflow status                         where it stands
  dcflow report                         one HTML page: validation, coadds, sky, cost

exit codes:
  0 success      1 a failure (a job failed, files rejected)      2 bad command line or config
  3 failed tiles are waiting     4 backend unreachable     5 outputs judged untrusted
  130 a run stopped by Ctrl-C or SIGTERM (run it again to resume)
"""

_VISIT_STAGE = next((s.rule for s in STAGES if "visit" in s.keys), STAGES[0].rule)
_TRACT_STAGE = next((s.rule for s in STAGES if "tract" in s.keys), STAGES[0].rule)

EXAMPLES = {
    "simulate": "dcflow simulate --config config.yaml",
    "ingest": "dcflow ingest --config config.yaml\n"
    "dcflow ingest --config sdss.yaml /data/stripe82 --workers 2",
    "run": "dcflow run                                   # config.yaml, this machine\n"
    "dcflow run --config c2.yaml --profile sge    # another campaign on Grid Engine\n"
    "dcflow run -- -n                             # Snakemake's dry run\n"
    "dcflow run --verbose                         # show Snakemake's own output",
    "demo": "dcflow demo",
    "plan": "dcflow plan\n"
    "dcflow plan --history results/demo/ledger.sqlite3   # CPU h from an earlier campaign\n"
    "dcflow plan --json --no-pictures",
    "status": "dcflow status\ndcflow status --json | jq .rows",
    "failed": f"dcflow failed\ndcflow failed --stage {_VISIT_STAGE} --lines 30",
    "rerun": f"dcflow rerun --failed\ndcflow rerun --failed --stage {_TRACT_STAGE} --tract 0\n"
    "dcflow rerun --failed --include-class bad_input",
    "cancel": "dcflow cancel\ndcflow cancel --grace 60     # give Grid Engine more time for qdel",
    "ping": "dcflow ping --profile sge",
    "report": "dcflow report\ndcflow report --output /tmp/campaign.html",
    "serve": "dcflow serve\ndcflow serve campaigns/ --port 8060\n"
    "DCFLOW_SERVE_TOKEN=... dcflow serve --host 0.0.0.0",
    "db": "dcflow db index\ndcflow db analyze",
    "query": 'dcflow query "SELECT count(*) FROM src"\n'
    'dcflow query "SELECT * FROM object LIMIT 100" --output object.parquet',
}
"""Examples shown by each verb's --help."""


def _verb(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """A verb's parser, with its examples under its options."""
    return sub.add_parser(
        name,
        help=help,
        parents=list(parents),
        description=help,
        epilog="examples:\n  " + EXAMPLES[name].replace("\n", "\n  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcflow",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"dcflow {importlib.metadata.version('dcflow')}"
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
        "--no-progress", action="store_true", help="do not show the progress per stage"
    )
    memory.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show Snakemake's command line and output (always kept in logs/snakemake/)",
    )
    passthrough = argparse.ArgumentParser(add_help=False)
    passthrough.add_argument(
        "snakemake_args", nargs=argparse.REMAINDER, help="after --: passed to snakemake"
    )
    selection = argparse.ArgumentParser(add_help=False)
    selection.add_argument(
        "--stage",
        default=None,
        choices=[s.rule for s in STAGES],
        metavar="STAGE",
        help="only this stage (rule)",
    )
    selection.add_argument("--tract", type=int, default=None, help="only this tract")

    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _verb(sub, "simulate", parents=[common], help="write a simulated campaign's raw data")
    cmd = _verb(sub, "ingest", parents=[common], help="register raw files in the campaign registry")
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
    cmd.add_argument(
        "--obstype",
        choices=("object", "bias", "flat", *SENSOR_OBSTYPES),
        default=None,
        help="exposure type of every file ingested, for cameras whose headers do not say it "
        "(a lab camera's fe55, sensor_flat, sensor_bias frames); default: its description's",
    )
    for verb, text in (
        ("run", "run the campaign through Snakemake (run ledger, progress per stage)"),
        ("demo", "simulate, ingest and run the campaign locally"),
    ):
        cmd = _verb(sub, verb, parents=[common, profile, shard, memory, passthrough], help=text)
        if verb == "run":
            cmd.add_argument(
                "--sharded",
                action="store_true",
                help="run shard by shard (config section shards): bounded DAGs, markers",
            )
    cmd = _verb(
        sub,
        "plan",
        parents=[common, profile],
        help="jobs per stage: total, done, to run; CPU hours",
    )
    cmd.add_argument("--json", action="store_true", help="print the plan as JSON")
    cmd.add_argument(
        "--pictures",
        default=None,
        help="directory for rule_graph.png and sky.png (default: <output_root>/plan)",
    )
    cmd.add_argument("--no-pictures", action="store_true", help="skip the PNG pictures")
    cmd.add_argument(
        "--history",
        default=None,
        help="a ledger of an earlier campaign: its measured job times estimate CPU hours "
        "for stages this campaign has not measured yet",
    )
    cmd.add_argument(
        "--inventory",
        default=None,
        help="file list of the outputs (one path per line, .gz allowed) instead of a tree walk",
    )
    cmd = _verb(
        sub,
        "status",
        parents=[common, profile],
        help="counts by state, running jobs, throughput, ETA",
    )
    cmd.add_argument("--json", action="store_true", help="print the status as JSON")
    cmd = _verb(
        sub,
        "failed",
        parents=[common, profile, selection],
        help="failed tiles with failure class, action, reason and log tail",
    )
    cmd.add_argument("--lines", type=int, default=10, help="log lines to show per tile")
    cmd.add_argument("--json", action="store_true", help="print the tiles as JSON")
    cmd = _verb(
        sub,
        "rerun",
        parents=[common, profile, selection, memory, passthrough],
        help="rerun failed tiles (and missing downstream jobs), then the shards a failed "
        "shard blocked",
    )
    cmd.add_argument(
        "--failed", action="store_true", help="rerun failed tiles (what rerun does; optional)"
    )
    cmd.add_argument(
        "--include-class",
        action="append",
        default=[],
        choices=[c.value for c in FailureClass],
        help="rerun tiles of this failure class even if its action is to fail at once or to"
        " hold for review (e.g. bad_input after the input was fixed); repeatable",
    )
    cmd = _verb(
        sub, "cancel", parents=[common], help="stop the campaign's live runs and their jobs"
    )
    cmd.add_argument(
        "--grace",
        type=float,
        default=INTERRUPT_GRACE_S,
        help="seconds after SIGINT (Snakemake cancels its jobs) before SIGTERM "
        f"(default {INTERRUPT_GRACE_S:g})",
    )
    cmd.add_argument(
        "--term-grace",
        type=float,
        default=TERMINATE_GRACE_S,
        help=f"seconds after SIGTERM before SIGKILL (default {TERMINATE_GRACE_S:g})",
    )
    cmd = _verb(sub, "ping", parents=[profile], help="check the profile's backend takes jobs")
    cmd.add_argument(
        "--min-proxy-hours", type=float, default=24.0, help="DIRAC: proxy lifetime needed, h"
    )
    cmd = _verb(
        sub,
        "report",
        parents=[common],
        help="one HTML page: status, validation, thumbnails, sky map, cost, failed tiles",
    )
    cmd.add_argument(
        "--output", default=None, help="report file (default <output_root>/report/report.html)"
    )
    cmd = _verb(
        sub,
        "serve",
        help="live web dashboard of a campaign (or of every campaign under a directory)",
    )
    cmd.add_argument(
        "campaign", nargs="?", default="config.yaml", help="campaign config or directory"
    )
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    cmd.add_argument("--port", type=int, default=8050, help="port to listen on")
    cmd.add_argument(
        "--token-file",
        default=None,
        help="file holding the access token a non-loopback --host needs (or DCFLOW_SERVE_TOKEN)",
    )
    cmd = _verb(sub, "db", parents=[common], help="catalog database: build indexes, statistics")
    cmd.add_argument(
        "action",
        choices=("index", "analyze"),
        help="index: spatial and tile indexes after the bulk load; analyze: planner statistics",
    )
    cmd = _verb(sub, "query", parents=[common], help="run SQL on the catalog database")
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
    measured = {r: src for r, src in plan.runtime_source.items() if src.startswith("ledger")}
    limits = [
        r for r, src in plan.runtime_source.items() if not src.startswith(("ledger", "target"))
    ]
    to_run = {row.stage for row in plan.rows if row.to_run}
    bound = [r for r in limits if r in to_run]
    hours = f"{plan.cpu_hours:.2f}" if plan.cpu_hours >= 0.1 else f"{plan.cpu_hours:.2g}"
    estimate = f"{'<= ' if bound else '~'}{hours} CPU h to run"
    print(f"{'total':<36} {plan.n_total:>7} {plan.n_done:>7} {plan.n_to_run:>7}   {estimate}")
    if measured:
        basis = ", ".join(f"{rule} {src.removeprefix('ledger ')}" for rule, src in measured.items())
        print(f"CPU h from job times measured in the ledger: {basis}")
    if bound:
        print(
            f"CPU h upper bound from the rules' runtime limits (no job measured yet): "
            f"{', '.join(bound)}; `dcflow plan --history LEDGER` uses an earlier campaign's times"
        )
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
    if status.live_runs:
        rate = f"{status.throughput_per_h:.1f} jobs/h" if status.throughput_per_h else "n/a"
        eta = f"{status.eta_h:.2f} h" if status.eta_h is not None else "n/a"
        live = ", ".join(map(str, status.live_runs))
        print(f"live runs: {live}; throughput {rate}, ETA {eta}")
    else:
        print("no live run")
    if status.disk_seen_at is not None:
        age = time.time() - status.disk_seen_at
        if age > 60:
            seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(status.disk_seen_at))
            print(f"outputs as scanned by the plan of {seen}, with the ledger's attempts since")
    _print_untrusted(status.untrusted)
    if not status.complete:
        print(f"{status.n_failed} failed tile(s)")
        if status.failure_classes:
            print(f"failed by class: {_class_counts(status.failure_classes)}")
    elif status.untrusted:
        print(f"campaign complete, but {status.n_untrusted} output(s) untrusted")
    else:
        print("campaign complete")


def _class_counts(per_stage: Mapping[str, Mapping[str, int]]) -> str:
    """``memory 2 (process_visit 2), bad_input 1 (warp 1)``."""
    totals: dict[str, dict[str, int]] = {}
    for stage, counts in per_stage.items():
        for name, n in counts.items():
            totals.setdefault(name, {})[stage] = n
    return ", ".join(
        f"{name} {sum(by.values())} ({', '.join(f'{st} {n}' for st, n in sorted(by.items()))})"
        for name, by in sorted(totals.items())
    )


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
            f"{tile.rule} {tile.data_id}: [{tile.failure_class} -> {tile.action}] "
            f"{tile.attempts} attempt(s), exit {tile.exit_code}, {why}{memory}"
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
        obstype=args.obstype,
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


def _config_flag(args: argparse.Namespace) -> str:
    return "" if args.config == "config.yaml" else f" --config {args.config}"


def _report_path(config_path: str) -> str:
    layout = Layout.from_config(load_campaign_config(config_path))
    return os.path.join(layout.output_root, "report", "report.html")


MAX_WARNINGS_SHOWN = 10
"""Distinct warnings listed after a run (each once, with its count)."""


def _run_summary(outcome: RunOutcome, args: argparse.Namespace, *, what: str = "run") -> int:
    """Say how the run ended and what to do next; return the verb's exit code."""
    flag = _config_flag(args)
    for text, count, variants in outcome.warnings[:MAX_WARNINGS_SHOWN]:
        also = f", {variants - 1} more like it with other numbers" if variants > 1 else ""
        print(f"warning{f' ({count} times{also})' if count > 1 else ''}: {text}")
    if len(outcome.warnings) > MAX_WARNINGS_SHOWN:
        print(f"... {len(outcome.warnings) - MAX_WARNINGS_SHOWN} more kinds of warning")
    minutes = outcome.seconds / 60
    took = f"{minutes:.1f} min" if minutes >= 1 else f"{outcome.seconds:.0f} s"
    done = f"{outcome.n_done} job(s) done"
    if outcome.interrupted:
        print(
            f"{what} {outcome.run_id} stopped by {outcome.interrupted} after {took}: {done}, "
            f"kept. `dcflow run{flag}` resumes where it stopped."
        )
        print(f"Snakemake's log: {outcome.log_path}")
        return EXIT_INTERRUPTED
    if outcome.exit_code == 0:
        print(f"{what} {outcome.run_id} finished in {took}: {done}.")
        print(
            f"next: `dcflow status{flag}`; `dcflow report{flag}` writes {_report_path(args.config)}"
        )
        return 0
    if outcome.n_failed:
        print(
            f"{what} {outcome.run_id} ended after {took}: {done}, "
            f"{outcome.n_failed} failed (the other jobs ran on)."
        )
        print(
            f"next: `dcflow failed{flag}` says why; `dcflow rerun --failed{flag}` reruns them;"
            f" `dcflow run{flag}` resumes the rest."
        )
    else:
        print(f"{what} {outcome.run_id}: Snakemake stopped (exit {outcome.exit_code}): ")
        for line in outcome.errors[-5:]:
            print(f"  {line}")
    print(f"Snakemake's log: {outcome.log_path}")
    return EXIT_FAILED


def _launch(args: argparse.Namespace, extra: list[str]) -> RunOutcome:
    return launch_campaign(
        args.config,
        profile=args.profile,
        snakemake_args=extra,
        shard=args.shard,
        mem_factor=args.mem_factor,
        mem_cap_mb=args.mem_cap_mb,
        progress=not args.no_progress,
        verbose=args.verbose,
    )


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
        if result.interrupted:
            return EXIT_INTERRUPTED
        return 0 if result.exit_code == 0 else EXIT_FAILED
    return _run_summary(_launch(args, extra), args)


def _demo(args: argparse.Namespace, extra: list[str]) -> int:
    _simulate(args, extra)
    _ingest(args, extra)  # rejected files are reported, and the demo goes on
    code = _run_summary(_launch(args, extra), args, what="demo run")
    if code == 0:
        layout = Layout.from_config(load_campaign_config(args.config))
        print(
            f"demo campaign done: outputs under {layout.output_root}/ "
            f"(validation: {layout.path('science_validation')})"
        )
    return code


def _plan(args: argparse.Namespace, extra: list[str]) -> int:
    plan = plan_campaign(
        args.config, profile=args.profile, inventory=args.inventory, history=args.history
    )
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
        args.config,
        stage=args.stage,
        tract=args.tract,
        n_lines=args.lines,
        policy=failure_policy(args.profile),
    )
    if args.json:
        print(_failed_json(tiles, untrusted))
    else:
        _print_failed(tiles, untrusted)
    if tiles:
        return EXIT_TILES_FAILED
    return EXIT_UNTRUSTED if untrusted else 0


def _rerun(args: argparse.Namespace, extra: list[str]) -> int:
    outcome, selected, class_outcomes = rerun_failed(
        args.config,
        profile=args.profile,
        snakemake_args=extra,
        stage=args.stage,
        tract=args.tract,
        mem_factor=args.mem_factor,
        mem_cap_mb=args.mem_cap_mb,
        progress=not args.no_progress,
        include_classes=args.include_class,
        verbose=args.verbose,
    )
    for class_outcome in class_outcomes:
        print(f"rerun: {class_outcome.describe()}")
    code = 0
    if selected:
        rules = sorted({rule for rule, _ in selected})
        print(f"rerun: {len(selected)} job(s) asked for ({', '.join(rules)})")
        code = _run_summary(outcome, args, what="rerun")
        if code == EXIT_INTERRUPTED:
            return code
    if args.stage is not None or args.tract is not None:
        return code  # a part of the campaign asked for: its blocked shards are not run
    # a sharded campaign: the shards the failed ones blocked were never started
    shards = finish_blocked_shards(
        args.config,
        profile=args.profile,
        policy=failure_policy(args.profile),
        snakemake_args=extra,
        mem_factor=args.mem_factor,
        mem_cap_mb=args.mem_cap_mb,
        progress=not args.no_progress,
    )
    if shards is None:
        if not selected:
            print("nothing to rerun")
        return code
    if shards.interrupted:
        return EXIT_INTERRUPTED
    return code or (0 if shards.exit_code == 0 else EXIT_FAILED)


def _cancel(args: argparse.Namespace, extra: list[str]) -> int:
    stopped, n_jobs = cancel_campaign(
        args.config, interrupt_grace_s=args.grace, terminate_grace_s=args.term_grace
    )
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
    report = report_campaign(args.config, output=args.output)
    for stage in report.stages:
        print(
            f"{stage.stage:<20} {stage.n_jobs:>5} jobs  CPU {stage.cpu_s_total:8.1f} s  "
            f"max RSS {stage.max_rss_mb_max:7.0f} MB  read {stage.io_in_mb_total:7.1f} MB"
            f"  written {stage.io_out_mb_total:7.1f} MB"
        )
    print(f"report: {report.path} ({report.n_images} pictures, {report.n_failed} failed tiles)")
    return 0


def _serve(args: argparse.Namespace, extra: list[str]) -> int:
    from dcflow.orchestration.serve import serve_campaigns

    serve_campaigns(args.campaign, host=args.host, port=args.port, token_file=args.token_file)
    return 0


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
    "serve": _serve,
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
    except BrokenPipeError:
        # the reader went away (`dcflow status --json | head`): stop writing, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
