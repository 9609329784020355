"""Fair-share backpressure of the shard driver: how a starting shard's --jobs is chosen."""

from __future__ import annotations

import itertools

import pytest

from dcflow.campaign.shard_driver import fair_share_jobs


def test_shards_ready_together_share_the_cap():
    # three big shards ready, two may run: each gets half the cap, not the first one all of it
    first = fair_share_jobs(35_000, budget=200, in_use=0, n_contending=3, max_concurrent_shards=2)
    second = fair_share_jobs(
        35_000, budget=200, in_use=first, n_contending=3, max_concurrent_shards=2
    )
    assert (first, second) == (100, 100)
    # four concurrent shards, odd cap: ceil(201 / 4) = 51, the last one gets what is left
    got, in_use = [], 0
    for _ in range(4):
        got.append(
            fair_share_jobs(
                10_000, budget=201, in_use=in_use, n_contending=6, max_concurrent_shards=4
            )
        )
        in_use += got[-1]
    assert got == [51, 51, 51, 48] and in_use == 201


def test_a_lone_or_small_shard_takes_only_what_it_needs():
    assert (
        fair_share_jobs(35_000, budget=200, in_use=0, n_contending=1, max_concurrent_shards=2)
        == 200
    )
    assert fair_share_jobs(7, budget=200, in_use=0, n_contending=2, max_concurrent_shards=2) == 7
    # what a finished shard freed goes to the next one, up to its share
    assert (
        fair_share_jobs(500, budget=200, in_use=100, n_contending=2, max_concurrent_shards=2) == 100
    )
    assert (
        fair_share_jobs(500, budget=200, in_use=190, n_contending=2, max_concurrent_shards=2) == 10
    )
    assert (
        fair_share_jobs(500, budget=200, in_use=200, n_contending=2, max_concurrent_shards=2) == 0
    )


@pytest.mark.parametrize("budget", [1, 3, 200])
@pytest.mark.parametrize("max_concurrent", [1, 2, 5])
def test_running_shards_never_hold_more_than_the_cap(budget, max_concurrent):
    sizes = [1, 4, 1000, 2, 35_000, 3, 150, 9]
    for contending in range(1, len(sizes) + 1):
        running: list[int] = []
        for n_jobs in itertools.islice(itertools.cycle(sizes), 40):
            if len(running) == max_concurrent:
                running.pop(0)  # the oldest shard finishes, freeing its --jobs
            jobs = fair_share_jobs(
                n_jobs,
                budget=budget,
                in_use=sum(running),
                n_contending=contending,
                max_concurrent_shards=max_concurrent,
            )
            if jobs:
                assert 1 <= jobs <= n_jobs
                running.append(jobs)
            assert sum(running) <= budget


def test_bad_counts_are_named():
    with pytest.raises(ValueError, match="budget must be >= 1, got 0"):
        fair_share_jobs(5, budget=0, in_use=0, n_contending=1, max_concurrent_shards=1)
    with pytest.raises(ValueError, match="n_contending must be >= 1, got 0"):
        fair_share_jobs(5, budget=4, in_use=0, n_contending=0, max_concurrent_shards=1)
