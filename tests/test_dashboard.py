"""`dcflow serve`: the live dashboard agrees with `dcflow status` and follows the ledger.

The board is checked against `dcflow status --json` on a placeholder campaign whose ledger is
written through the real `Ledger` (the events a run records), with the outputs of succeeded
jobs written as a run writes them. The browser test drives Debian's chromium through
chromium-driver (scripts/browser-up installs them as root; skipped otherwise, and CI as root
fails on that skip, see conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest
from noop_campaigns import write_noop_campaign

from dcflow.dashboard.app import find_campaigns, is_loopback, read_token
from dcflow.dashboard.board import CampaignBoard
from dcflow.errors import ConfigInvalidError, ConfigMissingError
from dcflow.ledger import Ledger
from dcflow.orchestration.campaign_files import campaign_ledger_path, open_campaign
from dcflow.orchestration.plan_status import status_campaign
from dcflow.orchestration.serve import open_board
from dcflow.pipeline.graph import JobGraph
from dcflow.states import JobState
from dcflow.status import read_env_file

DCFLOW = str(Path(sys.executable).with_name("dcflow"))
REPO = Path(__file__).resolve().parents[1]
FAILED_LOG_LINE = "ValueError: frame 1003 has no stars above threshold"


class CampaignLedger:
    """A placeholder campaign and its ledger, written as a run's logger would write it."""

    def __init__(self, root: Path) -> None:
        self.config = write_noop_campaign(root)
        self.workdir = self.config.parent
        _, _, index = open_campaign(self.config)
        self.graph = JobGraph(index)
        self.ledger = Ledger(campaign_ledger_path(index.layout, self.workdir))
        self.run_id = self.ledger.start_run(campaign="noop", profile="local")
        self._jobid = 0

    def start(self, rule: str, job: int) -> int:
        """A job of ``rule`` starts running; returns its Snakemake job id."""
        self._jobid += 1
        wildcards = self.graph.data_id(rule, job)
        log = self.workdir / "logs" / rule / f"{job}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.ledger.job_info(
            self.run_id,
            self._jobid,
            rule=rule,
            wildcards=wildcards,
            mem_mb=2000,
            threads=1,
            log_path=str(log.relative_to(self.workdir)),
            benchmark_path=None,
            outputs=self.outputs(rule, job),
            state=JobState.RUNNING,
        )
        return self._jobid

    def outputs(self, rule: str, job: int) -> list[str]:
        stage = self.graph.stage(rule)
        return [p for o in stage.outputs for p in self.graph.output_paths(rule, o.dataset, job)]

    def succeed(self, rule: str, job: int, jobid: int) -> None:
        """The job ends well: its outputs are written, then the ledger records it."""
        for path in self.outputs(rule, job):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text("placeholder\n")
        self.ledger.job_finished(self.run_id, jobid, state=JobState.SUCCEEDED, exit_code=0)

    def fail(self, rule: str, job: int, jobid: int) -> None:
        log = self.workdir / "logs" / rule / f"{job}.log"
        log.write_text(f"reading frame\n{FAILED_LOG_LINE}\n")
        self.ledger.job_finished(
            self.run_id,
            jobid,
            state=JobState.FAILED,
            exit_code=1,
            error_class="InputDataError",
            reason="no stars",
        )


@pytest.fixture
def campaign(tmp_path) -> CampaignLedger:
    """Biases done; of the flats (which read only biases) two done, one failed, one running.

    A job whose upstream is still to run is to run too (Snakemake's rule), so only jobs whose
    inputs are all done can count as done.
    """
    c = CampaignLedger(tmp_path / "noop")
    for job in range(c.graph.jobs("bias").n_jobs):
        c.succeed("bias", job, c.start("bias", job))
    for job in (0, 1):
        c.succeed("flat", job, c.start("flat", job))
    c.fail("flat", 2, c.start("flat", 2))
    c.running = c.start("flat", 3)
    return c


def _status_api_rows(config: Path) -> list[dict]:
    from dataclasses import asdict

    return [asdict(r) for r in status_campaign(config, workdir=config.parent).rows]


