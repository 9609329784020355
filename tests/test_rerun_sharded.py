"""`dcflow rerun --failed` alone on a sharded campaign whose output root is absolute (issue 20).

The rules spell their outputs with the config's own roots; rerun used to hand Snakemake its
targets relative to the working directory, which matched no rule when the root was absolute
(MissingRuleException in every local chaos run).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from noop_campaigns import write_noop_campaign

from dcflow.campaign.shards import Shard, read_marker
from dcflow.config_schema import load_config
from dcflow.joblog import FAULTS_ENV
from dcflow.layout import Layout
from dcflow.ledger import Ledger, Run
from dcflow.orchestration.campaign_files import rule_paths
from dcflow.orchestration.plan_status import plan_campaign
from dcflow.orchestration.sharded import run_sharded, shards_to_finish
from dcflow.pipeline.spec import TARGET_RULE
from dcflow.states import JobState

DCFLOW = str(Path(sys.executable).parent / "dcflow")
FAILED_TILE = ("forced_photometry", "visit=1001")


@pytest.mark.parametrize(
    ("output_root", "spelt"),
    [
        ("/data/c1/output", "/data/c1/output/forced_src/1001/forced_src_1001_0.fits"),
        ("output", "output/forced_src/1001/forced_src_1001_0.fits"),
        ("./output", "output/forced_src/1001/forced_src_1001_0.fits"),
        ("../elsewhere", "../elsewhere/forced_src/1001/forced_src_1001_0.fits"),
    ],
)
def test_rule_paths_spell_targets_as_the_rules_do(output_root, spelt):
    workdir = Path("/campaigns/c1")  # any absolute working directory: nothing is read
    own = Layout(input_root="input", output_root=output_root)
    rooted = Layout(input_root=str(workdir / "input"), output_root=str(workdir / output_root))
    target = rooted.path("forced_src", visit=1001, ccd=0)
    assert rule_paths([target], own, workdir) == [spelt]
    assert own.path("forced_src", visit=1001, ccd=0) == spelt


def _shard(shard_id: str, kind: str, upstream: tuple[str, ...], visits=()) -> Shard:
    return Shard(shard_id, kind, tuple(visits), (), (), upstream, 1)


def _run(run_id: int, shard: str, exit_code: int | None, *, finished: bool = True) -> Run:
    return Run(
        run_id, None, shard, None, None, None, None, None, None, 0.0,
        1.0 if finished else None, exit_code, {}, None, None,
    )  # fmt: skip


def test_shards_to_finish_are_the_failed_and_blocked_ones_not_those_behind_a_failing_tile():
    shards = [
        _shard("visits-00000", "visits", (), visits=(1001,)),
        _shard("visits-00001", "visits", (), visits=(1002,)),
        _shard("forced-00000", "forced", ("visits-00000",), visits=(1001,)),
        _shard("forced-00001", "forced", ("visits-00001",), visits=(1002,)),
        _shard("catalogs-00000", "catalogs", ("forced-00000",), visits=(1001,)),
        _shard("catalogs-00001", "catalogs", ("forced-00001",), visits=(1002,)),
    ]
    runs = [
        _run(1, "visits-00000", 0),
        _run(2, "visits-00001", 0),
        _run(3, "forced-00000", 1),
        _run(4, "forced-00001", 1),
        _run(5, "rerun-failed", 0),
    ]
    # forced-00001 still holds a failing tile (bad input, not rerun): it and its catalogs stay
    failing = [("forced_photometry", "visit=1002")]
    assert shards_to_finish(shards, runs, failing) == (
        {"forced-00000", "catalogs-00000"},
        {"forced-00001", "catalogs-00001"},
    )
    # a shard that later ran well blocks nothing; a killed one (no exit code) does
    runs += [_run(6, "forced-00000", 0), _run(7, "visits-00000", None)]
    assert shards_to_finish(shards, runs, []) == (
        {"visits-00000", "forced-00000", "catalogs-00000", "forced-00001", "catalogs-00001"},
        set(),
    )
    # a run still going is not a failure
    assert shards_to_finish(shards, [_run(8, "forced-00000", None, finished=False)], []) == (
        set(),
        set(),
    )


@pytest.mark.slow
def test_rerun_failed_alone_reruns_a_failed_forced_tile_then_the_shards_it_blocked(
    tmp_path, monkeypatch
):
    """A forced_photometry tile fails: its shard fails and blocks the shards downstream of it
    (the visit's catalog load, the alert shards). `dcflow rerun --failed` alone reruns the
    tile and its missing downstream jobs, then runs the blocked shards: nothing is left to
    run, and no job that had succeeded runs again."""
    config = write_noop_campaign(
        tmp_path / "c",
        visits_per_filter=1,
        n_ccds=1,
        filters=("g",),
        n_tracts=1,
        fe55_sensors=(),
        shards={"visits_per_shard": 10, "patches_per_shard": 4, "max_concurrent_shards": 2},
    )
    work = config.parent
    layout = Layout.from_config(load_config(config))
    assert Path(layout.output_root).is_absolute()  # as the chaos benchmark's campaigns
    monkeypatch.setenv(FAULTS_ENV, f"{FAILED_TILE[0]}:{FAILED_TILE[1]}")
    result = run_sharded(config, profile="local", workdir=work, progress=False, out=lambda _: None)
    states = {o.shard_id: o.state for o in result.outcomes}
    assert states["forced-00000"] == "failed"
    blocked = {sid for sid, state in states.items() if state == "blocked"}
    assert blocked  # the catalog and alert shards behind the failed forced shard
    forced_src = Path(layout.path("forced_src", visit=1001, ccd=0))
    assert not forced_src.exists()
    ledger_file = Path(layout.path("ledger"))
    with Ledger(ledger_file) as ledger:
        before = Counter(a.tile for a in ledger.attempts())
        succeeded = {
            t for t, a in ledger.latest_attempts().items() if a.state is JobState.SUCCEEDED
        }
    assert plan_campaign(config, workdir=work).n_to_run > 1  # the failed tile and blocked jobs
    monkeypatch.delenv(FAULTS_ENV)

    proc = subprocess.run(
        [DCFLOW, "rerun", "--failed", "--config", str(config), "--profile", "local"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with Ledger(ledger_file) as ledger:
        (rerun,) = [r for r in ledger.runs() if r.shard == "rerun-failed"]
        again = ledger.attempts(run_id=rerun.run_id)
        after = Counter(a.tile for a in ledger.attempts())
        latest = ledger.latest_attempts()
        shard_runs = {r.shard for r in ledger.runs() if r.run_id > rerun.run_id}
    assert rerun.exit_code == 0
    # the failed tile and the catalog load of its visit (missing downstream), nothing else
    assert {a.tile: a.state for a in again} == {
        FAILED_TILE: JobState.SUCCEEDED,
        ("load_visit_catalogs", "visit=1001"): JobState.SUCCEEDED,
    }
    assert before[FAILED_TILE] == 1 and after[FAILED_TILE] == 2
    # then the failed shard and the shards it blocked: each done, none left to run
    assert shard_runs == blocked | {"forced-00000"}
    assert all(read_marker(layout, sid) for sid in shard_runs)  # each finished well
    assert plan_campaign(config, workdir=work).n_to_run == 0
    assert {t for t, a in latest.items() if a.state is not JobState.SUCCEEDED} == set()
    # no job that had succeeded ran again (each shard's target rule `all` aside); the blocked
    # jobs ran once each
    succeeded = {t for t in succeeded if t[0] != TARGET_RULE}
    assert {t: after[t] for t in succeeded} == {t: before[t] for t in succeeded}
    new = {t: n for t, n in after.items() if t not in before}
    assert new and set(new.values()) == {1}
    written = json.loads(forced_src.read_text())
    assert (written["rule"], written["output"]) == ("forced_photometry", str(forced_src))
