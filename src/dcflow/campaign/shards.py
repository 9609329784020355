"""Shards: a campaign split into bounded Snakemake invocations along its natural axes.

A campaign of millions of jobs cannot be one Snakemake DAG (../shared/notes/scale.md), so
`build_shards` cuts it along the axes the pipeline already has:

``calibs``
    master bias per CCD and flat per filter and CCD (raw cameras only);
``visits-NNNNN``
    ``process_visit`` for a batch of ``shards.visits_per_shard`` science visits;
``patches-TTTTT-GGG``
    group GGG of tract TTTTT: ``make_warp`` for every (visit, patch) pair of the group's
    ``shards.patches_per_shard`` patches, ``assemble_coadd`` per patch and filter,
    ``measure_patch`` per patch; depends on the visit shards of its visits. A whole tract
    would not do: each warp lists its visit's 36 calexps, and Snakemake's cost follows input
    files (a dense tract at DC2013 depth: ~35 k jobs, over a minute and 500 MB to plan);
``forced-NNNNN``
    ``forced_photometry`` for the visits of visit batch NNNNN that overlap a patch; depends on
    that visit shard and on the patch groups holding the patches its visits overlap;
``final``
    ``science_validation`` (simulated instruments); depends on every visit shard;
``fe55``
    the Fe55 gain rules (independent of everything else).

Each shard runs as one Snakemake invocation in *shard mode*: ``--config shard=<manifest>``
makes `dcflow.targets.Campaign.from_config` read only the manifest's visits from the registry
(`VisitSubsetRegistry`: one indexed query, never a scan of every row) and makes rule ``all``
ask for the manifest's targets only; ``--allowed-rules`` keeps other shards' rules out of the
DAG, so upstream products are plain inputs that must already exist.

A shard that finished is marked (``<output_root>/shards/<id>.json``, written atomically) with
its hash: the manifest (its input list), the config sections its rules read, the code version
(dcflow version, the rule text and script of each of its rules) and its upstream shards'
hashes. What is left is the shards without a matching marker, so it costs in proportion to the
shards, not the jobs; a changed config section reopens exactly the shards whose rules read it,
and, through the upstream hashes, everything downstream. A reopened shard runs normally:
Snakemake's own triggers (mtime, params, code, input) decide which of its jobs rerun.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcflow.campaign.registry import RawRecord, Registry
from dcflow.configs import check_fields, config_field
from dcflow.io import write_json
from dcflow.layout import Layout

__all__ = [
    "ALWAYS_HASHED_SECTIONS",
    "SHARD_RULES",
    "CampaignAxes",
    "Shard",
    "ShardConfig",
    "ShardManifest",
    "VisitSubsetRegistry",
    "build_shards",
    "campaign_axes",
    "marker_path",
    "read_manifest",
    "read_marker",
    "rule_code_digests",
    "rule_sections",
    "shard_hashes",
    "shard_of_job",
    "shards_dir",
    "shards_left",
    "write_manifest",
    "write_marker",
]

REPO_ROOT = Path(__file__).resolve().parents[3]

SHARD_RULES: dict[str, tuple[str, ...]] = {
    "calibs": ("bias", "flat"),
    "visits": ("process_visit",),
    "patches": ("make_warp", "assemble_coadd", "measure_patch"),
    "forced": ("forced_photometry",),
    "final": ("science_validation",),
    "fe55": ("fe55_simulate", "fe55_gain", "fe55_summary"),
}
"""Shard kind -> the rules whose jobs it runs (with ``all``, its ``--allowed-rules``)."""

ALWAYS_HASHED_SECTIONS = ("campaign", "layout")
"""Config sections every shard's hash includes (instrument and payload, paths)."""


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
        2, "Shards whose Snakemake runs at the same time", minimum=1
    )
    max_queued_jobs: int = config_field(
        200,
        "Most batch jobs queued or running at once over all running shards (backpressure)",
        minimum=1,
    )

    def __post_init__(self) -> None:
        check_fields(self)


