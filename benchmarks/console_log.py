"""Lines a person reads from `dcflow demo`: the console output off a terminal (as in CI or a log
file), beside the Snakemake log the run keeps, and issue 19's figure for the console before
(2,916 lines: a reprinted progress table, 64 astropy warnings, the Snakemake command twice).

Usage: .venv/bin/python benchmarks/console_log.py [--config config.yaml] [--scratch DIR]
       [-- SNAKEMAKE ARGS]   (e.g. `-- --cores 2`)

Copies the config into a scratch directory (its layout paths are relative: outputs go there),
runs `dcflow demo` there with stdout and stderr captured, and prints line counts: the console,
its longest kind of line, warnings (each kind once, with its count), and the run's Snakemake
log. Prints figures; it is not a test. The demo writes about 4.7 GB under the scratch
directory, removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DCFLOW = str(Path(sys.executable).with_name("dcflow"))
BEFORE_LINES = 2916
"""The demo's console before issue 19 (issue 19's report)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--scratch", default=None, help="directory to run in (default: a temp)")
    parser.add_argument("--keep", action="store_true", help="keep the demo's outputs")
    args, extra = parser.parse_known_args()
    extra = extra[1:] if extra[:1] == ["--"] else extra
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="dcflow-console-"))
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.config, scratch / "config.yaml")
    start = time.monotonic()
    proc = subprocess.run(
        [DCFLOW, "demo", "--config", "config.yaml", *(["--", *extra] if extra else [])],
        cwd=scratch,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - start
    console = (proc.stdout + proc.stderr).splitlines()
    (scratch / "console.txt").write_text("\n".join(console) + "\n")
    kinds = Counter(re.sub(r"\d+", "N", line)[:60] for line in console)
    warnings = [line for line in console if line.startswith("warning")]
    logs = sorted(scratch.rglob("logs/snakemake/run=*.log"))
    log_lines = sum(len(p.read_text(errors="replace").splitlines()) for p in logs)
    print(f"dcflow demo: exit {proc.returncode} after {seconds / 60:.1f} min in {scratch}")
    print(f"{'':32}{'now':>10}{'before (issue 19)':>20}")
    print(f"{'console lines':32}{len(console):>10}{BEFORE_LINES:>20}")
    print(f"{'Snakemake log lines (kept)':32}{log_lines:>10}{'-':>20}")
    print(f"{'warning lines on the console':32}{len(warnings):>10}{'64+':>20}")
    most, n_most = kinds.most_common(1)[0] if kinds else ("", 0)
    print(f"most repeated kind of line ({n_most}x): {most}")
    for line in warnings:
        print(f"  {line[:110]}")
    if args.keep or args.scratch:
        print(f"console saved in {scratch / 'console.txt'}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
