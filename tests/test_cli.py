"""The `dcflow` verbs: exit codes through the installed entry point, ping, small helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcflow import cli
from dcflow.ledger import Attempt, MemoryPolicy
from dcflow.orchestration.campaign_files import REPO_ROOT
from dcflow.orchestration.cancel import _descendants, cancel_runs
from dcflow.orchestration.ping import ping_profile
from dcflow.orchestration.profiles import memory_policy
from dcflow.orchestration.run import progress_lines
from dcflow.states import JobState
from dcflow.status import parse_proxy_timeleft, parse_qstat_f, ping_dirac, ping_gridengine

DCFLOW = str(Path(sys.executable).parent / "dcflow")
SNAKEMAKE_DCFLOW = [sys.executable, "-m", "snakemake", "-c2", "--logger", "dcflow"]

QSTAT_F = """queuename                      qtype resv/used/tot. load_avg arch          states
---------------------------------------------------------------------------------
all.q@vm                       BIP   0/2/8          0.60     lx-amd64      E
---------------------------------------------------------------------------------
long.q@vm                      BP    0/0/4          0.60     lx-amd64
---------------------------------------------------------------------------------
test.q@node2                   BIP   0/0/2          -NA-     -NA-          au
    4711 0.55500 snakejob.b root         r     11/25/2026 08:20:01     1
"""


def dcflow(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run(
        [DCFLOW, *args], capture_output=True, text=True, env=env, cwd=cwd, check=False
    )


def test_help_lists_every_verb():
    proc = dcflow("--help")
    assert proc.returncode == 0
    for verb in ("simulate", "ingest", "run", "demo", "plan", "status", "failed", "rerun", "ping"):
        assert verb in proc.stdout
    assert {cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_TILES_FAILED, cli.EXIT_UNREACHABLE} == {
        1,
        2,
        3,
        4,
    }


def test_usage_errors_exit_2(tmp_path):
    proc = dcflow("status", "--config", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr
    proc = dcflow("failed", "--stage", "no_such_stage")
    assert proc.returncode == 2 and "no_such_stage" in proc.stderr
    proc = dcflow("ping", "--profile", "no-such-profile")
    assert proc.returncode == 2 and "no-such-profile" in proc.stderr


def test_separator_only_strips_the_leading_double_dash():
    assert cli._strip_separator(["--", "-n", "--", "x"]) == ["-n", "--", "x"]
    assert cli._strip_separator(["-n"]) == ["-n"]


def test_parse_qstat_f_states():
    queues = {q.name: q for q in parse_qstat_f(QSTAT_F)}
    assert set(queues) == {"all.q@vm", "long.q@vm", "test.q@node2"}
    assert queues["all.q@vm"].states == "E" and not queues["all.q@vm"].usable
    assert queues["all.q@vm"].slots_used == 2 and queues["all.q@vm"].slots_total == 8
    assert queues["long.q@vm"].usable and not queues["test.q@node2"].usable


def test_parse_proxy_timeleft():
    assert (
        parse_proxy_timeleft("subject : x\ntimeleft     : 47:53:24\n") == 47 * 3600 + 53 * 60 + 24
    )
    assert parse_proxy_timeleft("Error: no proxy found") is None


def fake_tool(bin_dir: Path, name: str, stdout: str, code: int = 0) -> None:
    """A stand-in for a batch system client printing recorded output."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / f"{name}.out").write_text(stdout)
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\ncat "{bin_dir / (name + ".out")}"\nexit {code}\n')
    script.chmod(0o755)


def gridengine_profile(tmp_path: Path, queue: str | None = None) -> Path:
    profile = tmp_path / "profile"
    profile.mkdir(parents=True)
    text = "executor: gridengine\n" + (f"gridengine-queue: {queue}\n" if queue else "")
    (profile / "config.yaml").write_text(text)
    return profile


