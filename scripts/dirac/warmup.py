"""Submit one trivial job to the loopback DIRAC and wait until it is Done (dirac-up's last step).

The first burst of concurrent jobs after the optimizers start can stall for ~50 s; one job first
absorbs that, and proves the whole chain (JobManager, optimizers, Matcher, JobAgent, sandbox).
Exits 0 when the job is Done, 1 otherwise (printing its status).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import DIRAC

__all__ = ["main"]

TIMEOUT_S = 150.0


def main() -> int:
    """Run the warm-up job; return the process exit code."""
    DIRAC.initialize()
    DIRAC.gLogger.setLevel("ERROR")  # not "Need to upload the proxy" on every submit
    from DIRAC.Interfaces.API.Dirac import Dirac
    from DIRAC.Interfaces.API.Job import Job

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "warmup.sh"
        script.write_text("#!/bin/sh\necho dcflow-warmup-ok\n")
        script.chmod(0o755)
        job = Job()
        job.setName("dcflow-warmup")
        job.setJobGroup("dcflow-warmup")
        job.setExecutable(str(script))
        job.setCPUTime(600)
        result = Dirac().submitJob(job)
    if not result["OK"]:
        print(f"warm-up submission failed: {result['Message']}", file=sys.stderr)
        return 1
    job_id = result["Value"]
    start = time.monotonic()
    status = {}
    while time.monotonic() - start < TIMEOUT_S:
        answer = Dirac().getJobStatus(job_id)
        status = answer["Value"].get(job_id, {}) if answer["OK"] else {}
        if status.get("Status") in ("Done", "Failed", "Killed", "Stalled", "Deleted"):
            break
        time.sleep(2)
    elapsed = time.monotonic() - start
    print(f"warm-up job {job_id}: {status} after {elapsed:.0f} s")
    return 0 if status.get("Status") == "Done" else 1


if __name__ == "__main__":
    sys.exit(main())
