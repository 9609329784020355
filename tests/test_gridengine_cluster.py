"""The gridengine executor plugin against the project's real single-node Grid Engine.

scripts/run-tests starts the cluster (scripts/gridengine-up, as root) and sources
run/gridengine/env.sh; without it these tests skip with the reason. Each workflow job runs a
Snakemake process on the cluster (~4 s on this 2-core machine), so the workflows are small.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import psutil
import pytest
import snakemake.settings.types as settings
from snakemake import api
from snakemake.cli import parse_config
from snakemake.common.tests import TestWorkflowsLocalStorageBase
from snakemake.settings.types import ConfigSettings

from dcflow.failures import FailurePolicy
from dcflow.joblog import FAULTS_ENV
from dcflow.ledger import Ledger, MemoryPolicy
from dcflow.orchestration.rerun import triage
from dcflow.states import JobState
from snakemake_executor_plugin_gridengine import ExecutorSettings
from snakemake_executor_plugin_gridengine.reattach import SubmissionLedger
from snakemake_executor_plugin_gridengine.status import accounting_records, parse_qstat_xml

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = Path(os.environ.get("DCFLOW_RUN_DIR", REPO / "run")) / "gridengine" / "env.sh"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = [pytest.mark.gridengine, pytest.mark.root]


def _load_cluster_env() -> None:
    """Take SGE_ROOT etc. from run/gridengine/env.sh when the caller did not source it."""
    if not ENV_FILE.exists():
        return
    for line in ENV_FILE.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export ") :].split("=", 1)
            os.environ.setdefault(key, value)


def _cluster_missing() -> str | None:
    _load_cluster_env()
    if shutil.which("qstat") is None or "SGE_ROOT" not in os.environ:
        return "no Grid Engine here: run scripts/gridengine-up as root (make test does)"
    proc = subprocess.run(["qstat", "-g", "c"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return f"Grid Engine qmaster does not answer: {proc.stderr.strip()}"
    return None


def _drmaa_missing() -> str | None:
    try:
        import drmaa  # noqa: F401
    except (ImportError, RuntimeError, OSError) as err:
        return (
            "python-drmaa cannot load libdrmaa; source run/gridengine/env.sh before pytest "
            f"(LD_PRELOAD must be set when the process starts): {err}"
        )
    return None


CLUSTER_MISSING = _cluster_missing()
needs_cluster = pytest.mark.skipif(CLUSTER_MISSING is not None, reason=str(CLUSTER_MISSING))
DRMAA_MISSING = None if CLUSTER_MISSING else _drmaa_missing()
needs_drmaa = pytest.mark.skipif(DRMAA_MISSING is not None, reason=str(DRMAA_MISSING))


# ---- Snakemake's own plugin test workflows (simple: slashes in wildcards; groups) -----------


class _GridEngineWorkflows(TestWorkflowsLocalStorageBase):
    __test__ = False
    backend = "drmaa"

    def get_executor(self) -> str:
        return "gridengine"

    def get_executor_settings(self) -> ExecutorSettings:
        return ExecutorSettings(backend=self.backend)

    def get_remote_execution_settings(self) -> settings.RemoteExecutionSettings:
        # The base polls with 0 s between checks: a busy loop on a 2-core machine.
        return settings.RemoteExecutionSettings(seconds_between_status_checks=1)

    def get_config_settings(self) -> Optional[ConfigSettings]:  # noqa: UP045
        return None

    def run_workflow(self, test_name, tmp_path, deployment_method=frozenset()):
        """As the base class, plus config settings (the base does not pass any)."""
        source = Path(sys.modules[TestWorkflowsLocalStorageBase.__module__].__file__).parent
        workdir = Path(tmp_path) / test_name
        shutil.copytree(source / "testcases" / test_name, workdir)
        resources = self.get_resource_settings()
        resources.cores, resources.nodes = 1, 3
        with api.SnakemakeApi(
            settings.OutputSettings(verbose=False, show_failed_logs=True)
        ) as snakemake_api:
            workflow_api = snakemake_api.workflow(
                config_settings=self.get_config_settings() or ConfigSettings(),
                resource_settings=resources,
                storage_settings=settings.StorageSettings(
                    shared_fs_usage=settings.SharedFSUsage.all()
                ),
                deployment_settings=self.get_deployment_settings(deployment_method),
                workdir=workdir,
                snakefile=workdir / "Snakefile",
            )
            workflow_api.dag().execute_workflow(
                executor=self.get_executor(),
                executor_settings=self.get_executor_settings(),
                execution_settings=settings.ExecutionSettings(latency_wait=self.latency_wait),
                remote_execution_settings=self.get_remote_execution_settings(),
            )
        # Beyond "it ran": every job went through Grid Engine and succeeded there.
        ledger = SubmissionLedger(workdir / ".snakemake" / "gridengine" / "submissions.jsonl")
        submissions, finished = ledger.read()
        assert submissions, "no job was submitted to Grid Engine"
        assert {s.job_id for s in submissions} == set(finished)
        assert set(finished.values()) == {"succeeded"}
        if test_name == "simple":
            log_dir = workdir / ".snakemake" / "gridengine_logs" / "d"
            logs = sorted(p.name for p in log_dir.iterdir())
            assert logs == ["somewildcard=somedir1.log", "somewildcard=somedir2%2Fsubdir.log"]


@needs_cluster
@needs_drmaa
class TestWorkflowsDrmaa(_GridEngineWorkflows):
    __test__ = True
    backend = "drmaa"


@needs_cluster
class TestWorkflowsQsub(_GridEngineWorkflows):
    __test__ = True
    backend = "qsub"


@needs_cluster
class TestQuotesInConfigQsub(_GridEngineWorkflows):
    """Regression: quotes and a space in a config value reach the job's command line intact."""

    __test__ = True
    backend = "qsub"
    test_group_workflow = None  # the simple workflow carries the regression; saves ~20 s

    def get_config_settings(self) -> ConfigSettings:
        # As `snakemake --config ...` passes them: raw items plus their parsed values.
        raw = ["path={'x': \"/path/to file\"}", "owner=it's"]
        return ConfigSettings(config=parse_config(raw), config_args=raw)


