"""Failure classes: the signature catalog on recorded backend output, the ledger column and its
migration, profile overrides, rerun triage, and real local faults (an allocation past the job's
RLIMIT_AS, a corrupted FITS file) through Snakemake and the ledger's logger plugin."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dcflow.errors import ConfigInvalidError
from dcflow.failures import (
    SIGNATURES,
    FailureAction,
    FailureClass,
    FailurePolicy,
    classify,
    counts_by_class,
)
from dcflow.joblog import FAULTS_ENV
from dcflow.ledger import Ledger, MemoryPolicy
from dcflow.orchestration.profiles import failure_policy, resource_override_args
from dcflow.orchestration.rerun import triage
from dcflow.states import JobState
from snakemake_executor_plugin_dirac.status import describe_failure as dirac_failure
from snakemake_executor_plugin_dirac.status import parse_states
from snakemake_executor_plugin_gridengine.status import (
    AccountingRecord,
    describe_failure,
    outcome_from_accounting,
    parse_qacct,
)

HERE = Path(__file__).resolve().parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


# --- the catalog on recorded backend output -----------------------------------------------------


def _limits(category: str) -> tuple[int | None, int | None]:
    """h_vmem (MB) and h_rt (s) a recorded job asked for, from its qacct category."""
    h_vmem = h_rt = None
    for item in category.replace(",", " ").split():
        key, _, value = item.partition("=")
        if key == "h_vmem":
            h_vmem = int(value.rstrip("M"))
        elif key == "h_rt":
            h_rt = int(value)
    return h_vmem, h_rt


def _gridengine_class(record: AccountingRecord, log_tail: str = "") -> FailureClass:
    """Classify as the ledger does: from the message the Grid Engine plugin reports."""
    h_vmem, h_rt = _limits(record.category)
    outcome = outcome_from_accounting(record)
    msg = describe_failure(outcome, log="job.log", h_vmem_mb=h_vmem, h_rt_s=h_rt, log_tail=log_tail)
    return classify(exit_code=record.exit_status, reason=msg, backend="gridengine")


def test_recorded_qacct_jobs_get_their_class():
    recorded = parse_qacct((HERE / "gridengine/qacct_mixed.txt").read_text())
    records = {r.job_name: r for r in recorded.values()}
    assert _gridengine_class(records["rec.hrt"]) is FailureClass.WALLTIME  # failed 37 at h_rt=2
    assert _gridengine_class(records["rec.eqw"]) is FailureClass.NODE_LOST  # failed 28: host
    assert _gridengine_class(records["rec.exit3"]) is FailureClass.UNKNOWN  # plain exit 3
    # the h_vmem job exited 1 after its allocation failed under the rlimit: its log says so
    hvmem = records["rec.hvmem"]
    assert _gridengine_class(hvmem) is FailureClass.UNKNOWN
    assert _gridengine_class(hvmem, "MemoryError: unable to allocate") is FailureClass.MEMORY
    # a job Grid Engine killed with its peak vmem at the limit: memory, not time
    killed = AccountingRecord("20", "x", 37, "qmaster enforced h_rt, h_cpu, or h_vmem limit",
                              137, 995.0, 12.0, "-l h_vmem=1000M,h_rt=3600")  # fmt: skip
    assert _gridengine_class(killed) is FailureClass.MEMORY


def test_recorded_dirac_states_get_their_class():
    answer = json.loads((HERE / "dirac/getJobsStates.json").read_text())["after_kill"]
    outcomes = parse_states(answer)
    found = {
        jid: classify(reason=dirac_failure(o, "", None), backend="dirac")
        for jid, o in outcomes.items()
        if o.state in (JobState.FAILED, JobState.CANCELLED)
    }
    # 9 and 11 were killed (the payload never exited); 5 exited with status 3
    assert found == {
        "9": FailureClass.NODE_LOST,
        "11": FailureClass.NODE_LOST,
        "5": FailureClass.UNKNOWN,
    }
    stalled = parse_states(
        {"7": {"Status": "Stalled", "MinorStatus": "Job stalled: pilot not running"}}
    )
    assert classify(reason=dirac_failure(stalled["7"], "", None)) is FailureClass.NODE_LOST
    limit = parse_states({"8": {"Status": "Failed", "MinorStatus": "Job exceeded CPU limit"}})
    assert classify(reason=dirac_failure(limit["8"], "", None)) is FailureClass.WALLTIME


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        ({"error_class": "InputDataError", "reason": "x.fits: unreadable"}, FailureClass.BAD_INPUT),
        ({"error_class": "CalibrationError", "reason": "no stars"}, FailureClass.BAD_INPUT),
        ({"error_class": "InjectedFaultError", "reason": "fault knob"}, FailureClass.UNKNOWN),
        ({"error_class": "MemoryError", "reason": ""}, FailureClass.MEMORY),
        ({"exit_code": 137, "backend": "local"}, FailureClass.MEMORY),  # the OOM killer
        ({"exit_code": -9, "backend": "local"}, FailureClass.MEMORY),
        ({"exit_code": 137, "backend": "gridengine"}, FailureClass.UNKNOWN),  # qdel, or anyone
        ({"exit_code": 152}, FailureClass.WALLTIME),  # SIGXCPU
        ({"exit_code": 138}, FailureClass.WALLTIME),  # SIGUSR1
        ({"reason": "Grid Engine job 9 failed: killed by signal SIGUSR1; qacct failed 100 :"
                    " assumedly after job"}, FailureClass.WALLTIME),  # s_rt before the script
        ({"error_class": "OSError", "reason": "[Errno 28] No space left on device"},
         FailureClass.TRANSIENT_IO),
        ({"error_class": "OSError", "reason": "[Errno 116] Stale file handle"},
         FailureClass.TRANSIENT_IO),
        ({"error_class": "OSError", "reason": "[Errno 5] Input/output error"},
         FailureClass.TRANSIENT_IO),
        ({"error_class": "OSError", "reason": "[Errno 2] No such file"}, FailureClass.UNKNOWN),
        ({"state": JobState.LOST}, FailureClass.NODE_LOST),
        ({"exit_code": 1, "reason": "ValueError: bad"}, FailureClass.UNKNOWN),
    ],
)  # fmt: skip
def test_signatures_on_exit_states(evidence, expected):
    assert classify(**evidence) is expected


def test_every_class_has_a_signature_an_action_and_a_docstring():
    assert {s.failure_class for s in SIGNATURES} == set(FailureClass) - {FailureClass.UNKNOWN}
    policy = FailurePolicy()
    assert set(policy.as_dict()) == {c.value for c in FailureClass}
    assert policy.action(FailureClass.MEMORY) is FailureAction.RETRY_MORE_MEMORY
    assert policy.action(FailureClass.WALLTIME) is FailureAction.RETRY_MORE_TIME
    assert policy.action(FailureClass.NODE_LOST) is FailureAction.RETRY_ELSEWHERE
    assert policy.action(FailureClass.BAD_INPUT) is FailureAction.FAIL_AT_ONCE
    assert policy.action(FailureClass.TRANSIENT_IO) is FailureAction.HOLD_FOR_REVIEW


# --- profiles and rerun triage ------------------------------------------------------------------


def test_profile_overrides_actions_and_bad_keys_name_the_file(tmp_path):
    profile = tmp_path / "site"
    profile.mkdir()
    extra = profile / "dcflow.yaml"
    extra.write_text("failure_actions: {transient_io: retry, runtime_factor: 1.5}\n")
    policy = failure_policy(str(profile))
    assert policy.action("transient_io") is FailureAction.RETRY
    assert policy.action("bad_input") is FailureAction.FAIL_AT_ONCE
    assert policy.runtime_factor == 1.5
    assert failure_policy(None) == FailurePolicy()
    extra.write_text("failure_actions: {disk_full: retry}\n")
    with pytest.raises(ConfigInvalidError, match=r"dcflow.yaml: failure_actions: .*disk_full"):
        failure_policy(str(profile))
    extra.write_text("failure_actions: {memory: try_again}\n")
    with pytest.raises(ConfigInvalidError, match=r"memory must be one of .*try_again"):
        failure_policy(str(profile))


def test_triage_skips_bad_input_and_held_tiles_unless_included():
    tiles = [
        ("bias", "ccd=1", "memory"),
        ("bias", "ccd=2", "bad_input"),
        ("flat", "ccd=1", "transient_io"),
        ("flat", "ccd=2", "node_lost"),
        ("flat", "ccd=3", "unknown"),
    ]
    keys, outcomes = triage(tiles, FailurePolicy())
    assert keys == {("bias", "ccd=1"), ("flat", "ccd=2"), ("flat", "ccd=3")}
    lines = {o.failure_class: o.describe() for o in outcomes}
    assert list(lines) == ["memory", "node_lost", "bad_input", "transient_io", "unknown"]
    assert lines["memory"] == "memory: 1 tile(s) rerun with more memory"
    assert lines["bad_input"] == (
        "bad_input: 1 tile(s) not rerun: fail at once (--include-class bad_input reruns them)"
    )
    keys, outcomes = triage(tiles, FailurePolicy(), ["bad_input"])
    assert ("bias", "ccd=2") in keys and ("flat", "ccd=1") not in keys
    assert [o.rerun for o in outcomes if o.failure_class == "bad_input"] == [True]


# --- the ledger column, its migration, run-time escalation --------------------------------------


def test_ledger_stores_the_class_and_counts_failed_tiles_per_stage(tmp_path):
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        run = ledger.start_run(backend="local")
        for jobid, (rule, visit, kwargs) in enumerate(
            [
                ("isr", 1, {"error_class": "MemoryError", "reason": "MemoryError"}),
                ("isr", 2, {"error_class": "InputDataError", "reason": "a.fits: truncated"}),
                ("isr", 3, {"exit_code": 1, "reason": "whatever"}),
                ("warp", 1, {"exit_code": 152, "reason": "killed"}),
            ]
        ):
            ledger.job_info(run, jobid, rule=rule, wildcards={"visit": visit}, mem_mb=1000,
                            threads=1, log_path=None, benchmark_path=None, outputs=[])  # fmt: skip
            ledger.job_finished(run, jobid, state=JobState.FAILED, **kwargs)
        ledger.job_info(run, 9, rule="warp", wildcards={"visit": 2}, mem_mb=1000, threads=1,
                        log_path=None, benchmark_path=None, outputs=[])  # fmt: skip
        ledger.finish_run(run, 1)  # warp visit=2 was still running: lost
        attempts = {a.data_id: a for a in ledger.attempts(rule="isr")}
        assert attempts["visit=1"].failure_class == "memory" and attempts["visit=1"].memory_failure
        assert attempts["visit=2"].failure_class == "bad_input"
        assert not attempts["visit=2"].memory_failure
        assert attempts["visit=3"].failure_class == "unknown"
        assert ledger.failure_counts() == {
            "isr": {"memory": 1, "bad_input": 1, "unknown": 1},
            "warp": {"walltime": 1},
        }
        assert ledger.failure_counts(include_lost=True)["warp"] == {"walltime": 1, "node_lost": 1}
        assert ledger.memory_requests(MemoryPolicy()) == {("isr", "visit=1"): 2000}
        # run time doubles after each time-limit kill, from the rule default, up to the cap
        policy = FailurePolicy(runtime_cap_min=100)
        assert ledger.runtime_requests(policy, {"warp": 30}) == {("warp", "visit=1"): 60}
        run2 = ledger.start_run(backend="local")
        ledger.job_info(run2, 0, rule="warp", wildcards={"visit": 1}, mem_mb=1000, threads=1,
                        log_path=None, benchmark_path=None, outputs=[])  # fmt: skip
        ledger.job_finished(run2, 0, state=JobState.FAILED, exit_code=-24)
        assert ledger.runtime_requests(policy, {"warp": 30}) == {("warp", "visit=1"): 100}
        ledger.job_info(run2, 1, rule="warp", wildcards={"visit": 1}, mem_mb=1000, threads=1,
                        log_path=None, benchmark_path=None, outputs=[])  # fmt: skip
        ledger.job_finished(run2, 1, state=JobState.SUCCEEDED, exit_code=0)
        assert ledger.runtime_requests(policy, {"warp": 30}) == {}
    counts = counts_by_class([("isr", "memory"), ("isr", None), ("isr", "memory")])
    assert counts == {"isr": {"memory": 2, "unknown": 1}}


OLD_ATTEMPTS = """
CREATE TABLE runs (run_id INTEGER PRIMARY KEY AUTOINCREMENT, campaign TEXT, shard TEXT,
    profile TEXT, backend TEXT, host TEXT, pid INTEGER, pid_start TEXT, argv TEXT,
    started REAL NOT NULL, finished REAL, exit_code INTEGER, planned TEXT, n_done INTEGER,
    n_total INTEGER);