# --- the campaign's axes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignAxes:
    """The campaign as arrays: science visits, filters, CCDs, patches and visit/patch overlaps.

    The attribute names are those of ``dcflow.campaign.index.CampaignIndex`` (which
    `campaign_axes` uses when it exists), so either source builds the same shards.

    Attributes
    ----------
    visits : ndarray of int64, shape (n_visits,)
        Science visits, sorted.
    visit_band : ndarray of int, shape (n_visits,)
        Index into ``filters`` of each visit's filter.
    filters : tuple of str
        Filters of the science visits, sorted.
    ccds : tuple of int
        CCDs of the science visits.
    patch_tract, patch_x, patch_y : ndarray of int, shape (n_patches,)
        Tract and patch grid position of every patch with at least one overlapping visit.
    pair_visit, pair_patch : ndarray of int, shape (n_pairs,)
        Visit and patch indices of every (visit, patch) overlap (one ``make_warp`` job each).
    """

    visits: np.ndarray
    visit_band: np.ndarray
    filters: tuple[str, ...]
    ccds: tuple[int, ...]
    patch_tract: np.ndarray
    patch_x: np.ndarray
    patch_y: np.ndarray
    pair_visit: np.ndarray
    pair_patch: np.ndarray

    def patch_name(self, index: int) -> str:
        """The ``"x,y"`` name of patch ``index`` (the ``{patch}`` wildcard)."""
        return f"{int(self.patch_x[index])},{int(self.patch_y[index])}"


def _axes_from_registry(config: Mapping[str, Any], layout: Layout) -> CampaignAxes:
    """`CampaignAxes` from SQL over the registry (one grouped query) and the sky map."""
    from dcflow.campaign.skymap import SkyMapConfig, make_tracts, patches_for_pointings
    from dcflow.configs import from_mapping

    path = layout.path("registry")
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no campaign registry (run `dcflow ingest` first)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT visit, MIN(filter), MIN(ra_deg), MIN(dec_deg) FROM raw "
            "WHERE obstype = 'object' GROUP BY visit ORDER BY visit"
        ).fetchall()
        ccds = tuple(
            int(r[0])
            for r in conn.execute(
                "SELECT DISTINCT ccd FROM raw WHERE obstype = 'object' ORDER BY ccd"
            )
        )
    finally:
        conn.close()
    visits = np.array([r[0] for r in rows], dtype=np.int64)
    filters = tuple(sorted({str(r[1]) for r in rows}))
    band_index = {band: i for i, band in enumerate(filters)}
    visit_band = np.array([band_index[str(r[1])] for r in rows], dtype=np.int64)
    keys: list[tuple[int, str]] = []
    pairs: list[tuple[int, int]] = []
    if config.get("skymap"):
        skymap = from_mapping(SkyMapConfig, config["skymap"])
        pointings = [(int(r[0]), r[2], r[3]) for r in rows if r[2] is not None and r[3] is not None]
        overlaps = patches_for_pointings(
            make_tracts(skymap), pointings, field_radius_deg=skymap.field_radius_deg
        )
        row_of = {int(v): i for i, v in enumerate(visits.tolist())}
        for key in sorted(overlaps, key=lambda k: (k[0], tuple(map(int, k[1].split(","))))):
            keys.append(key)
            pairs += [(row_of[v], len(keys) - 1) for v in overlaps[key]]
    xy = [tuple(map(int, name.split(","))) for _, name in keys]
    pair = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return CampaignAxes(
        visits=visits,
        visit_band=visit_band,
        filters=filters,
        ccds=ccds,
        patch_tract=np.array([t for t, _ in keys], dtype=np.int64),
        patch_x=np.array([x for x, _ in xy], dtype=np.int64),
        patch_y=np.array([y for _, y in xy], dtype=np.int64),
        pair_visit=pair[:, 0].copy(),
        pair_patch=pair[:, 1].copy(),
    )