# ---- wildcard values with a comma (sky-map patches "x,y") ----------------------------------

COMMA_SNAKEFILE = """
rule all:
    input: expand("out/{patch}/warp_{patch}.txt", patch=["3,4", "0,0"])

rule warp:
    output: "out/{patch}/warp_{patch}.txt"
    resources: mem_mb=1000, runtime=5
    shell: "echo {wildcards.patch:q} > {output:q}"
"""


@needs_cluster
@pytest.mark.parametrize("backend", ["drmaa", "qsub"])
def test_wildcard_value_with_a_comma_runs_in_the_job(tmp_path, backend):
    """Regression: Snakemake's --target-jobs parser splits "patch=3,4" at the comma."""
    if backend == "drmaa" and DRMAA_MISSING:
        pytest.skip(DRMAA_MISSING)
    workdir = _workflow(tmp_path, COMMA_SNAKEFILE)
    proc = subprocess.run(
        _snakemake_argv(workdir, backend, "--gridengine-array-min-jobs", "0"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for patch in ("3,4", "0,0"):
        assert (workdir / "out" / patch / f"warp_{patch}.txt").read_text() == f"{patch}\n"


# ---- failure, deletion, driver death, memory -----------------------------------------------

FAIL_SNAKEFILE = """
rule all:
    input: expand("out/{i}.txt", i=range(3))

rule work:
    output: "out/{i}.txt"
    shell: "if [ {wildcards.i} = 1 ]; then echo failing on purpose; exit 3; fi; echo ok > {output}"
"""

SLOW_SNAKEFILE = """
rule all:
    input: "out/merged.txt"

rule work:
    output: "out/{i}.txt"
    shell:
        "echo $JOB_ID >> runs-{wildcards.i}.txt; "
        "if [ -e slow-{wildcards.i} ]; then sleep 20; fi; echo {wildcards.i} > {output}"

rule merge:
    input: expand("out/{i}.txt", i=range(4))
    output: "out/merged.txt"
    shell: "cat {input} > {output}"
"""

MEMORY_SNAKEFILE = """
def mem_for_attempt(wildcards, attempt):
    return 1000 if attempt == 1 else 2500

rule all:
    input: "out/big.txt"

rule big:
    output: "out/big.txt"
    resources: mem_mb=mem_for_attempt
    shell: "{PYTHON} -c 'x = bytearray(1200 * 2**20)' && echo ok > {output}"
"""


def _snakemake_argv(workdir: Path, backend: str, *extra: str) -> list[str]:
    return [
        *SNAKEMAKE,
        "--snakefile",
        str(workdir / "Snakefile"),
        "--directory",
        str(workdir),
        "--executor",
        "gridengine",
        "--gridengine-backend",
        backend,
        "--jobs",
        "10",
        "--seconds-between-status-checks",
        "1",
        "--latency-wait",
        "5",
        *extra,
    ]


def _workflow(tmp_path: Path, text: str) -> Path:
    workdir = tmp_path / "wf"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(text.replace("{PYTHON}", sys.executable))
    return workdir


def _ledger(workdir: Path) -> SubmissionLedger:
    return SubmissionLedger(workdir / ".snakemake" / "gridengine" / "submissions.jsonl")


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _running(job_ids) -> bool:
    out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, check=True).stdout
    states = parse_qstat_xml(out)
    return all(states.get(j, "") == "r" for j in job_ids)


@needs_cluster
@pytest.mark.parametrize("backend", ["drmaa", "qsub"])
def test_nonzero_exit_is_a_failure_with_exit_status_and_log(tmp_path, backend):
    if backend == "drmaa" and DRMAA_MISSING:
        pytest.skip(DRMAA_MISSING)
    workdir = _workflow(tmp_path, FAIL_SNAKEFILE)
    proc = subprocess.run(
        _snakemake_argv(workdir, backend, "--keep-going"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 1
    submissions, finished = _ledger(workdir).read()
    failing = next(s for s in submissions if s.outputs == ("out/1.txt",))
    log = workdir / ".snakemake" / "gridengine_logs" / "work" / "i=1.log"
    expected = (
        f"Grid Engine job {failing.job_id} failed: exit status 1; rule command exit status 3; "
        f"log: {log}"
    )
    assert expected in proc.stderr
    assert "failing on purpose" in log.read_text()
    assert finished == {s.job_id: ("failed" if s is failing else "succeeded") for s in submissions}
    assert (workdir / "out" / "0.txt").exists() and (workdir / "out" / "2.txt").exists()
    assert not (workdir / "out" / "1.txt").exists()


@needs_cluster
def test_qdel_of_running_job_fails_it_and_plain_rerun_redoes_exactly_it(tmp_path):
    backend = "qsub" if DRMAA_MISSING else "drmaa"
    workdir = _workflow(tmp_path, SLOW_SNAKEFILE)
    (workdir / "slow-2").touch()
    argv = _snakemake_argv(workdir, backend, "--keep-going")
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ledger = _ledger(workdir)

    def slow_job():
        return next((s for s in ledger.read()[0] if s.outputs == ("out/2.txt",)), None)

    _wait_for(lambda: (workdir / "runs-2.txt").exists(), 90, "job 2 to start its command")
    victim = slow_job().job_id
    subprocess.run(["qdel", victim], check=True, capture_output=True)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 1
    assert f"Grid Engine job {victim} failed" in stderr
    assert ledger.read()[1][victim] in ("failed", "cancelled")  # DRMAA knows it was deleted
    done = sorted(p.name for p in (workdir / "out").iterdir())
    assert done == ["0.txt", "1.txt", "3.txt"]

    (workdir / "slow-2").unlink()
    first_run = {s.job_id for s in ledger.read()[0]}
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    redone = [s.outputs for s in ledger.read()[0] if s.job_id not in first_run]
    assert redone == [("out/2.txt",), ("out/merged.txt",)]
    assert [(workdir / f"runs-{i}.txt").read_text().count("\n") for i in range(4)] == [1, 1, 2, 1]


@needs_cluster
def test_sigkill_of_driver_then_restart_adopts_and_never_submits_twice(tmp_path):
    backend = "qsub" if DRMAA_MISSING else "drmaa"
    workdir = _workflow(tmp_path, SLOW_SNAKEFILE)
    for i in (1, 2, 3):
        (workdir / f"slow-{i}").touch()  # job 0 ends while no driver watches
    argv = _snakemake_argv(workdir, backend)
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = _ledger(workdir)
    _wait_for(lambda: len(ledger.read()[0]) == 4, 60, "4 submissions")
    first = ledger.read()[0]
    _wait_for(lambda: _running([s.job_id for s in first]), 60, "4 running jobs")
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    assert any((workdir / ".snakemake" / "locks").iterdir()), "the killed driver held locks"
    job_of = {s.outputs: s.job_id for s in first}
    _wait_for(
        lambda: job_of[("out/0.txt",)] in accounting_records({first[0].name_pattern}),
        60,
        "job 0 to end unwatched",
    )

    # What `python -m snakemake_executor_plugin_gridengine <workdir>` does, before a restart.
    recovery = subprocess.run(
        [sys.executable, "-m", "snakemake_executor_plugin_gridengine", str(workdir)],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(recovery.stdout)
    assert report["live_drivers"] == 0
    assert report["removed_lockfiles"]
    assert report["finished_ok"] == [job_of[("out/0.txt",)]]
    assert set(report["still_active"]) == {job_of[(f"out/{i}.txt",)] for i in (1, 2, 3)}

    restart = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert restart.returncode == 0, restart.stderr[-3000:]
    for i in (1, 2, 3):
        assert f"Adopting Grid Engine job {job_of[(f'out/{i}.txt',)]}" in restart.stderr
    # Each output's job ran exactly once: from the jobs' own trace and from accounting.
    assert [(workdir / f"runs-{i}.txt").read_text().count("\n") for i in range(4)] == [1] * 4
    submissions = ledger.read()[0]
    assert len(submissions) == 5  # the four work jobs once, then merge
    records = accounting_records({s.name_pattern for s in submissions})
    assert sorted(r.job_name.split(".", 1)[1] for r in records.values()) == ["merge"] + ["work"] * 4
    assert all(r.exit_status == 0 for r in records.values())
    locks = workdir / ".snakemake" / "locks"
    assert not (locks.exists() and any(locks.iterdir()))
    assert not [p for p in (workdir / ".snakemake" / "incomplete").rglob("*") if p.is_file()]
    assert (workdir / "out" / "merged.txt").read_text() == "0\n1\n2\n3\n"


NOOP_SNAKEFILE = """
configfile: "config.yaml"

rule all:
    input: "out/merged.txt"

rule work:
    output: "out/{i}.txt"
    shell: "echo never run: noop-direct jobs write their placeholders > {output}"

rule merge:
    input: expand("out/{i}.txt", i=range(4))
    output: "out/merged.txt"
    shell: "cat {input} > {output}"
"""


@needs_cluster
def test_a_restarted_driver_adopts_jobs_that_ended_well_or_are_not_yet_in_accounting(tmp_path):
    """Jobs that ended well while no driver watched, restarted at once with no recovery step:
    each is adopted and reported succeeded from accounting (once it has them), never
    submitted again. Noop-direct jobs (the scale runs' mode) leave their Snakemake
    "incomplete" marks, as a job whose own Snakemake was killed at its end does, so the
    restarted Snakemake schedules them again."""
    backend = "qsub" if DRMAA_MISSING else "drmaa"
    workdir = _workflow(tmp_path, NOOP_SNAKEFILE)
    (workdir / "config.yaml").write_text("campaign: {payload: noop}\n")
    noop = ("--gridengine-noop-direct", "True", "--gridengine-noop-seconds", "8")
    argv = _snakemake_argv(workdir, backend, *noop)
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = _ledger(workdir)
    _wait_for(lambda: len(ledger.read()[0]) == 4, 60, "4 submissions")
    first = ledger.read()[0]
    _wait_for(lambda: _running([s.job_id for s in first]), 60, "4 running jobs")
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    ids = [s.job_id for s in first]
    _wait_for(lambda: not _queued(ids), 90, "the 4 jobs to end unwatched")
    in_accounting = set(ids) & set(accounting_records({first[0].name_pattern}))

    shutil.rmtree(workdir / ".snakemake" / "locks")  # what --unlock does; no recovery step
    restart = subprocess.run(
        [*argv, "--rerun-incomplete"], capture_output=True, text=True, timeout=180
    )
    assert restart.returncode == 0, restart.stderr[-3000:]
    for job_id in ids:
        assert f"Adopting Grid Engine job {job_id} " in restart.stderr, (job_id, in_accounting)
    submissions, finished = ledger.read()
    assert [s.outputs for s in submissions[4:]] == [("out/merged.txt",)]
    assert finished == dict.fromkeys([s.job_id for s in submissions], "succeeded")
    records = accounting_records({s.name_pattern for s in submissions})
    assert sorted(r.job_name.split(".", 1)[1] for r in records.values()) == ["merge"] + ["work"] * 4
    assert (workdir / "out" / "merged.txt").read_text() == "noop\n"


def _queued(job_ids) -> bool:
    out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, check=True).stdout
    return bool(set(job_ids) & set(parse_qstat_xml(out)))


@needs_cluster
def test_job_over_h_vmem_is_a_memory_failure_and_a_retry_with_more_memory_succeeds(tmp_path):
    backend = "qsub" if DRMAA_MISSING else "drmaa"
    workdir = _workflow(tmp_path, MEMORY_SNAKEFILE)
    proc = subprocess.run(
        _snakemake_argv(workdir, backend, "--retries", "1"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    submissions, finished = _ledger(workdir).read()
    assert [(s.attempt, s.h_vmem_mb) for s in submissions] == [(1, 1000), (2, 2500)]
    assert [finished[s.job_id] for s in submissions] == ["failed", "succeeded"]
    assert f"Grid Engine job {submissions[0].job_id} failed: exit status 1" in proc.stderr
    assert "memory failure: out of memory (h_vmem=1000M per slot x 1" in proc.stderr
    assert (workdir / "out" / "big.txt").read_text() == "ok\n"
    assert "MemoryError" in Path(submissions[0].log).read_text()


@needs_cluster
def test_job_over_h_vmem_is_classed_out_of_memory_in_the_run_ledger(tmp_path):
    """The same fault through the dcflow logger: the ledger's class says memory, and the tile's
    next attempt asks for more (the action of the class)."""
    backend = "qsub" if DRMAA_MISSING else "drmaa"
    workdir = _workflow(tmp_path, MEMORY_SNAKEFILE)
    ledger_path = workdir / "ledger.sqlite3"
    logger = ["--logger", "dcflow", "--logger-dcflow-ledger", str(ledger_path)]
    logger += ["--logger-dcflow-backend", "gridengine"]
    proc = subprocess.run(
        _snakemake_argv(workdir, backend, *logger), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode != 0
    with Ledger(ledger_path) as ledger:
        (tile,) = ledger.failed_tiles()
        needs = ledger.memory_requests(MemoryPolicy(factor=2.5))
        counts = ledger.failure_counts()
    assert (tile.rule, tile.backend, tile.failure_class) == ("big", "gridengine", "memory")
    assert tile.memory_failure and tile.mem_mb_requested == 1000
    assert counts == {"big": {"memory": 1}}
    assert needs == {("big", "campaign"): 2500}


LIMITS_SNAKEFILE = """
rule slow:
    output: "out/slow.txt"
    log: "logs/slow/visit=3.log"
    resources: runtime=1, sge_extra="-l s_rt=10"
    script: "limits.py"

rule io:
    output: "disk/io.txt"
    log: "logs/io/visit=4.log"
    script: "limits.py"

rule bad:
    input: "broken.fits"
    output: "out/bad.txt"
    log: "logs/bad/visit=2.log"
    script: "limits.py"
"""

LIMITS_SCRIPT = """
import time

from dcflow.io import read_fits, write_text
from dcflow.joblog import run_logged


def main(rule, inputs, out):
    if rule == "slow":
        time.sleep(60)  # Grid Engine sends SIGUSR1 at s_rt=10 s
    if rule == "bad":
        read_fits(inputs[0])
    write_text(f"{rule} done\\n", out)


run_logged(
    main, snakemake.log[0], rule=snakemake.rule, inputs=list(snakemake.input),
    out=snakemake.output[0],
)
"""


def _ledger_run(workdir: Path, backend: str, target: str) -> subprocess.CompletedProcess:
    """Run ``target`` on the cluster with the dcflow logger writing ``workdir/ledger.sqlite3``."""
    logger = ["--logger", "dcflow", "--logger-dcflow-ledger", str(workdir / "ledger.sqlite3")]
    logger += ["--logger-dcflow-backend", "gridengine"]
    argv = _snakemake_argv(workdir, backend, *logger, target)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


@needs_cluster
def test_a_job_past_s_rt_is_walltime_in_the_run_ledger(tmp_path):
    """Grid Engine sends SIGUSR1 at the soft wall-clock limit s_rt (h_rt would SIGKILL it: the
    recorded qacct of such a job is classed in test_failures): the job's failure line says
    "run time limit" and the ledger's class is walltime, whose action asks for more run time."""
    backend = "qsub" if DRMAA_MISSING else "drmaa"
    workdir = _workflow(tmp_path, LIMITS_SNAKEFILE)
    (workdir / "limits.py").write_text(LIMITS_SCRIPT)
    proc = _ledger_run(workdir, backend, "out/slow.txt")
    assert proc.returncode != 0
    with Ledger(workdir / "ledger.sqlite3") as ledger:
        (tile,) = ledger.failed_tiles()
        needs = ledger.runtime_requests(FailurePolicy(), {"slow": 1})
    assert (tile.rule, tile.backend, tile.failure_class) == ("slow", "gridengine", "walltime")
    # the job's failure line, or the plugin's word when s_rt came before the script started
    assert "run time limit: SIGUSR1 received" in tile.reason or (
        "killed by signal SIGUSR1" in tile.reason
    ), tile.reason
    assert tile.runtime_s is None or tile.runtime_s < 50  # stopped at s_rt, not after 60 s
    assert needs == {("slow", "campaign"): 2}


VMEM_SNAKEFILE = """
rule io:
    output: "disk/io.txt"
    log: "logs/io/visit=4.log"
    resources: mem_mb=1000
    script: "limits.py"
"""


@needs_cluster
def test_the_vmem_fault_is_a_real_allocation_past_h_vmem_classed_memory(tmp_path, monkeypatch):
    """The chaos campaign's out-of-memory fault on Grid Engine: the job asks for more than its
    h_vmem leaves, the kernel refuses (Grid Engine set RLIMIT_AS from h_vmem), and the ledger
    classes the attempt memory, the class whose action asks for more memory."""
    backend = "qsub" if DRMAA_MISSING else "drmaa"
    workdir = _workflow(tmp_path, VMEM_SNAKEFILE)
    (workdir / "limits.py").write_text(LIMITS_SCRIPT)
    monkeypatch.setenv(FAULTS_ENV, "io:visit=4:vmem")
    proc = _ledger_run(workdir, backend, "disk/io.txt")
    assert proc.returncode != 0
    with Ledger(workdir / "ledger.sqlite3") as ledger:
        (tile,) = ledger.failed_tiles()
        needs = ledger.memory_requests(MemoryPolicy(factor=2.0))
    assert (tile.rule, tile.failure_class, tile.error_class) == ("io", "memory", "MemoryError")
    assert "failed under the address-space limit of 1000 MB (h_vmem)" in tile.reason
    assert tile.memory_failure and needs == {("io", "campaign"): 2000}
    assert not (workdir / "disk" / "io.txt").exists()


@needs_cluster
@pytest.mark.root
def test_a_full_disk_on_a_grid_engine_job_is_transient_io(tmp_path, full_disk):
    backend = "qsub" if DRMAA_MISSING else "drmaa"
    workdir = _workflow(tmp_path, LIMITS_SNAKEFILE)
    (workdir / "limits.py").write_text(LIMITS_SCRIPT)
    disk = full_disk(workdir / "disk")
    proc = _ledger_run(workdir, backend, "disk/io.txt")
    assert proc.returncode != 0
    with Ledger(workdir / "ledger.sqlite3") as ledger:
        (tile,) = ledger.failed_tiles()
    assert (tile.rule, tile.backend, tile.failure_class) == ("io", "gridengine", "transient_io")
    assert "[Errno 28] No space left on device" in tile.reason
    (disk / "filler").unlink()
    proc = _ledger_run(workdir, backend, "disk/io.txt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (disk / "io.txt").read_text() == "io done\n"


@needs_cluster
def test_a_corrupt_input_on_a_grid_engine_job_is_bad_input_and_not_rerun(tmp_path):
    from astropy.io import fits

    backend = "qsub" if DRMAA_MISSING else "drmaa"
    workdir = _workflow(tmp_path, LIMITS_SNAKEFILE)
    (workdir / "limits.py").write_text(LIMITS_SCRIPT)
    good = workdir / "good.fits"
    fits.PrimaryHDU(data=[[1.0, 2.0], [3.0, 4.0]]).writeto(good)
    (workdir / "broken.fits").write_bytes(good.read_bytes()[:1000])  # truncated header
    proc = _ledger_run(workdir, backend, "out/bad.txt")
    assert proc.returncode == 1, proc.stderr[-3000:]
    with Ledger(workdir / "ledger.sqlite3") as ledger:
        (tile,) = ledger.failed_tiles()
    assert (tile.rule, tile.backend, tile.failure_class) == ("bad", "gridengine", "bad_input")
    assert tile.error_class == "InputDataError" and "broken.fits" in tile.reason
    keys, outcomes = triage([(tile.rule, tile.data_id, tile.failure_class)], FailurePolicy())
    assert not keys
    assert outcomes[0].describe().startswith("bad_input: 1 tile(s) not rerun: fail at once")


LOST_SNAKEFILE = """
rule lost:
    output: "out/lost.txt"
    log: "logs/lost/visit=5.log"
    resources: sge_queue="{QUEUE}", sge_project="{PROJECT}"
    script: "lost.py"
"""

LOST_SCRIPT = """
import os
import time
from pathlib import Path

from dcflow.io import write_text
from dcflow.joblog import run_logged


def main(out):
    if Path("lose-node").exists():
        Path("job.pid").write_text(str(os.getpid()))
        time.sleep(120)  # the test kills the job's shepherd and the job meanwhile
    write_text("lost done\\n", out)


run_logged(main, snakemake.log[0], out=snakemake.output[0])
"""


def _qconf(*args: str) -> str:
    return subprocess.run(["qconf", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def fault_queue(tmp_path):
    """A one-slot queue of the test's own, open only to a project of its own.

    A fault injected there touches no one else's job, and the test never waits on all.q's
    slots, which other campaigns may hold. Both are removed at the end, with any job left in
    the queue (only this test's project can run there).
    """
    name = f"dcflow_fault_{os.getpid()}"
    queue = f"{name}.q"
    project_file = tmp_path / "project.conf"
    project_file.write_text(f"name {name}\noticket 0\nfshare 0\nacl NONE\nxacl NONE\n")
    settings = {"qname": queue, "slots": "1", "projects": name, "pe_list": "NONE"}
    lines = []
    for line in _qconf("-sq", "all.q").replace("\\\n", " ").splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() else ""
        lines.append(f"{key} {settings[key]}" if key in settings else line)
    queue_file = tmp_path / "queue.conf"
    queue_file.write_text("\n".join(lines) + "\n")
    _qconf("-Aprj", str(project_file))
    try:
        _qconf("-Aq", str(queue_file))
        try:
            yield queue, name
        finally:
            left = _jobs_in(queue)
            if left:
                subprocess.run(["qdel", *left], capture_output=True)
                _wait_for(lambda: not _jobs_in(queue), 60, f"the jobs left in {queue} to go")
            _qconf("-dq", queue)
    finally:
        _qconf("-dprj", name)


def _jobs_in(queue: str) -> list[str]:
    out = subprocess.run(["qstat", "-q", queue, "-u", "*", "-xml"], capture_output=True, text=True)
    return list(parse_qstat_xml(out.stdout))


def _lose_node(job_pid: int) -> None:
    """Kill the job's shepherd, then the job: what execd sees when a node's job vanishes."""
    job = psutil.Process(job_pid)
    shepherd = next(p for p in job.parents() if p.name().startswith("sge_shepherd"))
    shepherd.kill()
    os.killpg(os.getpgid(job_pid), signal.SIGKILL)


@needs_cluster
@pytest.mark.parametrize("backend", ["drmaa", "qsub"])
def test_a_lost_node_is_node_lost_in_the_run_ledger_and_a_plain_rerun_succeeds(
    tmp_path, fault_queue, backend
):
    """The job's shepherd and the job are SIGKILLed while it runs (on one host, the nearest
    thing to losing the node): qacct says failed 19, the ledger's class is node_lost, whose
    action (retry elsewhere) is a plain rerun, and that rerun succeeds."""
    if backend == "drmaa" and DRMAA_MISSING:
        pytest.skip(DRMAA_MISSING)
    queue, project = fault_queue
    workdir = _workflow(
        tmp_path, LOST_SNAKEFILE.replace("{QUEUE}", queue).replace("{PROJECT}", project)
    )
    (workdir / "lost.py").write_text(LOST_SCRIPT)
    (workdir / "lose-node").touch()
    logger = ["--logger", "dcflow", "--logger-dcflow-ledger", str(workdir / "ledger.sqlite3")]
    logger += ["--logger-dcflow-backend", "gridengine"]
    argv = _snakemake_argv(workdir, backend, *logger, "out/lost.txt")
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = workdir / "job.pid"
    _wait_for(lambda: pid_file.exists() and pid_file.read_text(), 120, "the job to start")
    _lose_node(int(pid_file.read_text()))
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 1, stderr[-3000:]
    with Ledger(workdir / "ledger.sqlite3") as ledger:
        (tile,) = ledger.failed_tiles()
    assert (tile.rule, tile.backend, tile.failure_class) == ("lost", "gridengine", "node_lost"), (
        tile.reason
    )
    assert "qacct failed 19 : before writing exit_status" in tile.reason
    keys, outcomes = triage([(tile.rule, tile.data_id, tile.failure_class)], FailurePolicy())
    assert keys == {("lost", tile.data_id)}
    assert outcomes[0].describe() == "node_lost: 1 tile(s) rerun (placed anew by the backend)"

    (workdir / "lose-node").unlink()
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (workdir / "out" / "lost.txt").read_text() == "lost done\n"
    with Ledger(workdir / "ledger.sqlite3") as ledger:
        assert ledger.failure_counts() == {}


UNDELIVERED_SNAKEFILE = """
rule undelivered:
    output: "out/undelivered.txt"
    log: "logs/undelivered/visit=7.log"
    resources: sge_queue="{QUEUE}", sge_project="{PROJECT}"
    shell: "echo $JOB_ID >> runs.txt; echo done > {output}"
"""

GE_FAULT_LOCK = "/tmp/ge.lock"
"""Taken by whoever stops a daemon of the shared cluster (benchmarks/chaos.py too)."""


def _queue_instance_states(queue: str) -> list[str]:
    out = subprocess.run(["qstat", "-f", "-q", queue], capture_output=True, text=True, check=True)
    return [
        line.split()[5] if len(line.split()) > 5 else ""
        for line in out.stdout.splitlines()
        if line.startswith(f"{queue}@")
    ]


def _execd_pid(run_dir: Path) -> int | None:
    """The pid of the sge_execd scripts/gridengine-up started, if it runs."""
    try:
        pid = int((run_dir / "gridengine" / "sge_execd.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


@contextlib.contextmanager
def _execd_killed(outage: list[float]):
    """sge_execd SIGKILLed (all.q closed to new jobs meanwhile); restarted by gridengine-up.

    all.q is disabled first, so that no other campaign's job is dispatched to the dead execd
    (it would be stuck as this test's is); running jobs go on under their shepherds. SIGKILL,
    as a crash: stopped with SIGTERM, sge_execd tells the qmaster, which then dispatches
    nothing to the host. On leaving, all.q is enabled and scripts/gridengine-up starts
    sge_execd again; ``outage`` gets the seconds it was down. gridengine-up's own check job
    may wait on a full all.q (the cluster is shared): its exit status is not asserted.
    """
    run_dir = Path(os.environ.get("DCFLOW_RUN_DIR", REPO / "run"))
    pid = _execd_pid(run_dir)
    assert pid is not None, "sge_execd is not running: scripts/gridengine-up first"
    with open(GE_FAULT_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["qmod", "-d", "all.q"], capture_output=True, check=True)
        up = None
        try:
            time.sleep(2.0)  # deliveries under way reach the execd before it dies
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            _wait_for(lambda: not psutil.pid_exists(pid), 30, "sge_execd to die")
            yield
        finally:
            subprocess.run(["qmod", "-e", "all.q"], capture_output=True, check=True)
            up = subprocess.Popen(
                [str(REPO / "scripts" / "gridengine-up")],
                env={**os.environ, "DCFLOW_RUN_DIR": str(run_dir)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_for(lambda: _execd_pid(run_dir) not in (None, pid), 60, "sge_execd to start")
            outage.append(time.monotonic() - killed)
    up.wait(timeout=120)


@needs_cluster
def test_a_job_dispatched_while_execd_is_down_is_deleted_as_lost_and_its_rerun_runs_once(
    tmp_path, fault_queue
):
    """A job is dispatched just as sge_execd dies: Grid Engine keeps it "t" with no usage
    after the execd is back (until its own resend at 300 s; a job its execd lost stays "r"
    forever). Past the plugin's grace the job is deleted and failed as node_lost, once it has
    left Grid Engine; the plain rerun runs it exactly once, and the cluster is whole again."""
    backend = "qsub" if DRMAA_MISSING else "drmaa"
    queue, project = fault_queue
    workdir = _workflow(
        tmp_path, UNDELIVERED_SNAKEFILE.replace("{QUEUE}", queue).replace("{PROJECT}", project)
    )
    logger = ["--logger", "dcflow", "--logger-dcflow-ledger", str(workdir / "ledger.sqlite3")]
    logger += ["--logger-dcflow-backend", "gridengine"]
    argv = _snakemake_argv(workdir, backend, *logger, "out/undelivered.txt")
    # held at submission, released the moment execd dies (a second later, the qmaster knows);
    # the grace ends after execd is back (~5 s)
    first = ["--gridengine-extra-args=-h", "--gridengine-unreported-grace-s", "30"]
    driver = subprocess.Popen(
        argv + first, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    submissions = lambda: _ledger(workdir).read()[0]  # noqa: E731
    _wait_for(lambda: submissions(), 120, "the job to be submitted")
    stuck = submissions()[0].job_id
    _wait_for(lambda: _native(stuck) == "hqw", 30, f"job {stuck} to be held")
    outage: list[float] = []
    with _execd_killed(outage):
        subprocess.run(["qrls", stuck], capture_output=True, check=True)
        _wait_for(lambda: "t" in _native(stuck), 20, f"job {stuck} to be dispatched")
    _, stderr = driver.communicate(timeout=300)
    assert outage[0] < 60
    assert driver.returncode == 1, stderr[-3000:]
    assert _native(stuck) == "", f"job {stuck} still in qstat after its failure was reported"
    assert not (workdir / "runs.txt").exists()  # it never ran
    with Ledger(workdir / "ledger.sqlite3") as ledger:
        (tile,) = ledger.failed_tiles()
    assert (tile.rule, tile.failure_class) == ("undelivered", "node_lost"), tile.reason
    assert f"job {stuck} failed: lost: no report from its execution host" in tile.reason
    keys, _ = triage([(tile.rule, tile.data_id, tile.failure_class)], FailurePolicy())
    assert keys == {("undelivered", tile.data_id)}

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    submitted = _ledger(workdir).read()[0]
    assert len(submitted) == 2 and submitted[0].job_id == stuck
    assert (workdir / "runs.txt").read_text().split() == [submitted[1].job_id]
    with Ledger(workdir / "ledger.sqlite3") as ledger:
        states = [(a.state, a.failure_class) for a in ledger.attempts()]
    assert states == [(JobState.FAILED, "node_lost"), (JobState.SUCCEEDED, None)]
    # the cluster is whole: execd back and running jobs (the rerun's), all.q open
    assert not any("d" in s or "u" in s for s in _queue_instance_states("all.q"))


def _native(job_id: str) -> str:
    out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, check=True).stdout
    return parse_qstat_xml(out).get(job_id, "")


HELD_SNAKEFILE = """
rule all:
    input: "out/a.txt", "out/b.txt"

rule a:
    output: "out/a.txt"
    shell: "echo ok > {output}"

rule b:
    output: "out/b.txt"
    resources: sge_extra="-h"
    shell: "echo ok > {output}"
"""


@needs_cluster
@pytest.mark.parametrize("backend", ["drmaa", "qsub"])
def test_job_in_error_state_is_failed_and_deleted(tmp_path, backend):
    """A job Grid Engine cannot start (its log directory vanished) sits in state Eqw forever:
    the plugin reports it failed and deletes it. Also checks a rule's sge_extra (-h) is used."""
    if backend == "drmaa" and DRMAA_MISSING:
        pytest.skip(DRMAA_MISSING)
    workdir = _workflow(tmp_path, HELD_SNAKEFILE)
    argv = _snakemake_argv(workdir, backend, "--keep-going")
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ledger = _ledger(workdir)

    def held():
        return next((s for s in ledger.read()[0] if s.rule == "b"), None)

    _wait_for(lambda: held() is not None, 60, "the held job's submission")
    job = held()
    out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, check=True).stdout
    assert parse_qstat_xml(out)[job.job_id] == "hqw"
    shutil.rmtree(Path(job.log).parent)
    subprocess.run(["qrls", job.job_id], check=True, capture_output=True)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 1
    assert f"Grid Engine job {job.job_id} failed: " in stderr
    if backend == "qsub":
        # qacct's reason ("26 : opening input/output file") is added when already flushed
        assert "Grid Engine put the job in error state (E); it was deleted" in stderr
    else:  # SGE's DRMAA ends a job it could not start as aborted
        assert "never started" in stderr or "error state" in stderr
    _wait_for(
        lambda: (
            job.job_id
            not in parse_qstat_xml(
                subprocess.run(["qstat", "-xml"], capture_output=True, text=True).stdout
            )
        ),
        30,
        "the error-state job to be deleted",
    )
    assert (workdir / "out" / "a.txt").read_text() == "ok\n"


@needs_cluster
@pytest.mark.parametrize("backend", ["drmaa", "qsub"])
def test_interrupt_cancels_every_job_with_qdel(tmp_path, backend):
    """Ctrl-C of the driver deletes its queued jobs (held here, so none can finish first)."""
    if backend == "drmaa" and DRMAA_MISSING:
        pytest.skip(DRMAA_MISSING)
    workdir = _workflow(tmp_path, FAIL_SNAKEFILE)
    argv = _snakemake_argv(workdir, backend, "--gridengine-extra-args=-h")
    driver = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # pytest started in the background (`nohup ... &`) ignores SIGINT, and so would the
        # driver it starts: the test's Ctrl-C would then do nothing
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    ledger = _ledger(workdir)
    ids: set[str] = set()
    try:
        _wait_for(lambda: len(ledger.read()[0]) == 3, 60, "3 submissions")
        ids = {s.job_id for s in ledger.read()[0]}
        out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, check=True).stdout
        assert {parse_qstat_xml(out).get(i) for i in ids} == {"hqw"}
        driver.send_signal(signal.SIGINT)
        driver.communicate(timeout=60)
        out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, check=True).stdout
        left = ids & set(parse_qstat_xml(out))
        assert not left
    finally:
        # a failed attempt (a qmaster outage of another campaign's chaos drill, once) must not
        # leave its driver or its held jobs behind
        if driver.poll() is None:
            driver.kill()
            driver.communicate(timeout=30)
        out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True).stdout
        left = sorted(ids & set(parse_qstat_xml(out)))
        if left:
            subprocess.run(["qdel", *left], capture_output=True)
    assert not list((workdir / ".snakemake" / "gridengine" / "drivers").glob("*.json"))
