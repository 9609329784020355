"""Run ledger: states, events, crash safety, memory escalation, fault knob, logger plugin."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dcflow.joblog import (
    FAULTS_ENV,
    InjectedFaultError,
    fault_for,
    parse_faults,
    read_failure,
    run_logged,
)
from dcflow.ledger import (
    Ledger,
    MemoryPolicy,
    escalated_memory,
    pid_start_time,
    read_benchmark,
    tile_of,
)
from dcflow.orchestration.profiles import memory_override_args
from dcflow.states import ACTIVE_STATES, TERMINAL_STATES, JobState

SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# --- states ------------------------------------------------------------------------------------


def test_every_job_state_has_a_docstring_and_one_class():
    import ast
    import inspect

    import dcflow.states as states

    tree = ast.parse(inspect.getsource(states))
    enum = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "JobState")
    documented = set()
    body = enum.body
    for first, second in itertools.pairwise(body):
        if isinstance(first, ast.Assign) and isinstance(second, ast.Expr):
            documented.add(first.targets[0].id)
    assert documented == {m.name for m in JobState}
    assert TERMINAL_STATES.isdisjoint(ACTIVE_STATES)
    assert JobState.LOST not in TERMINAL_STATES | ACTIVE_STATES
    assert JobState("failed").is_terminal() and not JobState("running").is_terminal()


# --- ledger events -----------------------------------------------------------------------------


def _info(ledger, run_id, jobid, rule="process_visit", visit=1001, mem_mb=2000, t=100.0):
    return ledger.job_info(
        run_id,
        jobid,
        rule=rule,
        wildcards={"visit": visit},
        mem_mb=mem_mb,
        threads=1,
        log_path=f"logs/{rule}/visit={visit}.log",
        benchmark_path=None,
        outputs=[f"calexp/{visit}.fits"],
        when=t,
    )


def test_ledger_records_attempts_and_retries(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        run = ledger.start_run(campaign="c", shard="s0", profile="local", backend="local")
        ledger.job_started(run, 3, state=JobState.RUNNING, when=100.0)
        first = _info(ledger, run, 3, t=100.5)
        ledger.job_finished(
            run,
            3,
            state=JobState.FAILED,
            exit_code=1,
            error_class="MemoryError",
            reason="out of memory",
            memory_failure=True,
            when=110.0,
        )
        second = _info(ledger, run, 3, mem_mb=4000, t=111.0)  # Snakemake's own retry
        ledger.job_backend_id(run, 3, "4711")
        ledger.job_finished(run, 3, when=131.0)
        attempts = ledger.attempts(rule="process_visit")
    assert first != second
    assert [a.state for a in attempts] == [JobState.FAILED, JobState.SUCCEEDED]
    assert attempts[0].data_id == "visit=1001" and attempts[0].memory_failure
    assert attempts[0].runtime_s == pytest.approx(10.0)  # from the start event
    assert attempts[1].runtime_s == pytest.approx(20.0)
    assert attempts[1].backend_jobid == "4711" and attempts[1].mem_mb_requested == 4000
    assert attempts[1].outputs == ("calexp/1001.fits",)


def test_watchers_read_counts_and_single_rows_not_the_run(tmp_path):
    """The per-event reads of the logger plugin and the shard watchers agree with the full
    attempt list: counts per state without ``all``, one job's benchmark path, and the active
    attempts still lacking a backend id."""
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        run = ledger.start_run(campaign="c", shard="s0", backend="gridengine")
        for jobid in (1, 2, 3):
            ledger.job_started(run, jobid, when=100.0)
            _info(ledger, run, jobid, visit=1000 + jobid)
        ledger.job_info(
            run, 9, rule="all", wildcards={}, mem_mb=None, threads=1, log_path=None,
            benchmark_path=None, outputs=[],
        )  # fmt: skip
        ledger.job_finished(run, 1, when=150.0)
        ledger.job_finished(run, 2, state=JobState.FAILED, exit_code=3, when=151.0)
        ledger.job_backend_id(run, 3, "77")
        _info(ledger, run, 4, visit=1004)
        counts = ledger.run_state_counts(run)
        pending = ledger.active_without_backend_id(run)
        attempts = ledger.attempts(run_id=run)
        path_2 = ledger.benchmark_path_of(run, 2)
        path_none = ledger.benchmark_path_of(run, 42)
    by_state = {}
    for a in attempts:
        if a.rule != "all":
            by_state[a.state] = by_state.get(a.state, 0) + 1
    assert (
        counts
        == by_state
        == {
            JobState.SUCCEEDED: 1,
            JobState.FAILED: 1,
            JobState.SUBMITTED: 2,
        }
    )
    assert [out for _, out in pending] == [["calexp/1004.fits"]]
    assert path_2 is None and path_none is None


def test_finish_run_marks_unwatched_attempts_lost(tmp_path):
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        run = ledger.start_run()
        _info(ledger, run, 1)
        _info(ledger, run, 2, visit=1002)
        ledger.job_finished(run, 2)
        ledger.finish_run(run, 1)
        states = {a.data_id: a.state for a in ledger.attempts()}
        assert states == {"visit=1001": JobState.LOST, "visit=1002": JobState.SUCCEEDED}
        assert [a.data_id for a in ledger.failed_tiles()] == ["visit=1001"]


def test_reap_dead_runs_closes_runs_whose_driver_died(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        dead = ledger.start_run(pid=child.pid)
        alive = ledger.start_run()  # this process
        _info(ledger, dead, 1)
        assert ledger.reap_dead_runs() == [dead]
        assert ledger.run(dead).finished is not None and ledger.run(alive).finished is None
        assert ledger.attempts()[0].state is JobState.LOST
    with pytest.raises(KeyError, match="run 99 is not in the ledger"):
        Ledger(tmp_path / "l.sqlite3").run(99)


_DIES_BEFORE_THE_RECORD = textwrap.dedent(
    """
    import os, signal, sys
    from dcflow.ledger import Ledger
    from dcflow.orchestration.run import start_recorded

    def die(self, run_id, pid):  # the driver SIGKILLed between the start and the record
        print(pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    Ledger.set_run_pid = die
    with Ledger(sys.argv[1]) as ledger:
        run_id = ledger.start_run(shard="calibs")
    command = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w')", sys.argv[2]]
    with open(os.devnull, "wb") as log:
        start_recorded(command, log, sys.argv[1], run_id)
    """
)


def test_snakemake_starts_only_once_the_ledger_names_its_process(tmp_path):
    """A driver killed between starting a run's Snakemake and recording its pid must leave
    nothing running: the ledger would call that run dead (its driver is) and the next driver
    would run the same jobs beside it."""
    from dcflow.orchestration.run import start_recorded

    ledger_file, ran = tmp_path / "ledger.sqlite3", tmp_path / "ran"
    driver = subprocess.run(
        [sys.executable, "-c", _DIES_BEFORE_THE_RECORD, str(ledger_file), str(ran)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert driver.returncode == -signal.SIGKILL, driver.stderr
    gate = int(driver.stdout)
    deadline = time.monotonic() + 30
    while pid_start_time(gate) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_start_time(gate) is None and not ran.exists()
    with Ledger(ledger_file) as ledger:
        assert [r.is_alive() for r in ledger.runs()] == [False]
        run_id = ledger.start_run(shard="calibs")
    command = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w')", str(ran)]
    with open(os.devnull, "wb") as log:
        child = start_recorded(command, log, ledger_file, run_id)
    with Ledger(ledger_file) as ledger:
        assert ledger.run(run_id).pid == child.pid
    assert child.wait(timeout=60) == 0 and ran.exists()


_WRITER = textwrap.dedent(
    """
    import sys
    from dcflow.ledger import Ledger
    ledger = Ledger(sys.argv[1])
    run = ledger.start_run()
    for jobid in range(100000):
        ledger.job_info(run, jobid, rule="r", wildcards={"visit": jobid}, mem_mb=1,
                        threads=1, log_path=None, benchmark_path=None, outputs=[])
        print(jobid, flush=True)
    """
)


def test_ledger_survives_sigkill_of_its_writer(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 200:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:  # acknowledgements already in the pipe when it was killed
        acknowledged = int(line)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with Ledger(path) as ledger:
        n = len(ledger.attempts())
    # every event the writer acknowledged is there (it may have committed one more)
    assert acknowledged + 1 <= n <= acknowledged + 2


# --- memory escalation -------------------------------------------------------------------------


def test_memory_escalation_doubles_caps_and_persists(tmp_path):
    policy = MemoryPolicy(factor=2.0, cap_mb=5000)
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        for run_no, (mem, state, memory) in enumerate(
            [(2000, JobState.FAILED, True), (4000, JobState.FAILED, True)]
        ):
            run = ledger.start_run()
            _info(ledger, run, 1, mem_mb=mem, t=float(run_no))
            _info(ledger, run, 2, visit=1002, mem_mb=2000, t=float(run_no))
            ledger.job_finished(run, 1, state=state, memory_failure=memory)
            ledger.job_finished(run, 2, state=JobState.FAILED, memory_failure=False)
            ledger.finish_run(run, 1)
        needs = ledger.memory_requests(policy)
    # 2000 -> 4000 -> 8000 capped at 5000; a non-memory failure asks for nothing more
    assert needs == {("process_visit", "visit=1001"): 5000}
    with Ledger(tmp_path / "l.sqlite3") as ledger:  # a new driver days later sees the same
        assert ledger.memory_requests(policy) == needs
        run = ledger.start_run()
        _info(ledger, run, 1, mem_mb=5000)
        ledger.job_finished(run, 1)
        assert ledger.memory_requests(policy) == needs  # what worked is kept
        run = ledger.start_run()  # a Snakemake retry with the same request: no compounding
        _info(ledger, run, 7, visit=1007, mem_mb=1000)
        ledger.job_finished(run, 7, state=JobState.FAILED, memory_failure=True)
        _info(ledger, run, 7, visit=1007, mem_mb=1000)
        ledger.job_finished(run, 7, state=JobState.FAILED, memory_failure=True)
        assert ledger.memory_requests(policy)[("process_visit", "visit=1007")] == 2000
        assert escalated_memory(ledger.attempts(), MemoryPolicy(factor=3.0, cap_mb=99999)) == {
            ("process_visit", "visit=1001"): 5000,
            ("process_visit", "visit=1007"): 3000,
        }


def test_memory_policy_validation():
    with pytest.raises(ValueError, match="factor"):
        MemoryPolicy(factor=0.5)
    with pytest.raises(ValueError, match="cap_mb"):
        MemoryPolicy(cap_mb=0)


def test_memory_override_args_is_a_per_tile_expression():
    args = memory_override_args(
        {("process_visit", "visit=1003"): 4000, ("flat", "ccd=1_filter=g"): 2000},
        {"process_visit": {"mem_mb": 2000}},
    )
    assert args[0] == "--set-resources" and len(args) == 3
    expr = next(a for a in args if a.startswith("process_visit:")).split("=", 1)[1]

    class Wildcards(dict):
        pass

    assert eval(expr, {"wildcards": Wildcards(visit="1003")}) == 4000
    assert eval(expr, {"wildcards": Wildcards(visit="1004")}) == 2000


# --- small readers -----------------------------------------------------------------------------


def test_tile_of_matches_log_names():
    assert tile_of({"visit": "1001"}) == "visit=1001"
    assert tile_of({"filter": "g", "ccd": "3"}) == "ccd=3_filter=g"
    assert tile_of({}) == "campaign"
    assert tile_of({"visit": 5, "chunk": "a"}) == "visit=5_chunk=a"


def test_read_benchmark(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "12.5\t0:00:12\t250.3\t300\t200\t210\t1.5\t7.25\t80.0\t10.0\n"
    )
    bench = read_benchmark(path)
    assert (bench.runtime_s, bench.max_rss_mb, bench.cpu_s) == (12.5, 250.3, 10.0)
    assert (bench.io_in_mb, bench.io_out_mb) == (1.5, 7.25)
    assert read_benchmark(tmp_path / "missing.tsv") is None


def test_fault_knob_parsing_and_matching():
    faults = parse_faults("process_visit:visit=1003; bias:ccd=2:memory")
    assert faults == {("process_visit", "visit=1003"): "error", ("bias", "ccd=2"): "memory"}
    env = {FAULTS_ENV: "bias:ccd=2:memory"}
    assert fault_for("out/logs/bias/ccd=2.log", env) == "memory"
    assert fault_for("out/logs/bias/ccd=3.log", env) is None
    with pytest.raises(ValueError, match="not rule:tile"):
        parse_faults("bias")
    with pytest.raises(ValueError, match="mode 'disk'"):
        parse_faults("bias:ccd=1:disk")


def test_fault_knob_exit_codes_fire_once(tmp_path):
    """Mode exitN ends the job with code N; with DCFLOW_FAULTS_ONCE the fault fires once."""
    assert parse_faults("bias:ccd=2:exit42") == {("bias", "ccd=2"): "exit42"}
    with pytest.raises(ValueError, match="mode 'exit0'"):
        parse_faults("bias:ccd=2:exit0")
    log = tmp_path / "logs" / "bias" / "ccd=2.log"
    code = f"from dcflow.joblog import run_logged\nrun_logged(lambda: print('ran'), {str(log)!r})\n"
    env = {**os.environ, FAULTS_ENV: "bias:ccd=2:exit42", "DCFLOW_FAULTS_ONCE": str(tmp_path / "f")}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (first.returncode, first.stdout) == (42, "")
    assert "exit 42 injected" in log.read_text()
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (second.returncode, second.stdout) == (0, "ran\n")
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["bias__ccd=2"]


@pytest.mark.parametrize("limit_mb", [1500, None])
def test_the_vmem_fault_allocates_past_the_address_space_limit(tmp_path, limit_mb):
    """Mode vmem: the kernel refuses an allocation past RLIMIT_AS (what h_vmem sets); with no
    limit the job still fails for memory, and says there was no limit to exceed."""
    log = tmp_path / "logs" / "bias" / "ccd=2.log"
    limit = ""
    if limit_mb is not None:
        limit = f"resource.setrlimit(resource.RLIMIT_AS, ({limit_mb} * 2**20, -1))\n"
    code = f"import resource\n{limit}from dcflow.joblog import run_logged\n"
    code += f"run_logged(lambda: print('ran'), {str(log)!r})\n"
    env = {**os.environ, FAULTS_ENV: "bias:ccd=2:vmem"}
    env.pop("DCFLOW_FAULTS_ONCE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    record = read_failure(log)
    assert (done.returncode, done.stdout, record.error_class) == (1, "", "MemoryError")
    assert record.memory
    if limit_mb is None:
        assert "no address-space limit" in record.message
    else:
        assert "address-space limit of 1500 MB (h_vmem)" in record.message


def test_run_logged_writes_a_failure_record(tmp_path, monkeypatch):
    log = tmp_path / "logs" / "process_visit" / "visit=7.log"
    monkeypatch.setenv(FAULTS_ENV, "process_visit:visit=7:memory")
    with pytest.raises(MemoryError, match="fault knob"):
        run_logged(lambda: 1, str(log))
    record = read_failure(log)
    assert record.error_class == "MemoryError" and record.memory and record.exit_code == 1
    monkeypatch.setenv(FAULTS_ENV, "process_visit:visit=7")
    with pytest.raises(InjectedFaultError):
        run_logged(lambda: 1, str(log))
    record = read_failure(log)
    assert record.error_class == "InjectedFaultError" and not record.memory
    assert record.metadata == {"mode": "error"}
    monkeypatch.delenv(FAULTS_ENV)
    assert run_logged(lambda x: x + 1, str(log), x=1) == 2
    assert read_failure(log) is None


# --- the logger plugin in a real Snakemake run -------------------------------------------------

TOY_SNAKEFILE = """
rule all:
    input: expand("out/b_{visit}.txt", visit=[1, 2, 3])

rule a:
    output: "out/a_{visit}.txt"
    log: "logs/a/visit={visit}.log"
    benchmark: "bench/a/visit={visit}.tsv"
    resources: mem_mb=1000, runtime=5
    script: "job.py"

rule b:
    input: "out/a_{visit}.txt"
    output: "out/b_{visit}.txt"
    log: "logs/b/visit={visit}.log"
    benchmark: "bench/b/visit={visit}.tsv"
    resources: mem_mb=500
    script: "job.py"
"""

TOY_SCRIPT = """
import os
import time

from dcflow.joblog import run_logged

def main(out, mem_mb):
    time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
    with open(out, "w") as handle:
        handle.write(str(mem_mb))

run_logged(main, snakemake.log[0], out=snakemake.output[0], mem_mb=snakemake.resources.mem_mb)
"""


def toy_workflow(path: Path) -> Path:
    """A three-visit, two-rule workflow whose jobs go through run_logged."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "Snakefile").write_text(TOY_SNAKEFILE)
    (path / "job.py").write_text(TOY_SCRIPT)
    return path


def run_toy(workdir: Path, *extra: str, faults: str | None = None, ledger: str = "l.sqlite3"):
    env = dict(os.environ)
    env.pop(FAULTS_ENV, None)
    if faults:
        env[FAULTS_ENV] = faults
    argv = [*SNAKEMAKE, "-c2", "-k", "--logger", "dcflow", "--logger-dcflow-ledger", ledger]
    return subprocess.run(
        [*argv, *extra], cwd=workdir, env=env, capture_output=True, text=True, check=False
    )


def test_logger_plugin_records_every_attempt(tmp_path, monkeypatch):
    # Snakemake's benchmark samples memory every 0.5 s: a job that ends sooner may read 0 MB
    monkeypatch.setenv("TOY_SLEEP", "1.2")
    work = toy_workflow(tmp_path / "toy")
    proc = run_toy(work, faults="a:visit=2:memory;b:visit=3")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Logging error" not in proc.stderr
    with Ledger(work / "l.sqlite3") as ledger:
        runs = ledger.runs()
        attempts = {(a.rule, a.data_id): a for a in ledger.attempts()}
        needs = ledger.memory_requests(MemoryPolicy(factor=2.0, cap_mb=3000))
    assert len(runs) == 1 and runs[0].finished is not None
    assert runs[0].planned == {"a": 3, "b": 3, "all": 1}
    assert set(attempts) == {
        ("a", "visit=1"),
        ("a", "visit=2"),
        ("a", "visit=3"),
        ("b", "visit=1"),
        ("b", "visit=3"),
    }
    mem_fail, err_fail = attempts[("a", "visit=2")], attempts[("b", "visit=3")]
    assert mem_fail.state is JobState.FAILED and mem_fail.memory_failure
    assert mem_fail.error_class == "MemoryError" and mem_fail.exit_code == 1
    assert err_fail.state is JobState.FAILED and not err_fail.memory_failure
    assert err_fail.error_class == "InjectedFaultError" and "fault knob" in err_fail.reason
    good = attempts[("a", "visit=1")]
    assert good.state is JobState.SUCCEEDED and good.exit_code == 0
    assert good.mem_mb_requested == 1000 and good.log_path == str(work / "logs/a/visit=1.log")
    assert good.mem_mb_used > 1.0 and good.runtime_s > 0.0 and good.cpu_s is not None
    assert good.backend == "local" and good.shard == "all"
    assert good.submitted <= good.started <= good.finished
    assert needs == {("a", "visit=2"): 2000}

    # a new run (days later: a new process) asks for more memory for exactly that tile
    proc = run_toy(work, *memory_override_args(needs, {"a": {"mem_mb": 1000}}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Ledger(work / "l.sqlite3") as ledger:
        second = ledger.attempts(run_id=ledger.runs()[-1].run_id)
    asked = {(a.rule, a.data_id): a.mem_mb_requested for a in second}
    assert asked[("a", "visit=2")] == 2000
    assert (work / "out" / "a_2.txt").read_text() == "2000"  # the job's own resources
    assert ("a", "visit=1") not in asked  # nothing else reran
    assert {k for k, a in asked.items() if k[0] != "all"} == {
        ("a", "visit=2"),
        ("b", "visit=2"),
        ("b", "visit=3"),
    }


def test_logger_plugin_is_silent_in_dry_runs(tmp_path):
    work = toy_workflow(tmp_path / "toy")
    proc = run_toy(work, "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (work / "l.sqlite3").exists()


def _fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` with a ballast file until ENOSPC; its path."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1 << 9):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return ballast


@pytest.mark.root
def test_logger_plugin_holds_events_while_the_ledger_disk_is_full(tmp_path, monkeypatch):
    """Jobs finish while the ledger's disk is full: their events are written once it has room,
    with their own times, instead of being lost (the attempts "lost" while their outputs
    exist)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills up) needs root; CI runs as root")
    monkeypatch.setenv("TOY_SLEEP", "2")
    work = toy_workflow(tmp_path / "toy")
    disk = work / "ledger-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    ledger_path = disk / "l.sqlite3"
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    argv = [*SNAKEMAKE, "-c3", "--logger", "dcflow", "--logger-dcflow-ledger", str(ledger_path)]

    def succeeded() -> int:
        with sqlite3.connect(ledger_path, timeout=30) as db:
            return db.execute(
                "SELECT COUNT(*) FROM attempts WHERE state = 'succeeded' AND rule != 'all'"
            ).fetchone()[0]

    try:
        proc = subprocess.Popen(
            argv, cwd=work, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        deadline = time.monotonic() + 60
        while not (ledger_path.exists() and _attempt_rows(ledger_path) >= 3):
            assert time.monotonic() < deadline, "the first jobs never reached the ledger"
            time.sleep(0.2)
        ballast = _fill(disk)
        deadline = time.monotonic() + 60
        while len(list((work / "out").glob("b_*.txt"))) < 3:
            assert time.monotonic() < deadline and proc.poll() is None, "jobs did not finish"
            time.sleep(0.2)
        while_full = succeeded()
        time.sleep(2.0)
        freed_at = time.time()
        ballast.unlink()
        _, stderr = proc.communicate(timeout=180)
        after = succeeded()
        with Ledger(ledger_path) as ledger:
            attempts = [a for a in ledger.attempts() if a.rule != "all"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert proc.returncode == 0, stderr[-2000:]
    assert while_full < 6, "no ledger write failed: the disk was not full"
    assert after == 6 and len(attempts) == 6
    assert all(a.state is JobState.SUCCEEDED for a in attempts)
    assert all(a.finished < freed_at for a in attempts), "times are the events' own"
    assert "Logging error" not in stderr


def _attempt_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_plugin_settings_are_declared_for_the_cli():
    from snakemake_logger_plugin_dcflow import LogHandlerSettings, backend_job_extra

    fields = LogHandlerSettings.__dataclass_fields__
    assert set(fields) == {"ledger", "run_id", "backend", "shard", "campaign"}
    assert all(f.metadata["help"] for f in fields.values())
    assert backend_job_extra(3, 4711, "running") == {
        "jobid": 3,
        "dcflow_backend_jobid": "4711",
        "dcflow_state": "running",
    }
    assert json.dumps(backend_job_extra(1, "x"))


def test_throughput_over_the_last_window(tmp_path):
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        assert ledger.throughput_per_h() is None
        run = ledger.start_run(when=90.0)
        ledger.job_started(run, 1, state=JobState.RUNNING, when=100.0)
        ledger.job_started(run, 2, state=JobState.RUNNING, when=105.0)
        ledger.job_finished(run, 1, when=110.0)
        ledger.job_finished(run, 2, when=120.0)
        ledger.finish_run(run, 0, when=121.0)
        # 2 jobs between the first start (100 s) and the last success (120 s): 360 jobs/h
        assert ledger.throughput_per_h() == pytest.approx(360.0)
        # last 15 s (from 105 s): both successes, over 15 s
        assert ledger.throughput_per_h(window_s=15.0) == pytest.approx(2 / 15 * 3600)


# --- settling the ledger against the disk ------------------------------------------------------


def _mark_incomplete(workdir: Path, output: str) -> None:
    """Snakemake's "incomplete" mark of ``output`` (its file persistence: base64 of the path)."""
    marks = workdir / ".snakemake" / "incomplete"
    marks.mkdir(parents=True, exist_ok=True)
    name = base64.urlsafe_b64encode(output.encode()).decode()
    (marks / name).write_text(json.dumps({"external_jobid": None}))


def test_settling_records_jobs_done_on_disk_whose_end_went_unrecorded(tmp_path):
    """Only attempts of closed runs, whose every output exists and none is marked incomplete,
    become succeeded, with the time their outputs were written; the others stay as they are."""
    from dcflow.orchestration.settle import settle_from_disk

    work = tmp_path
    with Ledger(work / "l.sqlite3") as ledger:
        closed = ledger.start_run(pid=os.getpid())
        live = ledger.start_run(pid=os.getpid())
        cases = {
            "lost, whole": (closed, JobState.LOST, ["a1"], [], ["a1"]),
            "failed, whole": (closed, JobState.FAILED, ["b1", "b2"], [], ["b1", "b2"]),
            "failed, marked": (closed, JobState.FAILED, ["c1"], ["c1"], ["c1"]),
            "lost, one missing": (closed, JobState.LOST, ["d1", "d2"], [], ["d1"]),
            "failed, live run": (live, JobState.FAILED, ["e1"], [], ["e1"]),
            "failed, no outputs": (closed, JobState.FAILED, [], [], []),
        }
        for jobid, (name, (run_id, state, outputs, marked, written)) in enumerate(cases.items()):
            ledger.job_info(
                run_id, jobid, rule="r", wildcards={"visit": jobid}, mem_mb=1000, threads=1,
                log_path=None, benchmark_path=None,
                outputs=[str(work / "out" / o) for o in outputs], when=100.0,
            )  # fmt: skip
            if state is JobState.FAILED:
                ledger.job_finished(run_id, jobid, state=state, exit_code=-9, reason=name)
            for output in written:
                (work / "out").mkdir(exist_ok=True)
                (work / "out" / output).write_text(name)
                os.utime(work / "out" / output, (1000.0 + jobid, 1000.0 + jobid))
            for output in marked:
                _mark_incomplete(work, f"out/{output}")
        ledger.finish_run(closed, None)  # its active attempts become lost
        assert settle_from_disk(ledger, work) == 2
        after = {a.data_id: a for a in ledger.attempts()}
    states = {name: after[f"visit={i}"].state.value for i, name in enumerate(cases)}
    assert states == {
        "lost, whole": "succeeded",
        "failed, whole": "succeeded",
        "failed, marked": "failed",
        "lost, one missing": "lost",
        "failed, live run": "failed",
        "failed, no outputs": "failed",
    }
    assert (after["visit=0"].finished, after["visit=1"].finished) == (1000.0, 1001.0)
    assert after["visit=0"].reason.endswith("not marked incomplete; recorded lost")
    assert after["visit=1"].reason.endswith("recorded failed: failed, whole")
    assert after["visit=1"].failure_class is None
