"""The chaos campaign, short: a sharded noop campaign through every fault, nothing lost or redone.

`benchmarks/chaos.py` at its smallest on the local backend: a fault-free reference run, then
the same campaign while jobs fail once (random exit codes, out of memory), running jobs are
SIGKILLed, the driver is SIGKILLed (with its process group, and once its main process only,
its shard Snakemakes left alive), a shard's Snakemake is SIGKILLed and, as root, the output
disk is full for a few seconds; then ``dcflow rerun --failed`` / ``dcflow run --sharded``
until only the corrupted inputs' tiles fail. Every figure of the issue's table must be 0,
the ledger against the disk included (the driver settles jobs that ended well unrecorded:
`dcflow.orchestration.settle`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from chaos import run_chaos, table_lines

pytestmark = pytest.mark.slow


def test_chaos_campaign_local_loses_nothing_and_redoes_nothing(tmp_path):
    args = argparse.Namespace(
        seed=20,
        visits_per_filter=2,
        ccds=1,
        tracts=1,
        job_seconds=1.0,
        cores=2,
        fail_rate=0.05,
        kill_rate=0.10,
        enospc_seconds=5.0,
        disk_mb=32,
        max_rounds=3,
        workdir=str(tmp_path),
    )
    lines: list[str] = []
    result = run_chaos(args, backend="local", out=lines.append)
    table = "\n".join(lines + table_lines(result))
    assert result.n_jobs > 20, table
    assert result.faults["kill_driver_group"] + result.faults["kill_driver_main"] >= 1, table
    assert result.faults["job exits"] + result.faults["job fails once (memory)"] >= 2, table
    assert result.zeros() == dict.fromkeys(result.zeros(), 0), table
