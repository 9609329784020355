"""Write a simulated campaign's input tree: cfht_sim raws and catalogs, Fe55 sensor exposures.

The sensor exposures are X-ray frames, flat and bias pairs and their truth tables.

Simulation is its own step, never a workflow rule: the files land under the input root and
enter the registry through `dcflow ingest` like real raws. The arrays come from
`dcflow.instruments.cfht_sim` and `dcflow.instruments.fe55_sim`; this module only places them
with `dcflow.layout.Layout` and writes them atomically with `dcflow.io`. Each file records the
digest of the config that made it (``SIMHASH``), so a rerun skips files that are already
there from the same config and rewrites those from another one.

The simulator overwrites only what it wrote: every file it writes is listed in the input
tree's manifest (layout ``sim_manifest``), and an existing file that is neither listed there
nor carries ``SIMHASH`` (a real frame placed in the input tree) is refused with
`dcflow.errors.ForeignInputError` naming it.

The ``truth`` file holds the truth catalog in HDU 1 (``STARS``) and the per-(visit, ccd)
truth table (`cfht_sim.truth_table`) in HDU 2 (``VISITS``); with transients, variables or
movers, their catalog (``VARIABLES``, `cfht_sim.make_variable_catalog`) and their per-(visit,
ccd) epochs (``VARIABLE_EPOCHS``, `cfht_sim.variable_truth_table`) follow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from dcflow import io
from dcflow.configs import from_mapping
from dcflow.errors import ForeignInputError
from dcflow.instruments import cfht_sim
from dcflow.instruments.cfht_sim import SimConfig
from dcflow.instruments.fe55_sim import (
    Fe55SimConfig,
    fe55_hdulist,
    pair_hdulist,
    simulate_fe55_exposure,
    simulate_sensor_flats,
)
from dcflow.layout import Layout

__all__ = [
    "FE55_INSTRUMENT",
    "SENSOR_EXPOSURE_OFFSETS",
    "SimulatedFiles",
    "fe55_hdus",
    "sim_config_from_campaign",
    "write_simulated_campaign",
    "write_simulated_sensors",
]

FE55_INSTRUMENT = "fe55_sim"
"""The ``instrument`` of simulated sensor exposures in the registry (beside any camera's)."""

SENSOR_EXPOSURE_OFFSETS = {"fe55": 0, "sensor_flat": 100_000, "sensor_bias": 200_000}
"""Exposure number of each file taken with simulated Fe55 exposure ``e``: ``offset + e``, as a
lab numbers every frame it takes (``fe55.exposures`` is at most 10,000)."""

logger = logging.getLogger(__name__)


def sim_config_from_campaign(config: Mapping[str, Any]) -> SimConfig:
    """Build the `SimConfig` from a campaign config's ``simulation:`` section.

    Raises
    ------
    ValueError
        If the section holds an unknown key or a value out of range (the message names it).
    """
    return from_mapping(SimConfig, config.get("simulation", {}))


class SimulatedFiles:
    """The manifest of the files `dcflow simulate` wrote under an input root.

    One path per line (relative to the input root), appended as each file is written; a file
    listed here, or one whose primary header carries ``SIMHASH``, is the simulator's to
    rewrite. Any other existing file is refused.

    Parameters
    ----------
    layout : Layout
        The campaign's paths (``sim_manifest`` and the input root).
    """

    def __init__(self, layout: Layout) -> None:
        self.root = Path(layout.input_root)
        self.path = Path(layout.path("sim_manifest"))
        self.listed: set[str] = set()
        if self.path.exists():
            self.listed = {line for line in self.path.read_text().splitlines() if line}

    def _name(self, path: Path) -> str:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))

    def check_ours(self, path: Path) -> None:
        """Raise `ForeignInputError` if ``path`` exists and the simulator did not write it."""
        if not path.exists() or self._name(path) in self.listed:
            return
        try:
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdus:
                if "SIMHASH" in hdus[0].header:
                    return
        except (OSError, ValueError, IndexError):
            pass
        raise ForeignInputError(
            f"{path}: not written by dcflow simulate (not in {self.path} and no SIMHASH "
            "header keyword); refusing to overwrite it. Move it out of the input tree, or "
            "ingest it as a real raw and drop what would simulate it."
        )

    def write(self, hdus: fits.HDUList, path: Path) -> None:
        """Write ``hdus`` atomically to ``path`` (after `check_ours`) and list it."""
        self.check_ours(path)
        io.write_fits(hdus, path)
        name = self._name(path)
        if name not in self.listed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as manifest:
                manifest.write(name + "\n")
                manifest.flush()
                os.fsync(manifest.fileno())
            self.listed.add(name)


