"""The analytic planner against Snakemake's own dry run, its readers, and the plan pictures."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_ledger import toy_workflow

from dcflow.jobspec import JobSpec
from dcflow.orchestration.rerun import rerun_targets
from dcflow.plan import (
    clear_incomplete_marks,
    incomplete_outputs,
    inventory,
    needrun_jobs,
    parse_dry_run_counts,
    plan_jobs,
)
from dcflow.plots_campaign import (
    CcdTile,
    RuleCounts,
    rule_counts,
    rule_edges,
    rule_graph_figure,
    save_png,
    sky_figure,
)

VISITS = (1, 2, 3)


def toy_jobs() -> list[JobSpec]:
    """The toy workflow of test_ledger as JobSpecs (paths relative to its workdir)."""
    jobs = [JobSpec("a", {"visit": v}, (f"out/a_{v}.txt",), ()) for v in VISITS]
    jobs += [JobSpec("b", {"visit": v}, (f"out/b_{v}.txt",), (f"out/a_{v}.txt",)) for v in VISITS]
    jobs.append(JobSpec("all", {}, (), tuple(f"out/b_{v}.txt" for v in VISITS)))
    return jobs


def snakemake_counts(work: Path) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-c1", "--rerun-incomplete"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return parse_dry_run_counts(proc.stdout + proc.stderr)


def planner_counts(work: Path) -> dict[str, int]:
    return plan_jobs(toy_jobs(), output_root="out", workdir=work).to_run_by_rule()


def mark_incomplete(work: Path, path: str) -> None:
    """Write Snakemake's incomplete marker for an output (as a killed job leaves it)."""
    marker = work / ".snakemake" / "incomplete" / base64.urlsafe_b64encode(path.encode()).decode()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text('{"external_jobid": null}')


@pytest.mark.slow
def test_planner_equals_snakemake_dry_run_in_every_state(tmp_path):
    work = toy_workflow(tmp_path / "toy")
    fresh = {"a": 3, "b": 3, "all": 1}
    assert planner_counts(work) == snakemake_counts(work) == fresh
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-c2", "--quiet"], cwd=work, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert planner_counts(work) == snakemake_counts(work) == {}
    (work / "out" / "a_1.txt").unlink()  # an intermediate gone: nothing needs it
    assert planner_counts(work) == snakemake_counts(work) == {}
    (work / "out" / "b_1.txt").unlink()  # now b_1 needs a_1 again
    assert planner_counts(work) == snakemake_counts(work) == {"a": 1, "b": 1, "all": 1}
    mark_incomplete(work, "out/a_2.txt")  # a job killed halfway: it and downstream rerun
    assert planner_counts(work) == snakemake_counts(work) == {"a": 2, "b": 2, "all": 1}


def test_parse_dry_run_counts():
    text = """Building DAG of jobs...
Job stats:
job              count
-------------  -------
bias                 2
process_visit       10
all                  1
total               13

[Wed Nov 25 08:00:00 2026]
rule bias:
Job stats:
job              count
-------------  -------
bias                 2
process_visit       10
all                  1
total               13

This was a dry-run (flag -n)."""
    assert parse_dry_run_counts(text) == {"bias": 2, "process_visit": 10, "all": 1}
    nothing = "Building DAG of jobs...\nNothing to be done (all requested files are present)."
    assert parse_dry_run_counts(nothing) == {}


