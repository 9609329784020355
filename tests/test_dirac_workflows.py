"""The DIRAC executor plugin against the project's real loopback DIRAC (scripts/dirac-up).

Snakemake's own plugin test workflows (simple, groups) run through the real WMS (JobManager,
optimizers, Matcher, private-pilot JobAgents, sandboxes); then a failing job, a job killed
through the DIRAC API, a driver killed with SIGKILL while its job runs, and one failing job per
failure class (walltime, memory, bad_input, transient_io). Each test checks
what DIRAC recorded in the run's JobGroup. Skipped, with the reason, when the services are not
up (run `scripts/dirac-up` as root and source run/dirac/env.sh; scripts/run-tests does both).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from snakemake.common.tests import TestWorkflowsLocalStorageBase
from snakemake_interface_executor_plugins.settings import ExecutorSettingsBase

from dcflow.ledger import Ledger

REPO = Path(__file__).resolve().parents[1]
PREFIX = "test"


def _load_env_file() -> None:
    """Take the DIRAC client environment from run/dirac/env.sh when the caller did not."""
    if "DIRACSYSCONFIG" in os.environ:
        return
    run_dir = Path(os.environ.get("DCFLOW_RUN_DIR", REPO / "run"))
    env_file = run_dir / "dirac" / "env.sh"
    if not env_file.is_file():
        return
    for line in env_file.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            os.environ.setdefault(key, value.strip().strip('"'))


def _why_no_dirac() -> str | None:
    _load_env_file()
    try:
        import DIRAC  # noqa: F401
    except ImportError:
        return "the DIRAC client is not installed (scripts/install-dirac-client)"
    config = os.environ.get("DIRACSYSCONFIG")
    if not config or not Path(config).is_file():
        return "DIRAC services not up: no run/dirac/env.sh (run scripts/dirac-up as root)"
    proxy = os.environ.get("X509_USER_PROXY", "")
    if not Path(proxy).is_file():
        return f"no DIRAC user proxy at {proxy!r} (scripts/dirac-up makes it)"
    try:
        socket.create_connection(("127.0.0.1", 9135), timeout=2).close()
    except OSError:
        return "the DIRAC Configuration service does not answer on localhost:9135"
    return None


WHY = _why_no_dirac()
pytestmark = [
    pytest.mark.dirac,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(WHY is not None, reason=WHY or ""),
]


@pytest.fixture(scope="module")
def wms():
    from snakemake_executor_plugin_dirac.wms import DiracWMS

    return DiracWMS()


def _group_jobs(wms, workdir: Path) -> dict[str, tuple[str, str]]:
    """{job id: (JobName, Status)} of every DIRAC job of the run in ``workdir``."""
    from snakemake_executor_plugin_dirac.submit import job_group

    group = job_group(workdir, PREFIX)
    ids = wms.group_job_ids(group)
    if not ids:
        return {}
    from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient

    summary = JobMonitoringClient().getJobsSummary([int(i) for i in ids])["Value"]
    return {str(k): (v["JobName"], v["Status"]) for k, v in summary.items()}


def _job_status(job_id: str) -> str | None:
    """DIRAC's Status of one job, or None while DIRAC does not list it."""
    from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient

    summary = JobMonitoringClient().getJobsSummary([int(job_id)]).get("Value") or {}
    record = summary.get(int(job_id)) or summary.get(str(job_id))
    return record["Status"] if record else None


def _snakemake(workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "--directory", str(workdir),
        "--snakefile", str(workdir / "Snakefile"),
        "--executor", "dirac", "--jobs", "4", "--latency-wait", "5",
        "--seconds-between-status-checks", "1", "--dirac-job-group-prefix", PREFIX,
        *extra,
    ]  # fmt: skip


def _wait_for(predicate, timeout_s: float, what: str):
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# ---- Snakemake's own plugin test workflows -----------------------------------------------------