def campaign_axes(config: Mapping[str, Any], layout: Layout | None = None) -> CampaignAxes:
    """The campaign's axes: from ``CampaignIndex`` when available, else from the registry.

    Raises
    ------
    FileNotFoundError
        If the registry does not exist (run `dcflow ingest`).
    """
    layout = layout or Layout.from_config(config)
    try:
        from dcflow.campaign.index import CampaignIndex
    except ImportError:
        return _axes_from_registry(config, layout)
    index = CampaignIndex.from_config(config)
    return CampaignAxes(
        visits=np.asarray(index.visits, dtype=np.int64),
        visit_band=np.asarray(index.visit_band, dtype=np.int64),
        filters=tuple(index.filters),
        ccds=tuple(int(c) for c in index.ccds),
        patch_tract=np.asarray(index.patch_tract, dtype=np.int64),
        patch_x=np.asarray(index.patch_x, dtype=np.int64),
        patch_y=np.asarray(index.patch_y, dtype=np.int64),
        pair_visit=np.asarray(index.pair_visit, dtype=np.int64),
        pair_patch=np.asarray(index.pair_patch, dtype=np.int64),
    )


# --- shards ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shard:
    """One bounded Snakemake invocation of a sharded campaign.

    Attributes
    ----------
    shard_id : str
        ``calibs``, ``visits-NNNNN``, ``patches-TTTTT-GGG``, ``forced-NNNNN``, ``final`` or
        ``fe55``.
    kind : str
        Key of `SHARD_RULES`.
    visits : tuple of int
        Science visits the shard's Campaign reads from the registry.
    patches : tuple of (int, str)
        ``(tract, patch)`` whose coadd jobs the shard runs (patch-group shards).
    targets : tuple of str
        What rule ``all`` asks for in shard mode (one output per job that nothing else in the
        shard needs).
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
        return SHARD_RULES[self.kind]


def build_shards(
    axes: CampaignAxes,
    layout: Layout,
    *,
    instrument: str,
    visits_per_shard: int,
    patches_per_shard: int = 1,
    fe55_sensors: Sequence[int] = (),
    fe55_exposures: int = 0,
) -> list[Shard]:
    """Split a campaign into shards, in a topological order (upstream first).

    Mirrors `dcflow.targets.Campaign.jobs`: every job but ``all`` belongs to exactly one
    shard (`shard_of_job` says which).

    Raises
    ------
    ValueError
        If ``visits_per_shard`` or ``patches_per_shard`` < 1.
    """
    from dcflow.targets import PROCESSED_INSTRUMENTS, SIMULATED_INSTRUMENTS

    if visits_per_shard < 1:
        raise ValueError(f"visits_per_shard must be >= 1, got {visits_per_shard}")
    if patches_per_shard < 1:
        raise ValueError(f"patches_per_shard must be >= 1, got {patches_per_shard}")
    path = layout.path
    ccds = axes.ccds
    n_visits = len(axes.visits)
    n_batches = -(-n_visits // visits_per_shard)
    batch_of = np.arange(n_visits) // visits_per_shard
    visit_ids = [int(v) for v in axes.visits.tolist()]
    shards: list[Shard] = []
    needs_calibs = instrument not in PROCESSED_INSTRUMENTS
    if needs_calibs and n_visits:
        bands = [axes.filters[i] for i in sorted(set(axes.visit_band.tolist()))]
        targets = [path("bias", ccd=c) for c in ccds]
        targets += [path("flat", filter=b, ccd=c) for b in bands for c in ccds]
        shards.append(Shard("calibs", "calibs", (), (), tuple(targets), (), len(targets)))
    calib_up = ("calibs",) if needs_calibs and n_visits else ()
    first_ccd = ccds[0] if ccds else 0
    for k in range(n_batches):
        visits = tuple(visit_ids[k * visits_per_shard : (k + 1) * visits_per_shard])
        targets = tuple(path("calexp", visit=v, ccd=first_ccd) for v in visits)
        shards.append(
            Shard(f"visits-{k:05d}", "visits", visits, (), targets, calib_up, len(visits))
        )
    # pairs sorted by patch (and by visit batch, for the forced shards): one slice per patch
    by_patch = np.argsort(axes.pair_patch, kind="stable")
    n_patches = len(axes.patch_tract)
    bounds = np.searchsorted(axes.pair_patch[by_patch], np.arange(n_patches + 1))
    group_of_patch = np.full(n_patches, -1, dtype=np.int64)
    group_ids: list[str] = []
    order = np.lexsort((axes.patch_y, axes.patch_x, axes.patch_tract))
    for tract in sorted(set(axes.patch_tract.tolist())):
        in_tract = [int(p) for p in order if axes.patch_tract[p] == tract]
        for g, start in enumerate(range(0, len(in_tract), patches_per_shard)):
            group = in_tract[start : start + patches_per_shard]
            rows = np.concatenate([by_patch[bounds[p] : bounds[p + 1]] for p in group])
            pv = axes.pair_visit[rows]
            targets: list[str] = []
            n_coadds = 0
            for p in group:
                name = axes.patch_name(p)
                mine = axes.pair_visit[by_patch[bounds[p] : bounds[p + 1]]]
                bands = sorted({axes.filters[b] for b in axes.visit_band[mine].tolist()})
                n_coadds += len(bands)
                targets += [path("templateCoadd", filter=b, tract=tract, patch=name) for b in bands]
                targets.append(path("object", tract=tract, patch=name))
            shard_id = f"patches-{tract:05d}-{g:03d}"
            group_of_patch[group] = len(group_ids)
            group_ids.append(shard_id)
            upstream = tuple(f"visits-{b:05d}" for b in sorted(set(batch_of[pv].tolist())))
            shards.append(
                Shard(
                    shard_id,
                    "patches",
                    tuple(visit_ids[i] for i in sorted(set(pv.tolist()))),
                    tuple((tract, axes.patch_name(p)) for p in group),
                    tuple(targets),
                    upstream,
                    int(rows.size) + n_coadds + len(group),
                )
            )
    pair_batch = batch_of[axes.pair_visit] if axes.pair_visit.size else axes.pair_visit
    by_batch = np.argsort(pair_batch, kind="stable")
    batch_bounds = np.searchsorted(pair_batch[by_batch], np.arange(n_batches + 1))
    for k in range(n_batches if axes.pair_visit.size else 0):
        rows = by_batch[batch_bounds[k] : batch_bounds[k + 1]]
        if not rows.size:
            continue
        visits = tuple(visit_ids[i] for i in sorted(set(axes.pair_visit[rows].tolist())))
        groups = sorted(set(group_of_patch[axes.pair_patch[rows]].tolist()))
        shards.append(
            Shard(
                f"forced-{k:05d}",
                "forced",
                visits,
                (),
                tuple(path("forced_src", visit=v, ccd=first_ccd) for v in visits),
                (f"visits-{k:05d}", *(group_ids[g] for g in groups)),
                len(visits),
            )
        )
    if instrument in SIMULATED_INSTRUMENTS and n_visits:
        shards.append(
            Shard(
                "final",
                "final",
                tuple(visit_ids),
                (),
                (path("science_validation"),),
                tuple(f"visits-{k:05d}" for k in range(n_batches)),
                1,
            )
        )
    if fe55_sensors:
        targets = tuple(path("fe55_summary", ccd=c) for c in fe55_sensors)
        n_jobs = len(fe55_sensors) * (2 * fe55_exposures + 1)
        shards.append(Shard("fe55", "fe55", (), (), targets, (), n_jobs))
    return shards


def shard_of_job(rule: str, data_id: Mapping[str, Any], shards: Sequence[Shard]) -> str | None:
    """The shard running the job of ``rule`` with ``data_id`` (None for ``all``).

    Raises
    ------
    KeyError
        If no shard holds that job.
    """
    if rule == "all":
        return None
    kinds = [k for k, rules in SHARD_RULES.items() if rule in rules]
    if not kinds:
        raise KeyError(f"rule {rule!r} belongs to no shard kind")
    kind = kinds[0]
    for shard in shards:
        if shard.kind != kind:
            continue
        if kind in ("calibs", "final", "fe55"):
            return shard.shard_id
        if kind == "patches":
            if (int(data_id["tract"]), str(data_id["patch"])) in shard.patches:
                return shard.shard_id
        elif int(data_id["visit"]) in shard.visits:
            return shard.shard_id
    raise KeyError(f"no shard holds {rule} {dict(data_id)}")


# --- shard mode: manifest and the registry restricted to its visits --------------------------


@dataclass(frozen=True, slots=True)
class ShardManifest:
    """What one shard's Snakemake reads in shard mode (``--config shard=<path>``)."""

    shard_id: str
    kind: str
    rules: tuple[str, ...]
    visits: tuple[int, ...]
    patches: tuple[tuple[int, str], ...]
    targets: tuple[str, ...]
    upstream: tuple[str, ...]
    ccds: tuple[int, ...]
    filters: tuple[str, ...]

    @classmethod
    def of(cls, shard: Shard, axes: CampaignAxes) -> ShardManifest:
        """The manifest of ``shard`` (the campaign's CCDs and filters ride along)."""
        return cls(
            shard.shard_id,
            shard.kind,
            shard.rules,
            shard.visits,
            shard.patches,
            shard.targets,
            shard.upstream,
            axes.ccds,
            axes.filters,
        )

    def digest(self) -> str:
        """SHA-256 of the manifest's canonical JSON (the shard's input list)."""
        return _digest(asdict(self))


