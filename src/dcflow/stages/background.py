"""Sky background model: sigma-clipped statistics on a mesh of boxes, smoothly interpolated.

This follows SExtractor / photutils ``Background2D`` (box statistics, a median filter over the
mesh, a bicubic-spline interpolation back to full resolution), written by hand for speed:
on a 2048 x 4612 frame ``photutils.background.Background2D`` with 128-pixel boxes takes
1.5 s here, this version ~0.25 s. The gain comes from the interpolation, done as two small
matrix products with separable cubic-spline weights (``W_y @ mesh @ W_x.T``), and from
estimating each box on a regular sub-sample of its pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

__all__ = ["BackgroundResult", "estimate_background", "interpolation_weights"]


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackgroundResult:
    """A background model.

    Attributes
    ----------
    background : numpy.ndarray
        ``(ny, nx)`` float32 background level, in image units.
    mesh_level : numpy.ndarray
        ``(nby, nbx)`` median-filtered box levels.
    mesh_rms : numpy.ndarray
        ``(nby, nbx)`` median-filtered box noise (clipped standard deviation).
    mean : float
        Mean of ``mesh_level``.
    rms : float
        Median of ``mesh_rms``: the typical sky noise per pixel.
    """

    background: np.ndarray
    mesh_level: np.ndarray
    mesh_rms: np.ndarray
    mean: float
    rms: float


def interpolation_weights(n: int, n_boxes: int, box: int) -> np.ndarray:
    """Weights that map box centres to the ``n`` pixel rows (or columns) of an image.

    Parameters
    ----------
    n : int
        Number of pixels along the axis.
    n_boxes : int
        Number of boxes along the axis.
    box : int
        Box size, pixels; box ``k`` covers pixels ``[k * box, (k + 1) * box)``.

    Returns
    -------
    numpy.ndarray
        ``(n, n_boxes)`` float64 weights: a natural cubic spline through the box centres
        (linear for 2-3 boxes, constant for one), held constant beyond the first and last
        centre. ``weights @ values`` interpolates per-box values to every pixel.
    """
    centres = (np.arange(n_boxes) + 0.5) * box - 0.5
    coords = np.clip(np.arange(n, dtype=float), centres[0], centres[-1])
    if n_boxes == 1:
        return np.ones((n, 1))
    eye = np.eye(n_boxes)
    if n_boxes < 4:
        return np.stack([np.interp(coords, centres, eye[i]) for i in range(n_boxes)], axis=1)
    return CubicSpline(centres, eye, bc_type="natural")(coords)


def _clipped_box_stats(
    boxes: np.ndarray, clip_sigma: float, n_iter: int, min_valid: int = 20, statistic: str = "mode"
) -> tuple[np.ndarray, np.ndarray]:
    """Sigma-clipped level and rms of each row of ``boxes`` (NaN = ignored), vectorised.

    Each row is sorted once; a clipping interval then maps to a contiguous run of the sorted
    row, whose quantiles are read by index and whose mean and variance come from cumulative
    sums, so all boxes are clipped together without a Python loop.

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(n_boxes, n_pixels)`` float values, NaN for masked pixels.
    clip_sigma : float
        Clipping threshold in standard deviations (estimated from the interquartile range).
    n_iter : int
        Number of clipping iterations.
    min_valid : int
        Boxes with fewer kept pixels get NaN.
    statistic : {"mode", "mean"}
        Level estimate: ``"mode"``, SExtractor's ``2.5 median - 1.5 mean`` when the kept
        values are only mildly skewed (``|mean - median| < 0.3 std``), else the median;
        ``"mean"``, the clipped mean.

    Returns
    -------
    level, rms : numpy.ndarray
        Per box: the level and the clipped standard deviation.
    """
    srt = np.sort(boxes, axis=1)
    n_box, m = srt.shape
    valid = np.isfinite(srt)
    clean = np.where(valid, srt, 0.0).astype(np.float64)
    csum = np.concatenate([np.zeros((n_box, 1)), np.cumsum(clean, axis=1)], axis=1)
    csum2 = np.concatenate([np.zeros((n_box, 1)), np.cumsum(clean * clean, axis=1)], axis=1)
    rows = np.arange(n_box)
    lo_i = np.zeros(n_box, dtype=np.int64)
    hi_i = valid.sum(axis=1)

    def quantile(q):
        n = np.maximum(hi_i - lo_i, 1)
        pos = lo_i + q * (n - 1)
        k = np.clip(np.floor(pos).astype(np.int64), 0, m - 1)
        k1 = np.clip(k + 1, 0, m - 1)
        t = pos - np.floor(pos)
        return clean[rows, k] * (1 - t) + clean[rows, k1] * t

    for _ in range(n_iter):
        q25, med, q75 = quantile(0.25), quantile(0.5), quantile(0.75)
        std = (q75 - q25) / 1.349
        lo, hi = med - clip_sigma * std, med + clip_sigma * std
        # Count of valid sorted values below each bound (NaNs sort last and are excluded).
        lo_i = np.minimum((srt < lo[:, None]).sum(axis=1), hi_i)
        hi_i = np.minimum((srt <= hi[:, None]).sum(axis=1), valid.sum(axis=1))
    n = hi_i - lo_i
    safe = np.maximum(n, 1)
    mean = (csum[rows, hi_i] - csum[rows, lo_i]) / safe
    var = (csum2[rows, hi_i] - csum2[rows, lo_i]) / safe - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    med = quantile(0.5)
    if statistic == "mean":
        level = mean.copy()
    else:
        mild = np.abs(mean - med) < 0.3 * std
        level = np.where(mild, 2.5 * med - 1.5 * mean, med)
    bad = n < min_valid
    level[bad] = np.nan
    std[bad] = np.nan
    return level, std


def estimate_background(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    box_size: int = 128,
    filter_size: int = 3,
    clip_sigma: float = 3.0,
    n_clip_iter: int = 3,
    subsample: int = 2,
    statistic: str = "mode",
) -> BackgroundResult:
    """Estimate a smooth sky background.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` image, sky not subtracted.
    mask : numpy.ndarray of bool, optional
        ``(ny, nx)``; True marks pixels to ignore (bad, saturated, sources).
    box_size : int
        Approximate box size in pixels; each axis is cut into ``round(n / box_size)`` equal
        boxes of ``n // round(n / box_size)`` pixels (at least one box).
    filter_size : int
        Size of the median filter applied to the mesh of box values (1 = none).
    clip_sigma : float
        Clipping threshold, in standard deviations (from the interquartile range).
    n_clip_iter : int
        Number of clipping iterations.
    subsample : int
        Use every ``subsample``-th row and column of each box (1 = all pixels).
    statistic : {"mode", "mean"}
        Box level: ``"mode"`` (SExtractor's ``2.5 median - 1.5 mean``), robust to the
        sources in an unmasked box but biased low on a skewed, photon-noise sky (measured
        0.2-0.3 e- low for Poisson skies of 190-300 e- with a few e- of read noise: the
        median and mode of a Poisson distribution lie below its mean); ``"mean"``, the
        clipped mean, unbiased within a few 0.01 e- for a sky whose sources are masked
        (``mask``).

    Returns
    -------
    BackgroundResult
        The full-resolution model and the mesh statistics.

    Raises
    ------
    ValueError
        If ``image`` is not 2-d, ``mask`` has another shape, or no box has enough valid
        pixels.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-d (ny, nx), got shape {image.shape}")
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    if box_size < 8:
        raise ValueError(f"box_size must be >= 8 pixels, got {box_size}")
    if statistic not in ("mode", "mean"):
        raise ValueError(f"statistic must be 'mode' or 'mean', got {statistic!r}")
    ny, nx = image.shape
    nby, nbx = max(1, round(ny / box_size)), max(1, round(nx / box_size))
    # Equal boxes of by x bx pixels; the last few rows / columns (fewer than one box per
    # axis) are left out of the statistics but still covered by the interpolation.
    by, bx = ny // nby, nx // nbx
    view = image[: nby * by : subsample, : nbx * bx : subsample]
    sub_by, sub_bx = view.shape[0] // nby, view.shape[1] // nbx
    view = view[: nby * sub_by, : nbx * sub_bx]
    values = view.astype(np.float32, copy=True)
    values[~np.isfinite(values)] = np.nan
    if mask is not None:
        values[
            mask[: nby * by : subsample, : nbx * bx : subsample][: nby * sub_by, : nbx * sub_bx]
        ] = np.nan
    boxes = values.reshape(nby, sub_by, nbx, sub_bx).transpose(0, 2, 1, 3).reshape(nby * nbx, -1)
    level, rms = _clipped_box_stats(boxes, clip_sigma, n_clip_iter, statistic=statistic)
    level = level.reshape(nby, nbx)
    rms = rms.reshape(nby, nbx)
    bad = ~np.isfinite(level)
    if bad.all():
        raise ValueError("background: no box has enough valid pixels (all masked or NaN)")
    if bad.any():
        # Fill empty boxes from the nearest valid box.
        idx = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
        level = level[tuple(idx)]
        rms = rms[tuple(idx)]
    if filter_size > 1:
        level = ndimage.median_filter(level, size=filter_size, mode="nearest")
        rms = ndimage.median_filter(rms, size=filter_size, mode="nearest")
    wy = interpolation_weights(ny, nby, by)
    wx = interpolation_weights(nx, nbx, bx)
    background = ((wy @ level) @ wx.T).astype(np.float32)
    return BackgroundResult(
        background=background,
        mesh_level=level,
        mesh_rms=rms,
        mean=float(level.mean()),
        rms=float(np.median(rms)),
    )
