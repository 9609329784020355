"""One job graph: the pipeline spec against Snakemake's parsed workflow, the rule that keeps it
one (no module outside `dcflow.pipeline` names a rule), no import cycle, site command payloads
with hostile paths, and plans that tell the truth (a second campaign's own config; an input
newer than its outputs)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from test_plan_analytic import SHAPES, make, snakemake_counts

from dcflow.campaign.analytic import read_file_list, scan_tree
from dcflow.campaign.index import CampaignIndex
from dcflow.campaign.synthetic import output_paths, touch_raws, write_inventory
from dcflow.config_schema import load_config
from dcflow.layout import DEFAULT_TEMPLATES
from dcflow.orchestration.snakemake_cli import run_snakemake, snakemake_argv
from dcflow.pipeline.graph import JobGraph
from dcflow.pipeline.payload import PayloadError, fill_command
from dcflow.pipeline.spec import STAGES

REPO = Path(__file__).resolve().parents[1]
DCFLOW = str(Path(sys.executable).parent / "dcflow")


def _norm(work: Path, path: str) -> str:
    return os.path.normpath(os.path.join(work, path))


def snakemake_jobs(config_path: Path) -> dict[tuple[str, frozenset], frozenset]:
    """(rule, outputs) -> inputs of every job of Snakemake's own DAG (``-n --forceall``)."""
    work = config_path.parent
    argv = snakemake_argv(
        config_path,
        profile=None,
        snakemake_args=["-n", "--forceall", "--cores", "1"],
        workdir=work,
    )
    proc = subprocess.run(argv, cwd=work, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs: dict[tuple[str, frozenset], frozenset] = {}
    rule, fields = None, {}

    def close() -> None:
        if rule is not None and rule != "all":
            outs = frozenset(_norm(work, p) for p in fields.get("output", "").split(", ") if p)
            ins = frozenset(_norm(work, p) for p in fields.get("input", "").split(", ") if p)
            jobs[(rule, outs)] = ins

    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            close()
            rule, fields = line.split()[1].rstrip(":"), {}
        elif rule is not None and line.startswith("    ") and ": " in line:
            key, _, value = line.strip().partition(": ")
            fields[key] = value
    close()
    return jobs


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["2ccd-gr-fe55", "no-skymap"])
def test_spec_equals_snakemakes_parsed_workflow(tmp_path, shape):
    config_path = make(tmp_path, shape)
    touch_raws(config_path)
    work = config_path.parent
    graph = JobGraph(CampaignIndex.from_config(load_config(config_path)))
    mine = {
        (job.rule, frozenset(_norm(work, p) for p in job.outputs)): frozenset(
            _norm(work, p) for p in job.inputs
        )
        for job in graph.job_specs()
        if job.rule != "all"
    }
    theirs = snakemake_jobs(config_path)
    assert set(mine) == set(theirs)  # same rules, same jobs, same outputs
    assert mine == theirs  # and the same inputs, job by job
    rules = Counter(rule for rule, _ in mine)
    assert rules["process_visit"] == SHAPES[shape]["n_visits"]
    assert set(rules) == {s.rule for s in graph.stages}


def _rule_literals(path: Path, rules: set[str]) -> list[tuple[int, str]]:
    """String constants naming a rule, outside ``__all__`` (functions may share a stage's name)."""
    tree = ast.parse(path.read_text())
    exported: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            exported |= {id(c) for c in ast.walk(node.value)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in rules
        and id(node) not in exported
    ]


