"""Shards: a campaign split into bounded Snakemake invocations along its natural axes.

A campaign of millions of jobs cannot be one Snakemake DAG (../shared/notes/scale.md), so
`build_shards` cuts it along the axes of the pipeline's stages (`dcflow.pipeline.spec`: each
stage names the kind of shard it runs in, and its job space says how the kind groups jobs):

``calibs``
    every job of the calibration stages (raw cameras only), one shard;
``visits-NNNNN``
    the per-visit jobs of a batch of ``shards.visits_per_shard`` science visits;
``patches-TTTTT-GGG``
    group GGG of tract TTTTT: every job of the coadd stages on the group's
    ``shards.patches_per_shard`` patches (a warp per visit and patch, a coadd per patch and
    filter, a measurement per patch). A whole tract would not do: each warp lists its visit's
    36 calexps, and Snakemake's cost follows input files (a dense tract at DC2013 depth:
    ~35 k jobs, over a minute and 500 MB to plan);
``forced-NNNNN``
    per-visit jobs that read patch products (forced photometry, difference imaging), for the
    visits of batch NNNNN that overlap a patch;
``alerts-TTTTT-GGG``
    per-patch jobs that read per-visit products of the visits overlapping the patch (DIAObject
    association), grouped like the ``patches`` shards;
``catalogs-NNNNN``
    the catalog loads of the visits of batch NNNNN (their src and forced_src into the
    campaign's database), after that batch's visits and forced shards;
``final``
    campaign-wide jobs (science validation);
``fe55``
    the sensor stages (independent of everything else).

A shard's upstream shards follow from the spec's edges: a shard depends on the shards that
run the producers of its stages' inputs, restricted to the visits or patches it reads.

Each shard runs as one Snakemake invocation in *shard mode*: ``--config shard=<manifest>``
makes `dcflow.campaign.index.CampaignIndex` read only the manifest's visits from the registry
and makes rule ``all`` ask for the manifest's targets only; ``--allowed-rules`` keeps other
shards' rules out of the DAG, so upstream products are plain inputs that must already exist.

A shard that finished is marked (``<output_root>/shards/<id>.json``, written atomically) with
its hash: the manifest (its input list), the config sections its stages read (from the spec),
the code version (dcflow version, each stage's spec entry and the script it runs) and its
upstream shards' hashes. What is left is the shards without a matching marker, so it costs in
proportion to the shards, not the jobs; a changed config section reopens exactly the shards
whose stages read it, and, through the upstream hashes, everything downstream. A reopened
shard runs normally: Snakemake's own triggers decide which of its jobs rerun.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcflow.atomic import write_json
from dcflow.campaign.index import CampaignIndex
from dcflow.campaign.manifest import ShardManifest, digest, shards_dir
from dcflow.configs import check_fields, config_field
from dcflow.layout import Layout
from dcflow.pipeline.graph import JobGraph
from dcflow.pipeline.payload import payload_script
from dcflow.pipeline.spec import STAGES, Stage

__all__ = [
    "ALWAYS_HASHED_SECTIONS",
    "SHARD_KINDS",
    "Shard",
    "ShardConfig",
    "ShardHasher",
    "build_shards",
    "is_current",
    "manifest_of",
    "marker_path",
    "read_marker",
    "shard_code_digests",
    "shard_hashes",
    "shard_of_job",
    "shard_rules",
    "shards_left",
    "write_marker",
]

REPO_ROOT = Path(__file__).resolve().parents[3]

SHARD_KINDS = ("calibs", "visits", "patches", "forced", "catalogs", "alerts", "final", "fe55")
"""Shard kinds in topological order; each stage's ``shard`` is one of them."""

ALWAYS_HASHED_SECTIONS = ("campaign", "layout", "payload")
"""Config sections every shard's hash includes (instrument and payload, paths, commands)."""


