"""The analytic planner against the JobSpec planner and against Snakemake's own dry run.

Campaigns come from the synthetic generator at tiny sizes (a few visits, CCDs and patches, a
real registry and real empty files); states are fresh, half done, done, random subsets of the
outputs, and outputs marked incomplete as a killed job leaves them.
"""

from __future__ import annotations

import base64
import gzip
import os
import random
from pathlib import Path

import pytest

from dcflow.campaign.analytic import plan_index, read_file_list, scan_tree
from dcflow.campaign.index import CampaignIndex
from dcflow.campaign.synthetic import (
    SyntheticSpec,
    output_paths,
    touch_raws,
    write_campaign,
    write_inventory,
)
from dcflow.config_schema import load_config
from dcflow.orchestration.campaign_files import open_campaign
from dcflow.orchestration.plan_status import plan_campaign
from dcflow.orchestration.snakemake_cli import snakemake_dry_run_counts
from dcflow.pipeline.graph import JobGraph
from dcflow.plan import inventory, plan_jobs

SHAPES = {
    "1ccd-1filter-1patch": {"n_visits": 5, "n_ccds": 1, "filters": ("r",), "n_patches": 1},
    "2ccd-gr-fe55": {
        "n_visits": 12,
        "n_ccds": 2,
        "filters": ("g", "r"),
        "n_patches": 2,
        "fe55_sensors": (0,),
    },
    "3ccd-ugriz-3x3": {
        "n_visits": 40,
        "n_ccds": 3,
        "filters": ("u", "g", "r", "i", "z"),
        "n_patches": 3,
        "n_pointings": 6,
    },
    "no-skymap": {"n_visits": 8, "n_ccds": 2, "filters": ("g", "r"), "with_skymap": False},
}


def tiny_spec(**overrides) -> SyntheticSpec:
    """A synthetic campaign of a few visits on a small sky map (tracts ~0.2 deg)."""
    values = {
        "n_bias": 2,
        "n_flat": 1,
        "pointing_spacing_deg": 0.12,
        "dither_deg": 0.02,
        "pixel_scale_arcsec": 1.0,
        "patch_inner_pixels": 200,
        "patch_border_pixels": 10,
        "field_radius_deg": 0.08,
    }
    values.update(overrides)
    return SyntheticSpec(**values)


def make(tmp_path: Path, shape: str) -> Path:
    return write_campaign(tiny_spec(**SHAPES[shape]), tmp_path / shape)


def all_outputs(config_path: Path) -> list[str]:
    return [p for _, paths in output_paths(config_path, "all") for p in paths]


def clear_outputs(config_path: Path) -> None:
    for path in all_outputs(config_path):
        Path(path).unlink(missing_ok=True)


def mark_incomplete(work: Path, path: str) -> None:
    """Snakemake's incomplete marker of one output (a job killed halfway)."""
    marker = work / ".snakemake" / "incomplete" / base64.urlsafe_b64encode(path.encode()).decode()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text('{"external_jobid": null}')


def reference_plan(config_path: Path):
    work = config_path.parent
    _, layout, index = open_campaign(config_path, work)
    jobs = JobGraph(index).job_specs()
    return plan_jobs(jobs, output_root=layout.output_root, workdir=work)


def summary(plan) -> tuple[dict, dict]:
    rows = {(r.stage, r.filter, r.tract): (r.total, r.done, r.to_run) for r in plan.rows}
    return rows, dict(plan.to_run)


def assert_same_as_reference(config_path: Path) -> dict[str, int]:
    work = config_path.parent
    # the reference planner does not model modification times (random touches here)
    analytic = plan_campaign(config_path, profile=None, workdir=work, mtimes=False)
    reference = reference_plan(config_path)
    assert summary(analytic) == summary(reference)
    assert analytic.n_total == reference.n_total
    return analytic.to_run_by_rule()


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_analytic_equals_jobspec_planner_in_every_state(tmp_path, shape):
    config_path = make(tmp_path, shape)
    work = config_path.parent
    fresh = assert_same_as_reference(config_path)
    assert fresh["process_visit"] == SHAPES[shape]["n_visits"]
    write_inventory(config_path, "half", tree=True)
    half = assert_same_as_reference(config_path)
    assert half["process_visit"] == SHAPES[shape]["n_visits"] - SHAPES[shape]["n_visits"] // 2
    write_inventory(config_path, "all", tree=True)
    assert assert_same_as_reference(config_path) == {}
    outputs = all_outputs(config_path)
    rng = random.Random(shape)
    for _ in range(3):  # a few outputs lost from a finished campaign
        write_inventory(config_path, "all", tree=True)
        for path in rng.sample(outputs, min(4, len(outputs))):
            os.unlink(path)
        assert_same_as_reference(config_path)
    for fraction in (0.3, 0.7):  # random subsets present
        clear_outputs(config_path)
        for path in rng.sample(outputs, int(fraction * len(outputs))):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).touch()
        assert_same_as_reference(config_path)
    write_inventory(config_path, "all", tree=True)
    for path in rng.sample(outputs, 3):  # killed jobs: present but marked incomplete
        mark_incomplete(work, path)
    marked = assert_same_as_reference(config_path)
    assert marked and "all" in marked


