"""Source detection: matched-filter smoothing, thresholding, footprints and peaks.

The background-subtracted image is smoothed with a Gaussian of the expected PSF width (the
matched filter for a point source in sky-dominated noise), thresholded in units of the
smoothed noise, and cut into 8-connected footprints (``scipy.ndimage.label``). Each local
maximum of the smoothed image inside a footprint above threshold is a source, so close pairs
that share a footprint are kept as two sources and flagged as blended. The local maxima are
found only among the above-threshold pixels with vectorised neighbour comparisons instead of
a full-frame ``maximum_filter`` (0.23 s on 2048 x 4612 here), which is the main reason this
is hand-written rather than ``photutils.segmentation.detect_sources`` + ``find_peaks``.

Smoothing is linear, so the peaks of both signs of a difference image come from one
smoothing (`detect_signed_sources`: 0.3 s CPU less on a MegaCam CCD than two
`detect_sources` calls, same peaks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["DetectionResult", "detect_signed_sources", "detect_sources"]

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True, slots=True)
class DetectionResult:
    """Detected peaks and their footprints.

    Attributes
    ----------
    x_peak, y_peak : numpy.ndarray
        int64 column and row of each peak (0-based array coordinates).
    significance : numpy.ndarray
        Smoothed value at the peak divided by the smoothed-image noise.
    footprint_id : numpy.ndarray
        Label (>= 1) of the footprint holding each peak.
    n_peaks_in_footprint : numpy.ndarray
        Number of peaks that share the footprint (> 1 means blended).
    footprints : numpy.ndarray
        ``(ny, nx)`` int32 label image (0 = no source), only footprints with at least
        ``min_pixels`` pixels kept.
    n_footprints : int
        Number of footprints kept.
    threshold : float
        The detection threshold in smoothed-image units.
    """

    x_peak: np.ndarray
    y_peak: np.ndarray
    significance: np.ndarray
    footprint_id: np.ndarray
    n_peaks_in_footprint: np.ndarray
    footprints: np.ndarray
    n_footprints: int
    threshold: float


def _significant_peaks(smooth, labels, px, py, plab, pval, min_contrast):
    """Peaks (sorted by decreasing value) whose prominence is at least ``min_contrast``.

    A peak's prominence is its height above the highest saddle linking it to higher ground:
    the peak is kept when the part of its footprint above ``value - min_contrast`` that is
    connected to it holds no higher pixel. Only footprints with several peaks are examined,
    and a footprint's highest peak is always kept.
    """
    keep = np.ones(px.size, dtype=bool)
    counts = np.bincount(plab)
    multi = np.nonzero(counts > 1)[0]
    if multi.size == 0:
        return keep
    boxes = ndimage.find_objects(labels)
    for label in multi:
        box = boxes[label - 1]
        inside = labels[box] == label
        sub = np.where(inside, smooth[box], -np.inf)
        y0, x0 = box[0].start, box[1].start
        members = np.nonzero(plab == label)[0]  # already in decreasing value
        for k in members[1:]:
            above = sub > pval[k] - min_contrast
            component, _ = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
            mine = component == component[py[k] - y0, px[k] - x0]
            if sub[mine].max() > pval[k]:
                keep[k] = False
    return keep


def detect_sources(
    image: np.ndarray,
    *,
    noise_rms: float,
    fwhm_pix: float,
    threshold_sigma: float = 5.0,
    min_pixels: int = 5,
    peak_radius_pix: int = 2,
    min_peak_contrast_sigma: float = 5.0,
) -> DetectionResult:
    """Detect point sources in a background-subtracted image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` background-subtracted image; pixels to ignore (cosmic rays, bad pixels)
        should already be set to 0.
    noise_rms : float
        Per-pixel sky noise of ``image`` (same units), > 0.
    fwhm_pix : float
        FWHM of the Gaussian smoothing kernel, pixels (the expected PSF FWHM), > 0.
    threshold_sigma : float
        Detection threshold in units of the smoothed-image noise.
    min_pixels : int
        Minimum number of above-threshold pixels of a footprint.
    peak_radius_pix : int
        A peak is the maximum of the ``(2r+1)^2`` box around it.
    min_peak_contrast_sigma : float
        A second peak in a footprint is kept only if it rises at least this many
        smoothed-image noise sigmas above the highest saddle linking it to a higher part of
        the footprint (its prominence); the default asks of it what detection asks of a
        footprint, with the saddle for sky. Noise bumps on a bright source's profile are
        local maxima too: on SDSS run 6377 85-94 % of the second peaks in g r i rose less
        than 3 sigma above that saddle (60 % less than 1 sigma) and made 18-33 % of the
        sources "blended". 0 keeps every local maximum.

    Returns
    -------
    DetectionResult
        Peaks sorted by decreasing significance.

    Raises
    ------
    ValueError
        If ``image`` is not 2-d or a parameter is out of range.
    """
    smooth, smooth_noise = _smooth(image, noise_rms, fwhm_pix)
    return _detect_smoothed(
        smooth,
        smooth_noise,
        threshold_sigma=threshold_sigma,
        min_pixels=min_pixels,
        peak_radius_pix=peak_radius_pix,
        min_peak_contrast_sigma=min_peak_contrast_sigma,
    )


def detect_signed_sources(
    image: np.ndarray,
    *,
    noise_rms: float,
    fwhm_pix: float,
    threshold_sigma: float = 5.0,
    min_pixels: int = 5,
    peak_radius_pix: int = 2,
    min_peak_contrast_sigma: float = 5.0,
) -> tuple[DetectionResult, DetectionResult]:
    """`detect_sources` on ``image`` and on ``-image``, with one smoothing.

    Parameters are those of `detect_sources` (``image`` may hold sources of both signs, as
    a difference image does).

    Returns
    -------
    positive, negative : DetectionResult
        What ``detect_sources(image, ...)`` and ``detect_sources(-image, ...)`` return
        (the Gaussian filter of ``-image`` is exactly minus that of ``image``).

    Raises
    ------
    ValueError
        As `detect_sources`.
    """
    smooth, smooth_noise = _smooth(image, noise_rms, fwhm_pix)
    options = {
        "threshold_sigma": threshold_sigma,
        "min_pixels": min_pixels,
        "peak_radius_pix": peak_radius_pix,
        "min_peak_contrast_sigma": min_peak_contrast_sigma,
    }
    positive = _detect_smoothed(smooth, smooth_noise, **options)
    negative = _detect_smoothed(np.negative(smooth, out=smooth), smooth_noise, **options)
    return positive, negative


def _smooth(image, noise_rms, fwhm_pix):
    """Checked arguments; the matched-filter image (float32) and its noise."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-d (ny, nx), got shape {image.shape}")
    if not np.isfinite(noise_rms) or noise_rms <= 0:
        raise ValueError(f"noise_rms must be finite and > 0, got {noise_rms}")
    if not fwhm_pix > 0:
        raise ValueError(f"fwhm_pix must be > 0, got {fwhm_pix}")
    sigma = fwhm_pix * _FWHM_TO_SIGMA
    smooth = ndimage.gaussian_filter(image.astype(np.float32, copy=False), sigma, truncate=2.5)
    # Noise of the smoothed image: rms * sqrt(sum k^2) for a normalised Gaussian kernel.
    return smooth, noise_rms / (2.0 * np.sqrt(np.pi) * sigma)


def _detect_smoothed(
    smooth, smooth_noise, *, threshold_sigma, min_pixels, peak_radius_pix, min_peak_contrast_sigma
):
    """Footprints and peaks of a smoothed image (`detect_sources` after its smoothing)."""
    threshold = threshold_sigma * smooth_noise
    above = smooth > threshold
    labels, n_labels = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    ny, nx = smooth.shape
    empty = DetectionResult(
        x_peak=np.zeros(0, np.int64),
        y_peak=np.zeros(0, np.int64),
        significance=np.zeros(0),
        footprint_id=np.zeros(0, np.int64),
        n_peaks_in_footprint=np.zeros(0, np.int64),
        footprints=np.zeros((ny, nx), np.int32),
        n_footprints=0,
        threshold=float(threshold),
    )
    if n_labels == 0:
        return empty
    yy, xx = np.nonzero(above)
    lab = labels[yy, xx]
    npix = np.bincount(lab, minlength=n_labels + 1)
    keep_label = npix >= min_pixels
    keep_label[0] = False
    sel = keep_label[lab]
    yy, xx, lab = yy[sel], xx[sel], lab[sel]
    values = smooth[yy, xx]
    # Compare with the 8 nearest neighbours first (cheap, removes most pixels), then the
    # survivors with the rest of the (2r+1)^2 box.
    offsets = [(dy, dx) for dy in range(-1, 2) for dx in range(-1, 2) if (dy, dx) != (0, 0)]
    r = int(peak_radius_pix)
    outer = [
        (dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if max(abs(dy), abs(dx)) > 1
    ]
    is_peak = np.ones(yy.size, dtype=bool)
    for group in (offsets, outer):
        idx = np.nonzero(is_peak)[0]
        cy, cx, cv = yy[idx], xx[idx], values[idx]
        ok = np.ones(idx.size, dtype=bool)
        for dy, dx in group:
            oy, ox = cy + dy, cx + dx
            outside = (oy < 0) | (oy >= ny) | (ox < 0) | (ox >= nx)
            other = smooth[np.clip(oy, 0, ny - 1), np.clip(ox, 0, nx - 1)]
            # Ties (saturated plateaus) go to the first pixel in raster order.
            ok &= outside | ((cv > other) if (dy, dx) < (0, 0) else (cv >= other))
        is_peak[idx[~ok]] = False
    py, px, plab, pval = yy[is_peak], xx[is_peak], lab[is_peak], values[is_peak]
    order = np.argsort(-pval, kind="stable")
    py, px, plab, pval = py[order], px[order], plab[order], pval[order]
    if min_peak_contrast_sigma > 0:
        keep = _significant_peaks(
            smooth, labels, px, py, plab, pval, min_peak_contrast_sigma * smooth_noise
        )
        py, px, plab, pval = py[keep], px[keep], plab[keep], pval[keep]
    # Renumber kept footprints 1..n and drop the others from the label image.
    new_id = np.zeros(n_labels + 1, dtype=np.int32)
    new_id[keep_label] = np.arange(1, keep_label.sum() + 1, dtype=np.int32)
    # Only the kept above-threshold pixels are labelled (cheaper than remapping every pixel).
    footprints = labels
    footprints[...] = 0
    footprints[yy, xx] = new_id[lab]
    plab = new_id[plab].astype(np.int64)
    n_peaks = np.bincount(plab, minlength=int(keep_label.sum()) + 1)[plab]
    return DetectionResult(
        x_peak=px.astype(np.int64),
        y_peak=py.astype(np.int64),
        significance=pval / smooth_noise,
        footprint_id=plab,
        n_peaks_in_footprint=n_peaks.astype(np.int64),
        footprints=footprints,
        n_footprints=int(keep_label.sum()),
        threshold=float(threshold),
    )
