"""Shards: a campaign split into bounded Snakemake invocations along its natural axes."""

from __future__ import annotations

from dataclasses import dataclass

from dcflow.configs import check_fields, config_field

__all__ = ["ShardConfig"]


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """How `dcflow run --sharded` splits and drives a campaign (bounded DAG per shard)."""

    visits_per_shard: int = config_field(
        200, "Science visits per visit shard (process_visit) and per forced shard", minimum=1
    )
    max_concurrent_shards: int = config_field(
        2, "Shards whose Snakemake runs at the same time", minimum=1
    )
    max_queued_jobs: int = config_field(
        200,
        "Most batch jobs queued or running at once over all running shards (backpressure)",
        minimum=1,
    )

    def __post_init__(self) -> None:
        check_fields(self)
