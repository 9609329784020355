"""The campaign as compact arrays: visits, CCDs, filters, patches and visit/patch overlaps.

The one view of a campaign: the Snakemake workflow (through `dcflow.pipeline.graph`), the
analytic planner and the shard builder all read it. At DC2013 scale (4.4 M raws, ~120 k
visits, ~8 M visit/patch overlaps) these facts must be numpy arrays, never one Python object
per raw or per job. `CampaignIndex.from_config` reads the registry with a few aggregate SQL
queries (one row per visit, never one per raw) and computes the overlaps with
`dcflow.campaign.skymap.overlap_pairs`. In shard mode (config ``shard``: a manifest) it reads
only the manifest's visits, with the campaign's CCDs and filters from the manifest.

A shard's index is also the whole campaign's restricted to the shard's visits
(`CampaignIndex.shard_arrays`): the sharded driver, which holds the whole index, writes it beside
the manifest (`write_shard_index`) and the shard's Snakemake reads it back instead of querying the
registry and computing overlaps (astropy.wcs, scipy): that was a quarter of a shard Snakemake's
start-up CPU.
"""

from __future__ import annotations

import json
import os
import sqlite3
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcflow.atomic import atomic_path
from dcflow.campaign.manifest import ShardManifest, digest, read_manifest
from dcflow.campaign.skymap import SkyMapConfig, TractInfo, make_tracts, overlap_pairs
from dcflow.configs import from_mapping
from dcflow.jobspec import PROCESSED_INSTRUMENTS, SIMULATED_INSTRUMENTS
from dcflow.layout import Layout

__all__ = ["ARRAY_FIELDS", "CampaignIndex", "shard_index_path", "write_shard_index"]

_SHARD_INDEX_FORMAT = 1
"""Bumped when what a shard's index file holds changes (an older file is then ignored)."""

ARRAY_FIELDS = (
    "ccds",
    "visits",
    "visit_band",
    "visit_ra_deg",
    "visit_dec_deg",
    "bias_raws",
    "flat_raws",
    "patch_tract",
    "patch_x",
    "patch_y",
    "pair_visit",
    "pair_patch",
    "fe55_ccd",
    "fe55_exposure",
    "ptc_sensors",
)
"""The array attributes of `CampaignIndex` (with ``filters``, what `CampaignIndex.assemble`
takes)."""


