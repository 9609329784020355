"""Stamps: the gathering of small cut-outs around many sources, shared by every stage.

A primitive module below `dcflow.stages.psf`, `dcflow.stages.measurement`,
`dcflow.stages.forced_photometry` and `dcflow.stages.coadd_measurement`: one way to cut
``(n, 2h+1, 2h+1)`` stamps out of an image (and its variance and mask) and one adaptive-moments
measure on them, so that the PSF fit, source measurement and forced photometry see the same
pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["adaptive_moments", "extract_stamps"]


def extract_stamps(
    array: np.ndarray,
    xc: np.ndarray,
    yc: np.ndarray,
    half_size: int,
    *,
    fill: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gather ``(2h+1, 2h+1)`` stamps centred on integer pixels, in one fancy-indexing call.

    Parameters
    ----------
    array : numpy.ndarray
        ``(ny, nx)`` array.
    xc, yc : numpy.ndarray
        Integer column and row of each stamp centre.
    half_size : int
        ``h``, pixels.
    fill : float, optional
        Value of stamp pixels beyond the array; by default the nearest edge pixel's.

    Returns
    -------
    stamps : numpy.ndarray
        ``(n, 2h+1, 2h+1)`` values; row ``h + dy``, column ``h + dx`` is the array at
        ``(yc + dy, xc + dx)``.
    inside : numpy.ndarray
        ``(n, 2h+1, 2h+1)`` bool, False where the stamp pixel lies outside the array.
    """
    ny, nx = array.shape
    j = np.arange(-half_size, half_size + 1)
    iy = np.asarray(yc)[:, None] + j[None, :]
    ix = np.asarray(xc)[:, None] + j[None, :]
    in_y = (iy >= 0) & (iy < ny)
    in_x = (ix >= 0) & (ix < nx)
    iy = np.clip(iy, 0, ny - 1)
    ix = np.clip(ix, 0, nx - 1)
    stamps = array[iy[:, :, None], ix[:, None, :]]
    inside = in_y[:, :, None] & in_x[:, None, :]
    if fill is not None:
        stamps = np.where(inside, stamps, np.asarray(fill, dtype=stamps.dtype))
    return stamps, inside


def adaptive_moments(
    stamps: np.ndarray,
    dx0: np.ndarray,
    dy0: np.ndarray,
    offsets: np.ndarray,
    start_sigma_pix: float,
    *,
    n_iter: int = 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Adaptive second moments ``(ixx, iyy, ixy)`` on stamps, and a failure flag.

    The weight is an elliptical Gaussian of covariance ``W``; the weighted moments ``Q`` of a
    Gaussian source of covariance ``C`` are ``(C^-1 + W^-1)^-1``, so iterating ``W <- 2 Q``
    converges to ``W = C``: the returned moments are the source's own for a Gaussian.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(n, m, m)`` pixel values around each source (0 where unusable).
    dx0, dy0 : numpy.ndarray
        ``(n,)`` source centre relative to each stamp's central pixel.
    offsets : numpy.ndarray
        ``(m,)`` pixel offsets of the stamp from its central pixel.
    start_sigma_pix : float
        Initial circular weight width, pixels.
    """
    n = stamps.shape[0]
    dx = offsets[None, None, :] - dx0[:, None, None]
    dy = offsets[None, :, None] - dy0[:, None, None]
    wxx = np.full(n, start_sigma_pix**2)
    wyy = np.full(n, start_sigma_pix**2)
    wxy = np.zeros(n)
    flag = np.zeros(n, dtype=bool)
    max_var = (offsets.max() / 1.5) ** 2
    for _ in range(n_iter):
        det = wxx * wyy - wxy**2
        q = (
            wyy[:, None, None] * dx**2
            - 2 * wxy[:, None, None] * dx * dy
            + wxx[:, None, None] * dy**2
        )
        q = q / det[:, None, None]
        w = np.exp(-0.5 * q) * stamps
        total = w.sum(axis=(1, 2))
        bad = total <= 0
        with np.errstate(invalid="ignore", divide="ignore"):
            qxx = (w * dx**2).sum(axis=(1, 2)) / total
            qyy = (w * dy**2).sum(axis=(1, 2)) / total
            qxy = (w * dx * dy).sum(axis=(1, 2)) / total
        bad |= ~np.isfinite(qxx) | (qxx <= 0) | (qyy <= 0) | (qxx * qyy - qxy**2 <= 0)
        flag |= bad
        nxx = np.clip(np.where(bad, wxx, 2 * qxx), 0.05, max_var)
        nyy = np.clip(np.where(bad, wyy, 2 * qyy), 0.05, max_var)
        nxy = np.where(bad, wxy, 2 * qxy)
        limit = 0.95 * np.sqrt(nxx * nyy)
        wxx, wyy, wxy = nxx, nyy, np.clip(nxy, -limit, limit)
    flag |= (wxx >= max_var) | (wyy >= max_var)
    return wxx, wyy, wxy, flag
