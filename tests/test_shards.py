"""Sharded campaigns: shard graph, hashes and markers, the shard driver, killing the driver."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from noop_campaigns import write_noop_campaign

import dcflow.campaign.index
from dcflow.campaign.driver_lock import DriverBusyError, hold_driver_lock, sharded_driver_running
from dcflow.campaign.index import ARRAY_FIELDS, CampaignIndex, write_shard_index
from dcflow.campaign.manifest import write_manifest
from dcflow.campaign.shards import (
    Shard,
    manifest_of,
    read_marker,
    shard_hashes,
    shard_of_job,
    shards_left,
    write_marker,
)
from dcflow.config_schema import load_config
from dcflow.ledger import Ledger
from dcflow.orchestration.campaign_files import REPO_ROOT, open_campaign
from dcflow.orchestration.cancel import _descendants
from dcflow.orchestration.run import run_campaign
from dcflow.orchestration.sharded import plan_shards, run_sharded
from dcflow.orchestration.snakemake_cli import run_snakemake
from dcflow.pipeline.graph import JobGraph
from dcflow.states import JobState

DCFLOW = str(Path(sys.executable).parent / "dcflow")
SHARDS = {"visits_per_shard": 3, "max_concurrent_shards": 2, "max_queued_jobs": 4}
ENV_FILE = Path(os.environ.get("DCFLOW_RUN_DIR", REPO_ROOT / "run")) / "gridengine/env.sh"


def _closure(shard_id: str, by_id: dict[str, Shard]) -> set[str]:
    seen: set[str] = set()
    todo = [shard_id]
    while todo:
        for up in by_id[todo.pop()].upstream:
            if up not in seen:
                seen.add(up)
                todo.append(up)
    return seen


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Path:
    return write_noop_campaign(tmp_path_factory.mktemp("graph"), shards=SHARDS)


@pytest.mark.parametrize("patches_per_shard", [1, 2, 3])
def test_every_job_is_in_exactly_one_shard_and_dependencies_are_upstream(
    campaign, patches_per_shard
):
    config = load_config(campaign)
    config["shards"]["patches_per_shard"] = patches_per_shard
    shards, _, _, _, _, _ = plan_shards(config, campaign.parent)
    by_id = {s.shard_id: s for s in shards}
    assert [s.shard_id for s in shards][:4] == [
        "calibs",
        "visits-00000",
        "visits-00001",
        "visits-00002",
    ]
    _, _, planned = open_campaign(campaign)
    jobs = [j for j in JobGraph(planned).job_specs() if j.rule != "all"]
    owner = {
        (j.rule, tuple(sorted(j.data_id.items()))): shard_of_job(j.rule, j.data_id, shards)
        for j in jobs
    }
    assert len(owner) == len(jobs)
    assert Counter(owner.values()) == {s.shard_id: s.n_jobs for s in shards}
    assert (
        max(len(s.visits) for s in shards if s.kind in ("visits", "forced"))
        <= SHARDS["visits_per_shard"]
    )
    # a forced shard runs forced photometry and difference imaging of its visits
    assert max(s.n_jobs for s in shards if s.kind == "forced") <= 2 * SHARDS["visits_per_shard"]
    # patch groups: at most patches_per_shard patches, all of one tract, each patch once
    groups = [s for s in shards if s.kind == "patches"]
    assert max(len(s.patches) for s in groups) == patches_per_shard
    assert all(len({t for t, _ in s.patches}) == 1 for s in groups)
    patches = [p for s in groups for p in s.patches]
    assert len(patches) == len(set(patches)) == 8  # 2 tracts x 2 x 2 patches
    assert all(s.shard_id == f"patches-{s.patches[0][0]:05d}-{s.shard_id[-3:]}" for s in groups)
    # every product a job reads comes from its own shard or one upstream of it
    producer = {
        o: owner[(j.rule, tuple(sorted(j.data_id.items())))] for j in jobs for o in j.outputs
    }
    n_edges = 0
    for job in jobs:
        mine = owner[(job.rule, tuple(sorted(job.data_id.items())))]
        for path in job.inputs:
            if path in producer and producer[path] != mine:
                assert producer[path] in _closure(mine, by_id), (job.rule, path, mine)
                n_edges += 1
    assert n_edges > 0
    # shards upstream only where a product flows (no needless dependency)
    flows = {
        (producer[p], owner[(j.rule, tuple(sorted(j.data_id.items())))])
        for j in jobs
        for p in j.inputs
        if p in producer
    }
    for shard in shards:
        for up in shard.upstream:
            assert (up, shard.shard_id) in flows


def _hashes(config):
    shards, hashes, _, layout, _, axes = plan_shards(
        config, Path(config["layout"]["output_root"]).parent
    )
    return shards, hashes, layout, axes


def test_a_shard_reads_the_index_the_driver_kept_and_it_is_the_one_it_would_build(
    campaign, monkeypatch
):
    config = load_config(campaign)
    shards, _, _, layout, _, axes = plan_shards(config, campaign.parent)
    manifests = {}
    own: dict[str, CampaignIndex] = {}
    for shard in shards:
        contents = manifest_of(shard, axes)
        manifests[shard.shard_id] = write_manifest(contents, layout)
        own[shard.shard_id] = CampaignIndex.from_config(
            {**config, "shard": str(manifests[shard.shard_id])}
        )
        write_shard_index(axes, contents, manifests[shard.shard_id])
    calls: list[str] = []

    def counted(name: str):
        original = getattr(dcflow.campaign.index, name)
        return lambda *args, **kwargs: calls.append(name) or original(*args, **kwargs)

    for name in ("_open_readonly", "overlap_pairs"):
        monkeypatch.setattr(dcflow.campaign.index, name, counted(name))
    n_pairs = 0
    for shard in shards:
        kept = CampaignIndex.from_config({**config, "shard": str(manifests[shard.shard_id])})
        assert kept.filters == own[shard.shard_id].filters
        for name in ARRAY_FIELDS:
            mine, theirs = getattr(kept, name), getattr(own[shard.shard_id], name)
            assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), (shard, name)
        n_pairs += kept.n_pairs
    assert n_pairs > 0
    assert calls == []  # the registry and the overlaps were not read
    # after an ingest (the registry changed since) the shard builds its own index
    registry = Path(layout.path("registry"))
    os.utime(registry, ns=(registry.stat().st_atime_ns, registry.stat().st_mtime_ns + 10**9))
    visits = next(s.shard_id for s in shards if s.kind == "visits")
    again = CampaignIndex.from_config({**config, "shard": str(manifests[visits])})
    assert calls == ["_open_readonly", "overlap_pairs"]
    assert np.array_equal(again.pair_patch, own[visits].pair_patch)


def test_a_changed_config_section_reopens_exactly_the_shards_reading_it(campaign):
    config = load_config(campaign)
    shards, hashes, layout, axes = _hashes(config)
    for shard in shards:
        write_marker(layout, shard.shard_id, hashes[shard.shard_id])
    assert shards_left(shards, hashes, layout) == []
    kinds = {s.shard_id: s.kind for s in shards}

    def reopened(section: str, key: str, value) -> set[str]:
        changed = copy.deepcopy(config)
        changed[section][key] = value
        new = shard_hashes(shards, axes, changed)
        left = {s.shard_id for s in shards_left(shards, new, layout)}
        assert left == {s for s in hashes if new[s] != hashes[s]}
        return {kinds[s] for s in left}, left

    coadd_kinds, coadd_left = reopened("coadd", "clip_sigma", 2.5)
    # templates feed difference imaging (forced shards) and its association (alerts shards)
    coadd_shards = ("patches", "forced", "catalogs", "alerts")
    assert coadd_kinds == set(coadd_shards)
    assert coadd_left == {s for s, k in kinds.items() if k in coadd_shards}
    _, isr_left = reopened("isr", "saturation_grow_pix", 3)
    assert isr_left == set(kinds) - {"fe55"}
    # a shard's hash holds its upstream shards': the alerts shards downstream of forced reopen
    assert reopened("forced_photometry", "aperture_radius_arcsec", 2.5)[0] == {
        "forced",
        "catalogs",
        "alerts",
    }
    # Object loads run in the patch shards, so the forced shards downstream reopen too
    assert reopened("catalog_db", "partition_order", 2)[0] == set(coadd_shards)
    assert reopened("fe55_gain", "isolation_cut", 2.0)[1] == {"fe55"}
    assert reopened("validation", "match_radius_arcsec", 0.7)[1] == {"final"}
    # the marker names the hash it was written with
    assert read_marker(layout, "fe55")["hash"] == hashes["fe55"]


def _products(root: Path) -> dict[str, str]:
    out = {}
    for path in (root / "output").rglob("*"):
        rel = path.relative_to(root / "output")
        if (
            path.is_file()
            and rel.parts[0] not in ("logs", "benchmarks", "shards", ".dcflow")
            and not rel.name.startswith(("ledger", "registry"))
        ):
            out[str(rel)] = path.read_text().replace(str(root), "ROOT")
    return out


@pytest.mark.slow
def test_sharded_run_equals_the_unsharded_run(tmp_path):
    # one tract: the shard kinds and their dependencies as with two, at half the jobs
    single = write_noop_campaign(tmp_path / "single", shards=SHARDS, n_tracts=1)
    sharded = write_noop_campaign(tmp_path / "sharded", shards=SHARDS, n_tracts=1)
    assert (
        run_snakemake(
            single, profile="local", snakemake_args=["--quiet", "rules"], workdir=single.parent
        )
        == 0
    )
    lines: list[str] = []
    result = run_sharded(
        sharded,
        profile="local",
        snakemake_args=["--quiet", "rules"],
        workdir=sharded.parent,
        out=lines.append,
        progress_seconds=1.0,
    )
    assert result.exit_code == 0, "\n".join(lines)
    assert _products(single.parent) == _products(sharded.parent)
    assert len(_products(single.parent)) > 100
    # one ledger run per shard, holding exactly the shard's jobs, each succeeded once
    shards, hashes, _, layout, _, _ = plan_shards(load_config(sharded), sharded.parent)
    with Ledger(layout.path("ledger")) as ledger:
        runs = {r.shard: r for r in ledger.runs()}
        assert sorted(runs) == sorted(s.shard_id for s in shards)
        for shard in shards:
            attempts = [
                a for a in ledger.attempts(run_id=runs[shard.shard_id].run_id) if a.rule != "all"
            ]
            assert len(attempts) == shard.n_jobs, shard.shard_id
            assert {a.state for a in attempts} == {JobState.SUCCEEDED}
            assert set(shard.rules) >= {a.rule for a in attempts}
    assert all(read_marker(layout, s)["hash"] == h for s, h in hashes.items())
    again = run_sharded(sharded, profile="local", workdir=sharded.parent, out=lines.append)
    assert again.count("up to date") == len(shards)
    with Ledger(layout.path("ledger")) as ledger:
        assert len(ledger.runs()) == len(shards)


@pytest.mark.slow
def test_a_failed_shard_blocks_its_downstream_only(tmp_path):
    # two patches per group: the same shard kinds and graph, 12 shards run instead of 16
    config = write_noop_campaign(tmp_path / "c", shards={**SHARDS, "patches_per_shard": 2})
    env_before = os.environ.get("DCFLOW_FAULTS")
    os.environ["DCFLOW_FAULTS"] = "process_visit:visit=1007"
    try:
        lines: list[str] = []
        result = run_sharded(
            config,
            profile="local",
            snakemake_args=["--quiet", "rules"],
            workdir=config.parent,
            out=lines.append,
        )
    finally:
        if env_before is None:
            os.environ.pop("DCFLOW_FAULTS")
        else:
            os.environ["DCFLOW_FAULTS"] = env_before
    states = {o.shard_id: o.state for o in result.outcomes}
    assert states["visits-00002"] == "failed"
    # visits-00002 holds every visit of tract 1: all of tract 1's patch groups wait on it
    tract1 = {s for s in states if s.startswith("patches-00001-")}
    assert len(tract1) == 2  # 2 x 2 patches, two per group
    alerts1 = {s for s in states if s.startswith("alerts-00001-")}
    assert len(alerts1) == 2  # tract 1's patch groups' association waits on its visits too
    blocked = {*tract1, *alerts1, "forced-00002", "catalogs-00002", "final"}
    assert {s for s, v in states.items() if v == "blocked"} == blocked
    assert {s for s, v in states.items() if v == "done"} == set(states) - {
        "visits-00002",
        *blocked,
    }
    assert result.exit_code == 1
    text = "\n".join(result.summary_lines())
    assert (
        "failed       visits-00002 exit 1" in text
        and "blocked      final (upstream visits-00002)" in text
    )


def _ledger_state(layout_ledger: Path) -> tuple[dict, list]:
    with Ledger(layout_ledger) as ledger:
        return {r.run_id: r for r in ledger.runs()}, ledger.attempts()


def _kill_and_restart(
    config: Path,
    profile: str,
    env: dict[str, str],
    min_markers: int,
    extra: tuple = (),
    *,
    restart_env: dict[str, str] | None = None,
    restart_extra: tuple | None = None,
) -> dict:
    """Start `dcflow run --sharded`, SIGKILL its process group once ``min_markers`` shards are
    marked and another shard has a job running, restart it, and return what happened.

    The restart gets ``restart_env`` / ``restart_extra`` when given (jobs that need not hold
    their slot any more: the test is about what the killed driver left behind).
    """
    work = config.parent
    shards, hashes, _, layout, _, _ = plan_shards(load_config(config), work)
    ledger_file = Path(layout.path("ledger"))

    def argv(snakemake_args: tuple) -> list[str]:
        return [
            DCFLOW,
            "run",
            "--sharded",
            "--config",
            str(config),
            "--profile",
            profile,
            "--no-progress",
            *(("--", *snakemake_args) if snakemake_args else ()),
        ]

    proc = subprocess.Popen(
        argv(extra),
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        marked = [s.shard_id for s in shards if read_marker(layout, s.shard_id)]
        if len(marked) < min_markers or not ledger_file.exists():
            continue
        runs, attempts = _ledger_state(ledger_file)
        busy = {
            runs[a.run_id].shard
            for a in attempts
            if a.state in (JobState.RUNNING, JobState.SUBMITTED)
        }
        if busy - set(marked):
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = time.time()
            break
    proc.wait(timeout=30)
    assert killed_at is not None, "the campaign ended before the driver could be killed"
    before_markers = {s.shard_id: read_marker(layout, s.shard_id) for s in shards}
    before_runs, before_attempts = _ledger_state(ledger_file)
    restart = subprocess.run(
        argv(extra if restart_extra is None else restart_extra),
        cwd=work,
        env=env if restart_env is None else restart_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert restart.returncode == 0, restart.stdout[-3000:] + restart.stderr[-3000:]
    after_runs, after_attempts = _ledger_state(ledger_file)
    return {
        "shards": shards,
        "hashes": hashes,
        "layout": layout,
        "before_markers": before_markers,
        "before_runs": before_runs,
        "before_attempts": before_attempts,
        "after_runs": after_runs,
        "after_attempts": after_attempts,
        "restart": restart,
    }


def _assert_no_finished_shard_redone(found: dict) -> None:
    done_before = {s for s, m in found["before_markers"].items() if m}
    assert done_before and len(done_before) < len(found["shards"])
    new_runs = {
        r.shard for rid, r in found["after_runs"].items() if rid not in found["before_runs"]
    }
    assert new_runs, "the restart ran no shard"
    assert not (new_runs & done_before), f"finished shards redone: {new_runs & done_before}"
    for shard in found["shards"]:
        marker = read_marker(found["layout"], shard.shard_id)
        assert marker["hash"] == found["hashes"][shard.shard_id]
        if shard.shard_id in done_before:
            assert marker == found["before_markers"][shard.shard_id]  # not rewritten
    # every job succeeded exactly once over both drivers
    ok = Counter(
        (a.rule, a.data_id)
        for a in found["after_attempts"]
        if a.state is JobState.SUCCEEDED and a.rule != "all"
    )
    assert set(ok.values()) == {1}
    # a job missing from the successes ended while no driver watched (Grid Engine): it was
    # started before the kill and not run again
    started_before = {(a.rule, a.data_id) for a in found["before_attempts"]}
    all_jobs = {(a.rule, a.data_id) for a in found["after_attempts"] if a.rule != "all"}
    assert len(all_jobs) == sum(s.n_jobs for s in found["shards"])
    assert all_jobs - set(ok) <= started_before
    succeeded_before = {
        (a.rule, a.data_id) for a in found["before_attempts"] if a.state is JobState.SUCCEEDED
    }
    redone = [
        (a.rule, a.data_id)
        for a in found["after_attempts"]
        if a.run_id not in found["before_runs"]
        and a.rule != "all"
        and (a.rule, a.data_id) in succeeded_before
    ]
    assert not redone, f"jobs finished before the kill ran again: {redone}"


@pytest.mark.slow
def test_killed_driver_restarts_without_redoing_finished_shards_local(tmp_path):
    # one tract: every shard kind, 19 shards instead of 28
    config = write_noop_campaign(tmp_path / "c", shards=SHARDS, n_tracts=1)
    # jobs last 1 s while the driver is killed; the restart's need not
    env = {**os.environ, "DCFLOW_NOOP_SECONDS": "1"}
    restart_env = {**os.environ, "DCFLOW_NOOP_SECONDS": "0"}
    found = _kill_and_restart(config, "local", env, min_markers=2, restart_env=restart_env)
    _assert_no_finished_shard_redone(found)
    # jobs killed with the driver are rerun once (local processes die with it): lost, then ok
    killed = [
        a for a in found["before_attempts"] if a.state in (JobState.RUNNING, JobState.SUBMITTED)
    ]
    after = {a.attempt_id: a for a in found["after_attempts"]}
    assert killed and all(after[a.attempt_id].state is not JobState.SUCCEEDED for a in killed)


def _cluster_env() -> dict[str, str] | None:
    if not ENV_FILE.exists() or subprocess.run(["which", "qstat"], capture_output=True).returncode:
        return None
    env = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value
    probe = subprocess.run(
        ["qstat", "-g", "c"], capture_output=True, env={**os.environ, **env}, timeout=30
    )
    return env if probe.returncode == 0 else None


@pytest.mark.gridengine
@pytest.mark.root
@pytest.mark.slow
def test_killed_driver_restarts_without_resubmitting_on_gridengine(tmp_path):
    cluster = _cluster_env()
    if cluster is None:
        pytest.skip("no Grid Engine: run scripts/gridengine-up as root (make test does)")
    from snakemake_executor_plugin_gridengine.reattach import SubmissionLedger
    from snakemake_executor_plugin_gridengine.status import accounting_records

    shards = {**SHARDS, "max_concurrent_shards": 3, "max_queued_jobs": 16}
    # one tract: every shard kind, 19 shards instead of 28
    config = write_noop_campaign(tmp_path / "c", shards=shards, n_tracts=1)
    env = {**os.environ, **cluster}
    # noop-direct: the job script writes the placeholders (the scale-run mode: no Snakemake
    # process per job). The killed driver's jobs hold their slot 30 s so that they are still
    # queued or running when the restarted one starts, even on a loaded host: the restart
    # must adopt them (jobs that ended meanwhile are settled from accounting before each
    # shard starts; one ending while its shard's Snakemake starts is submitted again, seen at
    # a load of 18 with a 15 s hold). The restart's own jobs need not hold theirs.
    extra = ("--gridengine-noop-direct", "True", "--gridengine-noop-seconds", "30")
    restart_extra = ("--gridengine-noop-direct", "True", "--gridengine-noop-seconds", "0")
    found = _kill_and_restart(
        config, "sge", env, min_markers=1, extra=extra, restart_extra=restart_extra
    )
    _assert_no_finished_shard_redone(found)
    submissions, finished = SubmissionLedger(
        config.parent / ".snakemake/gridengine/submissions.jsonl"
    ).read()
    per_outputs = Counter(s.outputs for s in submissions)
    twice = {o: n for o, n in per_outputs.items() if n > 1}
    dup = [(s.rule, s.job_id, finished.get(s.job_id)) for s in submissions if s.outputs in twice]
    head = found["restart"].stdout[:400]
    assert per_outputs and not twice, f"submitted twice: {dup} {head}"
    assert set(finished.values()) == {"succeeded"}
    assert "Adopting Grid Engine job" in found["restart"].stdout + found["restart"].stderr or all(
        s.job_id in finished for s in submissions
    )
    records = accounting_records({s.name_pattern for s in submissions})
    names = Counter(r.job_name for r in records.values())
    assert sum(names.values()) <= len(submissions)
    assert all(r.exit_status == 0 for r in records.values())


def test_one_sharded_driver_per_working_directory(tmp_path):
    config = write_noop_campaign(tmp_path / "c", shards=SHARDS)
    work = config.parent
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from dcflow.campaign.driver_lock import hold_driver_lock\n"
            "with hold_driver_lock(sys.argv[1]):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(120)\n",
            str(work),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert sharded_driver_running(work) == f"pid {holder.pid} on {socket.gethostname()}"
        with pytest.raises(DriverBusyError, match=rf"dcflow-sharded.lock: .*pid {holder.pid}"):
            run_sharded(config, profile="local", workdir=work, out=lambda _: None)
        with pytest.raises(DriverBusyError, match="sharded driver"):
            run_campaign(config, profile="local", snakemake_args=[], workdir=work)
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock; nothing ran meanwhile
    assert sharded_driver_running(work) is None
    layout = plan_shards(load_config(config), work)[3]
    assert not Path(layout.path("ledger")).exists()
    with hold_driver_lock(work):
        assert sharded_driver_running(work) is not None


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_sigterm_to_the_sharded_driver_stops_every_shard_and_its_jobs(tmp_path):
    """`kill -TERM` of `dcflow run --sharded` (the driver alone, not its group) stops each
    running shard's Snakemake and the jobs under it; the driver exits 130 and the ledger holds
    no live run of it."""
    config = write_noop_campaign(tmp_path / "c", shards={**SHARDS, "max_queued_jobs": 6})
    work = config.parent
    # the calibs shard (every other one waits on it) is done: its outputs and marker written
    # here, not run; 6 cores in the profile let two visit shards of 3 jobs run side by side
    _, hashes, _, layout, _, _ = plan_shards(load_config(config), work)
    ledger_file = Path(layout.path("ledger"))
    graph = JobGraph(open_campaign(config)[2])
    for rule in ("bias", "flat"):
        for job in range(graph.jobs(rule).n_jobs):
            for output in graph.stage(rule).outputs:
                for path in graph.output_paths(rule, output.dataset, job):
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    Path(path).write_text("placeholder\n")
    write_marker(layout, "calibs", hashes["calibs"])
    profile = tmp_path / "local6"
    profile.mkdir()
    local = yaml.safe_load((REPO_ROOT / "profiles/local/config.yaml").read_text())
    (profile / "config.yaml").write_text(yaml.safe_dump({**local, "cores": 6}))
    argv = [DCFLOW, "run", "--sharded", "--config", str(config), "--profile", str(profile)]
    env = {**os.environ, "DCFLOW_NOOP_SECONDS": "120"}  # jobs outlive the test unless stopped
    env.pop("DCFLOW_FAULTS", None)
    driver = subprocess.Popen(
        [*argv, "--no-progress"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        busy: set[str] = set()
        while time.monotonic() < deadline and len(busy) < 2:
            time.sleep(0.5)
            if not ledger_file.exists():
                continue
            runs, attempts = _ledger_state(ledger_file)
            busy = {
                runs[a.run_id].shard
                for a in attempts
                if a.state is JobState.RUNNING and runs[a.run_id].finished is None
            }
        assert len(busy) == 2, "two shards never ran jobs at once"
        below = _descendants(driver.pid)  # the shards' Snakemakes and their jobs
        snakemakes = {r.pid for r in _ledger_state(ledger_file)[0].values() if r.finished is None}
        assert snakemakes <= set(below) and len(snakemakes) == 2
        sent = time.monotonic()
        driver.send_signal(signal.SIGTERM)
        output, _ = driver.communicate(timeout=90)
        took = time.monotonic() - sent
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, output[-2000:]
    assert "SIGTERM: stopping the running shards" in output
    assert [p for p in below if _alive(p)] == []
    assert took < 45  # SIGINT sufficed: Snakemake cancelled its local jobs (grace 30 s)
    runs, attempts = _ledger_state(ledger_file)
    assert len(runs) == 2 and all(r.finished is not None for r in runs.values())
    assert not [a for a in attempts if a.state in (JobState.RUNNING, JobState.SUBMITTED)]


def test_a_shard_whose_snakemake_outlived_its_driver_is_an_orphan(tmp_path):
    """A live run of a shard (its Snakemake survived a SIGKILL of the driver's main process)
    keeps the restarted driver from starting that shard; a dead or finished run does not."""
    from dcflow.orchestration.sharded import orphan_shards

    ledger_file = tmp_path / "ledger.sqlite3"
    assert orphan_shards(ledger_file, {"visits-00000"}) == set()  # no ledger yet
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        with Ledger(ledger_file) as ledger:
            ledger.start_run(shard="visits-00000", pid=alive.pid)
            ledger.start_run(shard="visits-00001", pid=dead.pid)
            done = ledger.start_run(shard="visits-00002", pid=alive.pid)
            ledger.finish_run(done, 0)
        every = {"visits-00000", "visits-00001", "visits-00002"}
        assert orphan_shards(ledger_file, every) == {"visits-00000"}
        assert orphan_shards(ledger_file, {"visits-00001"}, every) == set()
    finally:
        alive.kill()
        alive.wait()
    assert orphan_shards(ledger_file, every) == set()


@pytest.mark.parametrize("label", ["rerun-failed", "all"])
def test_an_orphaned_whole_campaign_snakemake_holds_every_shard(tmp_path, label):
    """The Snakemake of a ``dcflow rerun --failed`` or plain ``dcflow run`` whose driver died
    may run any job: a sharded driver started meanwhile starts no shard until it has ended
    (the local chaos campaign's duplicated successes: its rerun's Snakemake outlived a
    SIGKILL of the rerun's main process, and the next ``dcflow run --sharded`` ran the same
    fe55 jobs beside it); a live shard of the driver's own does not hold the others."""
    from dcflow.orchestration.sharded import orphan_shards

    ledger_file = tmp_path / "ledger.sqlite3"
    every = {"calibs", "fe55", "visits-00000"}
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Ledger(ledger_file) as ledger:
            orphan = ledger.start_run(shard=label, pid=alive.pid)
        assert orphan_shards(ledger_file, every) == every
        assert orphan_shards(ledger_file, {"fe55"}, every) == {"fe55"}
        with Ledger(ledger_file) as ledger:
            ledger.finish_run(orphan, 0)
            ledger.start_run(shard="calibs", pid=alive.pid)  # the driver's own shard
        assert orphan_shards(ledger_file, {"fe55", "visits-00000"}, every) == set()
    finally:
        alive.kill()
        alive.wait()
    assert orphan_shards(ledger_file, every) == set()