@dataclass(frozen=True, slots=True, eq=False)
class CampaignIndex:
    """A campaign's jobs' coordinates as arrays (the shard builder and the analytic planner).

    Attributes
    ----------
    instrument : str
        Instrument name.
    registry_path : str
        The registry read.
    layout : Layout
        Path templates.
    filters : tuple of str
        Filters of the science visits, sorted (``visit_band`` indexes it).
    ccds : numpy.ndarray of int64
        Science CCDs (present in every science visit), sorted.
    visits : numpy.ndarray of int64
        Science visits, sorted.
    visit_band : numpy.ndarray of int8
        Filter of each visit, index into ``filters``.
    visit_ra_deg, visit_dec_deg : numpy.ndarray of float64
        Pointing of each visit (its lowest CCD's registry row with a position; NaN if none).
    bias_raws : numpy.ndarray of int64
        Raw bias exposures per CCD (``ccds`` order).
    flat_raws : numpy.ndarray of int64
        Raw flat exposures, ``(len(filters), len(ccds))``.
    needs_calibs : bool
        Whether process_visit needs master biases and flats (raw cameras; not SDSS).
    has_truth : bool
        Whether the campaign has a truth catalog (simulated instrument: science validation).
    skymap : SkyMapConfig or None
        The sky map (no coadd stages without one).
    tracts : tuple of TractInfo
        Its tracts.
    patch_tract, patch_x, patch_y : numpy.ndarray of int32
        Every patch with at least one overlapping visit, sorted by ``(tract, patch name)``
        (the order of `patches_for_pointings`'s keys).
    pair_visit, pair_patch : numpy.ndarray of int32
        Every planning-time (visit, patch) overlap: index into ``visits`` and into the patch
        arrays, sorted by patch then visit (one ``make_warp`` job each).
    fe55_ccd, fe55_exposure : numpy.ndarray of int64
        Every registered Fe55 exposure (obstype ``fe55``): its sensor and exposure number,
        sorted by sensor then exposure (one ``fe55_gain`` job each; none: no Fe55 stages).
    ptc_sensors : numpy.ndarray of int64
        Fe55 sensors with both flat and bias pairs registered (obstypes ``sensor_flat`` and
        ``sensor_bias``): one ``photon_transfer`` job each.
    """

    instrument: str
    registry_path: str
    layout: Layout
    filters: tuple[str, ...]
    ccds: np.ndarray
    visits: np.ndarray
    visit_band: np.ndarray
    visit_ra_deg: np.ndarray
    visit_dec_deg: np.ndarray
    bias_raws: np.ndarray
    flat_raws: np.ndarray
    needs_calibs: bool
    has_truth: bool
    skymap: SkyMapConfig | None
    tracts: tuple[TractInfo, ...]
    patch_tract: np.ndarray
    patch_x: np.ndarray
    patch_y: np.ndarray
    pair_visit: np.ndarray
    pair_patch: np.ndarray
    fe55_ccd: np.ndarray
    fe55_exposure: np.ndarray
    ptc_sensors: np.ndarray

    @classmethod
    def from_config(cls, config: Mapping[str, Any], layout: Layout | None = None) -> CampaignIndex:
        """The index of a validated campaign config (registry under ``layout``).

        Raises
        ------
        FileNotFoundError
            If the registry does not exist (run `dcflow ingest`).
        KeyError
            If a science visit lacks one of the campaign's CCDs (as `Campaign.jobs`).
        """
        layout = layout or Layout.from_config(config)
        path = layout.path("registry")
        manifest = read_manifest(config["shard"]) if config.get("shard") else None
        if manifest is not None:
            kept = _read_shard_index(config, path, manifest)
            if kept is not None:
                return cls.assemble(config, layout, kept)
        conn = _open_readonly(path)
        try:
            if manifest is None:
                ccd_rows = conn.execute(
                    "SELECT DISTINCT ccd FROM raw WHERE obstype = 'object' ORDER BY ccd"
                )
                ccds = np.array([r[0] for r in ccd_rows], dtype=np.int64)
                rows = conn.execute(
                    "SELECT visit, filter, COUNT(DISTINCT ccd) FROM raw WHERE obstype = 'object' "
                    "GROUP BY visit ORDER BY visit"
                ).fetchall()
            else:
                ccds = np.array(sorted(manifest.ccds), dtype=np.int64)
                rows = _visit_rows(conn, manifest.visits)
            short = [r[0] for r in rows if r[2] != len(ccds)]
            if short:
                have = {
                    int(r[0])
                    for r in conn.execute(
                        "SELECT ccd FROM raw WHERE obstype = 'object' AND visit = ?", (short[0],)
                    )
                }
                missing = [int(c) for c in ccds if int(c) not in have]
                raise KeyError(f"visit {short[0]} has no raw for ccd(s) {missing} in {path}")
            visits = np.array([r[0] for r in rows], dtype=np.int64)
            if manifest is None:
                filters = tuple(sorted({str(r[1]) for r in rows}))
            else:
                filters = tuple(sorted(manifest.filters))
            band_of = {band: i for i, band in enumerate(filters)}
            visit_band = np.array([band_of[str(r[1])] for r in rows], dtype=np.int8)
            ra = np.full(len(visits), np.nan)
            dec = np.full(len(visits), np.nan)
            pointing = _pointing_rows(conn, None if manifest is None else manifest.visits)
            if pointing:
                where = np.searchsorted(visits, [r[0] for r in pointing])
                ra[where] = [float(r[2]) for r in pointing]
                dec[where] = [float(r[3]) for r in pointing]
            bias_raws = np.zeros(len(ccds), dtype=np.int64)
            flat_raws = np.zeros((len(filters), len(ccds)), dtype=np.int64)
            ccd_pos = {int(c): i for i, c in enumerate(ccds)}
            for obstype, band, ccd, count in conn.execute(
                "SELECT obstype, filter, ccd, COUNT(*) FROM raw "
                "WHERE obstype IN ('bias', 'flat') GROUP BY obstype, filter, ccd"
            ):
                if int(ccd) not in ccd_pos:
                    continue
                if obstype == "bias":
                    bias_raws[ccd_pos[int(ccd)]] += count
                elif band in band_of:
                    flat_raws[band_of[band], ccd_pos[int(ccd)]] = count
            fe55 = np.array(
                conn.execute(
                    "SELECT DISTINCT ccd, visit FROM raw WHERE obstype = 'fe55' ORDER BY ccd, visit"
                ).fetchall(),
                dtype=np.int64,
            ).reshape(-1, 2)
            ptc_rows = conn.execute(
                "SELECT ccd FROM raw WHERE obstype IN ('sensor_flat', 'sensor_bias') "
                "GROUP BY ccd HAVING COUNT(DISTINCT obstype) = 2"
            ).fetchall()
            ptc_sensors = np.intersect1d(
                np.array([r[0] for r in ptc_rows], dtype=np.int64), fe55[:, 0]
            )
        finally:
            conn.close()
        skymap = from_mapping(SkyMapConfig, config["skymap"]) if config.get("skymap") else None
        tracts = make_tracts(skymap) if skymap is not None else ()
        arrays = {
            "filters": filters,
            "ccds": ccds,
            "visits": visits,
            "visit_band": visit_band,
            "visit_ra_deg": ra,
            "visit_dec_deg": dec,
            "bias_raws": bias_raws,
            "flat_raws": flat_raws,
            "fe55_ccd": fe55[:, 0].copy(),
            "fe55_exposure": fe55[:, 1].copy(),
            "ptc_sensors": ptc_sensors,
            **_overlaps(tracts, visits, ra, dec, skymap),
        }
        return cls.assemble(config, layout, arrays, tracts=tracts)

    @classmethod
    def assemble(
        cls,
        config: Mapping[str, Any],
        layout: Layout,
        arrays: Mapping[str, Any],
        *,
        tracts: tuple[TractInfo, ...] | None = None,
    ) -> CampaignIndex:
        """The index of a config from the arrays its registry and overlaps gave.

        ``arrays`` holds ``filters`` and every array attribute (`from_config` computes them;
        `dcflow.campaign.snapshots` keeps them between calls); ``tracts`` are the sky map's,
        made from the config when not given.
        """
        instrument = str(config["campaign"]["instrument"])
        skymap = from_mapping(SkyMapConfig, config["skymap"]) if config.get("skymap") else None
        if tracts is None:
            tracts = make_tracts(skymap) if skymap is not None else ()
        return cls(
            instrument=instrument,
            registry_path=str(layout.path("registry")),
            layout=layout,
            needs_calibs=instrument not in PROCESSED_INSTRUMENTS,
            has_truth=instrument in SIMULATED_INSTRUMENTS,
            skymap=skymap,
            tracts=tracts,
            **arrays,
        )

    def shard_arrays(self, visits: Sequence[int]) -> dict[str, Any]:
        """The arrays `from_config` gives in shard mode for a manifest of ``visits``.

        This index (the whole campaign's) restricted to ``visits``: overlaps are per visit, so
        a shard's are the campaign's of its visits, and its patches those they overlap, in the
        campaign's order. CCDs, filters, calibration counts and Fe55 exposures are the
        campaign's (the manifest carries the CCDs and filters).

        Raises
        ------
        KeyError
            If a visit is not one of the campaign's.
        """
        wanted = np.unique(np.asarray(visits, dtype=np.int64))
        missing = np.setdiff1d(wanted, self.visits)
        if missing.size:
            raise KeyError(f"visit(s) {missing[:5].tolist()} are not in the campaign")
        where = np.searchsorted(self.visits, wanted)
        visit_pos = np.full(self.n_visits, -1, dtype=np.int64)
        visit_pos[where] = np.arange(len(where))
        keep = visit_pos[self.pair_visit] >= 0
        pair_patch = self.pair_patch[keep]
        patches = np.unique(pair_patch)
        patch_pos = np.full(self.n_patches, -1, dtype=np.int64)
        patch_pos[patches] = np.arange(len(patches))
        return {
            "filters": self.filters,
            "ccds": self.ccds,
            "visits": self.visits[where],
            "visit_band": self.visit_band[where],
            "visit_ra_deg": self.visit_ra_deg[where],
            "visit_dec_deg": self.visit_dec_deg[where],
            "bias_raws": self.bias_raws,
            "flat_raws": self.flat_raws,
            "patch_tract": self.patch_tract[patches],
            "patch_x": self.patch_x[patches],
            "patch_y": self.patch_y[patches],
            "pair_visit": visit_pos[self.pair_visit[keep]].astype(np.int32),
            "pair_patch": patch_pos[pair_patch].astype(np.int32),
            "fe55_ccd": self.fe55_ccd,
            "fe55_exposure": self.fe55_exposure,
            "ptc_sensors": self.ptc_sensors,
        }

    @property
    def sensors(self) -> np.ndarray:
        """Sensors with at least one Fe55 exposure, sorted (one summary job each)."""
        return np.unique(self.fe55_ccd)

    @property
    def n_visits(self) -> int:
        """Science visits."""
        return len(self.visits)

    @property
    def n_patches(self) -> int:
        """Patches with at least one visit."""
        return len(self.patch_tract)

    @property
    def n_pairs(self) -> int:
        """Visit/patch overlaps (make_warp jobs)."""
        return len(self.pair_visit)

    @property
    def flat_filters(self) -> tuple[str, ...]:
        """Filters with master flats (those of the science visits; none without calibs)."""
        return self.filters if self.needs_calibs else ()

    def patch_name(self, index: int) -> str:
        """The data-id text ``"x,y"`` of patch ``index`` (as the layout and Snakemake use)."""
        return f"{int(self.patch_x[index])},{int(self.patch_y[index])}"

    @property
    def pair_band(self) -> np.ndarray:
        """Filter index of each overlap's visit."""
        return self.visit_band[self.pair_visit]

    @property
    def patch_band_visits(self) -> np.ndarray:
        """Overlapping visits per patch and filter, ``(n_patches, len(filters))`` int64.

        A non-zero entry is one assemble_coadd job.
        """
        nb = len(self.filters)
        flat = self.pair_patch.astype(np.int64) * nb + self.pair_band
        return np.bincount(flat, minlength=self.n_patches * nb).reshape(self.n_patches, nb)

    @property
    def forced_visit_mask(self) -> np.ndarray:
        """Visits overlapping at least one patch (one forced_photometry job each)."""
        return np.bincount(self.pair_visit, minlength=self.n_visits) > 0

    def patch_keys(self) -> np.ndarray:
        """A sortable int64 key per patch: ``(tract * n + y) * n + x`` with ``n = n_patches``."""
        n = self.skymap.n_patches if self.skymap is not None else 1
        return (self.patch_tract.astype(np.int64) * n + self.patch_y) * n + self.patch_x


