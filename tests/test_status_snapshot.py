"""Status, failed and rerun selection from the plan snapshot and the ledger, without a replan.

A large campaign's `dcflow status` joins the last plan's needrun arrays with the ledger since
(`dcflow.orchestration.plan_status.current_need`); these tests check on a small multi-tract
campaign that it says exactly what a full replan says, that stale snapshots are not used, and
that ``failed`` needs no plan. benchmarks/status_scale.py measures the same at DC2013 scale.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from test_synthetic import SMALL

from dcflow.campaign.snapshots import campaign_digest, read_plan_snapshot
from dcflow.campaign.synthetic import SyntheticSpec, write_campaign, write_inventory
from dcflow.config_schema import load_config
from dcflow.layout import Layout
from dcflow.ledger import Ledger, parse_tile, tile_of
from dcflow.orchestration.plan_status import (
    failed_campaign,
    indexed_campaign,
    plan_campaign,
    status_campaign,
)
from dcflow.orchestration.rerun import select_failed
from dcflow.pipeline.graph import JobGraph


def _campaign(tmp_path: Path) -> tuple[Path, JobGraph]:
    config = write_campaign(SyntheticSpec(**SMALL), tmp_path / "c")
    _, _, index = indexed_campaign(config, config.parent)
    return config, JobGraph(index)


def _insert(ledger_path: str, rows: list[tuple]) -> None:
    conn = sqlite3.connect(ledger_path)
    with conn:
        conn.executemany(
            "INSERT INTO attempts (run_id, jobid, rule, data_id, wildcards, state, exit_code,"
            " outputs, finished) VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )
    conn.close()


def _row(graph: JobGraph, run: int, rule: str, job: int, state: str, when: float) -> tuple:
    data_id = graph.data_id(rule, job)
    stage = graph.stage(rule)
    outputs = [p for item in stage.outputs for p in graph.output_paths(rule, item.dataset, job)]
    wildcards = json.dumps({k: str(v) for k, v in data_id.items()})
    code = 0 if state == "succeeded" else 1
    return (run, job, rule, tile_of(data_id), wildcards, state, code, json.dumps(outputs), when)


def test_find_jobs_names_every_job_of_a_multi_tract_campaign(tmp_path):
    _, graph = _campaign(tmp_path)
    assert len(set(graph.index.patch_tract.tolist())) > 1  # patch names repeat across tracts
    for s in graph.stages:
        n = graph.jobs(s.rule).n_jobs
        names = [tile_of(graph.data_id(s.rule, j)) for j in range(n)]
        assert graph.tile_batch(s.rule, np.arange(n)) == names, s.rule
        tiles = [parse_tile(name) for name in names]
        assert np.array_equal(graph.find_jobs(s.rule, tiles), np.arange(n)), s.rule
        assert np.array_equal(graph.find_tiles(s.rule, names), np.arange(n)), s.rule
        unknown = [name.replace("visit=", "visit=9") for name in names]
        if "visit" in graph.jobs(s.rule).columns:
            assert (graph.find_tiles(s.rule, unknown) == -1).all(), s.rule


def test_status_from_the_snapshot_equals_a_replan(tmp_path):
    config, graph = _campaign(tmp_path)
    plan_campaign(config, profile=None, workdir=config.parent)  # fresh: keeps the snapshot
    time.sleep(0.05)
    write_inventory(config, "half", tree=True)  # the first half of the visits, processed
    layout = Layout.from_config(load_config(config))
    ledger_path = str(config.parent / layout.path("ledger"))
    with Ledger(ledger_path) as ledger:
        run = ledger.start_run(campaign="t", profile="local", backend="local")
    now = time.time()
    chosen = graph.per_visit_closure()
    n_done = graph.index.n_visits // 2
    rows = []
    for s in graph.stages:
        columns = graph.jobs(s.rule).columns
        for j in range(graph.jobs(s.rule).n_jobs):
            first_half = "visit" not in columns or columns["visit"][j] < n_done
            if s.rule in chosen and first_half:
                rows.append(_row(graph, run, s.rule, j, "succeeded", now))
            elif s.rule == "process_visit" and j % 5 == 0:
                rows.append(_row(graph, run, s.rule, j, "failed", now))
    _insert(ledger_path, rows)
    snap = status_campaign(config, workdir=config.parent, replan=False)
    fresh = status_campaign(config, workdir=config.parent, replan=True)
    assert snap.rows == fresh.rows
    assert snap.n_failed == fresh.n_failed > 0
    assert sum(r.done for r in snap.rows) > 0


def test_a_snapshot_of_another_registry_is_not_used(tmp_path):
    config, _ = _campaign(tmp_path)
    plan_campaign(config, profile=None, workdir=config.parent)
    cfg = load_config(config)
    layout = Layout.from_config(cfg)
    registry = config.parent / layout.path("registry")
    snapshot_path = config.parent / layout.path("plan_snapshot")
    assert read_plan_snapshot(snapshot_path, campaign_digest(cfg, registry)) is not None
    os.utime(registry, ns=(time.time_ns(), time.time_ns() + 10**9))  # an ingest since
    assert read_plan_snapshot(snapshot_path, campaign_digest(cfg, registry)) is None


def test_failed_lists_tiles_whose_outputs_are_missing_without_a_plan(tmp_path):
    config, graph = _campaign(tmp_path)
    layout = Layout.from_config(load_config(config))
    ledger_path = str(config.parent / layout.path("ledger"))
    with Ledger(ledger_path) as ledger:
        run = ledger.start_run(campaign="t", profile="local", backend="local")
    rows = [_row(graph, run, "process_visit", j, "failed", time.time()) for j in range(3)]
    _insert(ledger_path, rows)
    made = json.loads(rows[1][7])
    for path in made:  # tile 1 was made since (by another run)
        Path(config.parent / path).parent.mkdir(parents=True, exist_ok=True)
        Path(config.parent / path).write_text("")
    assert not (config.parent / layout.path("plan_snapshot")).exists()
    tiles = failed_campaign(config, workdir=config.parent, n_lines=0)
    assert [t.data_id for t in tiles] == [rows[0][3], rows[2][3]]
    assert not (config.parent / layout.path("plan_snapshot")).exists()  # no plan was made
    selection = select_failed(config, config.parent, replan=False)
    targets, selected = selection.targets(), selection.tiles()
    assert {("process_visit", rows[0][3]), ("process_visit", rows[2][3])} <= selected
    assert ("process_visit", rows[1][3]) not in selected
    assert all(rule != "process_visit" or tile != rows[1][3] for rule, tile in selected)
    assert len(targets) >= len(selected)


def test_rerun_of_more_jobs_than_one_dag_should_hold_is_refused(tmp_path, monkeypatch):
    from dcflow.errors import RerunTooLargeError
    from dcflow.orchestration import rerun

    config, graph = _campaign(tmp_path)
    layout = Layout.from_config(load_config(config))
    ledger_path = str(config.parent / layout.path("ledger"))
    with Ledger(ledger_path) as ledger:
        run = ledger.start_run(campaign="t", profile="local", backend="local")
    _insert(ledger_path, [_row(graph, run, "process_visit", 0, "failed", time.time())])
    selection = select_failed(config, config.parent)
    assert selection is not None and selection.n_jobs > 1  # the visit's warps and beyond
    monkeypatch.setattr(rerun, "MAX_RERUN_JOBS", selection.n_jobs - 1)
    with pytest.raises(RerunTooLargeError, match="--sharded"):
        rerun.rerun_failed(config, profile="local", snakemake_args=[], workdir=config.parent)
