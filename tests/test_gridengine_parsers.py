"""Grid Engine plugin parts that need no cluster: parsers on recorded output, argv building,
failure descriptions, the submission ledger and recovery's bookkeeping."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.utils import (
    TargetSpec,
    encode_target_jobs_cli_args,
    format_cli_arg,
)

from dcflow.ledger import read_benchmark
from dcflow.plan import clear_incomplete_marks
from dcflow.remote_jobs import comma_safe_job_exec, requote_file_args, shell_safe_job_exec
from dcflow.states import JobState
from snakemake_executor_plugin_gridengine import ExecutorSettings
from snakemake_executor_plugin_gridengine import tracker as tracker_module
from snakemake_executor_plugin_gridengine.reattach import (
    DriverMarker,
    Submission,
    SubmissionLedger,
)
from snakemake_executor_plugin_gridengine.status import (
    JobOutcome,
    SharedQstat,
    describe_failure,
    expand_task_ids,
    jobs_in_error_state,
    native_state,
    outcome_from_accounting,
    parse_memory_mb,
    parse_qacct,
    parse_qstat_xml,
    started_on_host,
    unreported_tasks,
)
from snakemake_executor_plugin_gridengine.submit import (
    JobRequest,
    SiteDefaults,
    array_dispatcher,
    h_vmem_per_slot_mb,
    job_log_path,
    job_name,
    job_script,
    native_args,
    noop_exec,
    parse_qsub_terse,
    qsub_argv,
    requote_config_args,
)

RECORDED = Path(__file__).parent / "gridengine"


# ---- qstat -------------------------------------------------------------------------------------


def test_unreported_tasks_are_the_dispatched_jobs_no_execd_reported():
    """Recorded ``qstat -j 12,14``: job 12 was dispatched while sge_execd was stopped ("t",
    vmem=N/A after the execd came back); array 14 runs tasks 1-8 (vmem reported), 9-16 wait."""
    text = (RECORDED / "qstat_j_undelivered.txt").read_text()
    assert unreported_tasks(text, ["12", "14.1", "14.8", "99"]) == {"12"}
    assert unreported_tasks(text, ["14.9"]) == {"14.9"}  # no usage line: not reported either
    assert unreported_tasks("", ["12"]) == set()  # ended meanwhile: qstat -j lists nothing


def _started_log(tmp_path: Path, job_id: str, task: str) -> Path:
    """The log a job script writes on its host (`job_script`), run by sh as Grid Engine would."""
    log = tmp_path / "logs" / f"{job_id}.{task}.log"
    script = job_script("#!/bin/sh\n{properties}\n{exec_job}\n", "", "true", log, 1)
    env = {**os.environ, "JOB_ID": job_id, "SGE_TASK_ID": task}
    subprocess.run(["sh", "-c", script], env=env, check=True)
    return log


def test_started_on_host_finds_its_own_job_in_the_log_its_script_writes(tmp_path):
    """Plain jobs run with SGE_TASK_ID "undefined"; an earlier attempt's line (another job
    id, or another task of the same array) does not count."""
    plain = _started_log(tmp_path, "12", "undefined").read_text()
    assert started_on_host(plain, "12")
    assert not started_on_host(plain, "1") and not started_on_host(plain, "120")
    task = _started_log(tmp_path, "14", "3").read_text()
    assert started_on_host(task, "14.3")
    assert not started_on_host(task, "14.30") and not started_on_host(task, "14.1")
    assert not started_on_host("", "12")


def test_a_job_its_host_ran_is_waited_for_not_deleted_when_its_end_is_reported_late(
    tmp_path, monkeypatch
):
    """After a qmaster restart sge_execd holds back the end of DRMAA jobs for 600 s: a job
    shorter than load_report_time then shows no usage (recorded ``qstat -j 12``: vmem=N/A).
    Past the grace, the one whose log shows it started is kept; the one with no log (never
    reached its execd) is deleted as lost."""
    text = (RECORDED / "qstat_j_undelivered.txt").read_text()
    monkeypatch.setattr(tracker_module, "run_command", lambda *a, **k: SimpleNamespace(stdout=text))
    deleted: list[set[str]] = []
    monkeypatch.setattr(tracker_module, "cancel_jobs", lambda ids: deleted.append(set(ids)))

    def submission(log: Path) -> Submission:
        return Submission("12", "r", ("out",), str(log), "dcflow-*", "drmaa")

    started = submission(_started_log(tmp_path, "12", "undefined"))
    ran = tracker_module.StatusTracker(None, "dcflow-*", unreported_grace_s=0.0)
    ran._delete_unreported({"12": "r"}, {"12": started})
    assert deleted == [] and ran.lost == {} and ran.reported == {"12"}

    never = tracker_module.StatusTracker(None, "dcflow-*", unreported_grace_s=0.0)
    never._delete_unreported({"12": "t"}, {"12": submission(tmp_path / "absent.log")})
    assert deleted == [{"12"}] and "no report from its execution host" in never.lost["12"]


def test_qstat_mixed_states_recorded():
    """Recorded: a running job (8), a running job being deleted (15), an Eqw job (10), and a
    held array of 4 pending tasks shown as one range entry (9)."""
    states = parse_qstat_xml((RECORDED / "qstat_mixed.xml").read_text())
    assert states == {
        "8": "r",
        "15": "r",
        "10": "Eqw",
        "9.1": "hqw",
        "9.2": "hqw",
        "9.3": "hqw",
        "9.4": "hqw",
    }
    assert native_state(states["10"]) is JobState.FAILED  # Eqw: never runs, must be deleted
    assert native_state(states["9.1"]) is JobState.SUBMITTED
    assert native_state(states["8"]) is JobState.RUNNING


def test_qstat_array_running_and_pending_tasks_recorded():
    states = parse_qstat_xml((RECORDED / "qstat_array.xml").read_text())
    assert len(states) == 12
    assert [states[f"17.{t}"] for t in range(1, 9)] == ["r"] * 8
    assert [states[f"17.{t}"] for t in range(9, 13)] == ["qw"] * 4


def test_qstat_empty_output_is_no_jobs():
    assert parse_qstat_xml("") == {}


@pytest.mark.parametrize(
    ("code", "state"),
    [
        ("qw", JobState.SUBMITTED),
        ("hqw", JobState.SUBMITTED),
        ("Rq", JobState.SUBMITTED),
        ("r", JobState.RUNNING),
        ("t", JobState.RUNNING),
        ("dr", JobState.RUNNING),
        ("s", JobState.RUNNING),
        ("Eqw", JobState.FAILED),
        ("", None),
    ],
)
def test_native_state_table(code, state):
    assert native_state(code) is state
    assert JobOutcome("1", state or JobState.SUBMITTED, native=code).in_error_state == (
        code == "Eqw"
    )


def test_task_ranges():
    assert expand_task_ids("7") == [7]
    assert expand_task_ids("1-5:2") == [1, 3, 5]
    assert expand_task_ids("2,4-6:1") == [2, 4, 5, 6]
    with pytest.raises(ValueError, match="cannot parse qstat task range 'x-y'"):
        expand_task_ids("x-y")


# ---- qacct -------------------------------------------------------------------------------------


def test_qacct_recorded_outcomes():
    """Recorded qacct of: ok, exit 3, Python MemoryError under h_vmem (exit 1), killed at
    h_rt (failed 37, exit 137), qdel of a running job (failed 100, exit 137), a job that could
    not enter its working directory (failed 28) and an array with exits 0, 1, 2."""
    records = parse_qacct((RECORDED / "qacct_mixed.txt").read_text())
    outcomes = {jid: outcome_from_accounting(r) for jid, r in records.items()}
    assert outcomes["11"].state is JobState.SUCCEEDED
    assert (outcomes["12"].state, outcomes["12"].exit_status) == (JobState.FAILED, 3)
    assert (outcomes["14"].state, outcomes["14"].exit_status) == (JobState.FAILED, 1)
    assert outcomes["13"].signal == "9"
    assert outcomes["13"].failed_reason == "37 : qmaster enforced h_rt, h_cpu, or h_vmem limit"
    assert outcomes["13"].maxvmem_mb == pytest.approx(3.465)
    assert outcomes["15"].failed_reason == "100 : assumedly after job"
    assert outcomes["15"].exit_status == 137
    assert outcomes["10"].failed_reason == "28 : changing into working directory"
    assert outcomes["10"].state is JobState.FAILED  # exit status 0, but Grid Engine failed it
    assert [outcomes[f"16.{t}"].exit_status for t in (1, 2, 3)] == [0, 1, 2]
    assert [outcomes[f"16.{t}"].state for t in (1, 2, 3)] == [
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.FAILED,
    ]
    assert records["16.2"].job_name == "rec.array"


def test_qacct_no_match_is_empty():
    assert parse_qacct("error: job name nomatch.* not found\n") == {}


@pytest.mark.parametrize(
    ("text", "mb"),
    [("0.000B", 0.0), ("3.465MB", 3.465), ("1.5G", 1536.0), ("512K", 0.5), ("2048", 2048 / 2**20)],
)
def test_memory_figures(text, mb):
    assert parse_memory_mb(text) == pytest.approx(mb)


def test_memory_figure_garbage():
    with pytest.raises(ValueError, match="cannot parse Grid Engine memory figure 'lots'"):
        parse_memory_mb("lots")


# ---- failure descriptions ------------------------------------------------------------------------


def test_failure_message_names_exit_status_and_log():
    outcome = JobOutcome("12", JobState.FAILED, exit_status=3)
    msg = describe_failure(outcome, log="/w/.snakemake/gridengine_logs/r/x=1.log")
    assert msg == (
        "Grid Engine job 12 failed: exit status 3; log: /w/.snakemake/gridengine_logs/r/x=1.log\n"
    )
    tail = "Command 'set -euo pipefail;  exit 7' returned non-zero exit status 7.\n"
    msg = describe_failure(replace(outcome, exit_status=1), log="l.log", log_tail=tail)
    assert "exit status 1; rule command exit status 7; log: l.log" in msg


def test_failure_message_memory_from_log():
    outcome = JobOutcome("14", JobState.FAILED, exit_status=1, maxvmem_mb=120.0)
    msg = describe_failure(
        outcome, log="l.log", h_vmem_mb=200, log_tail="Traceback...\nMemoryError\n"
    )
    assert "memory failure: out of memory (h_vmem=200M per slot x 1" in msg
    assert "exit status 1" in msg


def test_failure_message_memory_from_peak():
    outcome = JobOutcome("14", JobState.FAILED, exit_status=137, signal="9", maxvmem_mb=395.0)
    msg = describe_failure(outcome, log="l.log", h_vmem_mb=200, slots=2)
    assert "memory failure" in msg and "killed by signal 9" in msg


def test_failure_message_runtime():
    outcome = JobOutcome(
        "13",
        JobState.FAILED,
        exit_status=137,
        signal="9",
        failed_reason="37 : qmaster enforced h_rt, h_cpu, or h_vmem limit",
        wallclock_s=3.0,
    )
    msg = describe_failure(outcome, log="l.log", h_rt_s=2, h_vmem_mb=1000)
    assert "run time limit h_rt=2 s exceeded" in msg
    assert "memory" not in msg


# ---- submission arguments ------------------------------------------------------------------------


def test_native_args_mapping():
    args = native_args(4, {"mem_mb": 1000, "runtime": 90}, SiteDefaults(queue="all.q"))
    assert args == (
        "-pe",
        "smp",
        "4",
        "-l",
        "h_vmem=250M",
        "-l",
        "h_rt=5400",
        "-q",
        "all.q",
    )


def test_native_args_rule_overrides_and_extra_items_stay_separate():
    resources = {
        "sge_queue": "long.q",
        "sge_project": "dcflow",
        "sge_pe": "mpi",
        "sge_extra": "-l 'scratch=1G' -m n",
        "mem_mb": 333,
    }
    defaults = SiteDefaults(queue="all.q", project="other", extra_args="-p -10")
    args = native_args(2, resources, defaults)
    assert args == (
        "-pe",
        "mpi",
        "2",
        "-l",
        "h_vmem=500M",  # 333 MB is below the 1000 MB floor, split over 2 slots
        "-q",
        "long.q",
        "-P",
        "dcflow",
        "-p",
        "-10",
        "-l",
        "scratch=1G",
        "-m",
        "n",
    )


def test_memory_floor_covers_the_jobs_own_snakemake():
    assert h_vmem_per_slot_mb(1, {"mem_mb": 5}, SiteDefaults()) == 1000
    assert h_vmem_per_slot_mb(3, {"mem_mb": 5}, SiteDefaults(min_mem_mb=0)) == 2
    assert h_vmem_per_slot_mb(2, {"mem_mb": 3001}, SiteDefaults()) == 1501
    assert h_vmem_per_slot_mb(2, {}, SiteDefaults()) is None


def test_native_args_single_thread_has_no_pe():
    assert native_args(1, {}, SiteDefaults()) == ()


def test_native_args_rejects_bad_values():
    with pytest.raises(WorkflowError, match=r"resource mem_mb='lots' is not a number"):
        native_args(1, {"mem_mb": "lots"}, SiteDefaults())
    with pytest.raises(WorkflowError, match="threads=0"):
        native_args(0, {}, SiteDefaults())


def test_qsub_argv_keeps_values_as_items():
    request = JobRequest(
        name="smabc.rule",
        command=("/bin/sh", "/w/a b/job.sh"),
        workdir="/w/a b",
        log="/w/a b/log's.log",
        native=("-q", "all.q"),
    )
    argv = qsub_argv(request, n_tasks=3)
    assert argv[:4] == ["qsub", "-terse", "-b", "y"]
    assert argv[argv.index("-o") + 1] == "/w/a b/log's.log"
    assert argv[argv.index("-t") + 1] == "1-3"
    assert argv[-2:] == ["/bin/sh", "/w/a b/job.sh"]


def test_qsub_terse_ids():
    assert parse_qsub_terse("123\n") == ["123"]
    assert parse_qsub_terse("77.1-3:1\n") == ["77.1", "77.2", "77.3"]
    warned = 'qsub: warning: "-j" option has already been set, overriding previous setting\n2593\n'
    assert parse_qsub_terse(warned) == ["2593"]
    with pytest.raises(WorkflowError, match="cannot read a job id"):
        parse_qsub_terse("Unable to run job: denied\n")


def test_log_path_and_job_name():
    path = job_log_path(Path("/l"), "d", {"somewildcard": "somedir2/subdir", "b": "x y"})
    assert path == Path("/l/d/somewildcard=somedir2%2Fsubdir,b=x%20y.log")
    assert job_log_path(Path("/l"), "all", {}) == Path("/l/all/all.log")
    long_a = job_log_path(Path("/l"), "r", {"a": "x" * 300})
    long_b = job_log_path(Path("/l"), "r", {"a": "x" * 299 + "y"})
    assert len(long_a.name) == 204 and long_a.name.startswith("a=xxx")
    assert long_a != long_b
    assert job_name("1a2b", "calexp") == "sm1a2b.calexp"
    assert job_name("1a2b", "group:x/y") == "sm1a2b.group_x_y"


def test_array_dispatcher_runs_the_task(tmp_path):
    scripts = []
    for i in (1, 2):
        s = tmp_path / f"task {i}.sh"
        s.write_text(f"echo task{i} > {tmp_path}/out{i}\n")
        scripts.append(s)
    dispatcher = tmp_path / "d.sh"
    dispatcher.write_text(array_dispatcher(scripts))
    assert os.system(f"SGE_TASK_ID=2 /bin/sh {dispatcher}") == 0
    assert (tmp_path / "out2").read_text() == "task2\n"
    assert not (tmp_path / "out1").exists()
    assert os.system(f"SGE_TASK_ID=3 /bin/sh {dispatcher} 2>/dev/null") != 0


def test_settings_validation():
    with pytest.raises(WorkflowError, match="--gridengine-backend must be one of"):
        ExecutorSettings(backend="slurm")
    with pytest.raises(WorkflowError, match="--gridengine-array-min-jobs must be >= 0"):
        ExecutorSettings(array_min_jobs=-1)


# ---- ledger and recovery bookkeeping -------------------------------------------------------------


def test_ledger_open_submissions(tmp_path):
    ledger = SubmissionLedger(tmp_path / "s.jsonl")
    a = Submission("1", "r", ("a",), "a.log", "smx.*", "qsub")
    b = Submission("2", "r", ("b",), "b.log", "smx.*", "qsub")
    b2 = Submission("3", "r", ("b",), "b.log", "smy.*", "qsub", attempt=2)
    ledger.record_submitted([a, b])
    ledger.record_finished("1", JobState.SUCCEEDED, 0)
    ledger.record_submitted([b2])
    with open(ledger.path, "a") as fh:
        fh.write('{"event": "submitted", "job_id": "9"')  # torn last line of a killed driver
    assert ledger.open_submissions() == {("b",): b2}


def test_clear_incomplete_marks(tmp_path):
    root = tmp_path / ".snakemake" / "incomplete"
    keys = ["res/somedir2/subdir.out", "x" * 400]
    for key in [*keys, "other.out"]:
        encoded = base64.urlsafe_b64encode(key.encode()).decode()
        chunks = [encoded[i : i + 254] for i in range(0, len(encoded), 254)]
        path = root.joinpath(*["@" + c for c in chunks[:-1]], chunks[-1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"external_jobid": "1"}))
    assert clear_incomplete_marks(tmp_path, keys) == 2
    left = [p for p in root.rglob("*") if p.is_file()]
    assert len(left) == 1


def test_driver_marker_liveness(tmp_path):
    me = DriverMarker.for_this_process("t", ["lock"])
    me.write(tmp_path)
    dead = DriverMarker(me.host, me.pid, (me.start_ticks or 0) + 1, "u", ())
    assert me.alive() and not dead.alive()
    assert [m for _, m in DriverMarker.read_all(tmp_path)] == [me]


def test_config_args_requoted_for_the_shell():
    """Regression: Snakemake repr()-quotes --config items; a single quote broke the job script."""
    args = ['path="{\'x\': \\"/path/to file\\"}"', 'q="it\'s"', "n=3"]
    line = "python -m snakemake " + format_cli_arg("--config", args) + " --mode remote"
    fixed = requote_config_args(line, args)
    assert shlex.split(fixed)[4:7] == args
    out = subprocess.run(["sh", "-c", "printf '%s\\n' " + fixed], capture_output=True, text=True)
    assert out.stdout.splitlines()[4:7] == args
    assert requote_config_args(line, None) == line


def test_wait_for_files_requoted_for_the_shell(tmp_path):
    """Regression: Snakemake repr()-quotes --wait-for-files; an output root holding a quote,
    ``$(...)`` or a backquote broke the job script or ran what the path spells."""
    files = [
        str(tmp_path / "tmp.1"),
        str(tmp_path / "out a b'c;d\"e$(touch f)`touch g`" / "b.fits"),
    ]
    line = "python -m snakemake " + format_cli_arg("--wait-for-files", files) + " --mode remote"
    fixed = requote_file_args(line, "--wait-for-files", files)
    assert shlex.split(fixed)[4:6] == files
    out = subprocess.run(
        ["sh", "-c", "printf '%s\\n' " + fixed], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.stdout.splitlines()[4:6] == files
    assert not (tmp_path / "f").exists() and not (tmp_path / "g").exists()
    one = str(tmp_path / "it's.txt")
    line = "x " + format_cli_arg("--wait-for-files-file", one)
    assert shlex.split(requote_file_args(line, "--wait-for-files-file", one))[1:] == [
        "--wait-for-files-file",
        one,
    ]
    assert requote_file_args(line, "--wait-for-files", files) == line


def test_shell_safe_job_exec_requotes_what_the_remote_executor_wrote(tmp_path):
    """Both executors (Grid Engine and DIRAC) build the job command through it."""
    hostile = str(tmp_path / "out a b'c;d$(touch f)" / "bias_0.fits")

    class Job:
        def get_wait_for_files(self):
            return [hostile]

    class Executor:
        tmpdir = str(tmp_path / ".snakemake" / "tmp.x")

        def get_jobscript(self, job):
            return str(tmp_path / "snakejob.flat.3.sh")

        def format_job_exec(self, job):  # what RemoteExecutor.get_job_args writes
            waits = format_cli_arg("--wait-for-files", [self.tmpdir, hostile])
            return f"python -m snakemake --target-jobs 'flat:ccd=0' {waits} --mode remote"

    fixed = shell_safe_job_exec(Executor(), Job())
    assert shlex.split(fixed)[5:8] == ["--wait-for-files", Executor.tmpdir, hostile]


def test_noop_exec_writes_quoted_outputs_atomically(tmp_path):
    outputs = [tmp_path / "a b" / "calexp_1_0.fits", tmp_path / "it's" / "$(touch pwned)"]
    script = tmp_path / "job.sh"
    bench = tmp_path / "bench" / "visit=1.tsv"
    script.write_text(noop_exec([str(p) for p in outputs], seconds=0.05, benchmarks=[str(bench)]))
    done = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert [p.read_text() for p in outputs] == ["noop\n", "noop\n"]
    assert not (tmp_path / "pwned").exists()
    record = read_benchmark(bench)
    assert record is not None and record.runtime_s == pytest.approx(0.05)
    assert not list(tmp_path.rglob("*noop-tmp*"))


def test_noop_exec_fails_when_an_output_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    script = tmp_path / "job.sh"
    script.write_text(noop_exec([str(blocker / "x.fits"), str(tmp_path / "later.fits")]))
    done = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert not (tmp_path / "later.fits").exists()


def test_comma_safe_job_exec_names_comma_jobs_by_their_outputs():
    plain = [TargetSpec("warp", {"visit": "7"})]
    comma = [TargetSpec("warp", {"visit": "7", "patch": "3,4"})]
    command = "python -m snakemake --snakefile S {} --allowed-rules warp --cores 1"
    for specs in (plain, comma):
        exec_job = command.format(
            format_cli_arg("--target-jobs", encode_target_jobs_cli_args(specs))
        )
        fixed = comma_safe_job_exec(exec_job, specs, ["out/3,4/warp 7.fits"])
        if specs is plain:
            assert fixed == exec_job
        else:
            assert shlex.split(fixed)[5:7] == ["out/3,4/warp 7.fits", "--allowed-rules"]
            assert "--target-jobs" not in fixed
    with pytest.raises(ValueError, match="cannot name the job"):
        comma_safe_job_exec(command.format(""), comma, ["out/3,4/warp.fits"])


# ---- one qstat shared by every shard's Snakemake ---------------------------------------------


def _shared_states(path: str) -> dict[str, str]:
    return SharedQstat(path, max_age_s=30.0).states()


def test_one_qstat_serves_every_process_while_fresh(tmp_path, monkeypatch):
    """Six processes asking at once run qstat once (the lock) and all see the recorded states;
    once the snapshot is older than max_age_s the next caller runs it again."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "qstat"
    fake.parent.mkdir()
    xml = RECORDED / "qstat_mixed.xml"
    # a stand-in for qstat that counts its runs: the property is how often it runs
    fake.write_text(f"#!/bin/sh\necho run >> {calls}\nsleep 0.3\ncat {xml}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    snapshot = tmp_path / "qstat.json"
    with multiprocessing.get_context("fork").Pool(6) as pool:
        seen = pool.map(_shared_states, [str(snapshot)] * 6)
    assert calls.read_text().count("run") == 1
    assert all(s == parse_qstat_xml(xml.read_text()) for s in seen)
    assert jobs_in_error_state(["10", "8"], SharedQstat(snapshot, max_age_s=30.0)) == {"10": "Eqw"}
    assert calls.read_text().count("run") == 1
    data = json.loads(snapshot.read_text())
    snapshot.write_text(json.dumps({**data, "taken": data["taken"] - 31.0}))
    assert _shared_states(str(snapshot))["8"] == "r"
    assert calls.read_text().count("run") == 2
