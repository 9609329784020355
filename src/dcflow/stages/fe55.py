"""Fe55 gain of each amplifier: X-ray events, their signal histogram and the K-alpha peak.

Each Mn K-alpha photon from an Fe55 source frees 1620 electrons in silicon, so the position
of the K-alpha peak in the histogram of event signals (ADU) gives the gain,
``gain_e_per_adu = 1620 / peak_adu``. Per amplifier:

1. `subtract_bias`: the bias, from the prescan and/or serial overscan columns (one level, or
   a polynomial along rows fitted to each row's clipped mean), and the pixel noise from the
   same columns. The bias error enters the gain error: a 5x5 signal multiplies it by 25.
2. `find_events`: local maxima of the bias-subtracted imaging pixels above a threshold; the
   signal of an event is the sum of a small box around its maximum. The isolation cut keeps an
   event only if no pixel around it, outside the 3x3 core, exceeds a low threshold: this drops
   events whose box holds charge of a neighbouring event (pile-up), which otherwise push the
   peak up, and defects that are not X-rays (cosmic-ray tracks).
3. `fit_kalpha_peak`: a binned Poisson maximum-likelihood fit of two Gaussians (K-alpha, and
   K-beta at 1778/1620 of its position with the same width) over a flat background; the peak
   error comes from the Fisher information. The peak width is the noise figure.

`measure_fe55_gain` runs the three over every amplifier of a raw frame; `summarize_gains`
combines exposures of a sensor. Everything here is a pure function over arrays and tables;
the scripts read and write the files.

Hand-written parts, and why: the event finder uses scipy.ndimage for the local maxima and
plateau labels but cuts its own fixed-size stamps, because the isolation test and the box sum
need every candidate's neighbourhood at once (one fancy-indexing gather: a few ms for a
256 x 512 amplifier) and photutils' ``find_peaks`` has no isolation cut. The fit is a binned
Poisson likelihood minimised with scipy.optimize, because astropy.modeling's fitters minimise
least squares, which are biased at the few counts per bin of the K-beta line and the tails.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy import ndimage, optimize
from scipy.special import ndtr

from dcflow.configs import check_fields, config_field
from dcflow.errors import CalibrationError, InputDataError
from dcflow.geometry import AmpGeometry, DetectorLayout

__all__ = [
    "KALPHA_ELECTRONS",
    "KBETA_ELECTRONS",
    "BiasResult",
    "Fe55AmpResult",
    "Fe55Config",
    "Fe55Events",
    "Fe55Result",
    "PeakFit",
    "find_events",
    "fit_kalpha_peak",
    "layout_mismatches",
    "line_model",
    "measure_amp_gain",
    "measure_fe55_gain",
    "subtract_bias",
    "summarize_gains",
]

log = logging.getLogger(__name__)

KALPHA_ELECTRONS = 1620.0
"""Electrons freed in silicon by one Mn K-alpha photon (5.895 keV at 3.65 eV per pair)."""

KBETA_ELECTRONS = 1778.0
"""Electrons freed in silicon by one Mn K-beta photon (6.490 keV)."""

_KBETA_OVER_KALPHA = KBETA_ELECTRONS / KALPHA_ELECTRONS


@dataclass(frozen=True, slots=True)
class Fe55Config:
    """Settings of the Fe55 gain analysis (the ``fe55_gain`` config section)."""

    bias_region: str = config_field(
        "both",
        "Pixels the bias is measured from.",
        choices={
            "overscan": "the serial overscan columns (BIASSEC)",
            "prescan": "the prescan columns (PRESEC)",
            "both": "prescan and serial overscan columns together (overscan alone without prescan)",
        },
    )
    bias_method: str = config_field(
        "row_poly",
        "How the bias varies over the amplifier.",
        choices={
            "constant": "one sigma-clipped level per amplifier",
            "row_poly": "a polynomial in row number fitted to each row's clipped mean",
        },
    )
    bias_poly_degree: int = config_field(
        6, "Degree of the bias polynomial along rows (row_poly only).", minimum=0, maximum=15
    )
    detection_threshold_sigma: float = config_field(
        20.0,
        "An event's peak pixel must exceed this many pixel-noise sigma (noise from the bias "
        "region).",
        exclusive_minimum=0.0,
    )
    isolation_cut: bool = config_field(
        True,
        "Keep only isolated events: no pixel within isolation_radius_pix of the peak, outside "
        "its 3x3 core, above isolation_threshold_sigma.",
    )
    isolation_threshold_sigma: float = config_field(
        5.0, "Isolation threshold, in pixel-noise sigma.", exclusive_minimum=0.0
    )
    isolation_radius_pix: int = config_field(
        4,
        "Half-width of the square examined by the isolation cut (pixels).",
        minimum=2,
        maximum=10,
    )
    signal_box_half_pix: int = config_field(
        2,
        "Half-width of the box summed for an event's signal (pixels; 2 gives a 5x5 box).",
        minimum=1,
        maximum=4,
    )
    bins_per_sigma: float = config_field(
        4.0, "Histogram bins per peak sigma in the fit (bins).", minimum=1.0, maximum=20.0
    )
    fit_window_sigma: float = config_field(
        5.0,
        "The fit spans from this many peak sigma below K-alpha to as many above K-beta.",
        minimum=2.0,
        maximum=20.0,
    )
    min_events: int = config_field(
        50, "Fewest isolated events in the fit window for a gain (events).", minimum=10
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.isolation_radius_pix < self.signal_box_half_pix + 1:
            raise ValueError(
                "Fe55Config.isolation_radius_pix must be >= signal_box_half_pix + 1 "
                f"({self.signal_box_half_pix + 1}); got {self.isolation_radius_pix}"
            )
        if self.isolation_threshold_sigma >= self.detection_threshold_sigma:
            raise ValueError(
                "Fe55Config.isolation_threshold_sigma must be below detection_threshold_sigma "
                f"({self.detection_threshold_sigma}); got {self.isolation_threshold_sigma}"
            )


@dataclass(frozen=True, slots=True)
class BiasResult:
    """A bias-subtracted amplifier.

    Parameters
    ----------
    image_adu : numpy.ndarray
        ``(ny, nx)`` float64 imaging pixels minus the bias (ADU).
    bias_adu : float
        Mean bias level subtracted (ADU).
    bias_err_adu : float
        Statistical error of the mean bias level, ``noise_adu / sqrt(n_pixels)`` (ADU).
    noise_adu : float
        Robust rms of the bias region about the fitted bias (ADU).
    """

    image_adu: np.ndarray
    bias_adu: float
    bias_err_adu: float
    noise_adu: float


@dataclass(frozen=True, slots=True)
class Fe55Events:
    """X-ray events found in one amplifier.

    Parameters
    ----------
    y_pix, x_pix : numpy.ndarray
        Row and column of each kept event's peak pixel in the amplifier's imaging array.
    signal_adu : numpy.ndarray
        Sum of the signal box around each kept event (ADU).
    n_candidates : int
        Local maxima above the detection threshold, away from the edges.
    n_rejected_isolation : int
        Candidates dropped by the isolation cut (0 when it is off).
    """

    y_pix: np.ndarray
    x_pix: np.ndarray
    signal_adu: np.ndarray
    n_candidates: int
    n_rejected_isolation: int


@dataclass(frozen=True, slots=True)
class PeakFit:
    """The fitted K-alpha / K-beta model of an event-signal histogram.

    Parameters
    ----------
    peak_adu, peak_err_adu : float
        K-alpha peak position and its statistical error (ADU).
    sigma_adu, sigma_err_adu : float
        Gaussian width of the lines and its error (ADU).
    n_kalpha : float
        Fitted number of K-alpha events.
    kbeta_ratio : float
        Fitted K-beta / K-alpha number ratio.
    background_per_adu : float
        Flat background density (events per ADU).
    edges_adu : numpy.ndarray
        Bin edges of the fitted histogram (ADU).
    counts : numpy.ndarray
        Events per bin.
    deviance_per_dof : float
        Poisson deviance of the fit per degree of freedom (about 1 for a good fit).
    n_in_window : int
        Events inside the fit window.
    """

    peak_adu: float
    peak_err_adu: float
    sigma_adu: float
    sigma_err_adu: float
    n_kalpha: float
    kbeta_ratio: float
    background_per_adu: float
    edges_adu: np.ndarray
    counts: np.ndarray
    deviance_per_dof: float
    n_in_window: int


@dataclass(frozen=True, slots=True)
class Fe55AmpResult:
    """Gain of one amplifier.

    Parameters
    ----------
    amp : str
        Amplifier name.
    gain_e_per_adu : float
        ``1620 / fit.peak_adu`` (electrons per ADU).
    gain_err_e_per_adu : float
        Statistical error of the gain: the fit's peak error and ``peak_bias_err_adu`` added in
        quadrature (electrons per ADU).
    peak_bias_err_adu : float
        Error of the peak from the error of the bias level, ``bias_err_adu`` times the number
        of pixels in the signal box (ADU).
    peak_sigma_e : float
        Width of the K-alpha peak in electrons, the noise figure of the event signal
        (read noise of the box and Fano noise).
    bias_adu, bias_err_adu, noise_adu : float
        Mean bias level subtracted, its error and the pixel noise (ADU).
    events : Fe55Events
        The events found and their signals.
    fit : PeakFit
        The peak fit.
    """

    amp: str
    gain_e_per_adu: float
    gain_err_e_per_adu: float
    peak_bias_err_adu: float
    peak_sigma_e: float
    bias_adu: float
    bias_err_adu: float
    noise_adu: float
    events: Fe55Events
    fit: PeakFit


@dataclass(frozen=True, slots=True)
class Fe55Result:
    """Gains of every amplifier of one Fe55 exposure.

    Parameters
    ----------
    amps : tuple of Fe55AmpResult
        One result per amplifier, in layout order.
    """

    amps: tuple[Fe55AmpResult, ...]

    def table(self) -> Table:
        """The gain table: one row per amplifier (an empty table with all columns if none).

        Columns: ``amp``, ``peak_adu``, ``peak_fit_err_adu``, ``peak_bias_err_adu``,
        ``gain_e_per_adu``, ``gain_err_e_per_adu``, ``peak_sigma_adu``, ``peak_sigma_e``,
        ``kbeta_ratio``, ``bias_adu``, ``noise_adu``, ``n_candidates``, ``n_isolated``,
        ``n_events`` (in the fit window), ``deviance_per_dof``.
        """
        names = (
            "amp",
            "peak_adu",
            "peak_fit_err_adu",
            "peak_bias_err_adu",
            "gain_e_per_adu",
            "gain_err_e_per_adu",
            "peak_sigma_adu",
            "peak_sigma_e",
            "kbeta_ratio",
            "bias_adu",
            "noise_adu",
            "n_candidates",
            "n_isolated",
            "n_events",
            "deviance_per_dof",
        )
        rows = [
            (
                a.amp,
                a.fit.peak_adu,
                a.fit.peak_err_adu,
                a.peak_bias_err_adu,
                a.gain_e_per_adu,
                a.gain_err_e_per_adu,
                a.fit.sigma_adu,
                a.peak_sigma_e,
                a.fit.kbeta_ratio,
                a.bias_adu,
                a.noise_adu,
                a.events.n_candidates,
                a.events.signal_adu.size,
                a.fit.n_in_window,
                a.fit.deviance_per_dof,
            )
            for a in self.amps
        ]
        dtype = (str,) + (float,) * 10 + (int, int, int, float)
        return Table(rows=rows or None, names=names, dtype=dtype)


def _check_amp(raw: np.ndarray, amp: AmpGeometry) -> None:
    for label, region in (("data", amp.data), ("serial_overscan", amp.serial_overscan)):
        ys, xs = region
        if ys.stop > raw.shape[0] or xs.stop > raw.shape[1]:
            raise InputDataError(
                f"amplifier {amp.name} {label} region [{ys.start}:{ys.stop}, {xs.start}:"
                f"{xs.stop}] lies outside the raw array of shape {raw.shape}",
                amp=amp.name,
            )


def subtract_bias(
    raw: np.ndarray,
    amp: AmpGeometry,
    *,
    region: str = "both",
    method: str = "row_poly",
    poly_degree: int = 6,
) -> BiasResult:
    """Subtract the bias of one amplifier, measured from its overscan and/or prescan columns.

    The event signal sums ``(2h + 1)**2`` pixels, so an error in the bias level grows by that
    factor in the peak: with 2 overscan columns alone, the mean level of a 512-row amplifier
    is uncertain by ~0.1 ADU, about 0.25 % of a 5x5 K-alpha signal. Hence the default
    ``"both"``, which uses every prescan and overscan column the amplifier has.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(ny, nx)`` raw frame (ADU).
    amp : AmpGeometry
        The amplifier.
    region : {"both", "overscan", "prescan"}
        Columns the bias is measured from (``"both"``: prescan and serial overscan, or the
        overscan alone when there is no prescan).
    method : {"constant", "row_poly"}
        One sigma-clipped level, or a polynomial in row number of degree ``poly_degree``
        fitted to each row's clipped mean.
    poly_degree : int
        Degree of the row polynomial, 0 to 15.

    Returns
    -------
    BiasResult
        The bias-subtracted imaging pixels, the mean bias and the noise (ADU).

    Raises
    ------
    ValueError
        If ``region``, ``method`` or ``poly_degree`` is invalid, or ``region="prescan"`` for an
        amplifier without prescan.
    InputDataError
        If the amplifier lies outside ``raw``, or its bias columns hold non-finite values or
        are constant.
    """
    if region not in ("both", "overscan", "prescan"):
        raise ValueError(f"region must be 'both', 'overscan' or 'prescan'; got {region!r}")
    if method not in ("constant", "row_poly"):
        raise ValueError(f"method must be 'constant' or 'row_poly'; got {method!r}")
    if not 0 <= poly_degree <= 15:
        raise ValueError(f"poly_degree must be in [0, 15]; got {poly_degree}")
    if region == "prescan" and amp.prescan is None:
        raise ValueError(f"amplifier {amp.name} has no prescan columns (region='prescan')")
    _check_amp(raw, amp)
    regions = []
    if region in ("both", "overscan"):
        regions.append(amp.serial_overscan)
    if region in ("both", "prescan") and amp.prescan is not None:
        regions.append(amp.prescan)
    rows = amp.serial_overscan[0]
    pixels = np.hstack([np.asarray(raw[rows, reg[1]], dtype=float) for reg in regions])
    if not np.all(np.isfinite(pixels)):
        raise InputDataError(
            f"amplifier {amp.name}: {region} columns hold {int(np.sum(~np.isfinite(pixels)))} "
            "non-finite value(s)",
            amp=amp.name,
        )
    if np.ptp(pixels) == 0:
        raise InputDataError(
            f"amplifier {amp.name}: {region} columns are all {pixels.flat[0]:g}: no read "
            "noise, not a raw readout",
            amp=amp.name,
        )
    row_numbers = np.arange(rows.start, rows.stop, dtype=float)
    data_rows = np.arange(amp.data[0].start, amp.data[0].stop, dtype=float)
    if method == "constant":
        level = _clipped_mean(pixels.ravel())
        bias_rows, per_row = np.full(data_rows.size, level), np.full(row_numbers.size, level)
    else:
        poly = np.polynomial.Legendre.fit(row_numbers, _clipped_row_means(pixels), poly_degree)
        bias_rows, per_row = poly(data_rows), poly(row_numbers)
    residual = pixels - per_row[:, None]
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    image = np.asarray(raw[amp.data], dtype=float) - bias_rows[:, None]
    return BiasResult(
        image_adu=image,
        bias_adu=float(np.mean(bias_rows)),
        bias_err_adu=noise / np.sqrt(pixels.size),
        noise_adu=noise,
    )


def _clipped_row_means(pixels: np.ndarray, n_sigma: float = 4.0) -> np.ndarray:
    """Mean of each row after dropping pixels ``n_sigma`` robust sigma from the row median.

    A mean, not a median: raw values are integers, and the median of a few integer pixels
    is biased toward whole ADU by up to a few tenths, which the signal box multiplies by its
    pixel count.
    """
    center = np.median(pixels, axis=1, keepdims=True)
    spread = 1.4826 * float(np.median(np.abs(pixels - center))) or 1.0
    keep = np.abs(pixels - center) < n_sigma * spread
    n_kept = np.sum(keep, axis=1)
    means = np.sum(pixels * keep, axis=1) / np.maximum(n_kept, 1)
    # with two columns both pixels of a row sit at the same distance from its median and go
    # together: such a row falls back to its median
    return np.where(n_kept > 0, means, center[:, 0])


def _clipped_mean(values: np.ndarray, n_sigma: float = 4.0) -> float:
    center = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - center))) or 1.0
    return float(np.mean(values[np.abs(values - center) < n_sigma * spread]))


def find_events(
    image_adu: np.ndarray,
    *,
    threshold_adu: float,
    isolation_threshold_adu: float,
    isolation_radius_pix: int = 4,
    signal_box_half_pix: int = 2,
    isolation_cut: bool = True,
) -> Fe55Events:
    """Find X-ray events in a bias-subtracted amplifier and sum their signal.

    An event is a local maximum (3x3) above ``threshold_adu`` whose isolation square fits in the
    image; among equal adjacent maxima one is kept. Its signal is the sum of the
    ``(2 * signal_box_half_pix + 1)`` square box around it. With ``isolation_cut`` an event is
    kept only if every pixel of the ``(2 * isolation_radius_pix + 1)`` square around it, outside
    the 3x3 core, is below ``isolation_threshold_adu``.

    Parameters
    ----------
    image_adu : numpy.ndarray
        ``(ny, nx)`` bias-subtracted imaging pixels (ADU), finite.
    threshold_adu : float
        Detection threshold on the peak pixel (ADU), positive.
    isolation_threshold_adu : float
        Isolation threshold (ADU), positive.
    isolation_radius_pix : int
        Half-width of the isolation square (pixels); at least ``signal_box_half_pix + 1``.
    signal_box_half_pix : int
        Half-width of the summed box (pixels), at least 1.
    isolation_cut : bool
        Apply the isolation cut.

    Returns
    -------
    Fe55Events
        Kept events (possibly none) and the candidate counts.

    Raises
    ------
    ValueError
        If the image is not 2-D, a threshold is not positive, or a size is out of range.
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
    for name, value in (
        ("threshold_adu", threshold_adu),
        ("isolation_threshold_adu", isolation_threshold_adu),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be > 0; got {value}")
    if signal_box_half_pix < 1:
        raise ValueError(f"signal_box_half_pix must be >= 1; got {signal_box_half_pix}")
    if isolation_radius_pix < signal_box_half_pix + 1:
        raise ValueError(
            f"isolation_radius_pix must be >= signal_box_half_pix + 1; got {isolation_radius_pix}"
        )
    radius = isolation_radius_pix
    ny, nx = image.shape
    peaks = (image == ndimage.maximum_filter(image, size=3, mode="nearest")) & (
        image > threshold_adu
    )
    # one pixel per plateau of equal maxima (integer raw values make ties common)
    labels, _ = ndimage.label(peaks, structure=np.ones((3, 3)))
    flat = np.flatnonzero(labels)
    _, first = np.unique(labels.flat[flat], return_index=True)
    y, x = np.unravel_index(flat[first], image.shape)
    inside = (y >= radius) & (y < ny - radius) & (x >= radius) & (x < nx - radius)
    y, x = y[inside], x[inside]
    n_candidates = int(y.size)

    offsets = np.arange(-radius, radius + 1)
    stamps = image[
        y[:, None, None] + offsets[None, :, None], x[:, None, None] + offsets[None, None, :]
    ]
    h = signal_box_half_pix
    box = slice(radius - h, radius + h + 1)
    signal = stamps[:, box, box].sum(axis=(1, 2))
    n_rejected = 0
    if isolation_cut and n_candidates:
        outer = stamps.copy()
        outer[:, radius - 1 : radius + 2, radius - 1 : radius + 2] = -np.inf
        isolated = outer.max(axis=(1, 2)) < isolation_threshold_adu
        n_rejected = int(np.sum(~isolated))
        y, x, signal = y[isolated], x[isolated], signal[isolated]
    return Fe55Events(
        y_pix=y,
        x_pix=x,
        signal_adu=signal,
        n_candidates=n_candidates,
        n_rejected_isolation=n_rejected,
    )


def line_model(edges_adu: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Expected events per bin of the K-alpha + K-beta + flat background model.

    Parameters
    ----------
    edges_adu : numpy.ndarray
        ``(n + 1,)`` increasing bin edges (ADU).
    params : numpy.ndarray
        ``(n_kalpha, peak_adu, sigma_adu, kbeta_ratio, background_per_adu)``.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` expected counts: each line's Gaussian integrated over the bin.
    """
    n_alpha, peak, sigma, ratio, background = params
    cdf_alpha = ndtr((edges_adu - peak) / sigma)
    cdf_beta = ndtr((edges_adu - peak * _KBETA_OVER_KALPHA) / sigma)
    return n_alpha * (np.diff(cdf_alpha) + ratio * np.diff(cdf_beta)) + background * np.diff(
        edges_adu
    )


def _line_model_jacobian(edges_adu: np.ndarray, params: np.ndarray) -> np.ndarray:
    """``(n, 5)`` derivatives of `line_model` with respect to its five parameters."""
    n_alpha, peak, sigma, ratio, _ = params
    z_alpha = (edges_adu - peak) / sigma
    z_beta = (edges_adu - peak * _KBETA_OVER_KALPHA) / sigma
    pdf_alpha = np.exp(-0.5 * z_alpha**2) / np.sqrt(2 * np.pi)
    pdf_beta = np.exp(-0.5 * z_beta**2) / np.sqrt(2 * np.pi)
    d_peak = -(np.diff(pdf_alpha) + ratio * _KBETA_OVER_KALPHA * np.diff(pdf_beta)) / sigma
    d_sigma = -(np.diff(pdf_alpha * z_alpha) + ratio * np.diff(pdf_beta * z_beta)) / sigma
    beta = np.diff(ndtr(z_beta))
    return np.column_stack(
        [
            np.diff(ndtr(z_alpha)) + ratio * beta,
            n_alpha * d_peak,
            n_alpha * d_sigma,
            n_alpha * beta,
            np.diff(edges_adu),
        ]
    )


def fit_kalpha_peak(
    signal_adu: np.ndarray,
    *,
    bins_per_sigma: float = 4.0,
    fit_window_sigma: float = 5.0,
    min_events: int = 50,
) -> PeakFit:
    """Fit the K-alpha peak (with the K-beta line and a flat background) to event signals.

    The starting peak and width are the median and the MAD-based rms of the signals near
    their median; the histogram spans ``fit_window_sigma`` sigma below K-alpha to as many
    above K-beta with ``bins_per_sigma`` bins per sigma. The fit maximises the binned Poisson
    likelihood; errors are from the inverse Fisher information.

    Parameters
    ----------
    signal_adu : numpy.ndarray
        ``(n,)`` event signals (ADU).
    bins_per_sigma : float
        Histogram bins per starting sigma.
    fit_window_sigma : float
        Window half-width around the lines, in starting sigma.
    min_events : int
        Fewest events in the window for a fit.

    Returns
    -------
    PeakFit
        The fitted parameters, their errors and the histogram.

    Raises
    ------
    ValueError
        If ``signal_adu`` is not 1-D or holds non-finite values.
    CalibrationError
        If too few events lie in the window or the fit does not converge to a peak inside it.
    """
    signal = np.asarray(signal_adu, dtype=float)
    if signal.ndim != 1:
        raise ValueError(f"signal_adu must be 1-D; got {signal.ndim} dimension(s)")
    if not np.all(np.isfinite(signal)):
        raise ValueError("signal_adu holds non-finite values")
    positive = signal[signal > 0]
    if positive.size < min_events:
        raise CalibrationError(
            f"only {positive.size} events with positive signal, fewer than min_events="
            f"{min_events}: too few X-rays, or a threshold too high",
            n_events=int(positive.size),
            min_events=int(min_events),
        )
    peak0 = float(np.median(positive))
    sigma0 = 1.4826 * float(np.median(np.abs(positive - peak0)))
    near = positive[np.abs(positive - peak0) < 2.5 * sigma0]
    if near.size:
        peak0 = float(np.median(near))
        sigma0 = max(1.4826 * float(np.median(np.abs(near - peak0))), 1e-3 * peak0)
    low = peak0 - fit_window_sigma * sigma0
    high = peak0 * _KBETA_OVER_KALPHA + fit_window_sigma * sigma0
    n_bins = max(int(np.ceil((high - low) / sigma0 * bins_per_sigma)), 8)
    edges = np.linspace(low, high, n_bins + 1)
    counts, _ = np.histogram(signal, bins=edges)
    n_window = int(counts.sum())
    if n_window < min_events:
        raise CalibrationError(
            f"only {n_window} events in the fit window [{low:.1f}, {high:.1f}] ADU, fewer than "
            f"min_events={min_events}",
            n_in_window=n_window,
            min_events=int(min_events),
        )

    scale = np.array([n_window, peak0, sigma0, 0.1, n_window / (high - low)])

    def nll(u: np.ndarray) -> tuple[float, np.ndarray]:
        params = u * scale
        mu = np.maximum(line_model(edges, params), 1e-12)
        grad = (1.0 - counts / mu) @ _line_model_jacobian(edges, params) * scale
        return float(np.sum(mu - counts * np.log(mu))), grad

    start = np.array([0.8, 1.0, 1.0, 1.0, 0.02])
    bounds = [(1e-3, 2.0), (0.8, 1.2), (0.2, 5.0), (0.0, 5.0), (0.0, 1.0)]
    # TNC rather than L-BFGS-B: the latter calls BLAS on 5-vectors, and OpenBLAS threads make
    # it 10-30x slower on a busy machine (measured: 8 ms against 110-250 ms per fit)
    best = optimize.minimize(nll, start, jac=True, method="TNC", bounds=bounds)
    if not best.success:
        # a stalled line search: the simplex needs no gradient
        best = optimize.minimize(
            lambda u: nll(u)[0],
            best.x,
            method="Nelder-Mead",
            bounds=bounds,
            options={"xatol": 1e-7, "fatol": 1e-7, "maxiter": 4000},
        )
    params = best.x * scale
    peak, sigma = params[1], params[2]
    if not (best.success and low < peak < high):
        raise CalibrationError(
            f"K-alpha fit did not converge to a peak inside [{low:.1f}, {high:.1f}] ADU "
            f"({best.message}); the histogram may lack a K-alpha line",
            peak_adu=float(peak),
            n_in_window=n_window,
        )
    mu = np.maximum(line_model(edges, params), 1e-12)
    # Fisher information of the binned Poisson likelihood, in the scaled parameters (all of
    # order one, so the matrix is well conditioned), then back to physical units.
    jac = _line_model_jacobian(edges, params) * scale
    fisher = jac.T @ (jac / mu[:, None])
    cov = np.linalg.pinv(fisher) * np.outer(scale, scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev_terms = np.where(counts > 0, counts * np.log(counts / mu), 0.0) - (counts - mu)
    deviance = 2.0 * float(np.sum(dev_terms))
    dof = max(n_bins - params.size, 1)
    return PeakFit(
        peak_adu=float(peak),
        peak_err_adu=float(np.sqrt(max(cov[1, 1], 0.0))),
        sigma_adu=float(sigma),
        sigma_err_adu=float(np.sqrt(max(cov[2, 2], 0.0))),
        n_kalpha=float(params[0]),
        kbeta_ratio=float(params[3]),
        background_per_adu=float(params[4]),
        edges_adu=edges,
        counts=counts,
        deviance_per_dof=deviance / dof,
        n_in_window=n_window,
    )


def measure_amp_gain(
    raw: np.ndarray, amp: AmpGeometry, *, config: Fe55Config | None = None
) -> Fe55AmpResult:
    """Measure the gain of one amplifier from a raw Fe55 frame.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(ny, nx)`` raw frame (ADU).
    amp : AmpGeometry
        The amplifier.
    config : Fe55Config, optional
        Analysis settings (defaults if omitted).

    Returns
    -------
    Fe55AmpResult
        The gain, its error, the events and the fit.

    Raises
    ------
    InputDataError
        If the amplifier lies outside ``raw``, its imaging pixels are not all finite, or its
        bias columns are non-finite or constant.
    CalibrationError
        If too few events are found or the peak fit fails.
    """
    config = config or Fe55Config()
    bias = subtract_bias(
        raw,
        amp,
        region=config.bias_region,
        method=config.bias_method,
        poly_degree=config.bias_poly_degree,
    )
    n_bad = int(np.sum(~np.isfinite(bias.image_adu)))
    if n_bad:
        raise InputDataError(
            f"amplifier {amp.name}: {n_bad} of {bias.image_adu.size} imaging pixels are not finite",
            amp=amp.name,
            n_nonfinite=n_bad,
        )
    events = find_events(
        bias.image_adu,
        threshold_adu=config.detection_threshold_sigma * bias.noise_adu,
        isolation_threshold_adu=config.isolation_threshold_sigma * bias.noise_adu,
        isolation_radius_pix=config.isolation_radius_pix,
        signal_box_half_pix=config.signal_box_half_pix,
        isolation_cut=config.isolation_cut,
    )
    try:
        fit = fit_kalpha_peak(
            events.signal_adu,
            bins_per_sigma=config.bins_per_sigma,
            fit_window_sigma=config.fit_window_sigma,
            min_events=config.min_events,
        )
    except CalibrationError as exc:
        raise CalibrationError(
            f"amplifier {amp.name}: {exc}", amp=amp.name, **exc.metadata
        ) from exc
    gain = KALPHA_ELECTRONS / fit.peak_adu
    box_pixels = (2 * config.signal_box_half_pix + 1) ** 2
    peak_bias_err = box_pixels * bias.bias_err_adu
    peak_err = float(np.hypot(fit.peak_err_adu, peak_bias_err))
    log.info(
        "amp %s: %d candidates, %d isolated, peak %.2f +- %.2f ADU, gain %.4f e-/ADU",
        amp.name,
        events.n_candidates,
        events.signal_adu.size,
        fit.peak_adu,
        peak_err,
        gain,
    )
    return Fe55AmpResult(
        amp=amp.name,
        gain_e_per_adu=gain,
        gain_err_e_per_adu=gain * peak_err / fit.peak_adu,
        peak_bias_err_adu=peak_bias_err,
        peak_sigma_e=fit.sigma_adu * gain,
        bias_adu=bias.bias_adu,
        bias_err_adu=bias.bias_err_adu,
        noise_adu=bias.noise_adu,
        events=events,
        fit=fit,
    )


def measure_fe55_gain(
    raw: np.ndarray, layout: DetectorLayout, *, config: Fe55Config | None = None
) -> Fe55Result:
    """Measure the gain of every amplifier of a raw Fe55 frame.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(ny, nx)`` raw frame (ADU) of shape ``layout.raw_shape``.
    layout : DetectorLayout
        The amplifier geometry.
    config : Fe55Config, optional
        Analysis settings (defaults if omitted).

    Returns
    -------
    Fe55Result
        One result per amplifier.

    Raises
    ------
    InputDataError
        If ``raw`` is not 2-D, its shape differs from ``layout.raw_shape``, or an amplifier's
        pixels are unusable.
    CalibrationError
        If an amplifier's fit fails.
    """
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise InputDataError(f"raw must be 2-D (ny, nx); got shape {raw.shape}")
    if raw.shape != tuple(layout.raw_shape):
        raise InputDataError(
            f"raw shape {raw.shape} differs from the layout's raw_shape {layout.raw_shape}",
            raw_ny=int(raw.shape[0]),
            raw_nx=int(raw.shape[1]),
        )
    return Fe55Result(amps=tuple(measure_amp_gain(raw, amp, config=config) for amp in layout.amps))


def layout_mismatches(found: DetectorLayout, expected: DetectorLayout) -> tuple[str, ...]:
    """How a frame's amplifier geometry differs from the expected one (empty if it does not).

    Parameters
    ----------
    found : DetectorLayout
        The layout read from a frame's header and data shape.
    expected : DetectorLayout
        The layout the configuration describes.

    Returns
    -------
    tuple of str
        One readable line per difference: the raw shape, the amplifier names, then each
        section keyword whose value differs (``DATASECB=[...] but the config gives [...]``).
    """
    lines = []
    if tuple(found.raw_shape) != tuple(expected.raw_shape):
        lines.append(
            f"raw shape (ny, nx)={tuple(found.raw_shape)} but the config gives "
            f"{tuple(expected.raw_shape)}"
        )
    found_names = [a.name for a in found.amps]
    expected_names = [a.name for a in expected.amps]
    if found_names != expected_names:
        lines.append(
            f"{len(found_names)} amplifier(s) {','.join(found_names)} but the config gives "
            f"{len(expected_names)}: {','.join(expected_names)}"
        )
    cards, wanted = found.header_cards(), expected.header_cards()
    for key in sorted(set(cards) | set(wanted)):
        if key in ("NAMPS", "AMPNAMES") or cards.get(key) == wanted.get(key):
            continue
        lines.append(
            f"{key}={cards.get(key, '(absent)')} but the config gives {wanted.get(key, '(none)')}"
        )
    return tuple(lines)


def summarize_gains(tables: Sequence[Table], *, truth: Table | None = None) -> Table:
    """Combine the gain tables of several exposures of one sensor, per amplifier.

    Parameters
    ----------
    tables : sequence of astropy.table.Table
        Gain tables (`Fe55Result.table`), one per exposure.
    truth : astropy.table.Table, optional
        True gains (columns ``amp``, ``gain_e_per_adu``), for simulated sensors.

    Returns
    -------
    astropy.table.Table
        One row per amplifier: ``amp``, ``n_exposures``, ``gain_e_per_adu`` (inverse-variance
        weighted mean), ``gain_err_e_per_adu`` (its error), ``gain_scatter_e_per_adu``
        (standard deviation over exposures, 0 for one exposure), ``chi2_per_dof`` (of the
        exposures about the mean; 0 for one exposure), ``peak_sigma_e`` (mean),
        ``n_events`` (total); with ``truth`` also ``gain_truth_e_per_adu`` and
        ``gain_dev_sigma`` ((mean - truth) / error).

    Raises
    ------
    ValueError
        If ``tables`` is empty, a table lacks a column, the tables name different amplifiers,
        an error is not positive, or ``truth`` lacks an amplifier.
    """
    if len(tables) == 0:
        raise ValueError("tables is empty: no gain table to summarize")
    needed = ("amp", "gain_e_per_adu", "gain_err_e_per_adu", "peak_sigma_e", "n_events")
    for i, table in enumerate(tables):
        missing = [c for c in needed if c not in table.colnames]
        if missing:
            raise ValueError(f"tables[{i}] lacks column(s) {', '.join(missing)}")
    amps = [str(a) for a in tables[0]["amp"]]
    for i, table in enumerate(tables[1:], start=1):
        if [str(a) for a in table["amp"]] != amps:
            raise ValueError(
                f"tables[{i}] has amplifiers {','.join(map(str, table['amp']))}, "
                f"tables[0] has {','.join(amps)}"
            )
    gains = np.array([np.asarray(t["gain_e_per_adu"], dtype=float) for t in tables])
    errors = np.array([np.asarray(t["gain_err_e_per_adu"], dtype=float) for t in tables])
    if not np.all(errors > 0):
        raise ValueError("gain_err_e_per_adu must be > 0 in every table")
    weights = errors**-2
    mean = np.sum(weights * gains, axis=0) / np.sum(weights, axis=0)
    n = len(tables)
    chi2 = np.sum(weights * (gains - mean) ** 2, axis=0) / max(n - 1, 1)
    out = Table()
    out["amp"] = amps
    out["n_exposures"] = np.full(len(amps), n)
    out["gain_e_per_adu"] = mean
    out["gain_err_e_per_adu"] = np.sum(weights, axis=0) ** -0.5
    out["gain_scatter_e_per_adu"] = gains.std(axis=0, ddof=1) if n > 1 else np.zeros(len(amps))
    out["chi2_per_dof"] = chi2 if n > 1 else np.zeros(len(amps))
    out["peak_sigma_e"] = np.mean([np.asarray(t["peak_sigma_e"], float) for t in tables], axis=0)
    out["n_events"] = np.sum([np.asarray(t["n_events"], int) for t in tables], axis=0)
    if truth is not None:
        by_amp = {
            str(a): float(g) for a, g in zip(truth["amp"], truth["gain_e_per_adu"], strict=True)
        }
        absent = [a for a in amps if a not in by_amp]
        if absent:
            raise ValueError(f"truth lacks amplifier(s) {', '.join(absent)}")
        true_gain = np.array([by_amp[a] for a in amps])
        out["gain_truth_e_per_adu"] = true_gain
        out["gain_dev_sigma"] = (mean - true_gain) / out["gain_err_e_per_adu"]
    return out