CREATE TABLE attempts (attempt_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(run_id), jobid INTEGER NOT NULL, rule TEXT,
    data_id TEXT, wildcards TEXT, shard TEXT, backend TEXT, backend_jobid TEXT,
    state TEXT NOT NULL, exit_code INTEGER, error_class TEXT, reason TEXT,
    memory_failure INTEGER NOT NULL DEFAULT 0, mem_mb_requested INTEGER, mem_mb_used REAL,
    threads INTEGER, runtime_s REAL, cpu_s REAL, io_in_mb REAL, io_out_mb REAL, log_path TEXT,
    benchmark_path TEXT, outputs TEXT, submitted REAL, started REAL, finished REAL);
INSERT INTO runs (run_id, started, finished) VALUES (1, 0, 1);
INSERT INTO attempts (run_id, jobid, rule, data_id, backend, state, exit_code, error_class,
    reason) VALUES
    (1, 1, 'isr', 'visit=1', 'gridengine', 'failed', 1, NULL,
     'Grid Engine job 7 failed: exit status 137; run time limit h_rt=60 s exceeded'),
    (1, 2, 'isr', 'visit=2', 'local', 'failed', 1, 'InputDataError', 'x.fits: truncated'),
    (1, 3, 'isr', 'visit=3', 'local', 'lost', NULL, NULL, NULL),
    (1, 4, 'isr', 'visit=4', 'local', 'succeeded', 0, NULL, NULL);
