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
from dcflow.simulate import FE55_INSTRUMENT

__all__ = ["ingest_campaign", "ingest_files", "raw_glob", "simulate_campaign"]

log = logging.getLogger(__name__)


def raw_glob(layout: Layout, instrument: str) -> str:
    """A glob matching every raw file of the layout's ``raw`` template."""
    pattern = layout.pattern("raw", instrument=instrument)
    return re.sub(r"\{[^}]+\}", "*", pattern)


def simulate_campaign(config_path: str | Path) -> list[str]:
    """Write a campaign's simulated input tree: cfht_sim raws and catalogs, Fe55 sensors.

    The cfht_sim part is written when the campaign's instrument is ``cfht_sim``; the Fe55
    sensor exposures when its ``fe55`` section names ``sensors`` (a sensor-test campaign of
    simulated sensors only is instrument ``fe55_sim``). Nothing else is touched, and
    a file in the way that the simulator did not write is an error.

    Raises
    ------
    ConfigInvalidError
        If the campaign has nothing to simulate, or its simulation settings are invalid.
    ForeignInputError
        If a file to write already exists and was not written by the simulator.
    """
    from dcflow.configs import from_mapping
    from dcflow.instruments.cfht_sim import SimConfig
    from dcflow.instruments.fe55_sim import Fe55SimConfig
    from dcflow.simulate import write_simulated_campaign, write_simulated_sensors

    config = load_campaign_config(config_path)
    instrument = config["campaign"]["instrument"]
    try:
        fe55 = from_mapping(Fe55SimConfig, config.get("fe55") or {})
        sim_config = (
            from_mapping(SimConfig, config.get("simulation") or {})
            if instrument == "cfht_sim"
            else None
        )
    except ValueError as exc:
        raise ConfigInvalidError(f"{config_path}: {exc}") from None
    if sim_config is None and not fe55.sensors:
        raise ConfigInvalidError(
            f"{config_path}: nothing to simulate (instrument {instrument!r} has no simulator "
            "and fe55.sensors is empty)"
        )
    layout = Layout.from_config(config)
    written: list[str] = []
    if sim_config is not None:
        written += write_simulated_campaign(sim_config, layout, instrument=instrument)
    if fe55.sensors:
        written += write_simulated_sensors(fe55, layout)
    return written


def ingest_campaign(config_path: str | Path) -> IngestReport:
    """Register every raw file of the campaign found under its input root.

    The files are those matching the ``raw`` template, and the sensor exposures matching the
    ``fe55_raw``, ``fe55_flat`` and ``fe55_bias`` templates (read with the standard header
    keywords, as `dcflow simulate` writes them). For a camera with a description and no
    section keywords (sdss), each raw's full data id (run, rerun, camcol, field) is kept too,
    so the templates of its companions may use those keys. Companions are not checked here:
    `ingest_files` matches and checks them.

    Raises
    ------
    InputMissingError
        If no file under the input root matches any of those templates.
    """
    config = load_campaign_config(config_path)
    layout = Layout.from_config(config)
    instrument = config["campaign"]["instrument"]
    try:
        module = importlib.import_module(f"dcflow.instruments.{instrument}")
    except ModuleNotFoundError:  # a camera known only by its description (esis1)
        module = None
    translate = getattr(module, "record_from_header", record_from_standard_header)
    raw_pattern = raw_glob(layout, instrument)
    paths = sorted(glob.glob(raw_pattern))
    log.info("ingest: %d files match %s", len(paths), raw_pattern)
    sensor_patterns = [
        re.sub(r"\{[^}]+\}", "*", layout.pattern(d, instrument=FE55_INSTRUMENT))
        for d in ("fe55_raw", "fe55_flat", "fe55_bias")
    ]
    sensor_paths = sorted({p for pattern in sensor_patterns for p in glob.glob(pattern)})
    if not paths and not sensor_paths:
        raise InputMissingError(
            f"{config_path}: no raw file under the input root matches "
            + ", ".join([raw_pattern, *sensor_patterns])
            + " (real files: `dcflow ingest PATH...`)"
        )
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

    registry = layout.path("registry")
    report = ingest(paths, registry, translate=translate, describe=describe)
    if not sensor_paths:
        return report
    sensors = ingest(sensor_paths, registry)
    return IngestReport(
        report.n_added + sensors.n_added,
        report.n_known + sensors.n_known,
        report.rejected + sensors.rejected,
        report.seconds + sensors.seconds,
    )


def ingest_files(
    config_path: str | Path,
    sources: Sequence[str | Path],
    *,
    file_lists: Sequence[str | Path] = (),
    camera: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    obstype: str | None = None,
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
    obstype : str, optional
        Exposure type of every raw ingested (a lab camera's ``fe55``, ``sensor_flat`` or
        ``sensor_bias`` frames, whose headers do not say it); default: the description's.

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
        obstype=obstype,
    )
