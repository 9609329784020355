"""Gain of every amplifier of one Fe55 exposure: the gain table, the event table (pooled over
the sensor's exposures by fe55_summary) and the histogram picture."""

import logging
from collections.abc import Mapping
from typing import Any

from dcflow.configs import from_mapping
from dcflow.errors import InputDataError, StageError
from dcflow.geometry import DetectorLayout
from dcflow.instruments.fe55_sim import Fe55SimConfig
from dcflow.instruments.sensor_frames import described_layout
from dcflow.io import atomic_path, read_fits, write_table
from dcflow.joblog import run_logged
from dcflow.plots import fe55_exposure_figure
from dcflow.stages.fe55 import Fe55Config, layout_mismatches, measure_fe55_gain

log = logging.getLogger("fe55_gain")


def read_fe55_frame(raw_path: str, expected: DetectorLayout | None, camera: str | None = None):
    """Read a raw Fe55 frame and its layout; raise InputDataError naming the file if unusable.

    The layout comes from the header's section keywords, or, when the header has none and a
    camera description is named (``esis1``, or a YAML path), from that description (detector
    ``CCD`` of the header, else the camera's first). ``expected`` None skips the comparison
    with the fe55 config (a real camera's geometry is its description's).
    """
    hdus = read_fits(raw_path, required_keys=() if camera else ("AMPNAMES",))
    data = hdus[0].data
    if data is None or data.ndim != 2:
        shape = None if data is None else data.shape
        raise InputDataError(f"{raw_path}: no 2-d image in the primary HDU (shape {shape})")
    if camera and "AMPNAMES" not in hdus[0].header:
        return data, described_layout(raw_path, data.shape, hdus[0].header, camera), hdus[0].header
    try:
        layout = DetectorLayout.from_header(hdus[0].header, data.shape)
    except KeyError as exc:
        raise InputDataError(f"{raw_path}: {exc.args[0]}") from None
    except ValueError as exc:
        raise InputDataError(f"{raw_path}: bad amplifier sections ({exc})") from None
    mismatches = layout_mismatches(layout, expected) if expected is not None else ()
    if mismatches:
        raise InputDataError(
            f"{raw_path}: amplifier geometry differs from the fe55 config: "
            + "; ".join(mismatches),
            n_mismatches=len(mismatches),
        )
    return data, layout, hdus[0].header


def main(
    *,
    raw_path: str,
    table_path: str,
    events_path: str,
    plot_path: str,
    fe55: Mapping[str, Any],
    analysis: Mapping[str, Any],
    camera: str | None = None,
) -> None:
    """Measure the gains of one Fe55 exposure and write its gain table, events and picture.

    ``camera`` (else the ``fe55`` section's ``camera``) names a camera description
    (`dcflow.instruments.camera`) that gives the geometry of raws without section keywords;
    their geometry is then not compared with the ``fe55`` section's simulated geometry.
    """
    sim = from_mapping(Fe55SimConfig, fe55)
    camera = camera or sim.camera or None
    expected = None if camera else sim.layout()
    config = from_mapping(Fe55Config, analysis)
    data, layout, header = read_fe55_frame(raw_path, expected, camera)
    try:
        result = measure_fe55_gain(data, layout, config=config)
    except StageError as exc:
        raise type(exc)(f"{raw_path}: {exc}", **exc.metadata) from exc
    table = result.table()
    table.meta["RAWFILE"] = str(raw_path)
    table.meta["KAYIELD"] = config.kalpha_e()
    for key in ("CCD", "EXPOSURE"):
        if key in header:
            table.meta[key] = header[key]
    events = result.events_table()
    events.meta.update({k: v for k, v in table.meta.items() if k != "NUNTRUST"})
    write_table(table, table_path)
    write_table(events, events_path)
    for row in table:
        log.info(
            "amp %s: gain %.4f +- %.4f e-/ADU from %d events: %s",
            row["amp"],
            row["gain_e_per_adu"],
            row["gain_err_e_per_adu"],
            row["n_events"],
            "trusted" if row["trusted"] else f"UNTRUSTED ({row['verdict']})",
        )
    if table.meta["NUNTRUST"]:
        log.warning(
            "%d of %d amplifier(s) untrusted: see the verdict column of %s",
            table.meta["NUNTRUST"],
            len(table),
            table_path,
        )
    title = f"Fe55 ccd {header.get('CCD', '?')} exposure {header.get('EXPOSURE', '?')}"
    figure = fe55_exposure_figure(result, title=title)
    with atomic_path(plot_path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        raw_path=snakemake.input.raw,  # noqa: F821
        table_path=snakemake.output.table,  # noqa: F821
        events_path=snakemake.output.events,  # noqa: F821
        plot_path=snakemake.output.plot,  # noqa: F821
        fe55=snakemake.params.fe55,  # noqa: F821
        analysis=snakemake.params.fe55_gain,  # noqa: F821
    )
