"""X-ray events in a bias-subtracted CCD image: finding, isolation, signal sums and grades.

An X-ray absorbed near the surface of a CCD leaves its charge in one pixel or splits it over
two to four neighbours; one absorbed deep in the silicon (or in the field-free region of a
thick sensor) spreads its charge over many pixels and loses part of it. Grading the pattern
of each event's 3 x 3 neighbourhood, as the ASCA SIS and Chandra ACIS pipelines do, keeps the
compact events whose charge is whole and rejects the diffuse ones that fill the partial-charge
continuum below the K-alpha line.

Grades (ASCA convention, pixels above the split threshold among the 8 neighbours of the
event's peak pixel; a corner "touches" a side pixel it is adjacent to):

- 0: single pixel; 1: single pixel with detached corners;
- 2: vertical split (one neighbour above or below); 3 / 4: left / right split;
- 5: a single-sided split with a touching corner;
- 6: an L or square (two adjacent sides and the corner between them);
- 7: everything else (diffuse, three or more sides, tracks).

The standard "good" set is 0, 2, 3, 4, 6. Hand-written (no library grades CCD X-ray events);
vectorised over all candidates at once: a few ms per 10^6-pixel amplifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dcflow.errors import InputDataError

__all__ = ["GOOD_GRADES", "XrayEvents", "asca_grades", "find_xray_events", "trail_bands"]

GOOD_GRADES = (0, 2, 3, 4, 6)
"""ASCA grades of compact events whose charge is whole (single, split and L/square)."""


@dataclass(frozen=True, slots=True)
class XrayEvents:
    """Candidate X-ray events of one amplifier.

    Parameters
    ----------
    y_pix, x_pix : numpy.ndarray
        Row and column of each event's peak pixel in the image (int).
    peak_adu : numpy.ndarray
        Value of the peak pixel (ADU).
    sum3_adu, sum5_adu : numpy.ndarray
        Sums of the 3 x 3 and 5 x 5 boxes centred on the peak (ADU).
    split_sum_adu : numpy.ndarray
        Sum of the 3 x 3 pixels above the split threshold (ADU), as ACIS sums an event.
    grade : numpy.ndarray
        ASCA grade, 0 to 7 (int).
    isolated : numpy.ndarray
        Whether no pixel of the isolation square outside the isolation box exceeds the split
        threshold (bool).
    n_candidates : int
        Local maxima above the detection threshold away from the edges.
    trail_x_adu, trail_y_adu : numpy.ndarray
        Charge in a band of ``trail_length_pix`` pixels just beyond the isolation box on the
        +x (+y) side, minus the same band on the -x (-y) side (ADU; NaN where a band leaves
        the image): a charge cloud and unrelated X-rays are symmetric on average, a
        deferred-charge or transfer-inefficiency trail is one-sided (`trail_bands`).
    """

    y_pix: np.ndarray
    x_pix: np.ndarray
    peak_adu: np.ndarray
    sum3_adu: np.ndarray
    sum5_adu: np.ndarray
    split_sum_adu: np.ndarray
    grade: np.ndarray
    isolated: np.ndarray
    n_candidates: int
    trail_x_adu: np.ndarray
    trail_y_adu: np.ndarray


def asca_grades(above: np.ndarray) -> np.ndarray:
    """ASCA grade of each event from its 3 x 3 above-split-threshold pattern.

    Parameters
    ----------
    above : numpy.ndarray
        ``(n, 3, 3)`` bool, axis order ``(event, y, x)``: which pixels of each event's 3 x 3
        box exceed the split threshold (the centre is the peak and is ignored).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int grades 0 to 7.

    Raises
    ------
    ValueError
        If ``above`` is not ``(n, 3, 3)``.
    """
    a = np.asarray(above, dtype=bool)
    if a.ndim != 3 or a.shape[1:] != (3, 3):
        raise ValueError(f"above must have shape (n, 3, 3); got {a.shape}")
    down, up, left, right = a[:, 0, 1], a[:, 2, 1], a[:, 1, 0], a[:, 1, 2]
    dl, dr, ul, ur = a[:, 0, 0], a[:, 0, 2], a[:, 2, 0], a[:, 2, 2]
    n_sides = down.astype(int) + up + left + right
    any_corner = dl | dr | ul | ur
    grade = np.full(a.shape[0], 7, dtype=int)
    grade[(n_sides == 0) & ~any_corner] = 0
    grade[(n_sides == 0) & any_corner] = 1
    one = n_sides == 1
    touching = (up & (ul | ur)) | (down & (dl | dr)) | (left & (ul | dl)) | (right & (ur | dr))
    grade[one & touching] = 5
    grade[one & ~touching & (up | down)] = 2
    grade[one & ~touching & left] = 3
    grade[one & ~touching & right] = 4
    two = n_sides == 2
    # the corner between the two sides may or may not be above (L or square: both grade 6);
    # a corner touching either side from the far side makes the event diffuse (grade 7)
    for side_v, side_h, far_v, far_h in (
        (up, left, ur, dl),
        (up, right, ul, dr),
        (down, left, dr, ul),
        (down, right, dl, ur),
    ):
        grade[two & side_v & side_h & ~(far_v | far_h)] = 6
    return grade


def trail_bands(
    image_adu: np.ndarray,
    y_pix: np.ndarray,
    x_pix: np.ndarray,
    *,
    box_half_pix: int,
    length_pix: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided charge beyond each event's signal box, along x and along y (ADU).

    Along x: the sum of the rows ``y - h .. y + h`` over columns ``x + h + 1 .. x + h + L``
    minus the sum over ``x - h - L .. x - h - 1`` (``h = box_half_pix``, ``L = length_pix``);
    along y the same with rows and columns exchanged. Charge that a transfer leaves behind
    trails away from the amplifier's read direction and out of the box, where the event's
    signal sum misses it; the difference of the two sides keeps it and cancels the charge
    cloud's symmetric wings, the pedestal and, on average, unrelated X-rays in the bands.

    Returns
    -------
    tuple of numpy.ndarray
        ``(trail_x_adu, trail_y_adu)``, NaN where a band leaves the image.
    """
    image = np.asarray(image_adu, dtype=float)
    h, length = box_half_pix, length_pix
    reach = h + length
    padded = np.pad(image, reach, constant_values=np.nan)
    y = np.asarray(y_pix, dtype=int) + reach
    x = np.asarray(x_pix, dtype=int) + reach
    across = np.arange(-h, h + 1)
    beyond = np.arange(h + 1, reach + 1)

    def band(dy, dx):
        return padded[y[:, None, None] + dy, x[:, None, None] + dx].sum(axis=(1, 2))

    trail_x = band(across[:, None], beyond[None, :]) - band(across[:, None], -beyond[None, :])
    trail_y = band(beyond[:, None], across[None, :]) - band(-beyond[:, None], across[None, :])
    return trail_x, trail_y