def test_inventory_and_incomplete_markers(tmp_path):
    (tmp_path / "out" / "a" / "b").mkdir(parents=True)
    (tmp_path / "out" / "a" / "b" / "f.fits").write_text("x")
    (tmp_path / "out" / "g.txt").write_text("x")
    assert inventory(tmp_path / "out") == {
        str(tmp_path / "out" / "a" / "b" / "f.fits"),
        str(tmp_path / "out" / "g.txt"),
    }
    long_name = "out/" + "d" * 300 + "/x.fits"  # a marker name longer than 255: split in '@' parts
    encoded = base64.urlsafe_b64encode(long_name.encode()).decode()
    parts = [encoded[i : i + 254] for i in range(0, len(encoded), 254)]
    marker = tmp_path / ".snakemake" / "incomplete"
    nested = marker.joinpath(*["@" + p for p in parts[:-1]])
    nested.mkdir(parents=True)
    (nested / parts[-1]).write_text("{}")
    mark_incomplete(tmp_path, "out/g.txt")
    (marker / "migration_underway").write_text("")
    assert incomplete_outputs(tmp_path) == {
        str(tmp_path / long_name),
        str(tmp_path / "out" / "g.txt"),
    }
    # a job found done unwatched: its marks go (named relative or absolute), the others stay
    assert clear_incomplete_marks(tmp_path, [str(tmp_path / long_name), "out/nope.txt"]) == 1
    assert incomplete_outputs(tmp_path) == {str(tmp_path / "out" / "g.txt")}


def test_needrun_ignores_missing_intermediates_and_forces_incomplete():
    jobs = toy_jobs()
    every = {f"/w/out/{r}_{v}.txt" for r in "ab" for v in VISITS}
    assert needrun_jobs(jobs, every, workdir="/w") == set()
    assert needrun_jobs(jobs, every - {"/w/out/a_3.txt"}, workdir="/w") == set()
    need = needrun_jobs(jobs, every - {"/w/out/b_3.txt", "/w/out/a_3.txt"}, workdir="/w")
    assert {(jobs[i].rule, jobs[i].data_id.get("visit")) for i in need} == {
        ("a", 3),
        ("b", 3),
        ("all", None),
    }
    forced = needrun_jobs(jobs, every, {"/w/out/a_1.txt"}, workdir="/w")
    assert {(jobs[i].rule, jobs[i].data_id.get("visit")) for i in forced} == {
        ("a", 1),
        ("b", 1),
        ("all", None),
    }


def _reference_downstream(jobs, failed, allowed):
    """Failed tiles and the allowed jobs downstream of them, by a walk over JobSpecs."""
    from dcflow.ledger import tile_of

    producer = {p: i for i, job in enumerate(jobs) for p in job.outputs}
    users: dict[int, set[int]] = {}
    for i, job in enumerate(jobs):
        for p in job.inputs:
            if p in producer:
                users.setdefault(producer[p], set()).add(i)
    keys = [(job.rule, tile_of(job.data_id)) for job in jobs]
    todo = [i for i, key in enumerate(keys) if key in failed]
    chosen = set(todo)
    while todo:
        for sink in users.get(todo.pop(), ()):
            if sink not in chosen and keys[sink] in allowed and jobs[sink].outputs:
                chosen.add(sink)
                todo.append(sink)
    return {keys[i] for i in chosen}


def test_rerun_targets_select_failed_and_missing_downstream(tmp_path):
    from test_plan_analytic import make

    from dcflow.campaign.index import CampaignIndex
    from dcflow.config_schema import load_config
    from dcflow.ledger import tile_of
    from dcflow.pipeline.graph import JobGraph

    config_path = make(tmp_path, "2ccd-gr-fe55")
    graph = JobGraph(CampaignIndex.from_config(load_config(config_path)))
    jobs = graph.job_specs()
    visit = graph.data_id("process_visit", 3)
    failed = {("process_visit", tile_of(visit)), ("fe55_gain", "ccd=0_exposure=1")}
    everything = {s.rule: np.ones(graph.jobs(s.rule).n_jobs, bool) for s in graph.stages}
    selection = rerun_targets(graph, failed, everything)
    targets, selected = selection.targets(), selection.tiles()
    assert selection.n_jobs == len(selected)
    allowed = {(j.rule, tile_of(j.data_id)) for j in jobs}
    assert selected == _reference_downstream(jobs, failed, allowed)
    rules = {rule for rule, _ in selected}
    assert {"process_visit", "make_warp", "assemble_coadd", "forced_photometry"} <= rules
    assert {"fe55_gain", "fe55_summary"} <= rules and "bias" not in rules
    assert graph.output_paths("fe55_summary", "fe55_summary", 0)[0] in targets
    outputs = {p for j in jobs if (j.rule, tile_of(j.data_id)) in selected for p in j.outputs}
    assert len(targets) == len(set(targets)) and set(targets) == outputs
    # a plan where nothing downstream is missing: only the failed tiles themselves
    nothing = {s.rule: np.zeros(graph.jobs(s.rule).n_jobs, bool) for s in graph.stages}
    only = rerun_targets(graph, failed, nothing).tiles()
    assert only == failed


