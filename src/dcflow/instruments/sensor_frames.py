"""Reading sensor-test frames (Fe55, flat and bias exposures) and their readout layout.

A simulated sensor file carries its section keywords (``AMPNAMES``, ``DATASEC``...) and may
hold a pair of frames (extensions ``FRAME1`` and ``FRAME2``); a real lab camera's file holds
one frame in its primary HDU and no section keywords, so its layout comes from the camera's
description (`dcflow.instruments.camera`). Both kinds enter a campaign through ingest; the
photon-transfer script reads them through `read_sensor_frames` alike.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from dcflow.errors import InputDataError
from dcflow.geometry import DetectorLayout
from dcflow.instruments.camera import load_camera
from dcflow.io import read_fits

__all__ = ["described_layout", "read_sensor_frames"]


def described_layout(
    path: str, shape: tuple[int, ...], header: fits.Header, camera: str
) -> DetectorLayout:
    """The layout of a raw without section keywords, from a camera description.

    The detector is the header's ``CCD`` (else the description's first).

    Raises
    ------
    InputDataError
        If the description cannot be read or its raw shape differs from ``shape``; the message
        names ``path``.
    """
    try:
        description = load_camera(camera)
        grid = description.detector(int(header.get("CCD", description.detectors[0].ids[0])))
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise InputDataError(f"{path}: camera {camera}: {exc.args[0]}") from None
    if tuple(shape) != grid.raw_shape:
        raise InputDataError(
            f"{path}: raw shape (ny, nx)={tuple(shape)} but camera {description.name} "
            f"gives {grid.raw_shape}"
        )
    return grid.detector_layout()


def read_sensor_frames(
    path: str, *, camera: str | None = None
) -> tuple[list[np.ndarray], DetectorLayout]:
    """The frames of one sensor file and their layout.

    Parameters
    ----------
    path : str
        A FITS file: frames in extensions ``FRAME1``, ``FRAME2`` (a simulated pair), else one
        ``(ny, nx)`` frame in the primary HDU.
    camera : str, optional
        Camera description (name or YAML path) for files without section keywords.

    Returns
    -------
    frames : list of numpy.ndarray
        The ``(ny, nx)`` frames, in file order.
    layout : DetectorLayout
        From the section keywords, else from ``camera``.

    Raises
    ------
    InputDataError
        If the file holds no 2-d frame, or its layout is neither in its header nor described.
    """
    hdus = read_fits(path)
    names = [hdu.name for hdu in hdus]
    if "FRAME1" in names and "FRAME2" in names:
        frames = [hdus["FRAME1"].data, hdus["FRAME2"].data]
    else:
        frames = [hdus[0].data]
    for frame in frames:
        if frame is None or frame.ndim != 2:
            raise InputDataError(f"{path}: no 2-d image frame (FRAME1/FRAME2 or primary HDU)")
    header = hdus[0].header
    if "AMPNAMES" in header:
        try:
            layout = DetectorLayout.from_header(header, frames[0].shape)
        except KeyError as exc:
            raise InputDataError(f"{path}: {exc.args[0]}") from None
        except ValueError as exc:
            raise InputDataError(f"{path}: bad amplifier sections ({exc})") from None
    elif camera:
        layout = described_layout(path, frames[0].shape, header, camera)
    else:
        raise InputDataError(
            f"{path}: no section keywords (AMPNAMES...) and no camera description "
            "(fe55.camera) to read its layout from"
        )
    return frames, layout
