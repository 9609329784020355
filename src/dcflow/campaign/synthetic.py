"""A DC2013-scale synthetic campaign: registry rows, config and output inventories, no images.

The 2013 data challenge processed 4.4 M raw files (CFHT MegaCam, 36 CCDs per exposure) into
about 21 M outputs. This module writes a campaign of the same shape for planning and
orchestration benchmarks: a registry with one row per raw file (the existing schema), a config
(instrument ``cfht_sim``, payload ``noop``, a sky map), and optionally empty placeholder files
for raws (Snakemake needs its inputs to exist) and for outputs ("half done", "done"), either
as a real tree or as a file list (one path per line, the ``dcflow plan --inventory`` format).

Survey footprint (Stripe-82-like): a strip along the equator, pointings on a grid of
``pointing_spacing_deg`` in three declination rows, each pointing revisited ``epochs`` times
per filter with a small random dither. Visit ``i`` observes pointing ``i % n_pointings`` in
filter ``filters[(i // n_pointings) % n_filters]``, so time order sweeps the whole footprint
once per filter and epoch. The sky map is a grid of tracts (MegaCam-like 0.185"/pixel,
8 x 8 patches of 4000 + 2 x 100 pixels, about 1.6 deg per tract) covering the strip.

"Half done" means: the first half of the science visits (``visits[: n // 2]``, time order)
went through the per-visit stages that read only per-visit products and calibrations
(``JobGraph.per_visit_closure``: processCcd, warps), with the calibrations they read made; no
coadd, no measurement, no forced photometry, no validation. "Done" means every output of every
job exists. "Calibs done" means: the calibration stages' outputs exist (a reprocessing campaign
with its calibrations made), nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import math
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from dcflow.campaign.registry import ingest
from dcflow.layout import Layout

__all__ = [
    "DC2013_RAW_FILES",
    "DONE_STATES",
    "SyntheticSpec",
    "dc2013_spec",
    "output_paths",
    "touch_raws",
    "visit_table",
    "write_campaign",
    "write_inventory",
]

DC2013_RAW_FILES = 4_400_000
"""Raw files of the 2013 data challenge (the 100 % scale)."""

DONE_STATES = ("none", "calibs", "half", "all")
"""What a synthetic campaign may have done already (see the module docstring)."""

VISITS_PER_POINTING = 300
"""Science visits per pointing at DC2013 density (about 60 epochs in each of ugriz)."""


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    """Shape of a synthetic campaign.

    Attributes
    ----------
    n_visits : int
        Science visits (each has ``n_ccds`` raw files).
    n_ccds : int
        CCDs per exposure (MegaCam: 36).
    filters : tuple of str
        Filters, cycled per epoch.
    n_bias : int
        Bias exposures (``n_ccds`` raws each).
    n_flat : int
        Flat exposures per filter.
    n_pointings : int
        Distinct pointings of the footprint (three declination rows, then along RA).
    pointing_spacing_deg : float
        Spacing of the pointing grid, deg.
    ra_start_deg, dec_centre_deg : float
        First pointing column's RA and the strip's central declination, deg.
    dither_deg : float
        Half-width of the uniform random dither of each visit, deg.
    pixel_scale_arcsec, patch_inner_pixels, patch_border_pixels, n_patches : float, int
        Sky map patch layout (as `dcflow.campaign.skymap.SkyMapConfig`).
    field_radius_deg : float
        Planning-time field radius, deg.
    first_visit, first_calib_visit : int
        Visit number of the first science and first calibration exposure.
    seed : int
        Random seed (dithers).
    instrument : str
        Instrument name in the registry and config.
    fe55_sensors : tuple of int
        Fe55 sensors (empty: no Fe55 stage): their exposures are registered as ingest of
        `dcflow simulate`'s files would.
    with_skymap : bool
        Write the sky map section (without it: no coadd stages).
    """

    n_visits: int
    n_ccds: int = 36
    filters: tuple[str, ...] = ("u", "g", "r", "i", "z")
    n_bias: int = 10
    n_flat: int = 10
    n_pointings: int = 0
    pointing_spacing_deg: float = 0.9
    ra_start_deg: float = 310.0
    dec_centre_deg: float = 0.0
    dither_deg: float = 0.05
    pixel_scale_arcsec: float = 0.185
    patch_inner_pixels: int = 4000
    patch_border_pixels: int = 100
    n_patches: int = 8
    field_radius_deg: float = 0.75
    first_visit: int = 1_000_000
    first_calib_visit: int = 900_000
    seed: int = 2013
    instrument: str = "cfht_sim"
    fe55_sensors: tuple[int, ...] = field(default_factory=tuple)
    with_skymap: bool = True

    def __post_init__(self) -> None:
        for name in ("n_visits", "n_ccds"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticSpec.{name} must be >= 1; got {getattr(self, name)}")
        if not self.filters:
            raise ValueError("SyntheticSpec.filters must name at least one filter")
        calib = range(self.first_calib_visit, self.first_calib_visit + self.n_calib_exposures)
        science = range(self.first_visit, self.first_visit + self.n_visits)
        if calib and science and calib.start < science.stop and science.start < calib.stop:
            raise ValueError(
                f"SyntheticSpec.first_calib_visit={self.first_calib_visit}: calibration visits "
                f"overlap the science visits {science.start}..{science.stop - 1}"
            )

    @property
    def pointings(self) -> int:
        """Pointings actually used (``n_pointings``, or one per `VISITS_PER_POINTING`)."""
        if self.n_pointings > 0:
            return min(self.n_pointings, self.n_visits)
        return max(1, round(self.n_visits / VISITS_PER_POINTING))

    @property
    def n_calib_exposures(self) -> int:
        """Bias and flat exposures."""
        return self.n_bias + self.n_flat * len(self.filters)

    @property
    def n_raws(self) -> int:
        """Raw files in the registry."""
        return self.n_ccds * (self.n_visits + self.n_calib_exposures)

    @property
    def tract_side_deg(self) -> float:
        """Side of one tract, deg (small-angle)."""
        pixels = self.n_patches * self.patch_inner_pixels + 2 * self.patch_border_pixels
        return pixels * self.pixel_scale_arcsec / 3600.0


def dc2013_spec(fraction: float, **overrides: object) -> SyntheticSpec:
    """The DC2013-like spec at ``fraction`` of full scale (raw files = 4.4 M x fraction, +-1 %).

    Raises
    ------
    ValueError
        If ``fraction`` is not in (0, 10].
    """
    if not 0.0 < fraction <= 10.0:
        raise ValueError(f"fraction must be in (0, 10]; got {fraction}")
    base = SyntheticSpec(n_visits=1, **overrides)  # type: ignore[arg-type]
    exposures = round(DC2013_RAW_FILES * fraction / base.n_ccds)
    n_visits = max(1, exposures - base.n_calib_exposures)
    return SyntheticSpec(n_visits=n_visits, **overrides)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class VisitTable:
    """The science visits of a spec as arrays (time order = visit order)."""

    visit: np.ndarray
    band: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    mjd: np.ndarray


def _pointing_grid(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    n = spec.pointings
    rows = min(3, n)
    index = np.arange(n)
    column = index // rows
    row = index % rows
    dec = spec.dec_centre_deg + (row - (rows - 1) / 2.0) * spec.pointing_spacing_deg
    ra = (spec.ra_start_deg + column * spec.pointing_spacing_deg) % 360.0
    return ra, dec


def visit_table(spec: SyntheticSpec) -> VisitTable:
    """Science visits of the spec: number, filter index, dithered pointing and MJD."""
    n = spec.n_visits
    n_point = spec.pointings
    i = np.arange(n)
    epoch = i // n_point
    band = (epoch % len(spec.filters)).astype(np.int8)
    ra0, dec0 = _pointing_grid(spec)
    rng = np.random.default_rng(spec.seed)
    dither = rng.uniform(-spec.dither_deg, spec.dither_deg, (n, 2))
    dec = np.round(dec0[i % n_point] + dither[:, 1], 6)
    ra = np.round((ra0[i % n_point] + dither[:, 0] / np.cos(np.radians(dec))) % 360.0, 6)
    mjd = np.round(56000.0 + epoch + (i % n_point) * 90.0 / 86400.0, 6)
    return VisitTable(i.astype(np.int64) + spec.first_visit, band, ra, dec, mjd)


def tract_centres(spec: SyntheticSpec) -> tuple[list[float], list[float]]:
    """Tract centres covering the footprint (pointings + field radius), overlapping by ~4 %."""
    ra0, dec0 = _pointing_grid(spec)
    step = 0.96 * spec.tract_side_deg
    margin = spec.field_radius_deg + spec.dither_deg
    dec_lo, dec_hi = dec0.min() - margin, dec0.max() + margin
    n_dec = max(1, math.ceil((dec_hi - dec_lo) / step))
    decs = (dec_lo + dec_hi) / 2.0 + (np.arange(n_dec) - (n_dec - 1) / 2.0) * step
    span = float(np.ptp((ra0 - spec.ra_start_deg) % 360.0)) + 2 * margin
    n_ra = max(1, math.ceil(span / step))
    start = spec.ra_start_deg - margin + step / 2.0
    ras = (start + np.arange(n_ra) * step) % 360.0
    out_ra = [round(float(r), 6) for _ in decs for r in ras]
    out_dec = [round(float(d), 6) for d in decs for _ in ras]
    return out_ra, out_dec


def campaign_config(spec: SyntheticSpec, directory: str | os.PathLike) -> dict:
    """The config mapping of a synthetic campaign rooted at ``directory``."""
    root = Path(directory).resolve()
    tract_ra, tract_dec = tract_centres(spec)
    config: dict = {
        "campaign": {"name": "dc2013_synthetic", "instrument": spec.instrument, "payload": "noop"},
        "layout": {"input_root": str(root / "input"), "output_root": str(root / "output")},
        "skymap": {
            "tract_ra_deg": tract_ra,
            "tract_dec_deg": tract_dec,
            "pixel_scale_arcsec": spec.pixel_scale_arcsec,
            "patch_inner_pixels": spec.patch_inner_pixels,
            "patch_border_pixels": spec.patch_border_pixels,
            "n_patches": spec.n_patches,
            "field_radius_deg": spec.field_radius_deg,
        },
    }
    if not spec.with_skymap:
        del config["skymap"]
    if spec.fe55_sensors:
        config["fe55"] = {"sensors": list(spec.fe55_sensors), "exposures": 2}
    return config


def _raw_rows(spec: SyntheticSpec, layout: Layout) -> Iterator[tuple]:
    pattern = layout.pattern("raw", instrument=spec.instrument)
    inst = spec.instrument
    calib = spec.first_calib_visit
    mjd = 55999.5
    exposures = [("bias", "none", 0.0)] * spec.n_bias
    exposures += [("flat", band, 5.0) for band in spec.filters for _ in range(spec.n_flat)]
    for k, (obstype, band, exptime) in enumerate(exposures):
        visit = calib + k
        for ccd in range(spec.n_ccds):
            path = pattern.format(visit=visit, ccd=ccd)
            yield (
                inst,
                visit,
                ccd,
                obstype,
                band,
                exptime,
                mjd + k / 1440.0,
                1.0,
                None,
                None,
                path,
            )
    yield from _sensor_rows(spec, layout)
    table = visit_table(spec)
    filters = spec.filters
    for visit, band, ra, dec, mjd_obs in zip(
        table.visit.tolist(),
        table.band.tolist(),
        table.ra_deg.tolist(),
        table.dec_deg.tolist(),
        table.mjd.tolist(),
        strict=True,
    ):
        name = filters[band]
        for ccd in range(spec.n_ccds):
            path = pattern.format(visit=visit, ccd=ccd)
            yield (inst, visit, ccd, "object", name, 300.0, mjd_obs, 1.2, ra, dec, path)


def _sensor_rows(spec: SyntheticSpec, layout: Layout) -> Iterator[tuple]:
    """Registry rows of the Fe55 sensors' exposures, as `dcflow simulate` and ingest make them.

    Two exposures per sensor, each with a flat and a bias pair file.
    """
    from dcflow.simulate import FE55_INSTRUMENT, SENSOR_EXPOSURE_OFFSETS

    datasets = {"fe55": "fe55_raw", "sensor_flat": "fe55_flat", "sensor_bias": "fe55_bias"}
    for ccd in spec.fe55_sensors:
        for exposure in range(2):
            for obstype, offset in SENSOR_EXPOSURE_OFFSETS.items():
                path = layout.path(
                    datasets[obstype], instrument=FE55_INSTRUMENT, ccd=ccd, exposure=exposure
                )
                visit = offset + exposure
                yield (FE55_INSTRUMENT, visit, ccd, obstype, "none", 0.0, 60000.0, None, None,
                       None, path)  # fmt: skip


def write_campaign(spec: SyntheticSpec, directory: str | os.PathLike) -> Path:
    """Write ``directory``/config.yaml and the campaign registry (one row per raw file).

    The registry has the schema `dcflow.campaign.registry.ingest` creates; rows go in with one
    ``executemany`` in one transaction. An existing registry is replaced.

    Returns
    -------
    pathlib.Path
        The config file.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    config = campaign_config(spec, directory)
    config_path = directory / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    layout = Layout.from_config(config)
    registry = Path(layout.path("registry"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{registry}{suffix}").unlink(missing_ok=True)
    ingest([], registry)  # creates the schema
    conn = sqlite3.connect(registry)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("DROP INDEX IF EXISTS raw_by_type")
        conn.execute("DROP INDEX IF EXISTS raw_by_visit")
        with conn:
            conn.executemany(
                "INSERT INTO raw VALUES (?,?,?,?,?,?,?,?,?,?,?)", _raw_rows(spec, layout)
            )
        conn.execute("CREATE INDEX IF NOT EXISTS raw_by_type ON raw (obstype, filter, visit)")
        conn.execute("CREATE INDEX IF NOT EXISTS raw_by_visit ON raw (visit)")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    return config_path


def _touch(paths: list[str], *, mtime: float | None = None) -> int:
    made: set[str] = set()
    for path in paths:
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        with open(path, "wb"):
            pass
        if mtime is not None:
            os.utime(path, (mtime, mtime))
    return len(paths)


def touch_raws(
    config_path: str | os.PathLike, *, visits: np.ndarray | None = None, calibs: bool = True
) -> int:
    """Write empty placeholder raws (and refcat, truth) so that Snakemake finds its inputs.

    Parameters
    ----------
    config_path : path-like
        The campaign config.
    visits : array of int, optional
        Science visits whose raws to write (default: all).
    calibs : bool
        Also write the bias and flat raws.

    Returns
    -------
    int
        Files written.
    """
    from dcflow.config_schema import load_config

    config = load_config(config_path)
    layout = Layout.from_config(config)
    instrument = config["campaign"]["instrument"]
    conn = sqlite3.connect(f"file:{layout.path('registry')}?mode=ro", uri=True)
    try:
        if visits is None:
            where, args = "obstype = 'object'", ()
        else:
            wanted = ",".join(str(int(v)) for v in np.asarray(visits).ravel())
            where, args = f"obstype = 'object' AND visit IN ({wanted})", ()
        if calibs:
            where = f"({where}) OR obstype != 'object'"
        paths = [row[0] for row in conn.execute(f"SELECT path FROM raw WHERE {where}", args)]
    finally:
        conn.close()
    paths += [layout.path("refcat", instrument=instrument)]
    paths += [layout.path("truth", instrument=instrument)]
    return _touch(paths, mtime=time.time() - 3600.0)


def output_paths(config_path: str | os.PathLike, state: str) -> Iterator[tuple[int, list[str]]]:
    """Outputs of a campaign in a state, as ``(level, paths)`` batches in workflow order.

    Parameters
    ----------
    config_path : path-like
        The campaign config.
    state : {"none", "calibs", "half", "all"}
        What is done (see the module docstring): "half" is the per-visit stages that read only
        per-visit products and calibrations (for the first half of the visits) and the
        calibrations they read, as the pipeline spec's edges say; "calibs" the stages of the
        calibration shard.

    Yields
    ------
    level : int
        Depth of the producing stage in the pipeline (its longest chain of producers):
        outputs get modification times increasing with it, so no job looks out of date.
    paths : list of str
        The outputs.
    """
    from dcflow.campaign.index import CampaignIndex
    from dcflow.config_schema import load_config
    from dcflow.pipeline.graph import JobGraph

    if state not in DONE_STATES:
        raise ValueError(f"state must be one of {DONE_STATES}; got {state!r}")
    if state == "none":
        return
    config = load_config(config_path)
    graph = JobGraph(CampaignIndex.from_config(config, layout=Layout.from_config(config)))
    levels = graph.levels()
    chosen = None
    if state == "half":
        chosen = graph.per_visit_closure()
    elif state == "calibs":
        chosen = {s.rule for s in graph.stages if s.shard == "calibs"}
    n_done = graph.index.n_visits // 2 if state == "half" else graph.index.n_visits
    for s in graph.stages:
        if chosen is not None and s.rule not in chosen:
            continue
        jobs = np.arange(graph.jobs(s.rule).n_jobs)
        columns = graph.jobs(s.rule).columns
        if chosen is not None and "visit" in columns:
            jobs = jobs[columns["visit"] < n_done]
        for start in range(0, len(jobs), 50_000):
            batch = jobs[start : start + 50_000]
            paths = [p for item in s.outputs for p in graph.path_batch(s.rule, item.dataset, batch)]
            yield levels[s.rule], paths


def write_inventory(
    config_path: str | os.PathLike,
    state: str,
    *,
    tree: bool = False,
    list_path: str | os.PathLike | None = None,
) -> int:
    """Write a campaign's outputs in a state as empty files, and/or as a file list.

    Parameters
    ----------
    config_path : path-like
        The campaign config.
    state : {"none", "calibs", "half", "all"}
        What is done (see the module docstring).
    tree : bool
        Create the empty files (modification times increase along the workflow).
    list_path : path-like, optional
        Write the paths there, one per line (gzipped if it ends in ``.gz``).

    Returns
    -------
    int
        Number of outputs.
    """
    now = time.time()
    n = 0
    with contextlib.ExitStack() as stack:
        handle = None
        if list_path is not None and str(list_path).endswith(".gz"):
            handle = stack.enter_context(
                gzip.open(list_path, "wt", encoding="utf-8", compresslevel=1)
            )
        elif list_path is not None:
            handle = stack.enter_context(open(list_path, "w", encoding="utf-8"))
        for level, paths in output_paths(config_path, state):
            n += len(paths)
            if tree:
                _touch(paths, mtime=now - 600.0 + 10.0 * level)
            if handle is not None and paths:
                handle.write("\n".join(paths))
                handle.write("\n")
    return n


def main(argv: list[str] | None = None) -> int:
    """``python -m dcflow.campaign.synthetic``: write a DC2013-like campaign."""
    parser = argparse.ArgumentParser(
        prog="python -m dcflow.campaign.synthetic", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--fraction", type=float, default=0.01, help="of DC2013 (4.4 M raws)")
    parser.add_argument("--out", required=True, help="campaign directory (config.yaml, input/...)")
    parser.add_argument("--n-ccds", type=int, default=36, help="CCDs per exposure")
    parser.add_argument("--touch-raws", action="store_true", help="write empty raw files")
    parser.add_argument("--done", choices=DONE_STATES, default="none")
    parser.add_argument(
        "--inventory-list",
        action="store_true",
        help="write the outputs as <out>/inventory_<done>.txt.gz instead of a tree of files",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    spec = dc2013_spec(args.fraction, n_ccds=args.n_ccds)
    config_path = write_campaign(spec, args.out)
    print(
        f"registry: {spec.n_raws} raws ({spec.n_visits} science visits x {spec.n_ccds} CCDs + "
        f"{spec.n_calib_exposures} calib exposures) in {time.perf_counter() - start:.1f} s"
    )
    if args.touch_raws:
        print(f"raws: {touch_raws(config_path)} empty files")
    if args.done != "none":
        list_path = Path(args.out) / f"inventory_{args.done}.txt.gz"
        n = write_inventory(
            config_path,
            args.done,
            tree=not args.inventory_list,
            list_path=list_path if args.inventory_list else None,
        )
        where = list_path if args.inventory_list else "the output tree"
        print(f"outputs ({args.done}): {n} paths in {where}")
    print(f"config: {config_path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