"""


def test_a_ledger_from_before_failure_classes_is_migrated_on_open(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_ATTEMPTS)
    with Ledger(path) as ledger:
        classes = {a.data_id: a.failure_class for a in ledger.attempts()}
    assert classes == {
        "visit=1": "walltime",
        "visit=2": "bad_input",
        "visit=3": "node_lost",
        "visit=4": None,
    }
    with Ledger(path) as ledger:  # a second open finds the column and changes nothing
        assert {a.data_id: a.failure_class for a in ledger.attempts()} == classes


# --- real local faults through Snakemake and the logger plugin ----------------------------------

FAULTS_SNAKEFILE = """
rule all:
    input: "out/oom.txt", "out/bad.txt"

rule oom:
    output: "out/oom.txt"
    log: "logs/oom/visit=1.log"
    resources: mem_mb=200
    script: "job.py"

rule bad:
    input: "broken.fits"
    output: "out/bad.txt"
    log: "logs/bad/visit=2.log"
    resources: mem_mb=200
    script: "job.py"
"""

FAULTS_SCRIPT = """
import resource

import numpy as np

from dcflow.io import read_fits
from dcflow.joblog import run_logged


def limit_address_space(mem_mb):
    # as Grid Engine's h_vmem does: the job may map mem_mb more than it holds at start
    with open("/proc/self/status") as handle:
        line = next(ln for ln in handle if ln.startswith("VmSize:"))
    now = int(line.split()[1]) * 1024
    limit = now + mem_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(rule, inputs, out, mem_mb):
    if rule == "oom":
        block = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MB: more than 200, less than 400
        text = str(int(block.sum() // 2**20))
    else:
        text = str(len(read_fits(inputs[0])))
    with open(out, "w") as handle:
        handle.write(text)


limit_address_space(snakemake.resources.mem_mb)
run_logged(
    main,
    snakemake.log[0],
    rule=snakemake.rule,
    inputs=list(snakemake.input),
    out=snakemake.output[0],
    mem_mb=snakemake.resources.mem_mb,
)
"""


def _run(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    argv = [*SNAKEMAKE, "-c2", "-k", "--logger", "dcflow", "--logger-dcflow-ledger", "l.sqlite3"]
    return subprocess.run(
        [*argv, *extra], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )


def test_local_oom_and_corrupt_fits_are_classified_and_acted_on(tmp_path):
    from astropy.io import fits

    (tmp_path / "Snakefile").write_text(FAULTS_SNAKEFILE)
    (tmp_path / "job.py").write_text(FAULTS_SCRIPT)
    good = tmp_path / "good.fits"
    fits.PrimaryHDU(data=[[1.0, 2.0], [3.0, 4.0]]).writeto(good)
    (tmp_path / "broken.fits").write_bytes(good.read_bytes()[:1000])  # truncated header
    proc = _run(tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        failed = {a.rule: a for a in ledger.failed_tiles()}
        memory = ledger.memory_requests(MemoryPolicy())
        assert ledger.failure_counts() == {"oom": {"memory": 1}, "bad": {"bad_input": 1}}
    oom, bad = failed["oom"], failed["bad"]
    assert (oom.error_class, oom.failure_class, oom.memory_failure) == (
        "MemoryError",
        "memory",
        True,
    )
    assert bad.error_class == "InputDataError" and bad.failure_class == "bad_input"
    assert "broken.fits" in bad.reason and not bad.memory_failure
    keys, outcomes = triage(
        [(a.rule, a.data_id, a.failure_class) for a in failed.values()], FailurePolicy()
    )
    assert keys == {("oom", "campaign")}
    assert {o.failure_class: o.rerun for o in outcomes} == {"memory": True, "bad_input": False}
    assert memory == {("oom", "campaign"): 400}

    # the retry asks for twice the memory, and the same allocation fits under the new limit
    proc = _run(tmp_path, "out/oom.txt", *resource_override_args(memory, {}, {}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "oom.txt").read_text() == "300"
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        assert ledger.failure_counts() == {"bad": {"bad_input": 1}}


def test_memory_and_runtime_escalations_share_one_set_resources():
    args = resource_override_args(
        {("isr", "visit=1"): 4000},
        {("isr", "visit=2"): 60, ("warp", "visit=1"): 120},
        {"isr": {"mem_mb": 2000, "runtime": 30}},
    )
    assert args[0] == "--set-resources" and args.count("--set-resources") == 1
    entries = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args[1:]}
    assert set(entries) == {"isr:mem_mb", "isr:runtime", "warp:runtime"}
    wildcards = {"visit": "2"}
    values = {key: eval(text, {"wildcards": wildcards}) for key, text in entries.items()}
    # visit=2 was not out of memory: the rule default; it was out of time: 60 min
    assert values == {"isr:mem_mb": 2000, "isr:runtime": 60, "warp:runtime": 120}
    # runtime is a plain number of minutes per rule: Snakemake refuses an expression there
    assert (entries["isr:runtime"], entries["warp:runtime"]) == ("60", "120")


# --- run-time limit and a full disk, live on the local backend ----------------------------------

LIMITS_SNAKEFILE = """
rule slow:
    output: "out/slow.txt"
    log: "logs/slow/visit=3.log"
    resources: runtime=2
    script: "limits.py"

rule io:
    output: "disk/io.txt"
    log: "logs/io/visit=4.log"
    resources: runtime=2
    script: "limits.py"
"""

LIMITS_SCRIPT = """
import math
import resource
import time

from dcflow.io import write_text
from dcflow.joblog import run_logged


def main(rule, out, runtime):
    if rule == "slow":
        # the local executor enforces no run time: the job limits its own CPU time, as a batch
        # system's s_cpu would, at one second per minute of runtime (a cheap test), counted
        # from now (imports took CPU time already); it needs 3 s
        start = time.process_time()
        limit = math.ceil(start) + runtime
        resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 30))
        while time.process_time() < start + 3.0:
            pass
    write_text(f"{rule} done\\n", out)


