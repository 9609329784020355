"""The console as an operator meets it: exit codes, messages, no tracebacks, clean stops.

Each test runs the installed `dcflow` on a tiny simulated campaign (1 CCD, 2 visits: 7 jobs)
or calls the API the verb calls; the campaign is shared and the tests run in file order.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_cli_workflow import CONFIG

from dcflow.cli import EXIT_INTERRUPTED, VERBS, main
from dcflow.ledger import Ledger, pid_start_time
from dcflow.orchestration.cancel import cancel_runs, stop_process_tree
from dcflow.orchestration.run import SnakemakeOutput
from dcflow.states import JobState

DCFLOW = str(Path(sys.executable).parent / "dcflow")


def dcflow(work: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DCFLOW, *args],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("console")
    (path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    for verb in ("simulate", "ingest"):
        proc = dcflow(path, verb)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return path


def test_version(tmp_path):
    proc = dcflow(tmp_path, "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("dcflow 0.")


def test_help_has_examples_for_every_verb(tmp_path, capsys):
    proc = dcflow(tmp_path, "--help")
    assert proc.returncode == 0 and "exit codes:" in proc.stdout
    assert "thin verbs" not in proc.stdout
    for verb in VERBS:  # in-process: one interpreter start per verb cost 2-17 s each
        with pytest.raises(SystemExit) as stop:
            main([verb, "--help"])
        assert stop.value.code == 0, verb
        examples = capsys.readouterr().out.split("examples:", 1)[1]
        assert f"dcflow {verb}" in examples, verb


def test_yaml_syntax_error_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("campaign: {name: x\n  instrument: [\n")
    for verb in ("status", "plan", "run"):
        proc = dcflow(tmp_path, verb, "--config", "bad.yaml")
        assert proc.returncode == 2, (verb, proc.stderr)
        no_traceback(proc)
        assert proc.stderr.startswith(f"dcflow {verb}: bad.yaml") and "YAML" in proc.stderr


def test_failed_unknown_stage_is_a_usage_error(work):
    proc = dcflow(work, "failed", "--stage", "bogus")
    assert proc.returncode == 2
    assert "invalid choice: 'bogus'" in proc.stderr and "process_visit" in proc.stderr
    no_traceback(proc)


def test_plan_before_any_run_says_its_estimate_is_an_upper_bound(work):
    proc = dcflow(work, "plan", "--no-pictures")
    assert proc.returncode == 0, proc.stderr
    assert "<= " in proc.stdout and "upper bound from the rules' runtime limits" in proc.stdout


def test_status_json_into_a_closed_pipe_has_no_traceback(work):
    proc = subprocess.run(
        ["bash", "-c", f"'{DCFLOW}' status --json | head -c 10"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stdout.startswith("{")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                same = os.getpgid(int(entry.name)) == pgid
            except OSError:
                continue
            if same and pid_start_time(int(entry.name)) is not None:
                members.append(int(entry.name))
    return members


def _wait_for_running_job(ledger_path: Path, timeout_s: float = 120) -> int:
    """The Snakemake pid of the live run, once one of its jobs runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if not ledger_path.exists():
            continue
        with Ledger(ledger_path) as ledger:
            live = [r for r in ledger.runs() if r.finished is None and r.pid]
            running = ledger.attempts(states=[JobState.RUNNING])
        if live and running:
            return live[-1].pid
    raise AssertionError("no job of the run started")


