"""Snakemake's command line, with its scheduler's re-evaluation timers coalesced.

Snakemake 9 (``JobScheduler._schedule_reevalutation``, for its job rate limiter) starts a new
``threading.Timer`` of ``--max-jobs-per-timespan``'s span (1 s) in every scheduling round while
jobs wait to run, and each timer's round starts the next. Every finished job's round starts one
more such chain, so a Snakemake holding many ready jobs behind ``--jobs`` runs a round per
finished job per second: 6,901 rounds for 400 jobs of 2 s at ``-j 20`` (421 coalesced), each
round resetting and selecting over every ready job. One pending timer per scheduler keeps what
the timer is for (a round once the span has passed) without the chains; it is a daemon thread
so it never delays the exit either (Snakemake waits for its timers to fire before exiting).
``benchmarks/scheduler_rounds.py`` measures both side by side.

Run as ``python -m dcflow.orchestration.snakemake_main <snakemake arguments>``.
"""

from __future__ import annotations

import threading

__all__ = ["coalesce_reevaluation_timers", "main"]

_PENDING = "_dcflow_reevaluation_pending"


def coalesce_reevaluation_timers(scheduler_class) -> bool:
    """Give ``scheduler_class`` one pending re-evaluation timer at a time.

    Returns False, leaving it as it is, if it has no such method (a Snakemake this was not
    written for).
    """
    if not hasattr(scheduler_class, "_schedule_reevalutation"):
        return False
    lock = threading.Lock()

    def schedule_reevaluation(scheduler, delay: float) -> None:
        with lock:
            if getattr(scheduler, _PENDING, False):
                return
            setattr(scheduler, _PENDING, True)

        def fire() -> None:
            with lock:
                setattr(scheduler, _PENDING, False)
            scheduler._open_jobs.release()

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()

    scheduler_class._schedule_reevalutation = schedule_reevaluation
    return True


def main() -> None:
    """Snakemake's own ``main``, after coalescing its scheduler's timers."""
    from snakemake.cli import main as snakemake_main
    from snakemake.scheduling.job_scheduler import JobScheduler

    coalesce_reevaluation_timers(JobScheduler)
    snakemake_main()


if __name__ == "__main__":
    main()
