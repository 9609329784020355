"""Deblend coadd footprints: share each footprint's flux among its peaks (children).

A footprint is a connected region of the detection image above the detection threshold, grown
by a few pixels so that the wings of its sources are shared too. When it holds more than one
peak, every peak gets a *template* and each pixel's flux is shared among the children in
proportion to their templates (the flux-apportioning scheme of SDSS's photo and LSST's
meas_deblender), so the children's fluxes always sum to the footprint's:

- ``symmetric``: ``T_i(p) = max(0, min(I(p), I(2 c_i - p)))`` with ``c_i`` the peak's pixel:
  the source is assumed 180-degree symmetric, so a neighbour's light, present on one side only,
  is cut out by the minimum. It fits stars and galaxies alike.
- ``psf``: the PSF at each peak, scaled by a simultaneous linear least-squares fit of all the
  footprint's peaks: exact for point sources, poor for galaxies.
- ``mixed`` (the default): each peak has the PSF and the PSF broadened by Gaussians of
  0.5-8 PSF sigma as bases, all fitted at once with non-negative amplitudes, so a star's
  template comes out as its PSF and a galaxy's as a profile of its own size; the peaks are
  then re-centred on their own light (the data minus the neighbours' models) and their
  positions fitted (Gauss-Newton steps, each followed by a refit), since a faint peak on a
  bright neighbour's slope sits up to a pixel towards it.

Where every template is zero (noise pixels) the flux is shared by the peaks' PSF profiles.

Peaks come from the detection image, from the unsmoothed per-pixel S/N (`footprint_peaks`)
and from the residual of a ``mixed`` fit of each footprint's known peaks (`residual_peaks`):
a source 1-3 mag fainter 1.5 FWHM from a bright one is a shoulder, no local maximum.

Measured on simulated pairs (``benchmarks/deblend.py --residual``: primary S/N 2000, 2 seeds x
16 pairs per cell, 1.5-3 FWHM, 0-3 mag): every secondary is found (without the residual
search none at 1.5 FWHM beyond 2 mag, nor at 2 FWHM beyond 2 mag for galaxies), and no
Object matches no source. Star children are within 0.9 % rms (PSF flux); exponential
galaxy children (r_half 0.4", seeing 0.9", 2" aperture flux against the galaxy measured
alone) within 3.5 % rms, the largest at 1.5 FWHM and 3 mag. The position fit is what brings
galaxies there: with two windowed re-centrings only, galaxy secondaries at 1.5 FWHM were
11-24 % rms, with the true positions 1.4-3.4 %.
A segmentation split (photutils' multi-threshold ``deblend_sources`` on the detection image,
SExtractor-like) gives each pixel to one child: it splits no pair beyond 1 mag of contrast at
2 FWHM, where its peaks merge.

Children are measured on *layers*: layer ``k`` is the image with the footprint of every family
of more than ``k`` children replaced by its ``k``-th child's share, so families never touch and
one layer serves the ``k``-th child of all of them. Isolated peaks live on layer 0, which is
the unchanged image: their measurement does not change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import nnls

from dcflow.stages.forced_photometry import FWHM_PER_SIGMA, MixturePsf

__all__ = [
    "TEMPLATES",
    "DeblendResult",
    "child_layers",
    "deblend",
    "footprint_peaks",
    "grow_footprints",
    "residual_peaks",
    "share_footprint",
]

log = logging.getLogger(__name__)

TEMPLATES = {
    "symmetric": "image symmetrised about the peak (min of a pixel and its mirror): stars and "
    "galaxies (SDSS / LSST meas_deblender)",
    "psf": "PSF at the peak scaled by a simultaneous fit of the footprint's peaks: point "
    "sources only",
    "mixed": "per peak, the PSF and copies broadened up to the peak's own measured extent, "
    "amplitudes fitted jointly and non-negative over the footprint: stars take the PSF, "
    "galaxies a profile of their own size",
    "none": "no deblending: every peak is measured on the whole image",
}
"""Templates `share_footprint` can build, and what each means (a config's choices)."""


@dataclass(frozen=True, slots=True)
class DeblendResult:
    """Families of peaks.

    Attributes
    ----------
    footprints : numpy.ndarray
        ``(ny, nx)`` int32 labels of the grown footprints (0: none).
    family : numpy.ndarray
        ``(n,)`` footprint label of each peak (0 if the peak is in no footprint).
    n_child : numpy.ndarray
        ``(n,)`` number of peaks in the peak's footprint (1: isolated).
    first_peak : numpy.ndarray
        ``(n,)`` index of the first peak (input order) of the peak's footprint: names the family.
    layer : numpy.ndarray
        ``(n,)`` layer on which the peak is measured (see `child_layers`); 0 for isolated and
        skipped peaks.
    skipped : numpy.ndarray
        ``(n,)`` bool: the footprint has more than ``max_children`` peaks, not deblended.
    """

    footprints: np.ndarray
    family: np.ndarray
    n_child: np.ndarray
    first_peak: np.ndarray
    layer: np.ndarray
    skipped: np.ndarray


def grow_footprints(above: np.ndarray, grow_pix: float) -> np.ndarray:
    """Label connected regions of ``above`` and grow each by ``grow_pix`` into free pixels.

    A free pixel goes to its nearest footprint (the expansion of scikit-image's
    ``expand_labels``), so grown footprints never overlap.
    """
    labels, _ = ndimage.label(above, structure=np.ones((3, 3)))
    if grow_pix <= 0 or not labels.any():
        return labels.astype(np.int32)
    distance, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    grown = np.where(distance <= grow_pix, labels[iy, ix], 0)
    return grown.astype(np.int32)


def _prominent(sub: np.ndarray, y: int, x: int, min_contrast: float) -> bool:
    """True if no higher pixel is reachable from ``(y, x)`` without dropping by min_contrast."""
    value = sub[y, x]
    component, _ = ndimage.label(sub > value - min_contrast, structure=np.ones((3, 3)))
    return not np.any(sub[component == component[y, x]] > value)


def footprint_peaks(
    footprint_mask: np.ndarray,
    sharp: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    *,
    min_contrast_sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of each footprint from an unsmoothed significance image, where it resolves more.

    The PSF-matched detection image is twice as blurred as the coadd (its PSF is the coadd's
    convolved with itself), so a neighbour 1.5 FWHM away and a few magnitudes fainter is no
    local maximum there. Within each footprint, the local maxima of ``sharp`` (per-pixel
    S/N, unit noise) that stand ``min_contrast_sigma`` above the highest saddle linking them to
    higher ground are found; where a footprint has two or more of them they replace the
    footprint's smoothed peaks ``(px, py)``, elsewhere those are kept.

    Returns
    -------
    px, py : numpy.ndarray
        Integer peaks, sorted by ``(y, x)``.
    """
    px = np.asarray(px, dtype=np.int64)
    py = np.asarray(py, dtype=np.int64)
    labels, _ = ndimage.label(footprint_mask, structure=np.ones((3, 3)))
    values = np.nan_to_num(np.asarray(sharp, dtype=np.float64), nan=0.0)
    # 3 x 3 maxima: on the sharp image a wider window hides a close neighbour's peak; the
    # prominence test, not the window, rejects noise.
    local_max = (values == ndimage.maximum_filter(values, size=3)) & (labels > 0)
    cy, cx = np.nonzero(local_max)
    keep_x, keep_y = [px], [py]
    replaced = np.zeros(labels.max() + 1, dtype=bool)
    boxes = ndimage.find_objects(labels)
    candidate_label = labels[cy, cx]
    for label in np.unique(candidate_label[np.bincount(candidate_label)[candidate_label] > 1]):
        box = boxes[label - 1]
        sub = np.where(labels[box] == label, values[box], -np.inf)
        mine = np.flatnonzero(candidate_label == label)
        kept = [
            k
            for k in mine
            if _prominent(sub, cy[k] - box[0].start, cx[k] - box[1].start, min_contrast_sigma)
        ]
        if len(kept) > 1:
            replaced[label] = True
            keep_x.append(cx[kept])
            keep_y.append(cy[kept])
    keep_x[0] = px[~replaced[labels[py, px]]]
    keep_y[0] = py[~replaced[labels[py, px]]]
    x = np.concatenate(keep_x).astype(np.int64)
    y = np.concatenate(keep_y).astype(np.int64)
    order = np.lexsort((x, y))
    return x[order], y[order]


def deblend(
    footprint_mask: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    *,
    grow_pix: float,
    max_children: int,
    template: str = "symmetric",
    footprints: np.ndarray | None = None,
) -> DeblendResult:
    """Group peaks into families by the (grown) footprint they fall in.

    Parameters
    ----------
    footprint_mask : numpy.ndarray
        ``(ny, nx)`` bool: pixels above the detection threshold.
    px, py : numpy.ndarray
        Integer peak pixels.
    grow_pix : float
        Footprints grow by this many pixels (into free pixels) so that wings are shared too.
    max_children : int
        Footprints with more peaks are not deblended (``skipped``): bounds the cost.
    template : str
        One of `TEMPLATES`; ``none`` makes every peak its own family (nothing deblended).
    footprints : numpy.ndarray, optional
        ``grow_footprints(footprint_mask, grow_pix)`` if the caller has it already (it costs a
        distance transform of the whole image).
    """
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)}; got {template!r}")
    px = np.asarray(px, dtype=np.int64)
    py = np.asarray(py, dtype=np.int64)
    if footprints is None:
        footprints = grow_footprints(footprint_mask, grow_pix)
    n = len(px)
    family = footprints[py, px].astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    n_child = np.ones(n, dtype=np.int64)
    first_peak = np.arange(n, dtype=np.int64)
    layer = np.zeros(n, dtype=np.int64)
    skipped = np.zeros(n, dtype=bool)
    if template != "none" and n:
        in_family = family > 0
        labels, first, counts = np.unique(family[in_family], return_index=True, return_counts=True)
        index = np.flatnonzero(in_family)
        slot = np.searchsorted(labels, family[in_family])
        n_child[index] = counts[slot]
        first_peak[index] = index[first][slot]
        order = np.argsort(family[in_family], kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank[order] = np.arange(len(order)) - np.repeat(starts, counts)
        layer[index] = rank
        skipped[index] = counts[slot] > max_children
        layer[skipped] = 0
        n_skipped = len(np.unique(family[skipped]))
        if n_skipped:
            log.warning(
                "%d footprints have more than %d peaks and are not deblended",
                n_skipped,
                max_children,
            )
    return DeblendResult(footprints, family, n_child, first_peak, layer, skipped)


def _psf_profiles(xx, yy, cx, cy, fwhm_pix: float) -> np.ndarray:
    """``(k, h, w)`` peak-normalised Gaussians of the PSF's width: the fallback shares."""
    sigma = fwhm_pix / FWHM_PER_SIGMA
    r2 = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2
    return np.exp(-0.5 * r2 / sigma**2)


def _psf_models(psf: MixturePsf, cx, cy, shape, fwhm_pix: float) -> np.ndarray:
    """``(k, h, w)`` pixel-integrated unit-flux PSFs at each peak, out to 8 FWHM (0 beyond)."""
    h, w = shape
    radius = int(min(max(h, w), np.ceil(8.0 * fwhm_pix)))
    offsets = np.arange(-radius, radius + 1)
    out = np.zeros((len(cx), h, w))
    for i, (x, y) in enumerate(zip(cx, cy, strict=True)):
        ix, iy = round(float(x)), round(float(y))
        stamp = psf.stamps(np.array([x - ix]), np.array([y - iy]), offsets)[0]
        y0, y1 = max(0, iy - radius), min(h, iy + radius + 1)
        x0, x1 = max(0, ix - radius), min(w, ix + radius + 1)
        if y0 < y1 and x0 < x1:
            out[i, y0:y1, x0:x1] = stamp[
                y0 - iy + radius : y1 - iy + radius, x0 - ix + radius : x1 - ix + radius
            ]
    return out


MIXED_BROADENING = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Gaussian sigmas (in PSF sigmas) by which the ``mixed`` template's extended bases broaden
the PSF: a non-negative sum of the PSF and these approximates a star (the PSF alone) and
PSF-convolved galaxy profiles from compact to several PSF widths."""


def _symmetric_templates(data, inside, cx, cy) -> np.ndarray:
    """``(k, h, w)`` ``max(0, min(I(p), I(2 c - p)))`` about each (rounded) peak."""
    h, w = data.shape
    templates = np.zeros((len(cx), h, w))
    yi, xi = np.mgrid[0:h, 0:w]
    for i in range(len(cx)):
        my = 2 * round(float(cy[i])) - yi
        mx = 2 * round(float(cx[i])) - xi
        ok = (my >= 0) & (my < h) & (mx >= 0) & (mx < w)
        mirror = np.zeros((h, w))
        mirror[ok] = data[my[ok], mx[ok]]
        ok[ok] = inside[my[ok], mx[ok]]
        templates[i] = np.where(ok & inside, np.maximum(np.minimum(data, mirror), 0.0), 0.0)
    return templates


def _fit_mixed(data, inside, cx, cy, psf: MixturePsf, fwhm_pix: float):
    """Non-negative fit of every peak's bases: ``(k, h, w)`` models."""
    h, w = data.shape
    models = _psf_models(psf, cx, cy, (h, w), fwhm_pix)
    sigma = fwhm_pix / FWHM_PER_SIGMA
    columns, owner = [models[i] for i in range(len(cx))], list(range(len(cx)))
    for i, m in enumerate(models):
        for f in MIXED_BROADENING:
            columns.append(ndimage.gaussian_filter(m, f * sigma, mode="constant"))
            owner.append(i)
    basis = np.stack(columns)
    design = basis[:, inside].T
    scale = np.sqrt((design * design).sum(axis=0))
    scale[scale == 0] = 1.0
    coef, _ = nnls(design / scale, data[inside], maxiter=50 * len(columns))
    coef = coef / scale
    templates = np.zeros((len(cx), h, w))
    np.add.at(templates, np.asarray(owner), coef[:, None, None] * basis)
    return templates


def _own_centroids(data, inside, templates, cx, cy, sigma, max_shift):
    """Each peak's windowed centroid on the data minus its neighbours' models."""
    h, w = data.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    total = templates.sum(axis=0)
    new_x, new_y = np.array(cx, float), np.array(cy, float)
    for i in range(len(cx)):
        own = np.where(inside, data - (total - templates[i]), 0.0)
        x, y = new_x[i], new_y[i]
        for _ in range(5):
            weight = np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2) * own
            norm = weight.sum()
            if not norm > 0:
                break
            x, y = (weight * xx).sum() / norm, (weight * yy).sum() / norm
        shift = np.hypot(x - cx[i], y - cy[i])
        if np.isfinite(shift) and shift <= max_shift:
            new_x[i], new_y[i] = x, y
    return new_x, new_y


def _position_step(data, inside, templates, x, y, max_step):
    """One Gauss-Newton step of every peak's position, at most ``max_step`` pixels.

    The data are fitted, by linear least squares, with each model and its x and y
    derivatives: ``T(p - d) ~ T(p) - d . grad T``, so a derivative's amplitude over the
    model's gives the shift ``d``. Returns the new positions and the largest step taken.
    """
    k = len(x)
    grad_y, grad_x = np.gradient(templates, axis=(1, 2))
    design = np.concatenate([templates[:, inside], grad_x[:, inside], grad_y[:, inside]]).T
    coef, *_ = np.linalg.lstsq(design, data[inside], rcond=None)
    amplitude = coef[:k]
    with np.errstate(invalid="ignore", divide="ignore"):
        dx, dy = -coef[k : 2 * k] / amplitude, -coef[2 * k :] / amplitude
        step = np.hypot(dx, dy)
        scale = np.minimum(1.0, max_step / step)
    moved = (amplitude > 0) & np.isfinite(step)
    dx = np.where(moved, dx * scale, 0.0)
    dy = np.where(moved, dy * scale, 0.0)
    return x + dx, y + dy, float(np.max(np.hypot(dx, dy), initial=0.0))


MIXED_POSITION_ROUNDS = 6
"""Most Gauss-Newton position steps of a ``mixed`` fit (each followed by a refit)."""

POSITION_TOLERANCE_PIX = 0.02
"""A ``mixed`` fit stops moving its peaks when no step is larger (pixels)."""


def _mixed_fit(data, inside, cx, cy, psf: MixturePsf, fwhm_pix: float, *, max_rounds: int):
    """``mixed`` models of a footprint's peaks and the positions they were fitted at.

    The peaks start at the windowed centroids of their own light (the data minus the
    neighbours' models); then up to ``max_rounds`` Gauss-Newton steps (`_position_step`) move
    them, each followed by a refit, while no peak strays more than one FWHM from its pixel.
    """
    sigma = fwhm_pix / FWHM_PER_SIGMA
    cx, cy = np.asarray(cx, float), np.asarray(cy, float)
    templates = _fit_mixed(data, inside, cx, cy, psf, fwhm_pix)
    x, y = _own_centroids(data, inside, templates, cx, cy, sigma, 0.5 * fwhm_pix)
    templates = _fit_mixed(data, inside, x, y, psf, fwhm_pix)
    for _ in range(max_rounds):
        new_x, new_y, step = _position_step(data, inside, templates, x, y, 0.5)
        stray = np.hypot(new_x - cx, new_y - cy) > fwhm_pix
        x, y = np.where(stray, x, new_x), np.where(stray, y, new_y)
        templates = _fit_mixed(data, inside, x, y, psf, fwhm_pix)
        if step < POSITION_TOLERANCE_PIX:
            break
    return templates, x, y


def _mixed_templates(data, inside, cx, cy, psf: MixturePsf, fwhm_pix: float) -> np.ndarray:
    """``(k, h, w)`` model of each peak: non-negative least squares over the footprint.

    Each peak has the PSF and broadened copies of it (`MIXED_BROADENING`) as bases; all the
    footprint's bases are fitted to its pixels at once (``scipy.optimize.nnls``), so a
    neighbour's light is explained by the neighbour's own bases. The peaks' positions are then
    fitted too (`_mixed_fit`): a faint peak on a bright neighbour's slope sits up to a pixel
    towards it, and a model left there takes the neighbour's light. Galaxy pairs at 1.5 FWHM
    and 2 mag (``benchmarks/deblend.py --residual``): secondary flux errors 11.2 % rms with
    two windowed re-centrings, 1.3 % with the position fit; with the true positions 1.4 %.
    """
    templates, _, _ = _mixed_fit(
        data, inside, cx, cy, psf, fwhm_pix, max_rounds=MIXED_POSITION_ROUNDS
    )
    return templates


def _footprint_fit(data, inside, cx, cy, psf: MixturePsf, fwhm_pix: float):
    """``mixed`` models of a footprint's peaks, cheaply, and the positions they were fitted at.

    A lone peak is moved to its own windowed centroid and fitted once; several peaks get one
    position step (`_mixed_fit`): the residual search needs no better, and most footprints
    of a patch go through it.
    """
    sigma = fwhm_pix / FWHM_PER_SIGMA
    x, y = np.asarray(cx, float), np.asarray(cy, float)
    if len(x) == 1:
        x, y = _own_centroids(data, inside, np.zeros((1, *data.shape)), x, y, sigma, fwhm_pix)
        return _fit_mixed(data, inside, x, y, psf, fwhm_pix), x, y
    return _mixed_fit(data, inside, x, y, psf, fwhm_pix, max_rounds=1)


RESIDUAL_MODEL_FRACTION = 0.1
"""A residual peak must also reach this fraction of the (PSF-filtered) model there: the
``mixed`` profiles miss bright galaxies by about 1 % of the model (equal galaxy pairs at 1.5
FWHM, S/N 2000: 5-6 sigma residual peaks at 0.9-1.2 % of the model, 9 false children in 32
pairs without this cut), while a neighbour 3 mag fainter at 1.5 FWHM leaves 32-66 %."""


def residual_peaks(
    footprints: np.ndarray,
    snr: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    *,
    psf: MixturePsf,
    min_snr: float,
    max_children: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Peaks that only the residual of a fit of the known ones reveals, added to ``(px, py)``.

    A neighbour 1.5 FWHM from a source a few magnitudes brighter is no local maximum of any
    image: it shows as a shoulder. Each (grown) footprint's known peaks are fitted with the
    ``mixed`` templates on ``snr`` (unit noise); the residual, filtered with a Gaussian of the
    PSF's width, is a point-source S/N map, and its local maxima above ``min_snr`` (and above
    `RESIDUAL_MODEL_FRACTION` of the filtered model) that lie more than one FWHM from every
    fitted peak (and from each other) become new peaks.

    To bound the cost, a footprint whose PSF-filtered S/N nowhere reaches ``2 * min_snr`` is
    not fitted (a hidden neighbour needs a brighter source beside it), a lone peak gets one
    fit at its windowed centroid and several peaks one position step. On a demo-sized patch
    (``benchmarks/deblend.py --demo-sized``) 920 of 965 footprints are fitted and
    `measure_coadds` takes about 20 % more CPU.

    Parameters
    ----------
    footprints : numpy.ndarray
        ``(ny, nx)`` int labels of the grown footprints (`grow_footprints`; 0: none).
    snr : numpy.ndarray
        ``(ny, nx)`` per-pixel S/N (unit noise) of the unsmoothed image.
    px, py : numpy.ndarray
        Integer peaks already found.
    psf : MixturePsf
        PSF of ``snr`` (the widest of the filters').
    min_snr : float
        Least PSF-filtered S/N of a residual peak (sigma).
    max_children : int
        Footprints with this many peaks or more are left as they are.

    Returns
    -------
    px, py : numpy.ndarray
        Integer peaks, the added ones included, sorted by ``(y, x)``.

    Raises
    ------
    ValueError
        If ``footprints`` and ``snr`` differ in shape, or ``min_snr`` is not positive.
    """
    if np.shape(footprints) != np.shape(snr):
        raise ValueError(
            f"footprints shape {np.shape(footprints)} differs from snr shape {np.shape(snr)}"
        )
    if not min_snr > 0:
        raise ValueError(f"min_snr must be > 0; got {min_snr}")
    px = np.asarray(px, dtype=np.int64)
    py = np.asarray(py, dtype=np.int64)
    if not len(px):
        return px, py
    fwhm_pix = psf.effective_fwhm_pix
    sigma = fwhm_pix / FWHM_PER_SIGMA
    # A Gaussian filter of the PSF's width applied to unit noise has rms 1 / (2 sqrt(pi) sigma).
    gain = 2.0 * np.sqrt(np.pi) * sigma
    values = np.nan_to_num(np.asarray(snr, dtype=np.float64), nan=0.0)
    family = footprints[py, px]
    boxes = ndimage.find_objects(footprints)
    new_x, new_y = [px], [py]
    n_fitted = 0
    for label in np.unique(family[family > 0]):
        mine = np.flatnonzero(family == label)
        if len(mine) >= max_children:
            continue
        box = boxes[label - 1]
        inside = footprints[box] == label
        data = np.where(inside, values[box], 0.0)
        if gain * ndimage.gaussian_filter(data, sigma, mode="constant").max() < 2.0 * min_snr:
            continue
        y0, x0 = box[0].start, box[1].start
        templates, fx, fy = _footprint_fit(
            data, inside, px[mine] - x0, py[mine] - y0, psf, fwhm_pix
        )
        n_fitted += 1
        model = templates.sum(axis=0)
        filtered = gain * ndimage.gaussian_filter(
            np.where(inside, data - model, 0.0), sigma, mode="constant"
        )
        filtered_model = gain * ndimage.gaussian_filter(model, sigma, mode="constant")
        peak = (filtered == ndimage.maximum_filter(filtered, size=3)) & inside
        peak &= (filtered >= min_snr) & (filtered >= RESIDUAL_MODEL_FRACTION * filtered_model)
        cy, cx = np.nonzero(peak)
        taken_x, taken_y = list(fx), list(fy)
        for k in np.argsort(-filtered[cy, cx]):
            if len(taken_x) >= max_children:
                break
            if np.min(np.hypot(cx[k] - np.array(taken_x), cy[k] - np.array(taken_y))) < fwhm_pix:
                continue
            taken_x.append(cx[k])
            taken_y.append(cy[k])
            new_x.append(np.array([cx[k] + x0]))
            new_y.append(np.array([cy[k] + y0]))
    x = np.concatenate(new_x).astype(np.int64)
    y = np.concatenate(new_y).astype(np.int64)
    log.info(
        "residual peak search: %d footprints fitted, %d peaks added", n_fitted, len(x) - len(px)
    )
    order = np.lexsort((x, y))
    return x[order], y[order]


def share_footprint(
    image: np.ndarray,
    inside: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    *,
    template: str,
    psf: MixturePsf,
) -> np.ndarray:
    """Fraction of each pixel's flux that goes to each child: ``(k, h, w)``, summing to 1.

    Parameters
    ----------
    image : numpy.ndarray
        ``(h, w)`` cut-out around one footprint (NaN where unusable).
    inside : numpy.ndarray
        ``(h, w)`` bool: the footprint's pixels in the cut-out.
    cx, cy : numpy.ndarray
        ``(k,)`` peak positions in the cut-out, pixels (integers for ``symmetric``).
    template : str
        ``symmetric``, ``psf`` or ``mixed`` (see `TEMPLATES`).
    psf : MixturePsf
        PSF of the image.
    """
    h, w = image.shape
    data = np.where(inside & np.isfinite(image), image, 0.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    fwhm_pix = psf.effective_fwhm_pix
    profiles = _psf_profiles(xx, yy, np.asarray(cx, float), np.asarray(cy, float), fwhm_pix)
    if template == "symmetric":
        templates = _symmetric_templates(data, inside, cx, cy)
    elif template == "psf":
        models = _psf_models(psf, np.asarray(cx, float), np.asarray(cy, float), (h, w), fwhm_pix)
        design = models[:, inside].T
        amplitude, *_ = np.linalg.lstsq(design, data[inside], rcond=None)
        templates = np.maximum(amplitude, 0.0)[:, None, None] * models
    elif template == "mixed":
        templates = _mixed_templates(
            data, inside, np.asarray(cx, float), np.asarray(cy, float), psf, fwhm_pix
        )
    else:
        raise ValueError(f"template must be 'symmetric', 'psf' or 'mixed'; got {template!r}")
    total = templates.sum(axis=0)
    fallback = profiles / np.maximum(profiles.sum(axis=0), 1e-300)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, templates / total, fallback)
    return share


def child_layers(
    image: np.ndarray,
    result: DeblendResult,
    px: np.ndarray,
    py: np.ndarray,
    *,
    psf: MixturePsf,
    template: str,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(k, layer_image)``: the image with each family's ``k``-th child's share.

    Layer 0 of a family-free image is ``image`` itself (not copied). In layer ``k`` every
    deblended family with more than ``k`` children has its footprint pixels replaced by its
    ``k``-th child's share (children ranked in input order); all other pixels are unchanged.
    """
    px = np.asarray(px, dtype=np.int64)
    py = np.asarray(py, dtype=np.int64)
    deblended = (result.n_child > 1) & ~result.skipped
    n_layers = int(result.layer[deblended].max()) + 1 if deblended.any() else 1
    families = np.unique(result.family[deblended])
    boxes = ndimage.find_objects(result.footprints)
    shares = {}
    for label in families:
        members = np.flatnonzero(deblended & (result.family == label))
        box = boxes[label - 1]
        inside = result.footprints[box] == label
        y0, x0 = box[0].start, box[1].start
        share = share_footprint(
            image[box], inside, px[members] - x0, py[members] - y0, template=template, psf=psf
        )
        shares[label] = (box, inside, members, share)
    for k in range(n_layers):
        if not families.size:
            yield k, image
            continue
        layer = image.copy()
        for box, inside, members, share in shares.values():
            rank = result.layer[members]
            if k >= len(members):
                continue
            child = int(np.flatnonzero(rank == k)[0])
            cut = layer[box]
            cut[inside] = image[box][inside] * share[child][inside]
        yield k, layer