def shard_index_path(manifest_path: str | os.PathLike) -> Path:
    """Where a shard's index is kept: beside its manifest (``<shard>.json``)."""
    path = Path(manifest_path)
    return path.with_name(f"{path.stem}.index.npz")


def write_shard_index(
    index: CampaignIndex, manifest: ShardManifest, manifest_path: str | os.PathLike
) -> Path:
    """Keep a shard's index (``index`` is the whole campaign's) beside its manifest; its path.

    Keyed by the manifest, the instrument, the sky map and the registry file's identity: the
    shard's Snakemake ignores a file whose key is not its own and builds its index itself.
    """
    arrays = index.shard_arrays(manifest.visits)
    out: dict[str, np.ndarray] = {name: np.asarray(arrays[name]) for name in ARRAY_FIELDS}
    out["filters"] = np.array(json.dumps(list(arrays["filters"])))
    out["key"] = np.array(_shard_key(index.instrument, index.skymap, index.registry_path, manifest))
    path = shard_index_path(manifest_path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **out)
    return path


def _shard_key(
    instrument: str, skymap: SkyMapConfig | None, registry: str, manifest: ShardManifest
) -> str:
    """What a shard's index depends on: its manifest, sky map and registry (size, mtime, inode)."""
    stat = os.stat(registry)
    return digest(
        [
            _SHARD_INDEX_FORMAT,
            manifest.digest(),
            instrument,
            asdict(skymap) if skymap is not None else None,
            [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns],
        ]
    )