def shard_rules(kind: str, stages: Sequence[Stage] = STAGES) -> tuple[str, ...]:
    """The rules whose jobs a kind of shard runs (with ``all``, its ``--allowed-rules``)."""
    return tuple(s.rule for s in stages if s.shard == kind)


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """How `dcflow run --sharded` splits and drives a campaign (bounded DAG per shard)."""

    visits_per_shard: int = config_field(
        200, "Science visits per visit shard (process_visit) and per forced shard", minimum=1
    )
    patches_per_shard: int = config_field(
        1,
        "Patches of one tract per coadd shard (make_warp, assemble_coadd, measure_patch); "
        "at DC2013 depth (up to ~870 warps of 36 calexps per patch) one patch plans in "
        "<= 7.5 s and 290 MB, two in <= 9.6 s and 330 MB",
        minimum=1,
    )
    max_concurrent_shards: int = config_field(
        2,
        "Shares of max_queued_jobs: a shard starts when 1/N of the cap (or its jobs, when "
        "fewer) is free, however many shards run; at most 3 N shard Snakemakes at once",
        minimum=1,
    )
    max_queued_jobs: int = config_field(
        200,
        "Most batch jobs queued or running at once over all running shards (backpressure)",
        minimum=1,
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class Shard:
    """One bounded Snakemake invocation of a sharded campaign.

    Attributes
    ----------
    shard_id : str
        ``calibs``, ``visits-NNNNN``, ``patches-TTTTT-GGG``, ``forced-NNNNN``, ``final`` or
        ``fe55``.
    kind : str
        One of `SHARD_KINDS`.
    visits : tuple of int
        Science visits the shard's index reads from the registry.
    patches : tuple of (int, str)
        ``(tract, patch)`` whose coadd jobs the shard runs (patch-group shards).
    targets : tuple of str
        What rule ``all`` asks for in shard mode (one output per job of the shard's stages
        that make target products, or of its last stages).
    upstream : tuple of str
        Shards whose products this one reads.
    n_jobs : int
        Jobs of the shard (without ``all``).
    """

    shard_id: str
    kind: str
    visits: tuple[int, ...]
    patches: tuple[tuple[int, str], ...]
    targets: tuple[str, ...]
    upstream: tuple[str, ...]
    n_jobs: int

    @property
    def rules(self) -> tuple[str, ...]:
        """The rules of the shard's jobs."""
        return shard_rules(self.kind)


def _target_stages(graph: JobGraph, kind: str) -> list[tuple[Stage, str]]:
    """(stage, dataset) whose first file per job a kind's shards ask for."""
    stages = [s for s in graph.stages if s.shard == kind]
    consumed = {
        producer.rule
        for s in stages
        for _, producer in graph.upstream_inputs(s)
        if producer in stages
    }
    out = []
    for s in stages:
        targets = [o.dataset for o in s.outputs if o.target]
        if targets:
            out += [(s, d) for d in targets]
        elif s.rule not in consumed:
            out.append((s, s.outputs[0].dataset))
    return out


def _selected(graph: JobGraph, s: Stage, visits: np.ndarray | None, patches: np.ndarray | None):
    """Jobs of a stage whose visit (or patch) index is in the given set (all if None)."""
    columns = graph.jobs(s.rule).columns
    n = graph.jobs(s.rule).n_jobs
    keep = np.ones(n, dtype=bool)
    if visits is not None and "visit" in columns:
        keep &= np.isin(columns["visit"], visits)
    if patches is not None and "patch" in columns:
        keep &= np.isin(columns["patch"], patches)
    return np.flatnonzero(keep)


def _shard(
    graph: JobGraph,
    shard_id: str,
    kind: str,
    upstream: tuple[str, ...],
    *,
    visits: np.ndarray | None = None,
    patches: np.ndarray | None = None,
    read_visits: np.ndarray | None = None,
) -> Shard:
    index = graph.index
    targets: list[str] = []
    for s, dataset in _target_stages(graph, kind):
        for j in _selected(graph, s, visits, patches).tolist():
            targets.append(graph.output_paths(s.rule, dataset, j)[0])
    n_jobs = sum(len(_selected(graph, s, visits, patches)) for s in graph.stages if s.shard == kind)
    shown = visits if read_visits is None else read_visits
    return Shard(
        shard_id,
        kind,
        tuple(int(index.visits[v]) for v in np.unique(shown).tolist()) if shown is not None else (),
        tuple((int(index.patch_tract[p]), index.patch_name(p)) for p in patches.tolist())
        if patches is not None
        else (),
        tuple(targets),
        upstream,
        n_jobs,
    )


def _patch_groups(index: CampaignIndex, patches_per_shard: int):
    """(tract, group number, patch indices, overlapping visit indices) per group of patches."""
    by_patch = np.argsort(index.pair_patch, kind="stable")
    bounds = np.searchsorted(index.pair_patch[by_patch], np.arange(index.n_patches + 1))
    order = np.lexsort((index.patch_y, index.patch_x, index.patch_tract))
    for tract in sorted(set(index.patch_tract.tolist())):
        in_tract = [int(p) for p in order if index.patch_tract[p] == tract]
        for g, start in enumerate(range(0, len(in_tract), patches_per_shard)):
            group = np.asarray(in_tract[start : start + patches_per_shard], dtype=np.int64)
            rows = np.concatenate([by_patch[bounds[p] : bounds[p + 1]] for p in group])
            visits = np.unique(index.pair_visit[rows]).astype(np.int64)
            yield tract, g, group, visits


def build_shards(
    index: CampaignIndex,
    layout: Layout | None = None,
    *,
    visits_per_shard: int,
    patches_per_shard: int = 1,
) -> list[Shard]:
    """Split a campaign into shards, in a topological order (upstream first).

    Every job but ``all`` belongs to exactly one shard (`shard_of_job` says which). Targets
    are named with ``layout`` (default: the index's).

    Raises
    ------
    ValueError
        If ``visits_per_shard`` or ``patches_per_shard`` < 1.
    """
    if visits_per_shard < 1:
        raise ValueError(f"visits_per_shard must be >= 1, got {visits_per_shard}")
    if patches_per_shard < 1:
        raise ValueError(f"patches_per_shard must be >= 1, got {patches_per_shard}")
    if layout is not None:
        index = dataclasses.replace(index, layout=layout)
    graph = JobGraph(index)
    kinds = {s.shard for s in graph.stages}
    n_visits = index.n_visits
    n_batches = -(-n_visits // visits_per_shard)
    batch_of = np.arange(n_visits) // visits_per_shard
    shards: list[Shard] = []
    has_calibs = "calibs" in kinds and n_visits > 0
    if has_calibs:
        shards.append(_shard(graph, "calibs", "calibs", ()))
    calib_up = ("calibs",) if has_calibs else ()
    batches = [
        np.arange(k * visits_per_shard, min((k + 1) * visits_per_shard, n_visits))
        for k in range(n_batches)
    ]
    if "visits" in kinds:
        for k, visits in enumerate(batches):
            shards.append(_shard(graph, f"visits-{k:05d}", "visits", calib_up, visits=visits))
    group_of_patch = np.full(index.n_patches, -1, dtype=np.int64)
    group_ids: list[str] = []
    if "patches" in kinds:
        for tract, g, group, visits in _patch_groups(index, patches_per_shard):
            shard_id = f"patches-{tract:05d}-{g:03d}"
            group_of_patch[group] = len(group_ids)
            group_ids.append(shard_id)
            upstream = tuple(f"visits-{b:05d}" for b in sorted(set(batch_of[visits].tolist())))
            shards.append(
                _shard(graph, shard_id, "patches", upstream, patches=group, read_visits=visits)
            )
    if "forced" in kinds and index.n_pairs:
        pair_batch = batch_of[index.pair_visit]
        for k in range(len(batches)):
            rows = np.flatnonzero(pair_batch == k)
            if not rows.size:
                continue
            mine = np.unique(index.pair_visit[rows]).astype(np.int64)
            groups = sorted(set(group_of_patch[index.pair_patch[rows]].tolist()))
            upstream = (f"visits-{k:05d}", *(group_ids[g] for g in groups))
            shards.append(_shard(graph, f"forced-{k:05d}", "forced", upstream, visits=mine))
    if "catalogs" in kinds:
        forced_ids = {s.shard_id for s in shards if s.kind == "forced"}
        for k, visits in enumerate(batches):
            upstream = (f"visits-{k:05d}", *({f"forced-{k:05d}"} & forced_ids))
            shards.append(_shard(graph, f"catalogs-{k:05d}", "catalogs", upstream, visits=visits))
    if "alerts" in kinds and index.n_pairs:
        forced = {sh.shard_id for sh in shards if sh.kind == "forced"}
        for tract, g, group, visits in _patch_groups(index, patches_per_shard):
            upstream = tuple(
                shard_id
                for shard_id in (f"forced-{b:05d}" for b in sorted(set(batch_of[visits].tolist())))
                if shard_id in forced
            )
            shard_id = f"alerts-{tract:05d}-{g:03d}"
            shards.append(
                _shard(graph, shard_id, "alerts", upstream, patches=group, read_visits=visits)
            )
    if "final" in kinds and n_visits:
        upstream = tuple(f"visits-{k:05d}" for k in range(n_batches))
        final = _shard(graph, "final", "final", upstream)
        shards.append(dataclasses.replace(final, visits=tuple(int(v) for v in index.visits)))
    if "fe55" in kinds:
        shards.append(_shard(graph, "fe55", "fe55", ()))
    return shards


def shard_of_job(rule: str, data_id: Mapping[str, Any], shards: Sequence[Shard]) -> str | None:
    """The shard running the job of ``rule`` with ``data_id`` (None for ``all``).

    Raises
    ------
    KeyError
        If no shard holds that job.
    """
    from dcflow.pipeline.spec import TARGET_RULE, stage

    if rule == TARGET_RULE:
        return None
    kind = stage(rule).shard
    for shard in shards:
        if shard.kind != kind:
            continue
        if "patch" in data_id and shard.patches:
            if (int(data_id["tract"]), str(data_id["patch"])) in shard.patches:
                return shard.shard_id
        elif "visit" in data_id and kind in ("visits", "forced", "catalogs"):
            if int(data_id["visit"]) in shard.visits:
                return shard.shard_id
        else:
            return shard.shard_id
    raise KeyError(f"no shard holds {rule} {dict(data_id)}")


def manifest_of(shard: Shard, index: CampaignIndex) -> ShardManifest:
    """The manifest of ``shard`` (the campaign's CCDs and filters ride along)."""
    return ShardManifest(
        shard.shard_id,
        shard.kind,
        shard.rules,
        shard.visits,
        shard.patches,
        shard.targets,
        shard.upstream,
        tuple(int(c) for c in index.ccds),
        tuple(index.filters),
    )


# --- hashes and markers ---------------------------------------------------------------------


def shard_code_digests(payload: str, repo_root: str | Path = REPO_ROOT) -> dict[str, str]:
    """Per stage: SHA-256 of its spec entry and of the script it runs under ``payload``."""
    root = Path(repo_root)
    out = {}
    for s in STAGES:
        config = {"campaign": {"payload": payload}}
        script = (root / "scripts" / f"{payload_script(config, s.script)}.py").read_text()
        out[s.rule] = digest([repr(s), script])
    return out


def shard_hashes(
    shards: Sequence[Shard],
    index: CampaignIndex,
    config: Mapping[str, Any],
    *,
    repo_root: str | Path = REPO_ROOT,
) -> dict[str, str]:
    """Each shard's hash: manifest, config sections read, code version, upstream hashes.

    ``shards`` must be in topological order (`build_shards` returns them so).
    """
    hasher = ShardHasher(shards, index, config, repo_root=repo_root)
    return {shard.shard_id: hasher.hash_of(shard.shard_id) for shard in shards}


class ShardHasher:
    """Shard hashes computed when first asked for, once each (the same as `shard_hashes`).

    At DC2013 scale hashing every shard takes ~46 s; a driver that asks for a shard's hash
    only when it reaches the shard submits its first jobs after hashing one shard, and a
    thread may hash the next shards ahead (`hash_of` is safe to call from several threads).
    Manifests are not kept (at DC2013 scale they would hold every shard's target list).
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        index: CampaignIndex,
        config: Mapping[str, Any],
        *,
        repo_root: str | Path = REPO_ROOT,
    ) -> None:
        self._shards = {s.shard_id: s for s in shards}
        self._index = index
        self._config = config
        self._code = shard_code_digests(config["campaign"].get("payload", "full"), repo_root)
        self._hashes: dict[str, str] = {}
        self._lock = threading.RLock()

    def hash_of(self, shard_id: str) -> str:
        """The hash of shard ``shard_id`` (its upstream shards hashed first when needed)."""
        from dcflow import __version__
        from dcflow.pipeline.spec import stage

        with self._lock:
            known = self._hashes.get(shard_id)
            if known is not None:
                return known
            shard = self._shards[shard_id]
            names = set(ALWAYS_HASHED_SECTIONS)
            for rule in shard.rules:
                names.update(stage(rule).sections)
            parts = {
                "manifest": manifest_of(shard, self._index).digest(),
                "config": {name: self._config.get(name) for name in sorted(names)},
                "code": {"dcflow": __version__, **{r: self._code.get(r) for r in shard.rules}},
                "upstream": {u: self.hash_of(u) for u in shard.upstream},
            }
            self._hashes[shard_id] = digest(parts)
            return self._hashes[shard_id]


def is_current(layout: Layout, shard_id: str, shard_hash: str) -> bool:
    """Whether the shard's marker holds ``shard_hash`` (it finished with these inputs)."""
    marker = read_marker(layout, shard_id)
    return marker is not None and marker.get("hash") == shard_hash


def marker_path(layout: Layout, shard_id: str) -> Path:
    """Where a shard's marker lives."""
    return shards_dir(layout) / f"{shard_id}.json"


def write_marker(layout: Layout, shard_id: str, shard_hash: str, **extra: Any) -> Path:
    """Mark a shard finished with its hash (atomic write); return the marker's path."""
    path = marker_path(layout, shard_id)
    write_json({"shard": shard_id, "hash": shard_hash, "finished": time.time(), **extra}, path)
    return path


def read_marker(layout: Layout, shard_id: str) -> dict[str, Any] | None:
    """A shard's marker, or None if it has none (or an unreadable one)."""
    try:
        return json.loads(marker_path(layout, shard_id).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def shards_left(shards: Iterable[Shard], hashes: Mapping[str, str], layout: Layout) -> list[Shard]:
    """Shards without a marker holding their current hash (one small read per shard)."""
    left = []
    for shard in shards:
        marker = read_marker(layout, shard.shard_id)
        if marker is None or marker.get("hash") != hashes[shard.shard_id]:
            left.append(shard)
    return left
