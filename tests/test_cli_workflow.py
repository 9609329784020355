"""Campaign control end to end on a tiny simulated campaign, through the installed `dcflow`.

One campaign (1 CCD of 512 x 1024, 2 visits: 7 jobs) goes through: plan == snakemake -n
(fresh) -> a run SIGKILLed halfway (status matches disk) -> a run with the fault knob failing
both visits, one for memory -> plan == snakemake -n (half way) -> `failed` lists exactly those
tiles -> `rerun --failed` runs exactly those jobs (and the missing validation downstream), the
memory-failed one with twice the memory -> plan == snakemake -n (done) -> pictures, report.
The phases share the campaign and run in file order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from report_checks import broken_images_in_browser, check_report, chromium

from dcflow.joblog import FAULTS_ENV
from dcflow.ledger import Ledger
from dcflow.orchestration.plan_status import failed_campaign, plan_campaign, status_campaign
from dcflow.orchestration.snakemake_cli import snakemake_dry_run_counts
from dcflow.states import JobState

pytestmark = pytest.mark.slow

DCFLOW = str(Path(sys.executable).parent / "dcflow")

CONFIG = {
    "campaign": {"name": "tiny", "instrument": "cfht_sim"},
    "layout": {"input_root": "out/input", "output_root": "out"},
    "simulation": {
        "seed": 7,
        "n_ccds": 1,
        "ccd_nx": 512,
        "ccd_ny": 1024,
        "filters": ["g", "r"],
        "visits_per_filter": 1,
        "n_bias": 2,
        "n_flat": 2,
    },
}
FAULTS = "process_visit:visit=1001;process_visit:visit=1002:memory"


def dcflow(work: Path, *args: str, faults: str | None = None, timeout: float = 300):
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    if faults:
        env[FAULTS_ENV] = faults
    return subprocess.run(
        [DCFLOW, *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dry_run_counts(work: Path) -> dict[str, int]:
    """Snakemake's own dry run of the default target, with the local profile.

    ``--rerun-triggers mtime`` (`DRY_RUN_ARGS`): the planner does not model provenance
    triggers (changed params or code), and other developers change stage configs while this
    test runs.
    """
    return snakemake_dry_run_counts(work / "config.yaml", workdir=work)


def plan_counts(work: Path) -> dict[str, int]:
    return plan_campaign(work / "config.yaml", workdir=work).to_run_by_rule()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("campaign")
    (path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    for verb in ("simulate", "ingest"):
        proc = dcflow(path, verb, "--config", "config.yaml")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return path


def test_plan_equals_dry_run_fresh(work):
    expected = {
        "bias": 1,
        "flat": 2,
        "process_visit": 2,
        "load_visit_catalogs": 2,
        "science_validation": 1,
        "all": 1,
    }
    assert dry_run_counts(work) == expected
    assert plan_counts(work) == expected
    proc = dcflow(work, "plan", "--config", "config.yaml", "--json", "--no-pictures")
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    assert (plan["n_total"], plan["n_done"], plan["n_to_run"]) == (9, 0, 9)
    # no history yet: rule default runtimes (bias 10 + 2 flat 10 + 2 x 30 + 10 minutes, and
    # 2 catalog loads x 10)
    assert plan["cpu_hours"] == pytest.approx((10 + 20 + 60 + 10 + 20) / 60.0, abs=1e-4)


def test_status_after_sigkill_matches_disk(work):
    proc = subprocess.Popen(
        [DCFLOW, "run", "--config", "config.yaml", "--no-progress"],
        cwd=work,
        env={**os.environ, FAULTS_ENV: FAULTS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ledger_path = work / "out" / "ledger.sqlite3"
    deadline = time.monotonic() + 120
    done = running = []
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if not ledger_path.exists():
            continue
        with Ledger(ledger_path) as ledger:
            attempts = ledger.attempts()
        done = [a for a in attempts if a.state is JobState.SUCCEEDED]
        running = [a for a in attempts if a.state is JobState.RUNNING]
        if done and running:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, Snakemake and its jobs, mid-run
    proc.wait()
    assert done and running, "the run never had a finished and a running job at once"
    status = status_campaign(work / "config.yaml", workdir=work)
    left: dict[str, int] = {}
    done_by_stage: dict[str, int] = {}
    for row in status.rows:  # rows are per stage and filter
        left[row.stage] = left.get(row.stage, 0) + row.to_run
        done_by_stage[row.stage] = done_by_stage.get(row.stage, 0) + row.done
    # what Snakemake itself would run now equals what status says is left
    assert {s: n for s, n in left.items() if n} == dry_run_counts(work)
    assert sum(r.running for r in status.rows) == 0 and not status.running
    assert status.reaped_runs and not status.live_runs
    with Ledger(ledger_path) as ledger:
        lost = {a.tile for a in ledger.attempts() if a.state is JobState.LOST}
    plan = plan_campaign(work / "config.yaml", workdir=work)
    # jobs running at the kill are lost (one may have finished between the poll and the kill)
    assert lost and lost <= {a.tile for a in running} | {a.tile for a in done} | lost
    assert lost.isdisjoint({a.tile for a in done})
    assert sum(r.lost for r in status.rows) == len(lost & set(plan.to_run))
    for attempt in done:  # finished before the kill: complete on disk and counted done
        assert all(Path(work / p).exists() for p in attempt.outputs)
        assert done_by_stage[attempt.rule] >= 1
    proc = dcflow(work, "status", "--config", "config.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_fault_knob_then_failed_lists_exactly_those_tiles(work):
    proc = dcflow(work, "run", "--config", "config.yaml", faults=FAULTS)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "progress:" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert "2 failed" in proc.stdout and "dcflow rerun --failed" in proc.stdout
    # half way: plan and Snakemake agree on what is left
    expected = {"process_visit": 2, "load_visit_catalogs": 2, "science_validation": 1, "all": 1}
    assert dry_run_counts(work) == expected
    assert plan_counts(work) == expected
    tiles = failed_campaign(work / "config.yaml", workdir=work)
    assert {(t.rule, t.data_id) for t in tiles} == {
        ("process_visit", "visit=1001"),
        ("process_visit", "visit=1002"),
    }
    memory = {t.data_id: t.memory_failure for t in tiles}
    assert memory == {"visit=1001": False, "visit=1002": True}
    assert all(t.exit_code == 1 and t.log_tail and Path(work / t.log_path).exists() for t in tiles)
    proc = dcflow(work, "failed", "--config", "config.yaml", "--json")
    assert proc.returncode == 3
    classes = {t["data_id"]: (t["failure_class"], t["action"]) for t in json.loads(proc.stdout)}
    assert classes == {
        "visit=1001": ("unknown", "retry"),
        "visit=1002": ("memory", "retry_more_memory"),
    }
    proc = dcflow(work, "failed", "--config", "config.yaml")
    assert "process_visit visit=1002: [memory -> retry_more_memory]" in proc.stdout
    proc = dcflow(work, "failed", "--config", "config.yaml", "--stage", "bias")
    assert proc.returncode == 0 and "no failed tiles" in proc.stdout
    proc = dcflow(work, "status", "--config", "config.yaml", "--json")
    assert proc.returncode == 3
    status = json.loads(proc.stdout)
    assert status["n_failed"] == 2 and not status["complete"]
    assert status["failure_classes"] == {"process_visit": {"memory": 1, "unknown": 1}}
    proc = dcflow(work, "status", "--config", "config.yaml")
    assert "failed by class: memory 1 (process_visit 1), unknown 1 (process_visit 1)" in proc.stdout
    proc = dcflow(work, "report", "--config", "config.yaml")
    assert proc.returncode == 0 and "2 failed tiles" in proc.stdout, proc.stderr[-2000:]
    page = check_report(work / "out" / "report" / "report.html")
    text = " ".join(page.text)
    assert "Failed tiles (2)" in text and "dcflow rerun --failed" in text
    assert "visit=1001" in text and "fault knob" in text  # the log tail


def test_rerun_failed_runs_exactly_those_jobs_with_more_memory(work):
    with Ledger(work / "out" / "ledger.sqlite3") as ledger:
        before = len(ledger.runs())
    proc = dcflow(work, "rerun", "--failed", "--config", "config.yaml", "--mem-factor", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "rerun: 5 job(s) asked for" in proc.stdout  # and the visits' catalog loads
    assert "rerun: memory: 1 tile(s) rerun with more memory" in proc.stdout
    assert "rerun: unknown: 1 tile(s) rerun" in proc.stdout
    with Ledger(work / "out" / "ledger.sqlite3") as ledger:
        runs = ledger.runs()
        attempts = ledger.attempts(run_id=runs[-1].run_id)
        earlier = ledger.attempts(rule="process_visit", data_id="visit=1002")
    assert len(runs) == before + 1 and runs[-1].exit_code == 0
    assert {a.tile for a in attempts} == {
        ("process_visit", "visit=1001"),
        ("process_visit", "visit=1002"),
        ("load_visit_catalogs", "visit=1001"),
        ("load_visit_catalogs", "visit=1002"),
        ("science_validation", "campaign"),
    }
    assert all(a.state is JobState.SUCCEEDED for a in attempts)
    asked = {a.data_id: a.mem_mb_requested for a in attempts if a.rule == "process_visit"}
    assert earlier[0].mem_mb_requested == 2000 and earlier[0].memory_failure
    assert asked == {"visit=1001": 2000, "visit=1002": 4000}
    # complete: Snakemake has nothing to do, nor has the plan; status exits 0
    assert dry_run_counts(work) == {}
    assert plan_counts(work) == {}
    proc = dcflow(work, "status", "--config", "config.yaml")
    assert proc.returncode == 0 and "campaign complete" in proc.stdout
    proc = dcflow(work, "rerun", "--failed", "--config", "config.yaml")
    assert proc.returncode == 0 and "nothing to rerun" in proc.stdout


def _png_pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(path)


def test_plan_pictures_are_non_trivial(work):
    proc = dcflow(work, "plan", "--config", "config.yaml", "--pictures", "pics")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 " in proc.stdout and "pictures:" in proc.stdout
    for name in ("rule_graph.png", "sky.png"):
        path = work / "pics" / name
        assert path.stat().st_size > 10_000
        pixels = _png_pixels(path)[..., :3]
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 300
        # the "done" green is drawn (the campaign is complete; the sky's boxes are drawn with
        # alpha 0.55 over white) and the image is not blank
        done = np.array([0x2C, 0xA0, 0x2C]) / 255.0
        colour = 0.55 * done + 0.45 if name == "sky.png" else done
        green = np.all(np.abs(pixels - colour) < 0.03, axis=-1)
        assert green.sum() > 5_000, name
        assert pixels.std() > 0.05


def test_report_is_one_readable_page(work, tmp_path):
    proc = dcflow(work, "report", "--config", "config.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "never awaited" not in proc.stderr
    report = work / "out" / "report" / "report.html"
    bench = work / "out" / "report" / "report_benchmarks.tsv"
    page = check_report(report)
    # home links every section: status, validation, sky map, rule graph, cost, failed tiles
    assert {"#status", "#validation", "#sky", "#plan", "#cost", "#failed"} <= set(page.nav_links)
    # validation figures (summary + science_validation.png), sky map and rule graph
    assert len(page.images) >= 4
    text = " ".join(page.text)
    assert "visits meet every target" in text and "target <= 20 mas" in text
    assert "process_visit" in text and "peak RSS max (MB)" in text
    rows = [line.split("\t") for line in bench.read_text().splitlines()]
    stages = {row[0]: row for row in rows[1:]}
    assert set(stages) == {
        "bias",
        "flat",
        "process_visit",
        "load_visit_catalogs",
        "science_validation",
    }
    header = rows[0]
    assert int(stages["flat"][header.index("n_jobs")]) == 2
    assert float(stages["process_visit"][header.index("max_rss_mb_max")]) > 50.0


def test_report_loads_in_headless_chromium(work, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (the dashboard's set-up installs it as root)")
    report = work / "out" / "report" / "report.html"
    if not report.exists():
        assert dcflow(work, "report", "--config", "config.yaml").returncode == 0
    assert broken_images_in_browser(report, browser, tmp_path) == 0