def find_xray_events(
    image_adu: np.ndarray,
    *,
    threshold_adu: float,
    split_threshold_adu: float,
    isolation_radius_pix: int = 3,
    isolation_box_half_pix: int = 1,
    trail_length_pix: int = 5,
) -> XrayEvents:
    """Find X-ray event candidates, sum their charge and grade their pattern.

    A candidate is a local maximum (3 x 3) above ``threshold_adu`` whose isolation square
    (half-width ``isolation_radius_pix``) fits in the image; among equal adjacent maxima one
    is kept.

    Parameters
    ----------
    image_adu : numpy.ndarray
        ``(ny, nx)`` bias-subtracted pixels (ADU), finite.
    threshold_adu : float
        Detection threshold on the peak pixel (ADU), positive.
    split_threshold_adu : float
        Threshold above which a neighbour holds split charge (ADU), positive and below
        ``threshold_adu``.
    isolation_radius_pix : int
        Half-width of the isolation square (pixels), 2 to 10.
    isolation_box_half_pix : int
        Half-width of the box left out of the isolation test (1: the 3 x 3 core, 2: the
        5 x 5 box), below ``isolation_radius_pix``.
    trail_length_pix : int
        Length of the bands beyond that box in which the one-sided trail is measured
        (pixels, `trail_bands`).

    Returns
    -------
    XrayEvents
        Every candidate with its sums, grade and isolation flag (possibly none).

    Raises
    ------
    ValueError
        If the image is not 2-D, a threshold is out of range or the radius is out of range.
    InputDataError
        If the image holds non-finite values.
    """
    image = np.asarray(image_adu, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"image_adu must be 2-D (ny, nx); got {image.ndim} dimension(s)")
    if not np.all(np.isfinite(image)):
        raise InputDataError(
            f"image_adu holds {int(np.sum(~np.isfinite(image)))} non-finite pixel(s)"
        )
    if not 0 < split_threshold_adu < threshold_adu:
        raise ValueError(
            "split_threshold_adu must be > 0 and below threshold_adu "
            f"({threshold_adu}); got {split_threshold_adu}"
        )
    if not 2 <= isolation_radius_pix <= 10:
        raise ValueError(f"isolation_radius_pix must be in [2, 10]; got {isolation_radius_pix}")
    if not 1 <= isolation_box_half_pix < isolation_radius_pix:
        raise ValueError(
            "isolation_box_half_pix must be >= 1 and below isolation_radius_pix "
            f"({isolation_radius_pix}); got {isolation_box_half_pix}"
        )
    radius = isolation_radius_pix
    ny, nx = image.shape
    peaks = (image == ndimage.maximum_filter(image, size=3, mode="nearest")) & (
        image > threshold_adu
    )
    labels, _ = ndimage.label(peaks, structure=np.ones((3, 3)))
    flat = np.flatnonzero(labels)
    _, first = np.unique(labels.flat[flat], return_index=True)
    y, x = np.unravel_index(flat[first], image.shape)
    inside = (y >= radius) & (y < ny - radius) & (x >= radius) & (x < nx - radius)
    y, x = y[inside], x[inside]
    offsets = np.arange(-radius, radius + 1)
    stamps = image[
        y[:, None, None] + offsets[None, :, None], x[:, None, None] + offsets[None, None, :]
    ]
    c = radius
    core = stamps[:, c - 1 : c + 2, c - 1 : c + 2]
    above = core > split_threshold_adu
    outer = stamps.copy()
    h = isolation_box_half_pix
    outer[:, c - h : c + h + 1, c - h : c + h + 1] = -np.inf
    trail_x, trail_y = trail_bands(image, y, x, box_half_pix=h, length_pix=trail_length_pix)
    return XrayEvents(
        y_pix=y,
        x_pix=x,
        peak_adu=stamps[:, c, c],
        sum3_adu=core.sum(axis=(1, 2)),
        sum5_adu=stamps[:, c - 2 : c + 3, c - 2 : c + 3].sum(axis=(1, 2)),
        split_sum_adu=np.where(above, core, 0.0).sum(axis=(1, 2)),
        grade=asca_grades(above),
        isolated=outer.reshape(len(y), -1).max(axis=1, initial=-np.inf) < split_threshold_adu
        if len(y)
        else np.zeros(0, dtype=bool),
        n_candidates=int(y.size),
        trail_x_adu=trail_x,
        trail_y_adu=trail_y,
    )
