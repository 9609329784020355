"""Photon-transfer gain of one sensor from its flat pairs and a bias pair: table and picture.

The flats and biases are the sensor's registered exposures (obstypes ``sensor_flat`` and
``sensor_bias``) in exposure order: pair files (a simulated sensor) or one frame per file (a
lab camera), whose frames are paired in that order.
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from dcflow.configs import from_mapping
from dcflow.errors import InputDataError, StageError
from dcflow.instruments.fe55_sim import Fe55SimConfig
from dcflow.instruments.sensor_frames import read_sensor_frames
from dcflow.io import atomic_path, write_table
from dcflow.joblog import run_logged
from dcflow.plots import ptc_figure
from dcflow.stages.photon_transfer import PhotonTransferConfig, measure_photon_transfer

log = logging.getLogger("photon_transfer")


def read_pairs(paths: Sequence[str], camera: str | None) -> tuple[list, list]:
    """The frames of ``paths`` taken two by two, and their layouts (one per file)."""
    frames, layouts = [], []
    for path in paths:
        read, layout = read_sensor_frames(path, camera=camera)
        frames += read
        layouts.append(layout)
    if len(frames) % 2:
        raise InputDataError(
            f"{', '.join(map(str, paths))}: {len(frames)} frame(s), not whole pairs"
        )
    return [(frames[i], frames[i + 1]) for i in range(0, len(frames), 2)], layouts


def main(
    *,
    flat_paths: Sequence[str],
    bias_paths: Sequence[str],
    table_path: str,
    plot_path: str,
    fe55: Mapping[str, Any],
    photon_transfer: Mapping[str, Any],
) -> None:
    """Measure the photon-transfer gain of every amplifier; the first bias pair is used.

    The layout is the files' section keywords, else the ``fe55`` section's ``camera``.
    """
    camera = from_mapping(Fe55SimConfig, fe55).camera or None
    config = from_mapping(PhotonTransferConfig, photon_transfer)
    if not flat_paths or not bias_paths:
        raise InputDataError(
            f"photon transfer needs flat and bias pairs; got {len(flat_paths)} flat and "
            f"{len(bias_paths)} bias file(s)"
        )
    pairs, layouts = read_pairs(flat_paths, camera)
    bias_pairs, bias_layouts = read_pairs(bias_paths, camera)
    layout = layouts[0]
    if any(other != layout for other in [*layouts, *bias_layouts]):
        raise InputDataError(
            f"{', '.join(map(str, [*flat_paths, *bias_paths]))}: amplifier layouts differ"
        )
    bias_pair = bias_pairs[0]
    try:
        result = measure_photon_transfer(pairs, bias_pair, layout, config=config)
    except StageError as exc:
        raise type(exc)(f"{', '.join(map(str, flat_paths))}: {exc}", **exc.metadata) from exc
    table = result.table()
    table.meta["NPAIRS"] = len(pairs)
    write_table(table, table_path)
    for row in table:
        log.info(
            "amp %s: PTC gain %.4f +- %.4f e-/ADU, read noise %.2f e- (%s)",
            row["amp"],
            row["gain_e_per_adu"],
            row["gain_err_e_per_adu"],
            row["read_noise_e"],
            row["verdict"],
        )
    figure = ptc_figure(result, title=f"photon transfer, {len(pairs)} flat pair(s)")
    with atomic_path(plot_path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        flat_paths=list(snakemake.input.flats),  # noqa: F821
        bias_paths=list(snakemake.input.biases),  # noqa: F821
        table_path=snakemake.output.table,  # noqa: F821
        plot_path=snakemake.output.plot,  # noqa: F821
        fe55=snakemake.params.fe55,  # noqa: F821
        photon_transfer=snakemake.params.photon_transfer,  # noqa: F821
    )