def test_ping_gridengine_reports_queue_in_error(tmp_path, monkeypatch):
    fake_tool(tmp_path / "bin", "qstat", QSTAT_F)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "SGE_ROOT": "/nonexistent"}
    profile = gridengine_profile(tmp_path, queue="all.q")
    proc = dcflow("ping", "--profile", str(profile), env=env)
    assert proc.returncode == cli.EXIT_UNREACHABLE
    assert "no usable queue instance: all.q@vm (E)" in proc.stdout
    # without a queue named, long.q is usable: the backend takes jobs
    proc = dcflow("ping", "--profile", str(gridengine_profile(tmp_path / "b")), env=env)
    assert proc.returncode == 0, proc.stdout
    assert "1 usable queue instance(s), 4 free slot(s)" in proc.stdout
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("SGE_ROOT", "/nonexistent")
    result = ping_profile(str(profile))  # the API, directly
    assert not result.ok and result.backend == "gridengine"


def test_ping_gridengine_unreachable_qmaster(tmp_path):
    fake_tool(tmp_path / "bin", "qstat", "error: unable to contact qmaster using port 6444\n", 1)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "SGE_ROOT": "/nonexistent"}
    proc = dcflow("ping", "--profile", str(gridengine_profile(tmp_path)), env=env)
    assert proc.returncode == cli.EXIT_UNREACHABLE
    assert "qmaster did not answer" in proc.stdout and "unable to contact qmaster" in proc.stdout


