"""The `dcflow` command: thin verbs over dcflow.driver."""

from __future__ import annotations

import argparse
import logging
import sys

from dcflow import driver

__all__ = ["main"]

EXIT_FAILED = 1
"""A verb ran and found a failure (a job failed, files were rejected)."""
EXIT_USAGE = 2
"""Bad command line or config."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcflow", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="config.yaml", help="campaign config (config.yaml)")
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("simulate", parents=[common], help="write a simulated campaign's raw data")
    sub.add_parser("ingest", parents=[common], help="register raw files in the campaign registry")
    for verb, text in (
        ("run", "run the campaign through Snakemake"),
        ("demo", "simulate, ingest and run the campaign locally"),
    ):
        cmd = sub.add_parser(verb, parents=[common], help=text)
        cmd.add_argument("--profile", default="local", help="profile name or directory")
        cmd.add_argument(
            "snakemake_args", nargs=argparse.REMAINDER, help="after --: passed to snakemake"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dcflow` command; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    extra = [a for a in getattr(args, "snakemake_args", []) if a != "--"]
    try:
        if args.verb in ("simulate", "demo"):
            written = driver.simulate_campaign(args.config)
            print(f"simulated campaign: {len(written)} new files")
        if args.verb in ("ingest", "demo"):
            report = driver.ingest_campaign(args.config)
            print(
                f"ingest: {report.n_added} added, {report.n_known} known, "
                f"{len(report.rejected)} rejected ({report.seconds:.1f} s)"
            )
            for path, reason in report.rejected:
                print(f"  rejected {path}: {reason}", file=sys.stderr)
            if report.rejected and args.verb == "ingest":
                return EXIT_FAILED
        if args.verb in ("run", "demo"):
            code = driver.run_snakemake(args.config, profile=args.profile, snakemake_args=extra)
            if args.verb == "demo" and code == 0:
                from dcflow.config_schema import load_config
                from dcflow.layout import Layout

                layout = Layout.from_config(load_config(args.config))
                print(
                    f"demo campaign done: outputs under {layout.output_root}/ "
                    f"(validation: {layout.path('science_validation')})"
                )
            return EXIT_FAILED if code else 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"dcflow {args.verb}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
