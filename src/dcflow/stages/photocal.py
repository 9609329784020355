"""Photometric calibration: a zero point against reference-catalogue magnitudes.

``mag = zero_point - 2.5 log10(flux)``. The zero point is the inverse-variance weighted mean
of ``ref_mag + 2.5 log10(flux)`` over the matched stars, after iterative clipping around the
median at ``clip_sigma`` times the robust scatter; its error is the standard error of that
mean, scaled up by the reduced chi^2 when the scatter exceeds the quoted errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcflow.errors import CalibrationError

__all__ = ["PhotoCalResult", "fit_zero_point"]

_MAG_PER_FLUX = 2.5 / np.log(10.0)


@dataclass(frozen=True, slots=True)
class PhotoCalResult:
    """A photometric zero point.

    Attributes
    ----------
    zero_point : float
        Magnitude of a source of unit flux (``mag = zero_point - 2.5 log10(flux)``).
    zero_point_err : float
        Its standard error, mag.
    used : numpy.ndarray
        bool per input star: kept after clipping.
    n_used : int
        Number of stars kept.
    scatter_mag : float
        Robust scatter (1.4826 MAD) of the kept stars' zero points, mag.
    """

    zero_point: float
    zero_point_err: float
    used: np.ndarray
    n_used: int
    scatter_mag: float


def fit_zero_point(
    flux: np.ndarray,
    flux_err: np.ndarray,
    ref_mag: np.ndarray,
    ref_mag_err: np.ndarray,
    *,
    clip_sigma: float = 3.0,
    n_iter: int = 5,
    min_stars: int = 5,
) -> PhotoCalResult:
    """Fit a zero point from instrumental fluxes and reference magnitudes of the same stars.

    Parameters
    ----------
    flux, flux_err : numpy.ndarray
        Instrumental fluxes and errors (> 0 to be used).
    ref_mag, ref_mag_err : numpy.ndarray
        Reference magnitudes and errors.
    clip_sigma : float
        Clipping threshold in units of the robust scatter.
    n_iter : int
        Maximum clipping iterations.
    min_stars : int
        Fewest stars accepted.

    Returns
    -------
    PhotoCalResult
        The zero point and which stars were used.

    Raises
    ------
    CalibrationError
        If fewer than ``min_stars`` usable stars remain.
    """
    flux = np.asarray(flux, float)
    flux_err = np.asarray(flux_err, float)
    ref_mag = np.asarray(ref_mag, float)
    ref_mag_err = np.asarray(ref_mag_err, float)
    ok = (
        np.isfinite(flux)
        & (flux > 0)
        & np.isfinite(flux_err)
        & np.isfinite(ref_mag)
        & np.isfinite(ref_mag_err)
    )
    if ok.sum() < min_stars:
        raise CalibrationError(
            f"photometric calibration: {int(ok.sum())} usable reference stars, need >= "
            f"{min_stars}; too few matches or reference magnitudes missing",
            n_photcal=int(ok.sum()),
            min_stars=int(min_stars),
        )
    zp_star = np.full(flux.size, np.nan)
    zp_star[ok] = ref_mag[ok] + 2.5 * np.log10(flux[ok])
    err = np.full(flux.size, np.inf)
    err[ok] = np.hypot(_MAG_PER_FLUX * flux_err[ok] / flux[ok], ref_mag_err[ok])
    err = np.maximum(err, 1e-4)
    used = ok.copy()
    for _ in range(n_iter):
        med = np.median(zp_star[used])
        scatter = 1.4826 * np.median(np.abs(zp_star[used] - med))
        # Allow for the quoted errors when the scatter is tiny.
        limit = clip_sigma * np.maximum(scatter, err)
        new_used = ok & (np.abs(zp_star - med) < limit)
        if new_used.sum() < min_stars or np.array_equal(new_used, used):
            break
        used = new_used
    w = 1.0 / err[used] ** 2
    zp = float(np.sum(w * zp_star[used]) / np.sum(w))
    n = int(used.sum())
    chi2 = float(np.sum(w * (zp_star[used] - zp) ** 2) / max(n - 1, 1))
    zp_err = float(np.sqrt(1.0 / np.sum(w) * max(chi2, 1.0)))
    scatter = float(1.4826 * np.median(np.abs(zp_star[used] - np.median(zp_star[used]))))
    return PhotoCalResult(
        zero_point=zp, zero_point_err=zp_err, used=used, n_used=n, scatter_mag=scatter
    )
