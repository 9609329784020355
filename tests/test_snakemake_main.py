"""dcflow's Snakemake entry: the scheduler's re-evaluation timers coalesced, exit not delayed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from dcflow.orchestration.snakemake_cli import SNAKEMAKE_ENTRY
from dcflow.orchestration.snakemake_main import coalesce_reevaluation_timers


class _Scheduler:
    """What the patched method touches of Snakemake's JobScheduler."""

    def __init__(self) -> None:
        self._open_jobs = threading.Semaphore(0)

    def _schedule_reevalutation(self, delay: float) -> None:
        raise AssertionError("not patched")


def _releases(semaphore: threading.Semaphore) -> int:
    count = 0
    while semaphore.acquire(blocking=False):
        count += 1
    return count


def test_rounds_asking_for_a_timer_while_one_is_pending_get_one_release():
    assert coalesce_reevaluation_timers(_Scheduler)
    scheduler = _Scheduler()
    for _ in range(50):
        scheduler._schedule_reevalutation(0.05)
    time.sleep(0.3)
    assert _releases(scheduler._open_jobs) == 1
    scheduler._schedule_reevalutation(0.05)  # fired: the next round may ask again
    time.sleep(0.3)
    assert _releases(scheduler._open_jobs) == 1


def test_a_scheduler_without_the_method_is_left_alone():
    assert not coalesce_reevaluation_timers(type("Other", (), {}))


def test_a_long_rate_limit_span_does_not_hold_the_exit(tmp_path):
    # Snakemake's own timers are non-daemon threads: with a 60 s span it exits a minute late
    rule = 'rule a:\n    output: "a.txt"\n    shell: "echo a > {output}"\n'
    (tmp_path / "Snakefile").write_text(rule)
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", SNAKEMAKE_ENTRY, "-c1", "-q", "-d", str(tmp_path),
         "-s", str(tmp_path / "Snakefile"), "--max-jobs-per-timespan", "100/60s"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert (tmp_path / "a.txt").read_text() == "a\n"
    assert time.monotonic() - start < 30