def shards_dir(layout: Layout) -> Path:
    """Directory of the shard markers and manifests (``<output_root>/shards``)."""
    return Path(layout.output_root) / "shards"


def write_manifest(manifest: ShardManifest, layout: Layout) -> Path:
    """Write a shard's manifest atomically; return its path."""
    path = shards_dir(layout) / "manifests" / f"{manifest.shard_id}.json"
    write_json(asdict(manifest), path)
    return path


def read_manifest(path: str | Path) -> ShardManifest:
    """Read a manifest written by `write_manifest`.

    Raises
    ------
    ValueError
        If the file is not a shard manifest; the message names it.
    """
    try:
        data = json.loads(Path(path).read_text())
        return ShardManifest(
            shard_id=str(data["shard_id"]),
            kind=str(data["kind"]),
            rules=tuple(data["rules"]),
            visits=tuple(int(v) for v in data["visits"]),
            patches=tuple((int(t), str(p)) for t, p in data["patches"]),
            targets=tuple(data["targets"]),
            upstream=tuple(data["upstream"]),
            ccds=tuple(int(c) for c in data["ccds"]),
            filters=tuple(data["filters"]),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a shard manifest ({exc})") from exc


class VisitSubsetRegistry(Registry):
    """A `Registry` seen through one shard: science rows of the manifest's visits only.

    The science rows of those visits are read once with the primary-key index
    (``instrument, visit``), in chunks; calibration queries go to the registry as usual. The
    campaign's CCDs and filters come from the manifest, so every shard sees the same
    wildcard constraints and per-visit outputs.
    """

    def __init__(self, path: str | Path, manifest: ShardManifest, *, instrument: str) -> None:
        super().__init__(path)
        self.manifest = manifest
        rows: list[RawRecord] = []
        visits = list(manifest.visits)
        for i in range(0, len(visits), 500):
            chunk = visits[i : i + 500]
            marks = ",".join("?" * len(chunk))
            cursor = self._conn.execute(
                f"SELECT * FROM raw WHERE instrument = ? AND visit IN ({marks}) "
                "AND obstype = 'object' ORDER BY visit, ccd",
                (instrument, *chunk),
            )
            rows += [RawRecord(**dict(r)) for r in cursor]
        self._science = rows
        self._by_visit: dict[int, list[RawRecord]] = {}
        for record in rows:
            self._by_visit.setdefault(record.visit, []).append(record)

    def records(self, *, obstype: str | None = None, filter: str | None = None) -> list[RawRecord]:
        """Science records of the shard's visits; calibration records from the registry."""
        if obstype == "object":
            return [r for r in self._science if filter is None or r.filter == filter]
        if obstype is None:
            calibs = [r for r in super().records(filter=filter) if r.obstype != "object"]
            return calibs + self.records(obstype="object", filter=filter)
        return super().records(obstype=obstype, filter=filter)

    def science_visits(self) -> list[tuple[int, str]]:
        """``(visit, filter)`` of the shard's visits, in visit order."""
        return [(v, rows[0].filter) for v, rows in sorted(self._by_visit.items())]

    def ccds(self, obstype: str = "object") -> list[int]:
        """The campaign's science CCDs (from the manifest), else the registry's answer."""
        return list(self.manifest.ccds) if obstype == "object" else super().ccds(obstype)

    def filters(self, obstype: str = "object") -> list[str]:
        """The campaign's science filters (from the manifest), else the registry's answer."""
        return list(self.manifest.filters) if obstype == "object" else super().filters(obstype)

    def visit_filter(self, visit: int) -> str:
        """The filter of one of the shard's visits.

        Raises
        ------
        KeyError
            If the visit is not one of the shard's.
        """
        rows = self._by_visit.get(int(visit))
        if not rows:
            raise KeyError(f"visit {visit} is not in shard {self.manifest.shard_id}")
        return rows[0].filter

    def raw_paths(self, visit: int) -> dict[int, str]:
        """CCD -> raw path for one of the shard's visits (empty for another visit)."""
        return {r.ccd: r.path for r in self._by_visit.get(int(visit), [])}


# --- hashes and markers ---------------------------------------------------------------------


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


_RULE = re.compile(r"^rule (\w+):", re.MULTILINE)
_SECTION = re.compile(r"""config(?:\[|\.get\()\s*["'](\w+)["']""")
_SCRIPT = re.compile(r"""stage_script\(\s*["'](\w+)["']\s*\)""")


def _rule_blocks(rules_dir: Path) -> dict[str, str]:
    blocks: dict[str, str] = {}
    for smk in sorted(Path(rules_dir).glob("*.smk")):
        text = smk.read_text()
        starts = [(m.start(), m.group(1)) for m in _RULE.finditer(text)]
        for i, (start, name) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
            blocks[name] = text[start:end]
    return blocks


def rule_sections(rules_dir: str | Path = REPO_ROOT / "rules") -> dict[str, tuple[str, ...]]:
    """Config sections each rule reads (``config["x"]`` / ``config.get("x"`` in its text)."""
    return {
        rule: tuple(sorted(set(_SECTION.findall(block))))
        for rule, block in _rule_blocks(Path(rules_dir)).items()
    }


def rule_code_digests(payload: str, repo_root: str | Path = REPO_ROOT) -> dict[str, str]:
    """Per rule: SHA-256 of its rule text and of the script it runs under ``payload``."""
    from dcflow.targets import payload_script

    root = Path(repo_root)
    out = {}
    for rule, block in _rule_blocks(root / "rules").items():
        scripts = _SCRIPT.findall(block)
        config = {"campaign": {"payload": payload}}
        texts = [
            (root / "scripts" / f"{payload_script(config, s)}.py").read_text() for s in scripts
        ]
        out[rule] = _digest([block, *texts])
    return out


def shard_hashes(
    shards: Sequence[Shard],
    axes: CampaignAxes,
    config: Mapping[str, Any],
    *,
    repo_root: str | Path = REPO_ROOT,
) -> dict[str, str]:
    """Each shard's hash: manifest, config sections read, code version, upstream hashes.

    ``shards`` must be in topological order (`build_shards` returns them so).
    """
    from dcflow import __version__

    sections = rule_sections(Path(repo_root) / "rules")
    code = rule_code_digests(config["campaign"].get("payload", "full"), repo_root)
    hashes: dict[str, str] = {}
    for shard in shards:
        names = set(ALWAYS_HASHED_SECTIONS)
        for rule in shard.rules:
            names.update(sections.get(rule, ()))
        parts = {
            "manifest": ShardManifest.of(shard, axes).digest(),
            "config": {name: config.get(name) for name in sorted(names)},
            "code": {"dcflow": __version__, **{r: code.get(r) for r in shard.rules}},
            "upstream": {u: hashes[u] for u in shard.upstream},
        }
        hashes[shard.shard_id] = _digest(parts)
    return hashes


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
