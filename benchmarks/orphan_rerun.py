"""An orphaned ``dcflow rerun --failed`` Snakemake beside the next ``dcflow run --sharded``.

The local chaos campaign's duplicated successes (issue 20) in one scene, without the other
faults: a sharded noop campaign (`benchmarks/chaos.py`'s, at its test size) is run once
while every ``fe55_gain`` job fails once (``DCFLOW_FAULTS``, fire-once); then ``dcflow rerun
--failed`` starts, its driver's main process is SIGKILLed as soon as its Snakemake runs a job
(the Snakemake lives on), and ``dcflow run --sharded`` is started at once, as an operator
would. Once every Snakemake of the campaign has ended it prints the jobs with more than one
successful attempt and the attempts of one job live at once (`chaos.duplicated_successes`,
`chaos.overlapping_attempts`); both are 0 when the sharded driver waits for the rerun's
Snakemake (`dcflow.orchestration.sharded.orphan_shards`).

Usage: ``.venv/bin/python benchmarks/orphan_rerun.py [--job-seconds 4] [--workdir DIR]``
(about 3 min on an idle 2-core host, most of it the first run).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos import (
    Campaign,
    campaign_processes,
    duplicated_successes,
    in_workdir,
    ledger_attempts,
    overlapping_attempts,
    snakemakes_below,
    write_campaign,
)

from dcflow.joblog import FAULTS_ENV, FAULTS_ONCE_ENV

FE55_GAIN_TILES = [f"ccd={ccd}_exposure={exposure}" for ccd in range(4) for exposure in range(2)]


def snakemakes_in(work: Path) -> list[int]:
    """Live campaign Snakemakes running in ``work``, whoever started them (`launch_campaign`
    gives each its ledger on the command line, whatever module runs it)."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"--logger-dcflow-ledger" in argv and in_workdir(int(name), work):
            found.append(int(name))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-seconds", type=float, default=4.0, help="noop job duration")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="dcflow-orphan-")).resolve()
    config = write_campaign(root, visits_per_filter=2, n_ccds=1, n_tracts=1)
    env = {
        **os.environ,
        "DCFLOW_NOOP_SECONDS": str(args.job_seconds),
        FAULTS_ENV: ";".join(f"fe55_gain:{tile}:exit3" for tile in FE55_GAIN_TILES),
        FAULTS_ONCE_ENV: str(root / "faults-fired"),
    }
    campaign = Campaign(config, "local", env, ["--cores", "2"])
    t0 = time.monotonic()
    campaign.start("run")
    campaign.wait()
    print(f"{time.monotonic() - t0:6.1f} s  first run ended (fe55_gain failed once)")
    campaign.start("rerun")
    driver = campaign.driver
    assert driver is not None
    while not (snakemakes_below(driver.pid) and campaign_processes(campaign.work, "job")):
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    print(f"{time.monotonic() - t0:6.1f} s  rerun's driver SIGKILLed, its Snakemake left")
    campaign.start("run")
    campaign.wait()
    while snakemakes_in(campaign.work):
        time.sleep(1.0)
    attempts = ledger_attempts(root / "output" / "ledger.sqlite3")
    duplicated = duplicated_successes(attempts)
    overlapping = overlapping_attempts(attempts, time.time())
    print(f"{time.monotonic() - t0:6.1f} s  every Snakemake of the campaign ended")
    print(f"duplicated successful runs   {duplicated:4d}")
    print(f"duplicate batch submissions  {overlapping:4d}")
    return 0 if duplicated == overlapping == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