def _read_shard_index(
    config: Mapping[str, Any], registry: str, manifest: ShardManifest
) -> dict[str, Any] | None:
    """The arrays kept by `write_shard_index` for this shard (None: absent or not its own)."""
    path = shard_index_path(config["shard"])
    try:
        skymap = from_mapping(SkyMapConfig, config["skymap"]) if config.get("skymap") else None
        key = _shard_key(str(config["campaign"]["instrument"]), skymap, registry, manifest)
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            arrays: dict[str, Any] = {name: data[name] for name in ARRAY_FIELDS}
            arrays["filters"] = tuple(json.loads(str(data["filters"])))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return arrays


def _visit_rows(conn: sqlite3.Connection, visits: tuple[int, ...]) -> list[tuple]:
    """``(visit, filter, n_ccds)`` of a shard's visits (indexed queries, in chunks)."""
    rows: list[tuple] = []
    wanted = sorted(set(visits))
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(
            "SELECT visit, filter, COUNT(DISTINCT ccd) FROM raw WHERE obstype = 'object' "
            f"AND visit IN ({marks}) GROUP BY visit ORDER BY visit",
            chunk,
        ).fetchall()
    return rows


def _pointing_rows(conn: sqlite3.Connection, visits: tuple[int, ...] | None) -> list[tuple]:
    """``(visit, ccd, ra_deg, dec_deg)`` of each visit's lowest CCD with a position."""
    query = (
        "SELECT visit, MIN(ccd), ra_deg, dec_deg FROM raw WHERE obstype = 'object' "
        "AND ra_deg IS NOT NULL AND dec_deg IS NOT NULL {} GROUP BY visit ORDER BY visit"
    )
    if visits is None:
        return conn.execute(query.format("")).fetchall()
    rows: list[tuple] = []
    wanted = sorted(set(visits))
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(query.format(f"AND visit IN ({marks})"), chunk).fetchall()
    return rows


