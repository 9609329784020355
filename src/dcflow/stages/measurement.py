"""Source measurement: stamps, windowed centroids, aperture and PSF fluxes, flags.

Everything here works on ``(n, 2h+1, 2h+1)`` stacks of stamps gathered in one fancy-indexing
call, so thousands of sources cost a few array operations rather than a Python loop per
source. Aperture fluxes use photutils' exact pixel-circle overlaps, tabulated in sub-pixel
phase. The PSF flux is the linear least-squares amplitude of a fixed
pixel-integrated PSF stamp at the source's sub-pixel phase, with uniform weights over the
unmasked pixels: unbiased whatever the source brightness (weights from the variance plane
would depend on the data), and optimal in the sky-dominated regime.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import numpy as np
from photutils.geometry import circular_overlap_grid
from scipy.spatial import cKDTree

from dcflow.stages.stamps import extract_stamps

if TYPE_CHECKING:
    from dcflow.stages.psf import PsfPhaseTable

__all__ = [
    "SourceFlag",
    "aperture_fluxes",
    "aperture_weight_stamps",
    "aperture_weight_table",
    "empty_position_noise",
    "psf_aperture_ratio_noise",
    "psf_fluxes",
    "psf_photometry",
    "windowed_centroids",
]


class SourceFlag(enum.IntFlag):
    """Bits of the ``flags`` column of the src table."""

    SATURATED = 1 << 0
    """A saturated pixel lies within the PSF-fit stamp core (radius 2 pixels)."""
    EDGE = 1 << 1
    """The measurement aperture or PSF stamp reaches beyond the image."""
    BAD_PIXELS = 1 << 2
    """A cosmic-ray or bad pixel lies within the aperture."""
    BLENDED = 1 << 3
    """The source shares its detection footprint with another peak."""
    SUSPECT = 1 << 4
    """A SUSPECT pixel (doubtful, e.g. SDSS's unchecked frame border or a ghost) lies within
    the aperture: the pixel is kept, but its value is not trusted for photometry."""


def windowed_centroids(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    sigma_pix: float,
    n_iter: int = 10,
    bad: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-windowed centroids (SExtractor's XWIN_IMAGE iteration), vectorised.

    Each iteration moves the window centre by twice the Gaussian-weighted first moment,
    which converges in a few steps for a symmetric profile whatever the window width; the
    fixed point is where the weighted first moment vanishes.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` background-subtracted image.
    x, y : numpy.ndarray
        Starting positions (0-based array coordinates, pixels).
    sigma_pix : float
        Window sigma, pixels (about the PSF sigma).
    n_iter : int
        Number of iterations.
    bad : numpy.ndarray of bool, optional
        ``(ny, nx)``; True pixels are left out.

    Returns
    -------
    x, y : numpy.ndarray
        Centroids; a source whose iteration runs away (more than ``2 sigma`` from its start)
        keeps its starting position.
    """
    x0 = np.asarray(x, dtype=float)
    y0 = np.asarray(y, dtype=float)
    if x0.size == 0:
        return x0.copy(), y0.copy()
    half = max(3, int(np.ceil(4.0 * sigma_pix)))
    xi, yi = np.rint(x0).astype(np.int64), np.rint(y0).astype(np.int64)
    data, inside = extract_stamps(image, xi, yi, half)
    good = inside & np.isfinite(data)
    if bad is not None:
        good &= ~extract_stamps(bad, xi, yi, half)[0]
    data = np.where(good, data, 0.0).astype(float)
    j = np.arange(-half, half + 1, dtype=float)
    xc, yc = x0.copy(), y0.copy()
    inv2s2 = 0.5 / sigma_pix**2
    for _ in range(n_iter):
        dx = j[None, :] - (xc - xi)[:, None]
        dy = j[None, :] - (yc - yi)[:, None]
        wx = np.exp(-(dx**2) * inv2s2)
        wy = np.exp(-(dy**2) * inv2s2)
        wd = data * wy[:, :, None] * wx[:, None, :]
        total = wd.sum(axis=(1, 2))
        ok = total > 0
        safe = np.where(ok, total, 1.0)
        mx = (wd * dx[:, None, :]).sum(axis=(1, 2)) / safe
        my = (wd * dy[:, :, None]).sum(axis=(1, 2)) / safe
        xc = np.where(ok, xc + 2.0 * mx, xc)
        yc = np.where(ok, yc + 2.0 * my, yc)
        # Keep the window on the stamp.
        xc = np.clip(xc, xi - 1.5, xi + 1.5)
        yc = np.clip(yc, yi - 1.5, yi + 1.5)
    runaway = np.hypot(xc - x0, yc - y0) > max(2.0 * sigma_pix, 1.0)
    xc = np.where(runaway, x0, xc)
    yc = np.where(runaway, y0, yc)
    return xc, yc


def aperture_weight_table(radius_pix: float, n_phase: int = 20) -> np.ndarray:
    """Exact pixel / circle overlap fractions tabulated in sub-pixel phase.

    Parameters
    ----------
    radius_pix : float
        Aperture radius, pixels.
    n_phase : int
        Phase steps per pixel.

    Returns
    -------
    numpy.ndarray
        ``(n_phase+1, n_phase+1, 2h+1, 2h+1)`` with ``h = ceil(radius_pix + 0.5)``;
        ``[ky, kx]`` holds the overlaps for a circle centred at offset
        ``(-0.5 + kx/n_phase, -0.5 + ky/n_phase)`` from the central pixel's centre
        (``photutils.geometry.circular_overlap_grid``).
    """
    half = int(np.ceil(radius_pix + 0.5))
    size = 2 * half + 1
    phases = -0.5 + np.arange(n_phase + 1) / n_phase
    table = np.empty((n_phase + 1, n_phase + 1, size, size))
    for ky, fy in enumerate(phases):
        for kx, fx in enumerate(phases):
            table[ky, kx] = circular_overlap_grid(
                -half - 0.5 - fx,
                half + 0.5 - fx,
                -half - 0.5 - fy,
                half + 0.5 - fy,
                size,
                size,
                radius_pix,
                1,
                1,
            )
    return table


def _interpolate_phase(table: np.ndarray, phase_x: np.ndarray, phase_y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a phase table at phases in ``[-0.5, 0.5]``."""
    n = table.shape[0] - 1
    fx = (np.clip(phase_x, -0.5, 0.5) + 0.5) * n
    fy = (np.clip(phase_y, -0.5, 0.5) + 0.5) * n
    ix = np.minimum(fx.astype(int), n - 1)
    iy = np.minimum(fy.astype(int), n - 1)
    tx = (fx - ix)[:, None, None]
    ty = (fy - iy)[:, None, None]
    return (1 - ty) * ((1 - tx) * table[iy, ix] + tx * table[iy, ix + 1]) + ty * (
        (1 - tx) * table[iy + 1, ix] + tx * table[iy + 1, ix + 1]
    )


def aperture_weight_stamps(
    radius_pix: float, phase_x: np.ndarray, phase_y: np.ndarray, n_phase: int = 20
) -> np.ndarray:
    """Aperture pixel weights ``(n, 2h+1, 2h+1)``, those `aperture_fluxes` sums with.

    The circles are at sub-pixel phases in ``[-0.5, 0.5]`` from their stamps' central pixels.
    """
    return _interpolate_phase(
        aperture_weight_table(radius_pix, n_phase), np.asarray(phase_x), np.asarray(phase_y)
    )


def aperture_fluxes(
    image: np.ndarray,
    variance: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    radius_pix: float,
    n_phase: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Circular-aperture fluxes and their errors, vectorised over sources.

    The exact pixel / circle overlaps (``photutils.geometry.circular_overlap_grid``, as
    ``photutils.aperture.aperture_photometry(method="exact")`` uses) are tabulated once on a
    grid of sub-pixel phases and interpolated bilinearly in phase; each flux is then one
    weighted sum over a stamp. Measured on a 2048 x 4612 frame with 1500 sources and a
    16-pixel radius: 0.15 s per image for ``aperture_photometry``, ~0.02 s here; fluxes
    agree to < 1e-4 relative.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` background-subtracted image.
    variance : numpy.ndarray
        ``(ny, nx)`` variance of ``image``.
    x, y : numpy.ndarray
        Aperture centres (0-based array coordinates, pixels).
    radius_pix : float
        Aperture radius, pixels.
    n_phase : int
        Phase steps per pixel of the overlap table.

    Returns
    -------
    flux, flux_err : numpy.ndarray
        Weighted sums ``sum(w * image)`` and ``sqrt(sum(w^2 * variance))``; apertures partly
        outside the image sum the part inside.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size == 0:
        return np.zeros(0), np.zeros(0)
    table = aperture_weight_table(radius_pix, n_phase)
    half = (table.shape[-1] - 1) // 2
    xi, yi = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    data, inside = extract_stamps(image, xi, yi, half)
    var, _ = extract_stamps(variance, xi, yi, half)
    good = inside & np.isfinite(data) & np.isfinite(var)
    w = np.where(good, _interpolate_phase(table, x - xi, y - yi), 0.0)
    flux = (w * np.where(good, data, 0.0)).sum(axis=(1, 2))
    err = np.sqrt((w * w * np.where(good, np.maximum(var, 0.0), 0.0)).sum(axis=(1, 2)))
    return flux, err


def empty_position_noise(
    image: np.ndarray,
    variance: np.ndarray,
    blocked: np.ndarray,
    weights: np.ndarray,
    *,
    min_positions: int = 30,
) -> tuple[float | np.ndarray, float | np.ndarray, int]:
    """Measured and predicted scatter of a linear flux measurement at empty positions.

    The flux ``sum(weights * image)`` is measured on a regular grid of non-overlapping
    stamps that lie inside the image and touch no ``blocked`` pixel (sources, their grown
    footprints, bad pixels): there it is pure background noise. Its robust variance
    ``(1.4826 MAD)^2`` is compared with the variance-plane prediction
    ``sum(weights^2 * variance)``, which assumes independent pixels. Faint sources below the
    detection threshold and pixel-to-pixel correlations add noise that the variance plane
    does not hold and that grows with the stamp's size (the empty-aperture noise of
    deep-field photometry). Measured on SDSS run 6377 frames: 3 % (u) to 26 % (g) more
    noise in 3" apertures than the variance plane says, 2-8 % in PSF fluxes.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` background-subtracted image.
    variance : numpy.ndarray
        ``(ny, nx)`` variance of ``image``.
    blocked : numpy.ndarray of bool
        ``(ny, nx)``; True pixels (sources, bad pixels) exclude every stamp that holds one.
    weights : numpy.ndarray
        ``(2h+1, 2h+1)`` weights of the flux measurement, centred on the stamp's central pixel
        (e.g. aperture overlaps, or a PSF stamp divided by its sum of squares); or an
        ``(m, 2h+1, 2h+1)`` stack of ``m`` measurements, measured at the same positions.
    min_positions : int
        Fewest empty positions needed for a measurement.

    Returns
    -------
    measured_variance : float or numpy.ndarray
        ``(1.4826 MAD)^2`` of the fluxes at the empty positions (NaN if too few); ``(m,)``
        for a stack of weights.
    predicted_variance : float or numpy.ndarray
        Median over the same positions of ``sum(weights^2 * variance)`` (NaN if too few).
    n_positions : int
        Number of empty positions used.

    Raises
    ------
    ValueError
        If the arrays' shapes differ or ``weights`` is not a square stamp of odd size.
    """
    image = np.asarray(image)
    if np.shape(variance) != image.shape or np.shape(blocked) != image.shape:
        raise ValueError(
            f"image {image.shape}, variance {np.shape(variance)} and blocked "
            f"{np.shape(blocked)} must have the same (ny, nx) shape"
        )
    weights = np.asarray(weights, dtype=float)
    stack = weights.ndim == 3
    if (
        weights.ndim not in (2, 3)
        or weights.shape[-1] != weights.shape[-2]
        or weights.shape[-1] % 2 == 0
    ):
        raise ValueError(
            f"weights must be a square stamp of odd size, or a stack of them; got {weights.shape}"
        )
    half = (weights.shape[-1] - 1) // 2
    w = weights.reshape(-1, weights.shape[-2] * weights.shape[-1])
    ny, nx = image.shape
    step = 2 * half + 1
    yc, xc = np.meshgrid(np.arange(half, ny - half, step), np.arange(half, nx - half, step))
    xc, yc = xc.ravel(), yc.ravel()
    if xc.size:
        hit = extract_stamps(np.asarray(blocked, bool), xc, yc, half)[0]
        empty = ~hit.reshape(xc.size, -1).any(axis=1)
        xc, yc = xc[empty], yc[empty]
    data = extract_stamps(image, xc, yc, half)[0].astype(float)
    var = extract_stamps(variance, xc, yc, half)[0].astype(float)
    usable = np.isfinite(data).all(axis=(1, 2)) & np.isfinite(var).all(axis=(1, 2))
    data, var = data[usable], var[usable]
    n = int(data.shape[0])
    if n < min_positions:
        nan = np.full(w.shape[0], np.nan)
        return (nan, nan.copy(), n) if stack else (float("nan"), float("nan"), n)
    flux = w @ data.reshape(n, -1).T
    predicted = np.median((w * w) @ var.reshape(n, -1).T, axis=1)
    mad = np.median(np.abs(flux - np.median(flux, axis=1)[:, None]), axis=1)
    measured = (1.4826 * mad) ** 2
    if stack:
        return measured, predicted, n
    return float(measured[0]), float(predicted[0]), n


def psf_aperture_ratio_noise(
    psf: np.ndarray,
    psf_d_ln_width: np.ndarray,
    aperture_weights: np.ndarray,
    variance: np.ndarray,
    psf_flux: np.ndarray,
    ap_flux: np.ndarray,
    width_shrink: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise of each source's PSF / aperture flux ratio, to first order in the pixel noise.

    Both fluxes are weighted sums of the same pixels, so their errors are correlated, and a
    PSF flux made at the source's own width (`dcflow.stages.psf.local_log_widths`) is not a
    fixed linear filter: noise that widens the star widens the PSF, whose flux then takes in
    more of the light the aperture also holds. Linearised about the fitted model ``F P``:

    - the width fit (amplitude and ``ln alpha`` by least squares with weights ``W = 1 /
      variance``) moves ``ln alpha`` by ``(a11 W P' - a12 W P) . n / (det F)``, with
      ``a11 = P.W.P``, ``a12 = P.W.P'``, ``det = a11 P'.W.P' - a12^2``;
    - the width used is ``width_shrink`` times that (its inverse-variance weight against the
      model's width);
    - the uniform-weight PSF flux ``P.d / P.P`` moves by ``P.n / P.P`` and by
      ``-F (P.P' / P.P)`` per unit of ``ln alpha``;
    - the aperture flux moves by ``w_ap . n``.

    Parameters
    ----------
    psf : numpy.ndarray
        ``(n, k, k)`` unit-flux PSF stamps at each source's width and sub-pixel phase, zero on
        the pixels the PSF fit leaves out (masked, or beyond its stamp).
    psf_d_ln_width : numpy.ndarray
        ``(n, k, k)`` derivative of ``psf`` with respect to ``ln alpha``, zero on the same
        pixels.
    aperture_weights : numpy.ndarray
        ``(n, k, k)`` aperture pixel weights on the same stamps.
    variance : numpy.ndarray
        ``(n, k, k)`` pixel variance (0 where unused).
    psf_flux, ap_flux : numpy.ndarray
        ``(n,)`` measured PSF and aperture fluxes.
    width_shrink : numpy.ndarray
        ``(n,)`` fraction of the source's own width offset its PSF flux used (0: the model's
        width, a fixed filter; 1: its own width).

    Returns
    -------
    relative_noise : numpy.ndarray
        ``(n,)`` standard deviation of ``(psf_flux / ap_flux)`` over its value.
    weights : numpy.ndarray
        ``(n, k, k)`` pixel weights ``u`` with ``d(ratio) / ratio = sum(u * noise)``, e.g. for
        `empty_position_noise`.

    Raises
    ------
    ValueError
        If the stamp stacks' shapes differ or the per-source arrays do not match them.
    """
    stacks = [np.asarray(a, dtype=float) for a in (psf, psf_d_ln_width, aperture_weights)]
    var = np.asarray(variance, dtype=float)
    p, dp, w_ap = stacks
    if p.ndim != 3 or any(a.shape != p.shape for a in (dp, w_ap, var)):
        raise ValueError(
            "psf, psf_d_ln_width, aperture_weights and variance must be (n, k, k) stacks of one "
            f"shape; got {p.shape}, {dp.shape}, {w_ap.shape} and {var.shape}"
        )
    per_source = [np.asarray(a, dtype=float) for a in (psf_flux, ap_flux, width_shrink)]
    if any(a.shape != (p.shape[0],) for a in per_source):
        raise ValueError(
            f"psf_flux, ap_flux and width_shrink must have one value per stamp ({p.shape[0]}); "
            f"got shapes {[a.shape for a in per_source]}"
        )
    f_psf, f_ap, shrink = per_source
    axes = (1, 2)
    weight = np.where(var > 0, 1.0 / np.where(var > 0, var, 1.0), 0.0)
    a11 = (weight * p * p).sum(axis=axes)
    a12 = (weight * p * dp).sum(axis=axes)
    a22 = (weight * dp * dp).sum(axis=axes)
    det = a11 * a22 - a12 * a12
    ptp = (p * p).sum(axis=axes)
    ok = (det > 0) & (ptp > 0)
    det_safe, ptp_safe = np.where(ok, det, 1.0), np.where(ok, ptp, 1.0)
    # Per unit of pixel noise, times F: the width's response and the PSF flux's.
    width_response = (
        a11[:, None, None] * weight * dp - a12[:, None, None] * weight * p
    ) / det_safe[:, None, None]
    flux_per_width = -(p * dp).sum(axis=axes) / ptp_safe
    u_psf = p / ptp_safe[:, None, None] + (flux_per_width * shrink)[:, None, None] * width_response
    u = u_psf / f_psf[:, None, None] - w_ap / f_ap[:, None, None]
    u = np.where(ok[:, None, None], u, np.nan)
    return np.sqrt((u * u * var).sum(axis=axes)), u


def psf_fluxes(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    psf_table: PsfPhaseTable,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF fluxes: linear amplitude of the PSF model at each source's centroid.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` background-subtracted image.
    variance : numpy.ndarray
        ``(ny, nx)`` variance of ``image``.
    bad : numpy.ndarray of bool
        ``(ny, nx)``; True pixels are left out of the fit.
    x, y : numpy.ndarray
        Centroids (0-based array coordinates, pixels).
    psf_table : PsfPhaseTable
        Pixel-integrated PSF (unit total flux) tabulated in sub-pixel phase.

    Returns
    -------
    flux : numpy.ndarray
        Total flux of the PSF model fitted to each source (image units).
    flux_err : numpy.ndarray
        Its standard error from the variance plane.
    chi2 : numpy.ndarray
        Reduced chi^2 of the fit (about 1 for a point source).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    half = psf_table.half_size
    xi, yi = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    data, inside = extract_stamps(image, xi, yi, half)
    var, _ = extract_stamps(variance, xi, yi, half)
    badst, _ = extract_stamps(bad, xi, yi, half)
    good = inside & ~badst & np.isfinite(data) & (var > 0)
    model = psf_table.stamps(x - xi, y - yi)
    model = np.where(good, model, 0.0)
    data = np.where(good, data, 0.0)
    var = np.where(good, var, 0.0)
    ptp = (model * model).sum(axis=(1, 2))
    ok = ptp > 0
    ptp_safe = np.where(ok, ptp, 1.0)
    flux = (model * data).sum(axis=(1, 2)) / ptp_safe
    flux_err = np.sqrt((model * model * var).sum(axis=(1, 2))) / ptp_safe
    resid = data - flux[:, None, None] * model
    ngood = good.sum(axis=(1, 2))
    chi2 = (resid**2 / np.where(good, var, 1.0) * good).sum(axis=(1, 2)) / np.maximum(ngood - 1, 1)
    flux = np.where(ok, flux, np.nan)
    flux_err = np.where(ok, flux_err, np.nan)
    return flux, flux_err, chi2


def _neighbour_light(shape, xi, yi, stamps, inside):
    """For each stamp, the sum of the *other* stamps over its pixels.

    The stamps' pixels are indexed compactly (``numpy.unique`` of their flat image indices)
    rather than summed into a full-frame image, which would cost a 9.4-Mpixel allocation per
    call on a MegaCam CCD.
    """
    ny, nx = shape
    half = (stamps.shape[-1] - 1) // 2
    j = np.arange(-half, half + 1)
    iy = np.clip(yi[:, None] + j[None, :], 0, ny - 1)
    ix = np.clip(xi[:, None] + j[None, :], 0, nx - 1)
    flat = (iy[:, :, None] * nx + ix[:, None, :])[inside]
    own = np.where(inside, stamps, 0.0)
    uniq, inverse = np.unique(flat, return_inverse=True)
    total = np.bincount(inverse, weights=own[inside], minlength=uniq.size)
    out = np.zeros(stamps.shape)
    out[inside] = total[inverse]
    return out - own


def psf_photometry(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    psf_table: PsfPhaseTable,
    *,
    fit_position: np.ndarray | None = None,
    n_iter: int = 3,
    max_shift_pix: float = 2.0,
    sky_variance: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PSF-fit positions and fluxes of all sources, each fitted with its neighbours removed.

    Each iteration builds the model image of every source (flux x PSF stamp at its current
    position), and fits each source's flux and position by one Gauss-Newton step on its
    stamp with the other sources' models subtracted (a Jacobi iteration of the simultaneous
    fit). The final fluxes are linear fits at the final positions, as in `psf_fluxes`, on
    neighbour-subtracted stamps. Masked pixels and pixels beyond the image are left out, so
    sources on the edge or with a saturated core still get an unbiased position and flux from
    their good pixels.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` background-subtracted image.
    variance : numpy.ndarray
        ``(ny, nx)`` variance of ``image``.
    bad : numpy.ndarray of bool
        ``(ny, nx)``; True pixels are left out of the fits.
    x, y : numpy.ndarray
        Starting positions (0-based array coordinates, pixels), e.g. windowed centroids.
    psf_table : PsfPhaseTable
        Pixel-integrated PSF (unit total flux) and its gradients tabulated in phase.
    fit_position : numpy.ndarray of bool, optional
        Which sources get their position refined (default all); the others keep theirs.
    n_iter : int
        Number of position iterations.
    max_shift_pix : float
        A source that moves farther than this from its starting position goes back to it.
    sky_variance : float, optional
        Background (sky + read) variance per pixel. When given, the final fluxes are
        weighted by ``1 / (sky_variance + flux * psf)``, the model variance, which lowers
        the noise of bright (source-photon limited) stars while staying unbiased; by default
        uniform weights (optimal for faint, sky-limited sources).

    Returns
    -------
    x, y : numpy.ndarray
        Fitted positions.
    flux, flux_err : numpy.ndarray
        Total flux of the PSF model and its standard error (image units).
    chi2 : numpy.ndarray
        Reduced chi^2 of the final fit.
    """
    x0 = np.asarray(x, dtype=float)
    y0 = np.asarray(y, dtype=float)
    n = x0.size
    if n == 0:
        return x0.copy(), y0.copy(), np.zeros(0), np.zeros(0), np.zeros(0)
    movable = np.ones(n, bool) if fit_position is None else np.asarray(fit_position, bool)
    half = psf_table.half_size
    xc, yc = x0.copy(), y0.copy()
    flux = np.zeros(n)
    # Sources whose stamps can overlap another's (positions move by <= max_shift_pix).
    reach = 2 * half + 1 + 2 * max_shift_pix
    pairs = cKDTree(np.column_stack([x0, y0])).query_pairs(reach, p=np.inf, output_type="ndarray")
    crowded = np.unique(pairs)
    xi = yi = None
    for it in range(n_iter + 2):
        new_xi, new_yi = np.rint(xc).astype(np.int64), np.rint(yc).astype(np.int64)
        if xi is None:
            xi, yi = new_xi, new_yi
            stamp0, inside = extract_stamps(image, xi, yi, half)
            var = extract_stamps(variance, xi, yi, half)[0]
            good = inside & ~extract_stamps(bad, xi, yi, half)[0] & np.isfinite(stamp0) & (var > 0)
            stamp0 = np.where(good, stamp0, 0.0)
        else:
            # Gather again only the stamps whose centre pixel changed.
            moved = np.nonzero((new_xi != xi) | (new_yi != yi))[0]
            if moved.size:
                xi, yi = new_xi, new_yi
                d, ins = extract_stamps(image, xi[moved], yi[moved], half)
                v = extract_stamps(variance, xi[moved], yi[moved], half)[0]
                g = ins & ~extract_stamps(bad, xi[moved], yi[moved], half)[0]
                g &= np.isfinite(d) & (v > 0)
                stamp0[moved], inside[moved], var[moved], good[moved] = (
                    np.where(g, d, 0.0),
                    ins,
                    v,
                    g,
                )
        data = stamp0
        final = it == n_iter + 1
        if it == 0 or final:
            p = psf_table.stamps(xc - xi, yc - yi)
        else:
            p, gx, gy = psf_table.stamps_and_gradients(xc - xi, yc - yi)
        if it > 0 and crowded.size:
            # Remove the neighbours' models from the stamps of sources that have any.
            light = _neighbour_light(
                image.shape,
                xi[crowded],
                yi[crowded],
                flux[crowded, None, None] * p[crowded],
                inside[crowded],
            )
            data = data.copy()
            data[crowded] -= np.where(good[crowded], light, 0.0)
        p = np.where(good, p, 0.0)
        ptp = (p * p).sum(axis=(1, 2))
        ok = ptp > 0
        ptp_safe = np.where(ok, ptp, 1.0)
        if it == 0 or final:
            # Linear flux at fixed position: the start, and the final answer.
            flux = np.where(ok, (p * data).sum(axis=(1, 2)) / ptp_safe, 0.0)
            if it == 0:
                continue
            w = np.ones_like(p)
            if sky_variance is not None:
                # Weights from the model, not the data (unbiased): sky + source photons.
                for _ in range(2):
                    w = 1.0 / (sky_variance + np.maximum(flux, 0.0)[:, None, None] * p)
                    wpp = (w * p * p).sum(axis=(1, 2))
                    flux = np.where(
                        ok, (w * p * data).sum(axis=(1, 2)) / np.where(ok, wpp, 1.0), 0.0
                    )
            break
        # One Gauss-Newton step in (flux, x0, y0).
        a = np.stack([p, flux[:, None, None] * gx * good, flux[:, None, None] * gy * good], 1)
        a = a.reshape(n, 3, -1)
        normal = a @ a.transpose(0, 2, 1)
        rhs = (a @ data.reshape(n, -1, 1))[..., 0]
        step_ok = movable & ok & (flux > 0)
        normal[~step_ok] = np.eye(3)
        rhs[~step_ok] = 0.0
        det = np.linalg.det(normal)
        step_ok &= np.abs(det) > 1e-12 * np.abs(normal[:, 0, 0] * normal[:, 1, 1] * normal[:, 2, 2])
        normal[~step_ok] = np.eye(3)
        rhs[~step_ok] = 0.0
        sol = np.linalg.solve(normal, rhs[..., None])[..., 0]
        flux = np.where(step_ok, sol[:, 0], flux)
        dx = np.clip(sol[:, 1], -0.5, 0.5)
        dy = np.clip(sol[:, 2], -0.5, 0.5)
        xc = np.where(step_ok, xc + dx, xc)
        yc = np.where(step_ok, yc + dy, yc)
        away = np.hypot(xc - x0, yc - y0) > max_shift_pix
        xc = np.where(away, x0, xc)
        yc = np.where(away, y0, yc)
    wpp = np.where(ok, (w * p * p).sum(axis=(1, 2)), 1.0)
    flux_err = np.sqrt((w * w * p * p * np.where(good, var, 0.0)).sum(axis=(1, 2))) / wpp
    resid = data - flux[:, None, None] * p
    ngood = good.sum(axis=(1, 2))
    chi2 = (resid**2 / np.where(good, var, 1.0) * good).sum(axis=(1, 2)) / np.maximum(ngood - 3, 1)
    flux = np.where(ok, flux, np.nan)
    flux_err = np.where(ok, flux_err, np.nan)
    return xc, yc, flux, flux_err, chi2
