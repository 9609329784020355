"""Setting a campaign up: simulate its raw data, ingest raw files into its registry."""

from __future__ import annotations

import glob
import importlib
import logging
import re
from pathlib import Path

from dcflow.campaign.registry import IngestReport, ingest, record_from_standard_header
from dcflow.errors import ConfigInvalidError
from dcflow.layout import Layout
from dcflow.orchestration.campaign_files import load_campaign_config

__all__ = ["ingest_campaign", "raw_glob", "simulate_campaign"]

log = logging.getLogger(__name__)


def raw_glob(layout: Layout, instrument: str) -> str:
    """A glob matching every raw file of the layout's ``raw`` template."""
    pattern = layout.pattern("raw", instrument=instrument)
    return re.sub(r"\{[^}]+\}", "*", pattern)


def simulate_campaign(config_path: str | Path) -> list[str]:
    """Write the simulated raw data, reference and truth catalogs of a cfht_sim campaign.

    Raises
    ------
    ConfigInvalidError
        If the campaign's instrument is not simulated.
    """
    from dcflow.configs import from_mapping
    from dcflow.instruments.cfht_sim import SimConfig
    from dcflow.simulate import write_simulated_campaign

    config = load_campaign_config(config_path)
    instrument = config["campaign"]["instrument"]
    if instrument != "cfht_sim":
        raise ConfigInvalidError(f"{config_path}: instrument {instrument!r} has no simulator")
    sim_config = from_mapping(SimConfig, config["simulation"])
    return write_simulated_campaign(sim_config, Layout.from_config(config), instrument=instrument)


def ingest_campaign(config_path: str | Path) -> IngestReport:
    """Register every raw file of the campaign found under its input root."""
    config = load_campaign_config(config_path)
    layout = Layout.from_config(config)
    instrument = config["campaign"]["instrument"]
    module = importlib.import_module(f"dcflow.instruments.{instrument}")
    translate = getattr(module, "record_from_header", record_from_standard_header)
    paths = sorted(glob.glob(raw_glob(layout, instrument)))
    log.info("ingest: %d files match %s", len(paths), raw_glob(layout, instrument))
    return ingest(paths, layout.path("registry"), translate=translate)