def _up_to_date(path: Path, digest: str) -> bool:
    """True when ``path`` exists, is whole, and was written from a config with ``digest``."""
    if not path.exists():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", fits.verify.VerifyWarning)
            warnings.simplefilter("error", AstropyUserWarning)  # "file may have been truncated"
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdus:
                if hdus[0].header.get("SIMHASH") != digest:
                    return False
                last = hdus[-1] if len(hdus) > 1 else hdus[0]
                info = last.fileinfo()
                return path.stat().st_size >= info["datLoc"] + info["datSpan"]
    except (OSError, ValueError, IndexError, fits.verify.VerifyWarning, AstropyUserWarning):
        return False


def _table_hdus(tables: Mapping[str, Table], digest: str) -> fits.HDUList:
    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = cfht_sim.INSTRUMENT
    primary.header["SIMHASH"] = digest
    hdus = [primary]
    for name, table in tables.items():
        hdu = fits.table_to_hdu(table)
        hdu.name = name
        hdus.append(hdu)
    return fits.HDUList(hdus)


def write_simulated_campaign(
    sim_config: SimConfig, layout: Layout, *, instrument: str = cfht_sim.INSTRUMENT
) -> list[str]:
    """Simulate a whole campaign and write it under the layout's input root.

    Parameters
    ----------
    sim_config : SimConfig
        The simulation.
    layout : Layout
        Paths: dataset types ``raw`` (keys instrument, visit, ccd), ``refcat`` and ``truth``.
    instrument : str
        The ``instrument`` value of the data ids.

    Returns
    -------
    list of str
        Every path of the campaign (refcat, truth, then the raws in visit, ccd order), whether
        written now or already up to date.

    Raises
    ------
    ForeignInputError
        If one of those paths holds a file the simulator did not write.
    """
    digest = cfht_sim.config_digest(sim_config)
    manifest = SimulatedFiles(layout)
    paths: list[str] = []
    stars = cfht_sim.make_truth_catalog(sim_config)
    variables = cfht_sim.make_variable_catalog(sim_config)

    refcat_path = Path(layout.path("refcat", instrument=instrument))
    if not _up_to_date(refcat_path, digest):
        refcat = cfht_sim.make_reference_catalog(sim_config, stars)
        manifest.write(_table_hdus({"REFCAT": refcat}, digest), refcat_path)
        logger.info("wrote %s (%d reference stars)", refcat_path, len(refcat))
    paths.append(str(refcat_path))

    truth_path = Path(layout.path("truth", instrument=instrument))
    if not _up_to_date(truth_path, digest):
        visits = cfht_sim.truth_table(sim_config)
        tables = {"STARS": stars, "VISITS": visits}
        if len(variables):
            tables["VARIABLES"] = variables
            tables["VARIABLE_EPOCHS"] = cfht_sim.variable_truth_table(sim_config, variables)
        manifest.write(_table_hdus(tables, digest), truth_path)
        logger.info("wrote %s (%d stars, %d visit/ccd rows)", truth_path, len(stars), len(visits))
    paths.append(str(truth_path))

    specs = cfht_sim.campaign_exposures(sim_config)
    for number, spec in enumerate(specs, start=1):
        written = 0
        for ccd in range(sim_config.n_ccds):
            path = Path(layout.path("raw", instrument=instrument, visit=spec.visit, ccd=ccd))
            paths.append(str(path))
            if _up_to_date(path, digest):
                continue
            manifest.write(
                cfht_sim.simulate_raw(sim_config, spec, ccd, stars=stars, variables=variables), path
            )
            written += 1
        logger.info(
            "visit %d (%s, %s) [%d/%d]: %d CCD(s) written, %d up to date",
            spec.visit, spec.obstype, spec.band, number, len(specs), written,
            sim_config.n_ccds - written,
        )  # fmt: skip
    return paths