def test_ping_dirac_without_client_or_with_short_proxy(tmp_path):
    drop = ("DCFLOW_DIRAC", "X509", "DIRAC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PATH="/usr/bin:/bin", DCFLOW_RUN_DIR=str(tmp_path / "run"))
    profile = tmp_path / "dirac"
    profile.mkdir()
    (profile / "config.yaml").write_text("executor: dirac\n")
    proc = dcflow("ping", "--profile", str(profile), env=env)
    assert proc.returncode == cli.EXIT_UNREACHABLE and "no DIRAC environment" in proc.stdout
    env["DIRACSYSCONFIG"] = str(tmp_path / "dirac.cfg")
    proc = dcflow("ping", "--profile", str(profile), env=env)
    assert proc.returncode == cli.EXIT_UNREACHABLE and "no DIRAC client" in proc.stdout
    fake_tool(tmp_path / "bin", "dirac-proxy-info", "timeleft     : 02:00:00\n")
    fake_tool(tmp_path / "bin", "dirac-framework-ping-service", "{'OK': True, 'Value': {}}\n")
    env["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    proc = dcflow("ping", "--profile", str(profile), "--min-proxy-hours", "24", env=env)
    assert proc.returncode == cli.EXIT_UNREACHABLE
    assert "proxy valid for 2.0 h (need 24 h): renew it" in proc.stdout
    assert "ok   dirac WorkloadManagement/JobManager: answered" in proc.stdout
    proc = dcflow("ping", "--profile", str(profile), "--min-proxy-hours", "1", env=env)
    assert proc.returncode == 0, proc.stdout


def test_ping_local_profile():
    proc = dcflow("ping", "--profile", "local")
    assert proc.returncode == 0 and "ok   local" in proc.stdout


GE_ENV = REPO_ROOT / "run" / "gridengine" / "env.sh"
DIRAC_ENV = REPO_ROOT / "run" / "dirac" / "env.sh"


@pytest.mark.gridengine
@pytest.mark.skipif(
    shutil.which("qstat") is None or not GE_ENV.exists(),
    reason="no Grid Engine test cluster (scripts/gridengine-up writes run/gridengine/env.sh)",
)
def test_ping_real_gridengine():
    result = ping_gridengine(env_file=GE_ENV)
    assert result.ok, result.checks
    proc = dcflow("ping", "--profile", "sge")
    assert proc.returncode == 0 and "usable queue instance" in proc.stdout


@pytest.mark.dirac
@pytest.mark.skipif(
    not DIRAC_ENV.exists(), reason="no DIRAC test services (scripts/dirac-up writes env.sh)"
)
def test_ping_real_dirac():
    result = ping_dirac(env_file=DIRAC_ENV, min_proxy_hours=1.0)
    assert result.ok, result.checks
    assert {c.name for c in result.checks} >= {"proxy", "WorkloadManagement/JobManager"}


def test_memory_policy_from_profile(tmp_path):
    profile = tmp_path / "p"
    profile.mkdir()
    (profile / "dcflow.yaml").write_text("memory_escalation: {factor: 1.5, cap_mb: 9000}\n")
    assert memory_policy(str(profile)) == MemoryPolicy(factor=1.5, cap_mb=9000)
    assert memory_policy(str(profile), factor=3.0).factor == 3.0
    assert memory_policy(None) == MemoryPolicy()
    with pytest.raises(ValueError, match="factor"):
        memory_policy(None, factor=0.5)


def _attempt(rule: str, state: JobState) -> Attempt:
    return Attempt(
        1, 1, 1, rule, "visit=1", {}, None, None, None, state, None, None, None, False,
        None, None, None, None, None, None, None, None, None, (), None, None, None,
    )  # fmt: skip


def test_progress_lines_count_by_stage():
    attempts = [
        _attempt("bias", JobState.SUCCEEDED),
        _attempt("bias", JobState.SUCCEEDED),
        _attempt("process_visit", JobState.FAILED),
        _attempt("process_visit", JobState.RUNNING),
    ]
    lines = progress_lines({"bias": 2, "process_visit": 4}, attempts, width=10)
    assert lines[0] == "progress:"
    assert "[##########]     2/2" in lines[1]
    assert "[----------]     0/4" in lines[2] and "running 1" in lines[2]
    assert lines[2].endswith("failed 1")


def test_cancel_stops_a_live_run_and_its_jobs(tmp_path):
    from test_ledger import toy_workflow

    from dcflow.ledger import Ledger

    work = toy_workflow(tmp_path / "toy")
    ledger_path = work / "l.sqlite3"
    proc = subprocess.Popen(
        [*SNAKEMAKE_DCFLOW, "--logger-dcflow-ledger", str(ledger_path)],
        cwd=work,
        env={**os.environ, "TOY_SLEEP": "60"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        running = []
        while time.monotonic() < deadline and len(running) < 2:
            time.sleep(0.3)
            if ledger_path.exists():
                with Ledger(ledger_path) as ledger:
                    running = ledger.attempts(states=[JobState.RUNNING])
        assert len(running) == 2, "two toy jobs never ran at once"
        jobs = _descendants(proc.pid)
        while not jobs and time.monotonic() < deadline:  # the ledger may see a job first
            time.sleep(0.2)
            jobs = _descendants(proc.pid)
        assert jobs
        stopped, n_cancelled = cancel_runs(ledger_path, interrupt_grace_s=3)
        assert proc.wait(timeout=30) != 0
    finally:
        proc.kill()
    assert len(stopped) == 1 and n_cancelled == 2
    with Ledger(ledger_path) as ledger:
        states = {a.tile: a.state for a in ledger.attempts()}
        assert ledger.runs()[0].finished is not None
    assert set(states.values()) == {JobState.CANCELLED}
    time.sleep(1.0)
    assert all(not Path(f"/proc/{pid}").exists() for pid in jobs)  # job processes gone
    assert not list((work / "out").glob("a_*.txt"))
    proc = dcflow("cancel", "--config", str(tmp_path / "c.yaml"))
    assert proc.returncode == 2  # no such config: usage error


def test_cancel_without_live_run(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "campaign: {name: c, instrument: cfht_sim}\nlayout: {output_root: out}\n"
    )
    proc = dcflow("cancel", "--config", "c.yaml", cwd=tmp_path)
    assert proc.returncode == 0 and "no live run" in proc.stdout
