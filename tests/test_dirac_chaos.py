"""The chaos campaign on the real loopback DIRAC: nothing lost, nothing redone, nothing doubled.

`benchmarks/chaos.py --backend dirac` at its smallest, with the DIRAC-specific faults only
(tests/test_chaos.py and the Grid Engine benchmark cover the others): the sensor (Fe55) shard
alone (``visits_per_filter=0``: 13 jobs on 4 sensors, 3 of them corrupted), fault-free on the
local backend for the reference (the products are the same, and DIRAC's overhead is paid
once), then through profiles/dirac while a pilot is SIGKILLed with the job it runs (the
StalledJobAgent marks the orphan Stalled; the executor kills it and retries), the DIRAC
services are restarted (``scripts/dirac-restart services``: output sandbox uploads fail
meanwhile, and DIRAC reschedules jobs whose payload succeeded; the executor takes them as done
from their whole outputs and kills their reruns) and the driver is SIGKILLed (its successor
adopts the DIRAC jobs still alive and settles those that ended meanwhile); then ``dcflow rerun
--failed`` / ``dcflow run --sharded`` until only the corrupted inputs' tiles fail. Every
figure of the issue's table must be 0. One shard, because each DIRAC job costs tens of
seconds through the pilots (its 8-shard version ran past 40 min at load 8).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from test_dirac_workflows import WHY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from chaos import run_chaos, stalled_agent_running, table_lines

pytestmark = [
    pytest.mark.dirac,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(WHY is not None, reason=WHY or ""),
    pytest.mark.skipif(
        WHY is None and not stalled_agent_running(),
        reason="the loopback DIRAC runs no StalledJobAgent (started by an older "
        "scripts/dirac-up): a killed pilot's job would stay Running",
    ),
]


def test_chaos_campaign_dirac_loses_nothing_and_redoes_nothing(tmp_path):
    args = argparse.Namespace(
        seed=20,
        visits_per_filter=0,  # the sensor shard alone
        ccds=1,
        tracts=1,
        job_seconds=1.0,
        cores=2,
        fail_rate=0.0,  # jobs failing once: tests/test_chaos.py
        kill_rate=0.0,
        enospc_seconds=10.0,
        disk_mb=32,
        max_rounds=3,
        workdir=str(tmp_path),
        reference_backend="local",  # same products, minutes sooner (see run_chaos)
        faults="kill_pilot,dirac_service,kill_driver_main",
        horizon_s=40.0,
    )
    lines: list[str] = []
    result = run_chaos(args, backend="dirac", out=lines.append)
    table = "\n".join(lines + table_lines(result))
    assert result.n_jobs >= 12, table
    assert result.faults["kill_pilot"] >= 1, table
    assert result.faults["dirac_service"] == 1, table
    assert result.faults["kill_driver_main"] == 1, table
    assert not [n for n in result.notes if "not restarted" in n or "dirac-restart" in n], table
    assert result.zeros() == dict.fromkeys(result.zeros(), 0), table