def _fe55_digest(config: Fe55SimConfig) -> str:
    text = json.dumps(dataclasses.asdict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fe55_hdus(config: Fe55SimConfig, *, ccd: int, exposure: int) -> dict[str, fits.HDUList]:
    """The files of simulated Fe55 exposure ``exposure`` of sensor ``ccd``, by dataset type.

    ``fe55_raw`` (the X-ray frame), ``fe55_flat`` and ``fe55_bias`` (pair files, frames in
    ``FRAME1``/``FRAME2``) carry the standard registry keywords
    (`dcflow.campaign.registry.HEADER_KEYS`: ``OBSTYPE`` fe55, sensor_flat, sensor_bias;
    ``EXPNUM`` from `SENSOR_EXPOSURE_OFFSETS`), so `dcflow ingest` registers them like any raw;
    ``fe55_truth`` holds the true gains (for tests and the simulation's own validation only).
    """
    digest = _fe55_digest(config)
    sim = simulate_fe55_exposure(config, ccd=ccd, exposure=exposure)
    flat_pair, bias_pair, _ = simulate_sensor_flats(config, ccd=ccd, exposure=exposure)
    files = {
        "fe55_raw": fe55_hdulist(sim, ccd=ccd, exposure=exposure),
        "fe55_flat": pair_hdulist(
            flat_pair, sim.layout, imagetyp="FLAT", ccd=ccd, exposure=exposure
        ),
        "fe55_bias": pair_hdulist(
            bias_pair, sim.layout, imagetyp="BIAS", ccd=ccd, exposure=exposure
        ),
    }
    for dataset, obstype in zip(files, SENSOR_EXPOSURE_OFFSETS, strict=True):
        header = files[dataset][0].header
        header["INSTRUME"] = (FE55_INSTRUMENT, "simulated sensor-test camera")
        header["EXPNUM"] = (SENSOR_EXPOSURE_OFFSETS[obstype] + exposure, "exposure number")
        header["CCDNUM"] = (ccd, "sensor number")
        header["OBSTYPE"] = (obstype, "exposure type")
        header["FILTER"] = ("none", "no filter")
        header.setdefault("EXPTIME", 0.0)
        header["MJD-OBS"] = (60000.0 + exposure / 1440.0, "simulated date")
        header["SIMHASH"] = (digest, "digest of the fe55 section that made it")
    truth = sim.truth.copy()
    truth.meta["CCD"] = ccd
    truth.meta["EXPOSURE"] = exposure
    truth_hdu = fits.table_to_hdu(truth)
    truth_hdu.name = "TRUTH"
    primary = fits.PrimaryHDU()
    primary.header["SIMHASH"] = digest
    files["fe55_truth"] = fits.HDUList([primary, truth_hdu])
    return files


def write_simulated_sensors(config: Fe55SimConfig, layout: Layout) -> list[str]:
    """Simulate every Fe55 exposure of ``config.sensors`` and write it under the input root.

    Parameters
    ----------
    config : Fe55SimConfig
        The ``fe55`` section (sensors, exposures per sensor, geometry, physics).
    layout : Layout
        Paths: ``fe55_raw``, ``fe55_flat``, ``fe55_bias``, ``fe55_truth`` (keys ccd, exposure).

    Returns
    -------
    list of str
        Every file of the sensors' exposures, whether written now or already up to date.

    Raises
    ------
    ForeignInputError
        If one of those paths holds a file the simulator did not write.
    """
    digest = _fe55_digest(config)
    manifest = SimulatedFiles(layout)
    paths: list[str] = []
    datasets = ("fe55_raw", "fe55_flat", "fe55_bias", "fe55_truth")
    for ccd in config.sensors:
        for exposure in range(config.exposures):
            where = {
                d: Path(layout.path(d, instrument=FE55_INSTRUMENT, ccd=ccd, exposure=exposure))
                for d in datasets
            }
            paths += [str(p) for p in where.values()]
            for path in where.values():
                manifest.check_ours(path)
            if all(_up_to_date(p, digest) for p in where.values()):
                continue
            for dataset, hdus in fe55_hdus(config, ccd=int(ccd), exposure=exposure).items():
                manifest.write(hdus, where[dataset])
            logger.info("sensor %d exposure %d: Fe55 frame, flat and bias pairs", ccd, exposure)
    return paths
