"""Setting a campaign up: simulate its raw data, ingest raw files into its registry."""

from __future__ import annotations

import glob
import importlib
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from dcflow.campaign.ingest import IngestSummary, collect_files, ingest_described
from dcflow.campaign.registry import IngestReport, ingest, record_from_standard_header
from dcflow.errors import ConfigInvalidError, InputMissingError
from dcflow.instruments.camera import load_camera
from dcflow.layout import Layout
from dcflow.orchestration.campaign_files import load_campaign_config

__all__ = ["ingest_campaign", "ingest_files", "raw_glob", "simulate_campaign"]

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
    try:
        sim_config = from_mapping(SimConfig, config["simulation"])
    except ValueError as exc:
        raise ConfigInvalidError(f"{config_path}: {exc}") from None
    return write_simulated_campaign(sim_config, Layout.from_config(config), instrument=instrument)


def ingest_campaign(config_path: str | Path) -> IngestReport:
    """Register every raw file of the campaign found under its input root.

    The files are those matching the ``raw`` template. For a camera with a description and no
    section keywords (sdss), each raw's full data id (run, rerun, camcol, field) is kept too,
    so the templates of its companions may use those keys. Companions are not checked here:
    `ingest_files` matches and checks them.
    """
    config = load_campaign_config(config_path)
    layout = Layout.from_config(config)
    instrument = config["campaign"]["instrument"]
    module = importlib.import_module(f"dcflow.instruments.{instrument}")
    translate = getattr(module, "record_from_header", record_from_standard_header)
    paths = sorted(glob.glob(raw_glob(layout, instrument)))
    log.info("ingest: %d files match %s", len(paths), raw_glob(layout, instrument))
    describe = None
    try:
        camera = load_camera(instrument)
    except FileNotFoundError:
        camera = None
    if camera is not None and not camera.section_keywords:

        def describe(header, path: str) -> dict:
            try:
                return camera.read_data_id(header, path)[0]
            except (KeyError, ValueError):  # named unlike the description: keys unknown
                return {}

    return ingest(paths, layout.path("registry"), translate=translate, describe=describe)


def ingest_files(
    config_path: str | Path,
    sources: Sequence[str | Path],
    *,
    file_lists: Sequence[str | Path] = (),
    camera: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Register the real raw files found in directories, files and file lists.

    Parameters
    ----------
    config_path : path-like
        The campaign config (its registry is ``layout``'s ``registry``).
    sources : sequence of path-like
        Directories (walked) and files.
    file_lists : sequence of path-like
        Text files naming one file per line.
    camera : str, optional
        Camera description name or YAML path (default: the campaign's instrument).
    workers : int, optional
        Processes reading headers (default: the CPUs available).
    progress : callable, optional
        ``progress(done, total)`` as headers are read.

    Raises
    ------
    InputMissingError
        If a source or listed file does not exist, or no file at all is a raw of the camera.
    ConfigInvalidError
        If the camera description does not exist or is invalid.
    """
    config = load_campaign_config(config_path)
    name = camera or config["campaign"]["instrument"]
    try:
        description = load_camera(name)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigInvalidError(f"camera {name}: {exc}") from None
    files, missing, trees = collect_files(sources, file_lists)
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise InputMissingError(f"no such file or directory: {shown}")
    if not any(description.matches(f) for f in files):
        where = ", ".join(str(s) for s in [*sources, *file_lists])
        raise InputMissingError(
            f"no raw file of camera {description.name} (file names matching "
            f"{description.file_pattern.pattern}) among the {len(files)} FITS file(s) of {where}"
        )
    layout = Layout.from_config(config)
    return ingest_described(
        files,
        layout.path("registry"),
        description,
        workers=workers,
        progress=progress,
        trees=trees,
    )
