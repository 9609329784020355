"""Backpressure of the shard driver: a starting shard's --jobs, a running shard's reservation."""

from __future__ import annotations

import itertools

import pytest

from dcflow.orchestration.sharded import (
    PROCESSES_PER_SHARD_SHARE,
    reserved_jobs,
    shard_grant,
    starting_shard_jobs,
)


def test_a_starting_shard_takes_what_it_can_use_of_the_free_cap():
    assert starting_shard_jobs(35_000, budget=200, in_use=0, max_concurrent_shards=2) == 200
    assert starting_shard_jobs(68, budget=300, in_use=0, max_concurrent_shards=8) == 68
    assert starting_shard_jobs(7, budget=200, in_use=150, max_concurrent_shards=2) == 7
    assert starting_shard_jobs(500, budget=200, in_use=100, max_concurrent_shards=2) == 100


def test_a_shard_waits_rather_than_start_on_a_sliver_of_the_cap():
    # its equal share is ceil(200 / 2) = 100: 10 free is not enough for a big shard...
    assert starting_shard_jobs(500, budget=200, in_use=190, max_concurrent_shards=2) == 0
    assert starting_shard_jobs(500, budget=200, in_use=200, max_concurrent_shards=2) == 0
    # ...but is for a shard that needs no more
    assert starting_shard_jobs(10, budget=200, in_use=190, max_concurrent_shards=2) == 10
    # ceil(301 / 4) = 76
    assert starting_shard_jobs(1000, budget=301, in_use=226, max_concurrent_shards=4) == 0
    assert starting_shard_jobs(1000, budget=301, in_use=225, max_concurrent_shards=4) == 76


def test_reservation_is_the_jobs_left_when_fewer():
    assert reserved_jobs(68, 68, None, 0) == 68
    assert reserved_jobs(68, 68, None, 62) == 6
    assert reserved_jobs(68, 68, 10, 4) == 6  # Snakemake planned fewer (some outputs existed)
    assert reserved_jobs(20, 68, None, 10) == 20
    assert reserved_jobs(20, 68, None, 68) == 0


def _drain(
    stages: list[int],
    n_shards: int,
    budget: int,
    max_concurrent: int,
    release: bool,
    follow_jobs_left: bool = False,
):
    """Run ``n_shards`` shards whose DAG levels have ``stages`` jobs (a level takes one step
    per wave of at most ``--jobs``); return the steps taken and the most jobs active at once.
    Without ``release`` a running shard holds its whole ``--jobs`` until it ends; with
    ``follow_jobs_left`` the driver's `shard_grant` decides (no shard count, the cap does),
    else at most ``max_concurrent`` shards run."""
    n_jobs = sum(stages)
    waiting, running, steps, peak = n_shards, [], 0, 0

    def held(shard: dict) -> int:
        if not release:
            return shard["jobs"]
        return reserved_jobs(shard["jobs"], n_jobs, n_jobs, shard["done"])

    while waiting or running:
        while waiting and (follow_jobs_left or len(running) < max_concurrent):
            if follow_jobs_left:
                jobs = shard_grant(
                    n_jobs,
                    [held(r) for r in running],
                    budget=budget,
                    max_concurrent_shards=max_concurrent,
                )
            else:
                jobs = starting_shard_jobs(
                    n_jobs,
                    budget=budget,
                    in_use=sum(held(r) for r in running),
                    max_concurrent_shards=max_concurrent,
                )
            if not jobs:
                break
            assert len(running) < PROCESSES_PER_SHARD_SHARE * max_concurrent
            running.append({"jobs": jobs, "done": 0, "level": 0, "left": stages[0]})
            waiting -= 1
        active = [min(r["jobs"], r["left"]) for r in running]
        peak = max(peak, sum(active))
        assert sum(active) <= sum(held(r) for r in running) <= budget
        for shard, n in zip(running, active, strict=True):
            shard["done"] += n
            shard["left"] -= n
            if not shard["left"] and shard["level"] + 1 < len(stages):
                shard["level"] += 1
                shard["left"] = stages[shard["level"]]
        running = [r for r in running if r["done"] < n_jobs]
        steps += 1
    return steps, peak


@pytest.mark.parametrize(("budget", "max_concurrent"), [(7, 2), (100, 8), (300, 8), (300, 16)])
def test_draining_shards_free_their_part_of_the_cap(budget, max_concurrent):
    # patch groups: 60 warps, then 5 coadds, then 1 measurement
    held = _drain([60, 5, 1], 40, budget, max_concurrent, release=False)
    freed = _drain([60, 5, 1], 40, budget, max_concurrent, release=True)
    assert held[1] <= budget and freed[1] <= budget
    assert freed[0] <= held[0]
    if budget >= 100:  # room for a draining shard's tail beside the next one's warps
        assert freed[0] < held[0]


@pytest.mark.parametrize(("budget", "max_concurrent"), [(300, 2), (300, 4), (700, 4), (7, 2)])
def test_concurrency_follows_the_jobs_left(budget, max_concurrent):
    # patch groups (60 warps, 5 coadds, 1 measurement): with a fixed shard count the draining
    # tails leave most of the cap idle; shards started beside them fill it, within the cap
    fixed = _drain([60, 5, 1], 40, budget, max_concurrent, release=True)
    follows = _drain([60, 5, 1], 40, budget, max_concurrent, release=True, follow_jobs_left=True)
    assert follows[1] <= budget
    assert follows[0] <= fixed[0]
    if budget >= 300:  # tails overlap the next shards: at most half the steps
        assert 2 * follows[0] <= fixed[0], (follows, fixed)


def test_shards_start_while_the_cap_has_room_whatever_their_number():
    # four running shards at max 2: two draining (5 and 1 left) leave room for a share
    assert shard_grant(500, [200, 100, 5, 1], budget=700, max_concurrent_shards=2) == 394
    assert shard_grant(500, [200, 300, 5, 1], budget=700, max_concurrent_shards=2) == 0
    # six draining shards at max 2: the process bound (3 per share) holds
    many = [1] * (PROCESSES_PER_SHARD_SHARE * 2)
    assert shard_grant(10, many, budget=700, max_concurrent_shards=2) == 0


@pytest.mark.parametrize("budget", [1, 3, 200])
@pytest.mark.parametrize("max_concurrent", [1, 2, 5])
def test_running_shards_never_hold_more_than_the_cap(budget, max_concurrent):
    sizes = [1, 4, 1000, 2, 35_000, 3, 150, 9]
    running: list[int] = []
    for n_jobs in itertools.islice(itertools.cycle(sizes), 80):
        if len(running) == max_concurrent or (running and n_jobs % 2):
            running.pop(0)  # the oldest shard finishes, freeing its --jobs
        jobs = starting_shard_jobs(
            n_jobs, budget=budget, in_use=sum(running), max_concurrent_shards=max_concurrent
        )
        if jobs:
            assert 1 <= jobs <= n_jobs
            running.append(jobs)
        assert sum(running) <= budget


def test_bad_counts_are_named():
    with pytest.raises(ValueError, match="budget must be >= 1, got 0"):
        starting_shard_jobs(5, budget=0, in_use=0, max_concurrent_shards=1)
    with pytest.raises(ValueError, match="max_concurrent_shards must be >= 1, got 0"):
        starting_shard_jobs(5, budget=4, in_use=0, max_concurrent_shards=0)