def _status_rows(config: Path) -> list[dict]:
    proc = subprocess.run(
        [DCFLOW, "status", "--json", "--config", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, 3, 5), proc.stderr  # 3: tiles failed
    return json.loads(proc.stdout)["rows"]


def _board_rows(board: CampaignBoard) -> list[dict]:
    board.refresh()
    return [asdict(r) for r in board.view().rows]


def test_board_counts_equal_status_and_follow_the_ledger(campaign):
    board = open_board(campaign.config)
    assert _board_rows(board) == _status_api_rows(campaign.config)
    flat = board.view().stage_totals()["flat"]
    assert (flat.done, flat.running, flat.failed) == (2, 1, 1)

    campaign.succeed("flat", 3, campaign.running)  # the running job ends
    retry = campaign.start("flat", 2)  # the failed tile is tried again
    assert _board_rows(board) == _status_api_rows(campaign.config)
    flat = board.view().stage_totals()["flat"]
    assert (flat.done, flat.running, flat.failed) == (3, 1, 0)

    campaign.fail("flat", 2, retry)
    assert _board_rows(board) == _status_api_rows(campaign.config)
    view = board.view()
    assert [(f.stage, f.error_class) for f in view.failed] == [("flat", "InputDataError")]
    # a StageError is bad input: rerun --failed leaves it until someone includes the class
    assert (view.failed[0].failure_class, view.failed[0].action) == ("bad_input", "fail_at_once")
    assert view.failure_classes == {"flat": {"bad_input": 1}}
    assert view.failure_actions["memory"] == "retry_more_memory"
    assert FAILED_LOG_LINE in view.failed[0].log_tail
    cost = {c.stage: c for c in view.costs}["flat"]
    assert (cost.attempts, cost.failed_attempts, cost.mem_mb_asked_mean) == (5, 2, 2000.0)
    now = time.time() + 5.0
    assert board.throughput_per_h(now=now) == pytest.approx(
        campaign.ledger.throughput_per_h(now=now), rel=1e-9
    )


def test_an_attempt_named_after_a_refresh_is_counted(campaign):
    board = open_board(campaign.config)
    jobid = 99
    campaign.ledger.job_started(campaign.run_id, jobid, state=JobState.RUNNING)
    board.refresh()  # sees the attempt before the logger names it
    campaign.ledger.job_info(
        campaign.run_id,
        jobid,
        rule="flat",
        wildcards=campaign.graph.data_id("flat", 2),
        mem_mb=2000,
        threads=1,
        log_path=None,
        benchmark_path=None,
        outputs=campaign.outputs("flat", 2),
    )
    assert _board_rows(board) == _status_api_rows(campaign.config)
    assert board.view().stage_totals()["flat"].running == 2


def test_a_dead_run_is_not_shown_running(campaign):
    board = open_board(campaign.config)
    campaign.ledger.set_run_pid(campaign.run_id, 2**22 + 1)  # no such process: the run died
    flat = [r for r in _board_rows(board) if r["stage"] == "flat"]
    assert sum(r["running"] for r in flat) == 0
    assert _board_rows(board) == _status_api_rows(campaign.config)  # status reaps it: lost
    assert board.view().stage_totals()["flat"].lost == 1


def test_serve_arguments_are_checked(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(ConfigMissingError, match="no campaign"):
        find_campaigns(tmp_path)
    configs = [write_noop_campaign(tmp_path / "site" / name, name=name) for name in ("a", "b")]
    assert find_campaigns(tmp_path / "site") == configs
    assert find_campaigns(configs[0].parent) == [configs[0]]
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ConfigInvalidError, match="token file is empty"):
        read_token(empty)
    proc = subprocess.run(
        [DCFLOW, "serve", str(tmp_path), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "DCFLOW_SERVE_TOKEN"},
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "not loopback: give a token" in proc.stderr


def test_a_directory_of_campaigns_is_served(tmp_path):
    configs = [write_noop_campaign(tmp_path / name, name=name) for name in ("a", "b")]
    server = Server([str(tmp_path)]).wait()
    try:
        code, page = _get(server.url + "/")
        assert code == 200
        assert '/c/a"' in page and '/c/b"' in page
        code, text = _get(server.url + "/c/b/status.json")
        assert code == 200
        assert json.loads(text)["rows"] == _status_api_rows(configs[1])
        assert _get(server.url + "/c/nope")[0] == 404
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Server:
    """`dcflow serve` in a subprocess, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, args: list[str], *, host: str = "127.0.0.1", env: dict | None = None):
        self.port = _free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.proc = subprocess.Popen(
            [DCFLOW, "serve", *args, "--host", host, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    def wait(self) -> Server:
        """Wait until it listens (it reads the campaign first)."""
        host = self.host
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dcflow serve exited: {self.proc.stdout.read()}")
            try:
                with socket.create_connection((host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("dcflow serve did not listen within 60 s")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


def test_a_token_guards_a_non_loopback_address(campaign, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = Server([str(campaign.config), "--token-file", str(token_file)], host="0.0.0.0").wait()
    try:
        local = f"http://127.0.0.1:{server.port}/"
        assert _get(local)[0] == 401
        assert _get(local + "?token=wrong")[0] == 401
        code, page = _get(local, {"Authorization": "Bearer s3cret-token"})
        assert code == 200 and "flat" in page
        assert _get(local + "?token=s3cret-token")[0] == 200
    finally:
        output = server.stop()
    assert "s3cret-token" not in output


def _chromium() -> tuple[str, str]:
    env_file = Path(os.environ.get("DCFLOW_RUN_DIR", REPO / "run")) / "browser" / "env.sh"
    found = {}
    if env_file.is_file():
        found = read_env_file(env_file)
    chromium = os.environ.get("DCFLOW_CHROMIUM") or found.get("DCFLOW_CHROMIUM")
    driver = os.environ.get("DCFLOW_CHROMEDRIVER") or found.get("DCFLOW_CHROMEDRIVER")
    chromium = chromium or shutil.which("chromium")
    driver = driver or shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium / chromedriver (scripts/browser-up installs them as root)")
    return chromium, driver


def _artifact_dir() -> Path:
    path = Path(os.environ.get("DCFLOW_RUN_DIR", REPO / "run")) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.browser
def test_dashboard_in_a_headless_browser(campaign):
    chromium, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1400"):
        options.add_argument(flag)
    server = Server([str(campaign.config)])  # starts while the browser does
    browser = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        browser.get(server.wait().url + "/")

        def page_counts() -> dict[str, dict[str, int]]:
            """The stage table, read in one script (htmx may swap it between two reads)."""
            rows = browser.execute_script(PAGE_COUNTS_JS)
            return {stage: dict(zip(STAGE_KEYS, values, strict=True)) for stage, *values in rows}

        shown = page_counts()
        assert shown, f"no stage table on the page: {browser.page_source[:1000]}"
        assert shown == _stage_counts(_status_rows(campaign.config))
        failed_text, n_cells = browser.execute_script(
            "return [document.getElementById('failed').innerText,"
            " document.querySelectorAll('#sky rect').length]"
        )
        assert FAILED_LOG_LINE in failed_text
        assert "bad_input (fail_at_once)" in failed_text
        classes = browser.execute_script(
            "return Array.from(document.querySelectorAll('#failure-classes tr[data-class]'),"
            " r => Array.from(r.cells, c => c.innerText))"
        )
        assert classes == [["flat", "bad_input", "1", "fail_at_once"]]
        assert "dcflow rerun --failed" in browser.page_source
        assert n_cells == len(campaign.graph.index.patch_tract)

        campaign.succeed("flat", 3, campaign.running)  # the running job ends
        WebDriverWait(browser, 10, poll_frequency=0.2).until(
            lambda b: page_counts()["flat"]["done"] == 3
        )
        assert page_counts()["flat"]["running"] == 0
        assert page_counts() == _stage_counts(_status_api_rows(campaign.config))
        browser.save_screenshot(str(_artifact_dir() / "dashboard.png"))
    finally:
        browser.quit()
        server.stop()


STAGE_KEYS = ("total", "done", "running", "failed")
PAGE_COUNTS_JS = """
return Array.from(document.querySelectorAll('#stages tr[data-stage]')).map(row =>
    [row.dataset.stage].concat(['total', 'done-n', 'running-n', 'failed-n'].map(
        css => parseInt(row.querySelector('td.' + css).textContent))));
"""


def _stage_counts(rows: list[dict]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        s = out.setdefault(r["stage"], dict.fromkeys(STAGE_KEYS, 0))
        for key in s:
            s[key] += r[key]
    return out