class TestDiracWorkflows(TestWorkflowsLocalStorageBase):
    """Snakemake's simple and groups workflows through the real DIRAC WMS."""

    __test__ = True
    expected_jobs = {"simple": 5, "groups": 4}  # a, b, c, d x2 / 3 group jobs + c

    def get_executor(self) -> str:
        return "dirac"

    def get_executor_settings(self) -> ExecutorSettingsBase | None:
        from snakemake_executor_plugin_dirac import ExecutorSettings

        return ExecutorSettings(job_group_prefix=PREFIX)

    def run_workflow(self, test_name, tmp_path, deployment_method=frozenset()):
        super().run_workflow(test_name, tmp_path, deployment_method)
        workdir = Path(tmp_path) / test_name
        assert (workdir / "test3.out").is_file()
        from snakemake_executor_plugin_dirac.wms import DiracWMS

        jobs = _group_jobs(DiracWMS(), workdir)
        assert len(jobs) == self.expected_jobs[test_name], jobs
        assert {status for _, status in jobs.values()} == {"Done"}, jobs
        if test_name == "simple":
            # rule d's two jobs went as one parametric submission: consecutive ids
            d_ids = sorted(int(i) for i, (name, _) in jobs.items() if name.startswith("d."))
            assert d_ids[1] - d_ids[0] == 1
            assert any(
                name.startswith("d.somewildcard=somedir2_subdir~") for name, _ in jobs.values()
            )


# ---- failures, kill, reattach ------------------------------------------------------------------

FAILING = """
rule all:
    input: "ok.txt", "bad.txt"

rule ok:
    output: "ok.txt"
    shell: "echo fine > {output}"

rule bad:
    output: "bad.txt"
    shell: "echo dcflow-marker-before-failure; exit 3"
"""