GREEN = np.array([0x2C, 0xA0, 0x2C]) / 255.0
RED = np.array([0xD6, 0x27, 0x28]) / 255.0


def _colour_pixels(path: Path, rgb: np.ndarray) -> int:
    import matplotlib.image

    pixels = matplotlib.image.imread(path)[..., :3]
    return int(np.all(np.abs(pixels - rgb) < 0.03, axis=-1).sum())


def test_rule_graph_picture_colours_rules_by_state(tmp_path):
    jobs = toy_jobs()
    to_run = {("b", "visit=3"): (None, None), ("all", "campaign"): (None, None)}
    counts = rule_counts(jobs, to_run, failed={("b", "visit=3")})
    n_b = len([j for j in jobs if j.rule == "b"])
    assert counts["b"] == RuleCounts(total=n_b, to_run=1, failed=1)
    fig = rule_graph_figure(counts, rule_edges(jobs))
    path = Path(save_png(fig, tmp_path / "graph.png"))
    assert path.stat().st_size > 10_000
    # rule a is done (green), rule b has a failed tile (red): two big boxes of each colour
    assert _colour_pixels(path, GREEN) > 5_000
    assert _colour_pixels(path, RED) > 5_000


def test_sky_picture_colours_ccds_by_state(tmp_path):
    tiles = [
        CcdTile(1, 0, "g", 10.0, 5.0, 0.1, 0.2, "done"),
        CcdTile(2, 0, "g", 10.3, 5.0, 0.1, 0.2, "failed"),
        CcdTile(3, 0, "r", 10.0, 5.0, 0.1, 0.2, "to run"),
    ]
    path = Path(save_png(sky_figure(tiles), tmp_path / "sky.png"))
    # boxes are drawn with alpha 0.55 over white
    blend = lambda rgb: 0.55 * rgb + 0.45  # noqa: E731
    assert _colour_pixels(path, blend(GREEN)) > 2_000
    assert _colour_pixels(path, blend(RED)) > 2_000
    import matplotlib.image

    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[1] > pixels.shape[0]  # one panel per band, side by side


def test_marker_jobid_reads_the_backend_id_snakemake_stored(tmp_path):
    from dcflow.status import marker_jobid

    mark_incomplete(tmp_path, "out/a_1.txt")
    assert marker_jobid(tmp_path, str(tmp_path / "out" / "a_1.txt")) is None  # local: no id
    marker = tmp_path / ".snakemake" / "incomplete"
    name = base64.urlsafe_b64encode(b"out/a_2.txt").decode()
    (marker / name).write_text('{"external_jobid": "4711"}')
    assert marker_jobid(tmp_path, str(tmp_path / "out" / "a_2.txt")) == "4711"
    assert marker_jobid(tmp_path, "out/a_2.txt") == "4711"
    assert marker_jobid(tmp_path, "out/none.txt") is None
    absolute = str(tmp_path / "abs" / "a_3.txt")  # an absolute output root: the rule's spelling
    name = base64.urlsafe_b64encode(absolute.encode()).decode()
    (marker / name).write_text('{"external_jobid": "4712"}')
    assert marker_jobid(tmp_path, absolute) == "4712"
