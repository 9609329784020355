"""Write a simulated `cfht_sim` campaign to disk: raws, reference catalog and truth.

The arrays come from `dcflow.instruments.cfht_sim`; this module only places them with
`dcflow.layout.Layout` and writes them atomically with `dcflow.io`. Each file records the
digest of the `SimConfig` that made it (``SIMHASH``), so a rerun skips files that are already
there from the same config and rewrites those from another one.

The ``truth`` file holds the truth catalog in HDU 1 (``STARS``) and the per-(visit, ccd)
truth table (`cfht_sim.truth_table`) in HDU 2 (``VISITS``); with transients, variables or
movers, their catalog (``VARIABLES``, `cfht_sim.make_variable_catalog`) and their per-(visit,
ccd) epochs (``VARIABLE_EPOCHS``, `cfht_sim.variable_truth_table`) follow.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from dcflow import io
from dcflow.configs import from_mapping
from dcflow.instruments import cfht_sim
from dcflow.instruments.cfht_sim import SimConfig
from dcflow.layout import Layout

__all__ = ["sim_config_from_campaign", "write_simulated_campaign"]

logger = logging.getLogger(__name__)


def sim_config_from_campaign(config: Mapping[str, Any]) -> SimConfig:
    """Build the `SimConfig` from a campaign config's ``simulation:`` section.

    Raises
    ------
    ValueError
        If the section holds an unknown key or a value out of range (the message names it).
    """
    return from_mapping(SimConfig, config.get("simulation", {}))


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
    """
    digest = cfht_sim.config_digest(sim_config)
    paths: list[str] = []
    stars = cfht_sim.make_truth_catalog(sim_config)
    variables = cfht_sim.make_variable_catalog(sim_config)

    refcat_path = Path(layout.path("refcat", instrument=instrument))
    if not _up_to_date(refcat_path, digest):
        refcat = cfht_sim.make_reference_catalog(sim_config, stars)
        io.write_fits(_table_hdus({"REFCAT": refcat}, digest), refcat_path)
        logger.info("wrote %s (%d reference stars)", refcat_path, len(refcat))
    paths.append(str(refcat_path))

    truth_path = Path(layout.path("truth", instrument=instrument))
    if not _up_to_date(truth_path, digest):
        visits = cfht_sim.truth_table(sim_config)
        tables = {"STARS": stars, "VISITS": visits}
        if len(variables):
            tables["VARIABLES"] = variables
            tables["VARIABLE_EPOCHS"] = cfht_sim.variable_truth_table(sim_config, variables)
        io.write_fits(_table_hdus(tables, digest), truth_path)
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
            io.write_fits(
                cfht_sim.simulate_raw(sim_config, spec, ccd, stars=stars, variables=variables), path
            )
            written += 1
        logger.info(
            "visit %d (%s, %s) [%d/%d]: %d CCD(s) written, %d up to date",
            spec.visit, spec.obstype, spec.band, number, len(specs), written,
            sim_config.n_ccds - written,
        )  # fmt: skip
    return paths