def test_failing_job_reported_with_dirac_status_and_log(tmp_path, wms):
    (tmp_path / "Snakefile").write_text(FAILING)
    proc = subprocess.run(
        _snakemake(tmp_path, "--keep-going"), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode != 0
    assert (tmp_path / "ok.txt").read_text() == "fine\n", proc.stderr[-3000:]
    assert not (tmp_path / "bad.txt").exists()
    err = proc.stderr
    assert "Failed: minor status 'Application Finished With Errors'" in err
    assert "application status 'sh Exited With Status 1'" in err
    assert "dcflow-marker-before-failure" in err  # the job's log, from its output sandbox
    statuses = sorted((n.split("~")[0], s) for n, s in _group_jobs(wms, tmp_path).values())
    assert statuses == [("bad", "Failed"), ("ok", "Done")]


HOLDING = """
rule all:
    input: "fast.txt", "slow.txt"

rule fast:
    output: "fast.txt"
    shell: "echo fast > {output}"

rule slow:
    output: "slow.txt"
    shell:
        "while [ -e hold ] || [ -e hold.$JOBID ]; do [ -e abort.$JOBID ] && exit 3; sleep 1; done; "
        "echo slow $JOBID > {output}"
"""


def _running_slow(wms, workdir: Path) -> str | None:
    for job_id, (name, status) in _group_jobs(wms, workdir).items():
        if name.startswith("slow~") and status == "Running":
            return job_id
    return None


def test_killed_job_fails_and_plain_rerun_redoes_only_it(tmp_path, wms):
    (tmp_path / "Snakefile").write_text(HOLDING)
    (tmp_path / "hold").touch()
    ledger_path = tmp_path / "ledger.sqlite3"
    logger = ["--logger", "dcflow", "--logger-dcflow-ledger", str(ledger_path)]
    logger += ["--logger-dcflow-backend", "dirac"]
    with subprocess.Popen(
        _snakemake(tmp_path, *logger), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        job_id = _wait_for(lambda: _running_slow(wms, tmp_path), 120, "the slow job to run")
        wms.kill([job_id])
        _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    # the run ledger classes the killed job as a lost pilot: retried elsewhere
    with Ledger(ledger_path) as ledger:
        (killed,) = ledger.failed_tiles()
    assert (killed.rule, killed.backend, killed.failure_class) == ("slow", "dirac", "node_lost")
    # DIRAC marks the job Killed; the JobWrapper, told by its heartbeat, stops the payload and
    # may then report it Failed / 'Received Kill signal': either is a failure, with its cause
    assert re.search(
        rf"DIRAC job {job_id} (Killed|Failed: minor status 'Received Kill signal')", err
    )
    fast_mtime = (tmp_path / "fast.txt").stat().st_mtime_ns
    assert not (tmp_path / "slow.txt").exists()

    # DIRAC carries a kill to the payload at the JobWrapper's next watchdog check (20 s on the
    # loopback DIRAC, 30 min by DIRAC's default), so the killed attempt may still be running:
    # it keeps holding on its own file (JOBID is DIRAC's job id in the payload's environment),
    # and only the rerun's attempt goes on.
    (tmp_path / f"hold.{job_id}").touch()
    (tmp_path / "hold").unlink()
    try:
        rerun = subprocess.run(_snakemake(tmp_path), capture_output=True, text=True, timeout=240)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        writer = (tmp_path / "slow.txt").read_text().split()
        assert writer[0] == "slow" and writer[1] != job_id, writer
        assert (tmp_path / "fast.txt").stat().st_mtime_ns == fast_mtime
    finally:
        (tmp_path / f"abort.{job_id}").touch()  # frees the pilot if the payload still holds


def _log_mentions(workdir: Path, text: str, after: float) -> bool:
    logs = (workdir / ".snakemake" / "log").glob("*.snakemake.log")
    return any(p.stat().st_mtime >= after and text in p.read_text() for p in logs)


def test_restarted_driver_adopts_running_job_instead_of_resubmitting(tmp_path, wms):
    (tmp_path / "Snakefile").write_text(HOLDING)
    (tmp_path / "hold").touch()
    proc = subprocess.Popen(
        _snakemake(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(lambda: _running_slow(wms, tmp_path), 120, "the slow job to run")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    subprocess.run([*_snakemake(tmp_path), "--unlock"], capture_output=True, check=True)
    started = time.time()
    with subprocess.Popen(
        _snakemake(tmp_path, "--rerun-incomplete"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as rerun:
        # the job still holds: the new driver must adopt it, then it is let finish
        _wait_for(lambda: _log_mentions(tmp_path, "Adopting DIRAC job", started), 120, "adoption")
        (tmp_path / "hold").unlink()
        _, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err[-3000:]
    assert (tmp_path / "slow.txt").read_text().split()[0] == "slow"
    names = sorted(n.split("~")[0] for n, _ in _group_jobs(wms, tmp_path).values())
    assert names == ["fast", "slow"]  # nothing submitted twice


# ---- failure classes on DIRAC ------------------------------------------------------------------

CLASSES_SNAKEFILE = """
rule slow:
    output: "out/slow.txt"
    log: "logs/slow/visit=3.log"
    resources: mem_mb=200, runtime=2
    script: "job.py"

rule oom:
    output: "out/oom.txt"
    log: "logs/oom/visit=1.log"
    resources: mem_mb=200, runtime=2
    script: "job.py"

rule bad:
    input: "broken.fits"
    output: "out/bad.txt"
    log: "logs/bad/visit=2.log"
    resources: mem_mb=200, runtime=2
    script: "job.py"

rule io:
    output: "disk/io.txt"
    log: "logs/io/visit=4.log"
    resources: mem_mb=200, runtime=2
    script: "job.py"
"""

CLASSES_SCRIPT = """
import math
import resource
import time

import numpy as np

from dcflow.io import read_fits, write_text
from dcflow.joblog import run_logged


def main(rule, inputs, out, mem_mb, runtime):
    if rule == "slow":
        # DIRAC's watchdog checks CPU time every 20-30 min: the limit a site's batch system
        # puts under the pilot is stood in for by the job's own RLIMIT_CPU, one second per
        # minute of runtime (a cheap test), counted from now; the job needs 3 s
        start = time.process_time()
        limit = math.ceil(start) + runtime
        resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 30))
        while time.process_time() < start + 3.0:
            pass
        text = "slow done"
    elif rule == "oom":
        # likewise a site's memory limit: the address space may grow by mem_mb from now
        with open("/proc/self/status") as handle:
            line = next(ln for ln in handle if ln.startswith("VmSize:"))
        limit = int(line.split()[1]) * 1024 + mem_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        block = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MB: more than 200, less than 400
        text = str(int(block.sum() // 2**20))
    elif rule == "bad":
        text = str(len(read_fits(inputs[0])))
    else:
        text = "io done"
    write_text(text + "\\n", out)


run_logged(
    main,
    snakemake.log[0],
    rule=snakemake.rule,
    inputs=list(snakemake.input),
    out=snakemake.output[0],
    mem_mb=int(snakemake.resources.mem_mb),
    runtime=int(snakemake.resources.runtime),
)
"""


def test_each_failure_class_on_dirac_is_classed_and_acted_on(tmp_path, wms, full_disk):
    """Four DIRAC jobs fail at once: past their CPU time (walltime), past their memory
    (memory), on a truncated FITS file (bad_input) and on a full disk (transient_io). The run
    ledger classes each; the rerun the classes' actions call for (more run time, more memory,
    the held tile once the disk has room, never the bad input) succeeds on DIRAC."""
    from astropy.io import fits

    from dcflow.failures import FailurePolicy
    from dcflow.ledger import MemoryPolicy
    from dcflow.orchestration.profiles import resource_override_args
    from dcflow.orchestration.rerun import triage

    (tmp_path / "Snakefile").write_text(CLASSES_SNAKEFILE)
    (tmp_path / "job.py").write_text(CLASSES_SCRIPT)
    good = tmp_path / "good.fits"
    fits.PrimaryHDU(data=[[1.0, 2.0], [3.0, 4.0]]).writeto(good)
    (tmp_path / "broken.fits").write_bytes(good.read_bytes()[:1000])  # truncated header
    disk = full_disk(tmp_path / "disk")
    logger = ["--logger", "dcflow", "--logger-dcflow-ledger", str(tmp_path / "ledger.sqlite3")]
    logger += ["--logger-dcflow-backend", "dirac"]
    targets = ["out/slow.txt", "out/oom.txt", "out/bad.txt", "disk/io.txt"]
    argv = _snakemake(tmp_path, *logger, "--keep-going", *targets)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        failed = {tile.rule: tile for tile in ledger.failed_tiles()}
        memory = ledger.memory_requests(MemoryPolicy())
        runtime = ledger.runtime_requests(FailurePolicy(), {"slow": 2})
    classes = {rule: (tile.backend, tile.failure_class) for rule, tile in failed.items()}
    assert classes == {
        "slow": ("dirac", "walltime"),
        "oom": ("dirac", "memory"),
        "bad": ("dirac", "bad_input"),
        "io": ("dirac", "transient_io"),
    }
    assert "run time limit: SIGXCPU received" in failed["slow"].reason
    assert failed["oom"].error_class == "MemoryError" and failed["oom"].memory_failure
    assert "broken.fits" in failed["bad"].reason
    assert "[Errno 28] No space left on device" in failed["io"].reason
    statuses = {n.split("~")[0]: s for n, s in _group_jobs(wms, tmp_path).values()}
    assert statuses == dict.fromkeys(("slow", "oom", "bad", "io"), "Failed")
    tiles = [(t.rule, t.data_id, t.failure_class) for t in failed.values()]
    keys, _ = triage(tiles, FailurePolicy(), ["transient_io"])  # the disk was freed
    assert {rule for rule, _ in keys} == {"slow", "oom", "io"}
    assert memory == {("oom", failed["oom"].data_id): 400}
    assert runtime == {("slow", failed["slow"].data_id): 4}

    (disk / "filler").unlink()
    retry = [*resource_override_args(memory, runtime, {}), "--keep-going"]
    argv = _snakemake(tmp_path, *logger, *retry, "out/slow.txt", "out/oom.txt", "disk/io.txt")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "slow.txt").read_text() == "slow done\n"
    assert (tmp_path / "out" / "oom.txt").read_text() == "300\n"
    assert (disk / "io.txt").read_text() == "io done\n"
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        assert ledger.failure_counts() == {"bad": {"bad_input": 1}}