def test_file_list_equals_tree_walk(tmp_path):
    config_path = make(tmp_path, "3ccd-ugriz-3x3")
    work = config_path.parent
    config = load_config(config_path)
    index = CampaignIndex.from_config(config)
    write_inventory(config_path, "half", tree=True)
    Path(index.layout.output_root, "calexp", "junk.txt").write_text("")  # not a product
    Path(index.layout.output_root, "calexp", "007").mkdir()  # padded visit: not a product
    tree = scan_tree(index, workdir=work)
    listed = sorted(inventory(index.layout.output_root))
    list_path = work / "inventory.txt.gz"
    with gzip.open(list_path, "wt") as handle:
        handle.write("\n".join(listed) + "\n")
    from_list = read_file_list(index, list_path, workdir=work)
    lines = [os.path.relpath(p, work) + "\n" for p in listed]
    relative = read_file_list(index, lines, workdir=work)
    for name, array in tree.arrays.items():
        assert (array == from_list.arrays[name]).all(), name
        assert (array == relative.arrays[name]).all(), name
    assert from_list.n_files == len(listed)
    products = [p for p in listed if "registry" not in p and not p.endswith("junk.txt")]
    assert tree.n_files == len(products)  # names listed in the product directories
    # half done: the first half of the visits' calexps, none of the second half
    half = index.n_visits // 2
    assert tree.arrays["calexp"][:half].all() and not tree.arrays["calexp"][half:].any()
    assert tree.arrays["warp"].sum() == (index.pair_visit < half).sum()
    assert not tree.arrays["deepCoadd"].any()
    by_tree = plan_index(index, workdir=work)
    by_list = plan_index(index, workdir=work, inventory=list_path)
    assert summary(by_tree)[0] == summary(by_list)[0]


def snakemake_counts(config_path: Path) -> dict[str, int]:
    return snakemake_dry_run_counts(config_path)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["2ccd-gr-fe55", "3ccd-ugriz-3x3", "no-skymap"])
def test_analytic_equals_snakemake_dry_run(tmp_path, shape):
    config_path = make(tmp_path, shape)
    work = config_path.parent
    touch_raws(config_path)
    n_visits = SHAPES[shape]["n_visits"]
    fresh = plan_campaign(config_path, profile=None, workdir=work).to_run_by_rule()
    assert fresh == snakemake_counts(config_path)
    assert fresh["process_visit"] == n_visits
    write_inventory(config_path, "half", tree=True)
    half = plan_campaign(config_path, profile=None, workdir=work).to_run_by_rule()
    assert half == snakemake_counts(config_path)
    assert half["process_visit"] == n_visits - n_visits // 2
    write_inventory(config_path, "all", tree=True)
    done = plan_campaign(config_path, profile=None, workdir=work).to_run_by_rule()
    assert done == snakemake_counts(config_path) == {}
    victim = sorted(all_outputs(config_path))[len(all_outputs(config_path)) // 2]
    mark_incomplete(work, victim)  # a killed job: it and everything downstream rerun
    marked = plan_campaign(config_path, profile=None, workdir=work).to_run_by_rule()
    assert marked == snakemake_counts(config_path)
    assert marked["all"] == 1


def test_plan_command_reads_a_file_list(tmp_path, monkeypatch, capsys):
    import json

    from dcflow.cli import main

    config_path = make(tmp_path, "2ccd-gr-fe55")
    work = config_path.parent
    list_path = work / "half.txt"
    n = write_inventory(config_path, "half", list_path=list_path)
    monkeypatch.chdir(work)
    assert (
        main(["plan", "--config", str(config_path), "--inventory", str(list_path), "--json"]) == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["n_files_scanned"] == n
    assert plan["to_run_by_rule"]["process_visit"] == 12 - 6
    assert "make_warp" in plan["to_run_by_rule"] and "bias" not in plan["to_run_by_rule"]
    assert plan["n_total"] == plan["n_done"] + plan["n_to_run"]