def test_no_module_outside_the_pipeline_names_a_rule():
    from dcflow.config_schema import SECTIONS

    # names that are also dataset types or config sections are not rule references
    rules = {s.rule for s in STAGES} - set(DEFAULT_TEMPLATES) - set(SECTIONS)
    assert {"process_visit", "make_warp", "measure_patch"} <= rules
    found = []
    for root in (REPO / "src", REPO / "benchmarks"):
        for path in sorted(root.rglob("*.py")):
            if "pipeline" in path.relative_to(REPO).parts:
                continue
            found += [(str(path.relative_to(REPO)), *hit) for hit in _rule_literals(path, rules)]
    assert found == []


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` a file imports, at module level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == package:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == package}
    return out


def test_no_import_cycle_in_dcflow():
    src = REPO / "src"
    modules = {}
    for path in (src / "dcflow").rglob("*.py"):
        name = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = _imports(path, "dcflow")
    graph = {m: {i for i in deps if i in modules and i != m} for m, deps in modules.items()}
    # packages import their own modules' names; importing a package means its __init__
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module)
    assert cycles == []


HOSTILE = "a b'c;d\"e$(f)`g`"


def test_fill_command_quotes_every_value():
    command = fill_command(
        "run --visit {visit} --in {input.raws} --out {output.calexp} -j {threads} -m {mem_mb}",
        wildcards={"visit": "1001"},
        inputs={"raws": [f"/data/{HOSTILE}/raw 1.fits", "/data/x;rm -rf.fits"]},
        outputs={"calexp": f"/out/{HOSTILE}.fits"},
        threads=2,
        mem_mb=4000,
    )
    # the shell sees exactly the values, each one word
    argv = subprocess.run(
        ["/bin/sh", "-c", f"printf '%s\\n' {command.removeprefix('run ')}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert argv == [
        "--visit",
        "1001",
        "--in",
        f"/data/{HOSTILE}/raw 1.fits",
        "/data/x;rm -rf.fits",
        "--out",
        f"/out/{HOSTILE}.fits",
        "-j",
        "2",
        "-m",
        "4000",
    ]
    with pytest.raises(PayloadError, match=r"\{input.flats\}: no input 'flats' \(raws\)"):
        fill_command("x {input.flats}", wildcards={}, inputs={"raws": []}, outputs={})
    with pytest.raises(PayloadError, match=r"\{tract\} is unknown"):
        fill_command("x {tract}", wildcards={"visit": 1}, inputs={}, outputs={})
    with pytest.raises(PayloadError, match="format specs are not allowed"):
        fill_command("x {visit!r}", wildcards={"visit": 1}, inputs={}, outputs={})


def hostile_campaign(tmp_path: Path, commands: dict[str, str]) -> Path:
    """A tiny synthetic campaign whose output root holds spaces, quotes and ``;``."""
    config_path = make(tmp_path, "1ccd-1filter-1patch")
    config = yaml.safe_load(config_path.read_text())
    output_root = Path(config["layout"]["output_root"])
    hostile_root = output_root.parent / f"out {HOSTILE}"
    shutil.move(output_root, hostile_root)
    config["layout"]["output_root"] = str(hostile_root)
    config["payload"] = {"commands": commands}
    config_path.write_text(yaml.safe_dump(config))
    touch_raws(config_path)
    return config_path


@pytest.mark.slow
def test_command_payload_runs_site_commands_with_hostile_paths(tmp_path):
    # a site's own "stage": writes its outputs with the data id in them (printf, quoted args)
    site = 'for f in {output.calexps} {output.srcs}; do printf \'%s %s\' {visit} "$f" > "$f"; done'
    config_path = hostile_campaign(tmp_path, {"process_visit": site})
    code = run_snakemake(
        config_path,
        profile="local",
        snakemake_args=["--cores", "2", "--quiet", "rules"],
        workdir=config_path.parent,
    )
    assert code == 0
    graph = JobGraph(CampaignIndex.from_config(load_config(config_path)))
    for j in range(graph.jobs("process_visit").n_jobs):
        visit = graph.data_id("process_visit", j)["visit"]
        for path in graph.output_paths("process_visit", "calexp", j):
            assert HOSTILE in path
            assert Path(path).read_text() == f"{visit} {path}"  # written by the site command
    # the other stages ran their noop payload on top of the site command's outputs
    assert Path(graph.output_paths("measure_patch", "object", 0)[0]).exists()


@pytest.mark.slow
def test_command_that_writes_nothing_fails_naming_the_file(tmp_path):
    config_path = hostile_campaign(tmp_path, {"make_warp": "true {output.warp}"})
    code = run_snakemake(
        config_path,
        profile="local",
        snakemake_args=["--cores", "2", "--quiet", "rules"],
        workdir=config_path.parent,
    )
    assert code != 0
    graph = JobGraph(CampaignIndex.from_config(load_config(config_path)))
    warp = graph.output_paths("make_warp", "warp", 0)[0]
    assert not Path(warp).exists()
    log = Path(graph.index.layout.path("log", rule="make_warp", tile="T")).parent
    texts = [p.read_text() for p in log.glob("*.log")]
    assert any("exited 0 without writing" in t and HOSTILE in t for t in texts), texts[:1]


def _plan_counts(config_path: Path) -> dict[str, int]:
    proc = subprocess.run(
        [DCFLOW, "plan", "--config", str(config_path), "--json", "--no-pictures"],
        cwd=config_path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)["rows"]
    counts: dict[str, int] = {}
    for row in rows:
        if row["to_run"]:
            counts[row["stage"]] = counts.get(row["stage"], 0) + row["to_run"]
    return counts


@pytest.mark.slow
def test_plan_of_a_second_campaign_reads_only_its_own_config(tmp_path):
    # a copy of a campaign without its skymap section, in another directory: never inherits
    # the repository's config.yaml (which has one)
    config_path = make(tmp_path, "2ccd-gr-fe55")
    config = yaml.safe_load(config_path.read_text())
    del config["skymap"]
    second = config_path.parent / "second.yaml"
    second.write_text(yaml.safe_dump(config))
    touch_raws(second)
    planned = _plan_counts(second)
    assert planned == snakemake_counts(second)
    assert not {"make_warp", "assemble_coadd", "forced_photometry"} & set(planned)
    assert planned["process_visit"] == SHAPES["2ccd-gr-fe55"]["n_visits"]


@pytest.mark.slow
def test_plan_sees_an_input_newer_than_its_outputs(tmp_path):
    config_path = make(tmp_path, "2ccd-gr-fe55")
    touch_raws(config_path)
    write_inventory(config_path, "all", tree=True)
    assert _plan_counts(config_path) == snakemake_counts(config_path) == {}
    graph = JobGraph(CampaignIndex.from_config(load_config(config_path)))
    raw = graph.input_paths("process_visit", 2)["raws"][0]
    os.utime(raw, (time.time() + 10, time.time() + 10))  # the raw was rewritten
    planned = _plan_counts(config_path)
    assert planned == snakemake_counts(config_path)
    assert planned["process_visit"] == 1 and planned["all"] == 1
    status = subprocess.run(
        [DCFLOW, "status", "--config", str(config_path)],
        cwd=config_path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "campaign complete" not in status.stdout


def test_file_list_with_mtimes_equals_a_tree_walk_with_stats(tmp_path):
    config_path = make(tmp_path, "2ccd-gr-fe55")
    work = config_path.parent
    write_inventory(config_path, "all", tree=True)
    index = CampaignIndex.from_config(load_config(config_path))
    paths = [p for _, batch in output_paths(config_path, "all") for p in batch]
    lines = [f"{p}\t{os.stat(p).st_mtime!r}" for p in paths]
    tree = scan_tree(index, workdir=work, mtimes=True)
    listed = read_file_list(index, lines, workdir=work)
    assert tree.mtimes is not None and listed.mtimes is not None
    for name, array in tree.arrays.items():
        assert array.all(), name
        assert (listed.arrays[name] == array).all(), name
        assert (listed.mtimes[name] == tree.mtimes[name]).all(), name