def test_sigterm_stops_the_run_and_its_process_group(work):
    driver = subprocess.Popen(  # its own process group, as a shell starts a job
        [DCFLOW, "run"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        snakemake_pid = _wait_for_running_job(work / "out" / "ledger.sqlite3")
        assert os.getpgid(snakemake_pid) == driver.pid
        assert len(_group_members(driver.pid)) >= 3  # driver, Snakemake, a job
        driver.send_signal(signal.SIGTERM)
        out, err = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == EXIT_INTERRUPTED, err[-2000:]
    assert "Traceback" not in out + err and "WorkflowError" not in out + err
    assert "stopped by SIGTERM" in out and "`dcflow run` resumes" in out
    assert _group_members(driver.pid) == []  # no Snakemake, no job left
    with Ledger(work / "out" / "ledger.sqlite3") as ledger:
        assert all(r.finished is not None for r in ledger.runs())


def test_second_run_beside_a_live_one_is_refused_in_dcflows_words(work):
    ledger_path = work / "out" / "ledger.sqlite3"
    with Ledger(ledger_path) as ledger:
        run_id = ledger.start_run(campaign="tiny", profile="local", backend="local")
        ledger.set_run_pid(run_id, os.getpid())  # this test process stands for a live run
    try:
        proc = dcflow(work, "run")
    finally:
        with Ledger(ledger_path) as ledger:
            ledger.finish_run(run_id, 0)
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"run {run_id} of this campaign is still running" in proc.stderr
    assert "dcflow cancel" in proc.stderr and "--unlock" not in proc.stderr


def test_run_resumes_with_a_short_log_and_a_summary(work):
    proc = dcflow(work, "run")
    assert proc.returncode == 0, proc.stdout[-2000:]
    no_traceback(proc)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) <= 12, lines  # not a reprinted table; no Snakemake internals
    text = "\n".join(lines)
    assert "Building DAG" not in text and "snakemake" not in text.split("finished")[0].lower()
    assert "finished" in text and "dcflow report" in text and "report.html" in text
    logs = sorted((work / "out" / "logs" / "snakemake").glob("run=*.log"))
    assert logs and "Building DAG" in logs[-1].read_text()
    proc = dcflow(work, "status")
    assert proc.returncode == 0 and "no live run" in proc.stdout and "ETA" not in proc.stdout


def test_rerun_without_failed_flag_is_accepted(work):
    proc = dcflow(work, "rerun")
    assert proc.returncode == 0 and "nothing to rerun" in proc.stdout


def test_plan_of_a_second_campaign_uses_the_first_ones_job_times(work, tmp_path):
    second = {**CONFIG, "campaign": {"name": "second", "instrument": "cfht_sim"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(second))
    assert dcflow(tmp_path, "simulate").returncode == 0
    assert dcflow(tmp_path, "ingest").returncode == 0
    history = work / "out" / "ledger.sqlite3"
    proc = dcflow(tmp_path, "plan", "--no-pictures", "--history", str(history))
    assert proc.returncode == 0, proc.stderr
    total = next(line for line in proc.stdout.splitlines() if line.startswith("total"))
    assert "~" in total and "<=" not in total
    hours = float(total.split("~")[1].split()[0])
    with Ledger(history) as ledger:
        measured = [a.runtime_s for a in ledger.attempts(states=[JobState.SUCCEEDED])]
    # the same 7 jobs again: the first campaign's measured time, not 30-minute limits
    assert hours == pytest.approx(sum(measured) / 3600, rel=0.5)
    assert hours < 0.1
    assert f"of {history}" in proc.stdout
    proc = dcflow(tmp_path, "plan", "--no-pictures", "--history", "nowhere.sqlite3")
    assert proc.returncode == 1 and "nowhere.sqlite3: no such ledger" in proc.stderr


def test_unknown_snakemake_flag_is_one_error_line(work):
    proc = dcflow(work, "run", "--", "--no-such-flag")
    assert proc.returncode == 1
    no_traceback(proc)
    text = proc.stdout + proc.stderr
    assert len(text.splitlines()) <= 6, text
    assert "--no-such-flag" in text and "Snakemake's log:" in text


def _stubborn_process_tree(tmp_path: Path) -> subprocess.Popen:
    """A process ignoring SIGINT and SIGTERM, leading its own group, with a child like it."""
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if len(sys.argv) < 2:\n"
        "    subprocess.Popen([sys.executable, __file__, 'child'])\n"
        "time.sleep(300)\n"
    )
    script = tmp_path / "stubborn.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(_group_members(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_group_members(proc.pid)) == 2
    return proc


def test_stop_escalates_to_sigkill_when_signals_are_ignored(tmp_path):
    proc = _stubborn_process_tree(tmp_path)
    try:
        start = time.monotonic()
        ended_by = stop_process_tree(
            proc.pid,
            leader_gone=lambda: proc.poll() is not None,
            interrupt_grace_s=1.0,
            terminate_grace_s=1.0,
        )
        took = time.monotonic() - start
    finally:
        proc.kill()
    assert ended_by == "SIGKILL" and proc.returncode == -signal.SIGKILL
    assert 2.0 <= took < 15.0
    time.sleep(0.5)
    assert _group_members(proc.pid) == []


def test_cancel_of_a_run_ignoring_sigint_escalates(tmp_path):
    proc = _stubborn_process_tree(tmp_path)
    ledger_path = tmp_path / "ledger.sqlite3"
    with Ledger(ledger_path) as ledger:
        run_id = ledger.start_run(campaign="c", profile="local", backend="local")
        ledger.set_run_pid(run_id, proc.pid)
    try:
        stopped, _ = cancel_runs(ledger_path, interrupt_grace_s=1.0, terminate_grace_s=1.0)
    finally:
        proc.kill()
    assert stopped == [run_id]
    assert proc.wait(timeout=10) == -signal.SIGKILL
    time.sleep(0.5)
    assert _group_members(proc.pid) == []
    with Ledger(ledger_path) as ledger:
        assert ledger.run(run_id).finished is not None


def test_snakemake_output_counts_a_repeated_warning_once(tmp_path):
    lines = [
        "Building DAG of jobs...\n",
        *[
            f"2026-12-06 20:27:{s:02d},407 WARNING astropy: VerifyWarning: Card is too long\n"
            for s in range(64)
        ],
        "Error in rule bias:\n",
    ]
    shown = io.StringIO()
    output = SnakemakeOutput(tmp_path / "logs" / "run=1.log", echo=shown)
    output.pump(io.StringIO("".join(lines)))
    assert output.repeated_warnings() == [("WARNING astropy: VerifyWarning: Card is too long", 64)]
    assert output.errors == ["Error in rule bias:"]
    assert shown.getvalue().count("Card is too long") == 1  # echoed once
    assert (tmp_path / "logs" / "run=1.log").read_text() == "".join(lines)  # the log keeps all


def test_warnings_differing_only_in_numbers_are_one_kind(tmp_path):
    """The demo's alert-production warning named each of 4 visits, 4 times each: one line."""
    text = "WARNING alert_production: visit {} is an input of its template (visits {})\n"
    lines = [text.format(v, "1005, 1006") for v in (1005, 1006, 1007, 1002) for _ in range(4)]
    lines += ["WARNING coadd: only 0 of 4 visits pass\n"] * 4
    output = SnakemakeOutput(tmp_path / "run=1.log")
    output.pump(io.StringIO("".join(lines)))
    assert len(output.repeated_warnings()) == 5
    assert output.warning_kinds() == [
        (text.format(1005, "1005, 1006").strip(), 16, 4),
        ("WARNING coadd: only 0 of 4 visits pass", 4, 1),
    ]


def test_snakemake_output_follows_the_log_snakemake_writes_itself(tmp_path):
    """The driver reads the log Snakemake writes (no pipe: a driver killed alone must leave its
    Snakemakes a stdout that works); lines written in pieces are read whole, from the offset."""
    log = tmp_path / "run=2.log"
    log.write_text("an earlier run's line: Error in rule x:\n")
    offset = log.stat().st_size
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "for i in range(3):\n"
            "    sys.stdout.write('WARNING noop: half a '); sys.stdout.flush(); time.sleep(0.3)\n"
            "    print('line'); sys.stdout.flush(); time.sleep(0.3)\n"
            "print('Error in rule bias:')\n",
        ],
        stdout=open(log, "ab"),  # noqa: SIM115 (the child holds it)
    )
    output = SnakemakeOutput(log, echo=io.StringIO())
    output.follow(offset, lambda: writer.poll() is not None, period_s=0.1)
    assert output.repeated_warnings() == [("WARNING noop: half a line", 3)]
    assert output.errors == ["Error in rule bias:"]
    assert output.echo.getvalue() == "WARNING noop: half a line\nError in rule bias:\n"
