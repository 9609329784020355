"""Snakemake's scheduling rounds and CPU: plain ``python -m snakemake`` against dcflow's entry.

dcflow starts every Snakemake through `dcflow.orchestration.snakemake_main`, which coalesces the
scheduler's re-evaluation timers (its docstring says why). This runs one workflow of ``--jobs``
independent local jobs of ``--job-seconds`` each at ``-j --cores``, once each way, and prints
the scheduling rounds (job-selection calls) and the Snakemake process's own CPU (its jobs'
shells excluded) side by side. Prints figures, asserts nothing.

Usage: ``.venv/bin/python benchmarks/scheduler_rounds.py [--jobs 400] [--cores 20]
[--job-seconds 2]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SNAKEFILE = """
rule all:
    input: expand("out/{{i}}.txt", i=range({jobs}))

rule job:
    output: "out/{{i}}.txt"
    shell: "sleep {seconds}; echo {{wildcards.i}} > {{output}}"
"""

# Runs Snakemake in this process with job selection counted, optionally through dcflow's entry,
# and prints the rounds and the process's own CPU as JSON on stderr's last line.
CHILD = """
import atexit, json, resource, sys
from snakemake.scheduling.job_scheduler import JobScheduler
from dcflow.orchestration.snakemake_main import coalesce_reevaluation_timers
rounds = [0]
select = JobScheduler.job_selector
def counted(self, jobs):
    rounds[0] += 1
    return select(self, jobs)
JobScheduler.job_selector = counted
if sys.argv[1] == "dcflow":
    coalesce_reevaluation_timers(JobScheduler)
def report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    sys.stderr.write(json.dumps({"rounds": rounds[0],
                                 "cpu_s": usage.ru_utime + usage.ru_stime}) + "\\n")
atexit.register(report)
sys.argv = ["snakemake", *sys.argv[2:]]
from snakemake.cli import main
main()
"""


def measure(entry: str, workdir: Path, cores: int) -> dict:
    """One run of the workflow in ``workdir`` from scratch; rounds, CPU and wall time."""
    for old in (workdir / "out").glob("*"):
        old.unlink()
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            entry,
            "-j",
            str(cores),
            "-q",
            "-d",
            str(workdir),
            "-s",
            str(workdir / "Snakefile"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{entry} run failed:\n{proc.stderr[-2000:]}")
    figures = json.loads(proc.stderr.strip().splitlines()[-1])
    figures["wall_s"] = time.monotonic() - start
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--cores", type=int, default=20)
    parser.add_argument("--job-seconds", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "Snakefile").write_text(
            SNAKEFILE.format(jobs=args.jobs, seconds=args.job_seconds)
        )
        (workdir / "out").mkdir()
        plain = measure("plain", workdir, args.cores)
        dcflow = measure("dcflow", workdir, args.cores)
    print(f"{args.jobs} jobs of {args.job_seconds:g} s at -j {args.cores}")
    print(f"{'':24}{'snakemake':>12}{'dcflow':>12}{'ratio':>8}")
    for key, label in (
        ("rounds", "scheduling rounds"),
        ("cpu_s", "Snakemake CPU s"),
        ("wall_s", "wall s"),
    ):
        ratio = dcflow[key] / plain[key] if plain[key] else float("nan")
        print(f"{label:24}{plain[key]:>12.1f}{dcflow[key]:>12.1f}{ratio:>8.2f}")
    print(
        f"{'CPU ms per job':24}{1000 * plain['cpu_s'] / args.jobs:>12.1f}"
        f"{1000 * dcflow['cpu_s'] / args.jobs:>12.1f}"
    )


if __name__ == "__main__":
    main()