run_logged(
    main,
    snakemake.log[0],
    rule=snakemake.rule,
    out=snakemake.output[0],
    runtime=int(snakemake.resources.runtime),
)
"""


def _limits_workflow(workdir: Path) -> None:
    (workdir / "Snakefile").write_text(LIMITS_SNAKEFILE)
    (workdir / "limits.py").write_text(LIMITS_SCRIPT)


def test_local_cpu_time_limit_is_walltime_and_a_retry_with_more_runtime_succeeds(tmp_path):
    _limits_workflow(tmp_path)
    proc = _run(tmp_path, "out/slow.txt")
    assert proc.returncode == 1, proc.stderr[-3000:]
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        (tile,) = ledger.failed_tiles()
        needs = ledger.runtime_requests(FailurePolicy(), {"slow": 2})
    # SIGXCPU at the limit became the job's failure line: run time limit, exit 128 + 24
    assert (tile.rule, tile.failure_class, tile.exit_code) == ("slow", "walltime", 152)
    assert "run time limit: SIGXCPU received" in tile.reason
    assert needs == {("slow", "campaign"): 4}  # the class's action: twice the runtime
    proc = _run(tmp_path, "out/slow.txt", *resource_override_args({}, needs, {}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "slow.txt").read_text() == "slow done\n"
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        assert ledger.failure_counts() == {}
        assert ledger.runtime_requests(FailurePolicy(), {"slow": 2}) == {}


@pytest.mark.root
def test_a_full_disk_is_transient_io_held_for_review_then_rerun_when_it_has_room(
    tmp_path, full_disk
):
    _limits_workflow(tmp_path)
    disk = full_disk(tmp_path / "disk")
    proc = _run(tmp_path, "disk/io.txt")
    assert proc.returncode == 1, proc.stderr[-3000:]
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        (tile,) = ledger.failed_tiles()
    assert (tile.rule, tile.error_class, tile.failure_class) == ("io", "OSError", "transient_io")
    assert "[Errno 28] No space left on device" in tile.reason
    tiles = [(tile.rule, tile.data_id, tile.failure_class)]
    keys, outcomes = triage(tiles, FailurePolicy())
    assert not keys and outcomes[0].describe().startswith("transient_io: 1 tile(s) not rerun")
    (disk / "filler").unlink()  # the operator freed the disk: rerun the held class
    keys, _ = triage(tiles, FailurePolicy(), ["transient_io"])
    assert keys == {("io", "campaign")}
    proc = _run(tmp_path, "disk/io.txt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (disk / "io.txt").read_text() == "io done\n"
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        assert ledger.failure_counts() == {}
