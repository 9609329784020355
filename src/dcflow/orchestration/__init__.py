"""What the `dcflow` verbs do, as functions with explicit parameters (`dcflow.cli` only parses).

One module per concern; lower modules never import higher ones:

- `campaign_files`: the checkout (``REPO_ROOT``); opening a campaign's config, registry index
  and run ledger, each failure a `dcflow.errors.CampaignError` naming the file.
- `profiles`: profile lookup and settings, rule resource defaults, memory escalation.
- `settle`: the ledger settled against the disk once no run is alive (jobs that ended well
  unrecorded).
- `snakemake_cli`: Snakemake's command line for a campaign; plain runs and the dry run.
- `prepare`: ``simulate`` and ``ingest``.
- `run`: a ledger-backed run (``run``) and its progress bars.
- `sharded`: ``run --sharded``, shard by shard with bounded concurrency and backpressure.
- `plan_status`: ``plan``, ``status`` and ``failed``.
- `rerun`: ``rerun --failed``.
- `ping`: ``ping``.
- `pictures`: the plan's pictures (rule graph, sky with the focal plane per visit).
- `report`: ``report`` (Snakemake's HTML report and the per-stage benchmark summary).
- `cancel`: ``cancel`` (signals to the live runs through /proc).
"""

__all__: list[str] = []