def _open_readonly(path: str) -> sqlite3.Connection:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no campaign registry (run `dcflow ingest` first)")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _overlaps(
    tracts: tuple[TractInfo, ...],
    visits: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    skymap: SkyMapConfig | None,
) -> dict[str, np.ndarray]:
    empty = np.zeros(0, dtype=np.int32)
    out = {
        "patch_tract": empty,
        "patch_x": empty,
        "patch_y": empty,
        "pair_visit": empty,
        "pair_patch": empty,
    }
    known = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    if skymap is None or known.size == 0:
        return out
    pointing, tract_id, patch_x, patch_y = overlap_pairs(
        tracts, ra[known], dec[known], field_radius_deg=skymap.field_radius_deg
    )
    if pointing.size == 0:
        return out
    n = skymap.n_patches
    key = (tract_id * n + patch_y) * n + patch_x
    unique, inverse = np.unique(key, return_inverse=True)
    u_tract = unique // (n * n)
    u_y = (unique // n) % n
    u_x = unique % n
    # patches_for_pointings sorts by (tract, "x,y" text): the same order here
    names = [f"{x},{y}" for x, y in zip(u_x.tolist(), u_y.tolist(), strict=True)]
    order = sorted(range(len(unique)), key=lambda i: (int(u_tract[i]), names[i]))
    rank = np.empty(len(unique), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(unique))
    pair_patch = rank[inverse]
    pair_visit = known[pointing]
    sort = np.lexsort((pair_visit, pair_patch))
    ordered = np.asarray(order, dtype=np.int64)
    return {
        "patch_tract": u_tract[ordered].astype(np.int32),
        "patch_x": u_x[ordered].astype(np.int32),
        "patch_y": u_y[ordered].astype(np.int32),
        "pair_visit": pair_visit[sort].astype(np.int32),
        "pair_patch": pair_patch[sort].astype(np.int32),
    }
