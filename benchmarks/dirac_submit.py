"""DIRAC submission rate, one job at a time vs parametric bulk, and end-to-end time.

Usage: source run/dirac/env.sh; .venv/bin/python benchmarks/dirac_submit.py [--n-jobs 200]
       [--n-end-to-end 20]

Against the running DIRAC (scripts/dirac-up), through the executor plugin's own client
(`snakemake_executor_plugin_dirac.wms.DiracWMS`), in one run:

1. submit N trivial jobs one by one (one ``submitJob`` each), then kill and delete them;
2. submit N trivial jobs as parametric submissions chunked to 100 (MaxParametricJobs, one
   ``submitJob`` plus the name check per chunk), then kill and delete them;
3. end to end: M trivial jobs submitted in bulk, timed until DIRAC reports every one Done
   (optimizers, Matcher, private pilots, JobWrapper, sandbox upload), with the per-job rate.

Wall seconds on a shared 2-core machine: run it when the machine is quiet. Prints figures; it
is not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from snakemake_executor_plugin_dirac.status import ALIVE_STATES
from snakemake_executor_plugin_dirac.submit import DiracJobSpec, parametric_chunks
from snakemake_executor_plugin_dirac.wms import DiracWMS

GROUP = "bench-submit"


def _spec(name: str, script: Path) -> DiracJobSpec:
    return DiracJobSpec(
        name=name, group=GROUP, arguments=(str(script),), cpu_time_s=600, processors=1,
        max_ram_mb=None,
    )  # fmt: skip


def _clean(wms: DiracWMS, ids: list[str]) -> None:
    from DIRAC.WorkloadManagementSystem.Client.WMSClient import WMSClient

    for start in range(0, len(ids), 100):
        chunk = [int(i) for i in ids[start : start + 100]]
        wms.kill([str(i) for i in chunk])
        WMSClient().deleteJob(chunk)


def _one_by_one(wms: DiracWMS, script: Path, n: int) -> tuple[float, list[str]]:
    start = time.perf_counter()
    ids = [wms.submit(_spec(f"single.i={i}", script)) for i in range(n)]
    return time.perf_counter() - start, ids


def _bulk(wms: DiracWMS, script: Path, n: int, tag: str) -> tuple[float, list[str]]:
    start = time.perf_counter()
    ids = []
    for chunk in parametric_chunks(n, 100):
        names = [f"{tag}.i={i}" for i in chunk]
        ids += wms.submit_parametric(_spec(tag, script), [str(script)] * len(names), names)
    return time.perf_counter() - start, ids


def _until_done(wms: DiracWMS, ids: list[str], timeout_s: float) -> dict[str, str]:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        states = wms.states(ids)
        if all(o.status not in ALIVE_STATES for o in states.values()) and len(states) == len(ids):
            break
        time.sleep(2)
    return {i: o.status for i, o in wms.states(ids).items()}


def main() -> None:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-jobs", type=int, default=200, help="jobs per submission mode")
    parser.add_argument("--n-end-to-end", type=int, default=20, help="jobs run to Done")
    args = parser.parse_args()
    wms = DiracWMS()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "true.sh"
        script.write_text("#!/bin/sh\nexit 0\n")

        single_s, single_ids = _one_by_one(wms, script, args.n_jobs)
        _clean(wms, single_ids)
        bulk_s, bulk_ids = _bulk(wms, script, args.n_jobs, "bulk")
        _clean(wms, bulk_ids)
        print(f"submission of {args.n_jobs} trivial jobs (wall seconds, jobs per second):")
        print(f"  one by one   {single_s:7.2f} s  {args.n_jobs / single_s:7.1f} jobs/s")
        rate = args.n_jobs / bulk_s
        print(f"  parametric   {bulk_s:7.2f} s  {rate:7.1f} jobs/s  (chunks of 100)")
        print(f"  bulk speed-up x{single_s / bulk_s:.1f}")

        start = time.perf_counter()
        _, e2e_ids = _bulk(wms, script, args.n_end_to_end, "e2e")
        states = _until_done(wms, e2e_ids, timeout_s=60 + 30 * args.n_end_to_end)
        e2e_s = time.perf_counter() - start
        done = sum(s == "Done" for s in states.values())
        print(
            f"end to end: {args.n_end_to_end} trivial jobs submitted in bulk, {done} Done in "
            f"{e2e_s:.1f} s ({e2e_s / max(1, done):.1f} s per job with the running pilots)"
        )
        _clean(wms, [i for i, s in states.items() if s in ALIVE_STATES])


if __name__ == "__main__":
    main()
