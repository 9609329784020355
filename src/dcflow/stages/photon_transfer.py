"""Photon-transfer gain of each amplifier from flat pairs and a bias (or dark) pair.

The photon-transfer curve (Janesick, *Photon Transfer*, SPIE 2007, ch. 4) is the standard
check of an Fe55 gain that needs no assumed X-ray yield. For a flat field of mean signal
``S`` (ADU above bias), shot noise gives a variance ``S / g`` (ADU^2) with ``g`` the gain in
electrons per ADU. Per amplifier and per flat pair:

1. each frame's bias is taken from its own prescan (and/or overscan) columns
   (`dcflow.stages.fe55.subtract_bias`), so a bias that moves between frames cancels;
2. the mean signal is the mean of the two flats minus the mean of the two bias/dark frames
   (dark current taken out with the bias);
3. the difference of the two flats, the second scaled to the level of the first, cancels the
   fixed pattern (pixel response, illumination gradient); its sigma-clipped variance over two
   is the flat's temporal variance;
4. the difference of the two bias/dark frames gives the read (and dark shot) noise variance,
   subtracted from the flat's.

With one pair ``g = S / var``; with several levels ``1 / g`` is the least-squares slope of
variance against signal through the origin, weighted by each variance's error
``var * sqrt(2 / n_pixels)``. The gain error propagates those errors.

Variance alone misses charge that neighbouring pixels share: a serial trail (deferred charge)
or the brighter-fatter effect moves part of a pixel's charge to its neighbours, which lowers
each pixel's variance below ``S / g`` and puts the difference into the covariances of
neighbouring pixels (Astier et al. 2019, A&A 629, A36: the variance plus the sum of all
covariances keeps ``S / g``, since the charge is conserved). The covariances of each
difference image out to ``covariance_reach_pix`` (minus those of the bias pair: correlated
read noise) are always measured and reported as ``covariance_fraction``; with
``pixel_covariances`` they are added to the variance before the fit. On the simulator's flat
pairs at four levels with a 0.2 % (1 %) serial trail, variance alone puts the gain 0.40 %
(2.0 %) high, the covariances recover it to -0.05 +- 0.14 % with pulls of rms 1.0. It is off
by default: on the one LED level of ESIS1 the sum is 1.2-2.9 +- 0.6 % of the variance for the
8 nearest neighbours and 1.0-5.2 +- 1.0 % for the 24 of a 5x5 square (the sum of 2 x 12
covariances is 5 x noisier than the variance), it does not settle with the reach, and one
level cannot tell charge sharing from other correlated noise; on the one trusted Fe55 tap
(00) Fe55 / photon transfer is 1.003 +- 0.007 with variance alone and 1.013 +- 0.012 with
covariances (benchmarks/ptc_covariances.py prints both side by side).

Measured on the shared ESIS1 LED pair (variance alone): within 0.03 % of msfc-ccd's
photon-transfer gain on all four taps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table

from dcflow.configs import check_fields, config_field
from dcflow.errors import InputDataError
from dcflow.geometry import AmpGeometry, DetectorLayout
from dcflow.stages.fe55 import subtract_bias

__all__ = [
    "PhotonTransferAmpResult",
    "PhotonTransferConfig",
    "PhotonTransferResult",
    "measure_amp_ptc",
    "measure_photon_transfer",
    "neighbour_covariance_sum",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PhotonTransferConfig:
    """Settings of the photon-transfer gain (the ``photon_transfer`` config section)."""

    bias_region: str = config_field(
        "prescan",
        "Pixels each frame's bias is measured from.",
        choices={
            "prescan": "the prescan columns (clean: no deferred charge from the flat)",
            "overscan": "the serial overscan columns (carry deferred charge of a bright flat)",
            "both": "prescan and serial overscan columns together",
        },
    )
    bias_method: str = config_field(
        "constant",
        "How each frame's bias varies over the amplifier.",
        choices={
            "constant": "one sigma-clipped level per amplifier",
            "row_poly": "a polynomial in row number fitted to each row's clipped mean",
        },
    )
    clip_sigma: float = config_field(
        5.0,
        "Sigma clip of the difference images (sigma; cosmic rays and defects).",
        minimum=3.0,
        maximum=20.0,
    )
    max_level_ratio: float = config_field(
        0.05,
        "Largest fractional difference between the two flats of a pair before the amplifier "
        "is marked untrusted (a source that drifted within the pair).",
        exclusive_minimum=0.0,
        maximum=1.0,
    )
    max_gain_rel_err: float = config_field(
        0.02,
        "Largest relative gain error of a trusted amplifier (fraction).",
        exclusive_minimum=0.0,
    )
    pixel_covariances: bool = config_field(
        False,
        "Add the covariances of neighbouring pixels of each flat-pair difference (those of the "
        "bias pair removed) to its variance: charge shared with neighbours (deferred charge, "
        "brighter-fatter) lowers the variance alone and so raises the gain by the covariances' "
        "sum. Off by default: the sum's statistical error is ~5 x the variance's.",
    )
    covariance_reach_pix: int = config_field(
        2,
        "Largest row and column offset of the neighbour covariances measured (pixels; 1: the "
        "8 nearest neighbours, 2: the 24 of a 5x5 square).",
        minimum=1,
        maximum=5,
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class PhotonTransferAmpResult:
    """Photon-transfer gain of one amplifier.

    Parameters
    ----------
    amp : str
        Amplifier name.
    gain_e_per_adu, gain_err_e_per_adu : float
        Gain and its statistical error (electrons per ADU).
    read_noise_adu, read_noise_e : float
        Per-pixel noise of the bias/dark pair (ADU; electrons at the measured gain).
    signal_adu, variance_adu2 : tuple of float
        Mean signal above bias and its temporal variance (read noise removed; with
        ``pixel_covariances`` plus the neighbour covariances) per flat pair (ADU, ADU^2): the
        points fitted.
    covariance_fraction : tuple of float
        Per flat pair, the sum of the neighbour covariances of its difference image (those of
        the bias pair removed) over its variance (read noise removed).
    covariance_fraction_err : tuple of float
        Their statistical errors.
    n_pixels : int
        Pixels of the amplifier used per pair.
    level_ratio : float
        Largest ``|1 - mean(flat1) / mean(flat2)|`` over the pairs.
    trusted : bool
        Whether the gain can be used.
    verdict : str
        ``"ok"`` or the reasons it cannot.
    """

    amp: str
    gain_e_per_adu: float
    gain_err_e_per_adu: float
    read_noise_adu: float
    read_noise_e: float
    signal_adu: tuple[float, ...]
    variance_adu2: tuple[float, ...]
    covariance_fraction: tuple[float, ...]
    covariance_fraction_err: tuple[float, ...]
    n_pixels: int
    level_ratio: float
    trusted: bool
    verdict: str


@dataclass(frozen=True, slots=True)
class PhotonTransferResult:
    """Photon-transfer gains of every amplifier of a sensor.

    Parameters
    ----------
    amps : tuple of PhotonTransferAmpResult
        One per amplifier, in layout order.
    """

    amps: tuple[PhotonTransferAmpResult, ...]

    def table(self) -> Table:
        """One row per amplifier (an empty table with all its columns when there is none).

        Columns: ``amp``, ``gain_e_per_adu``, ``gain_err_e_per_adu``, ``read_noise_adu``,
        ``read_noise_e``, ``n_pairs``, ``max_signal_adu``, ``covariance_fraction`` and
        ``covariance_fraction_err`` (mean over the pairs), ``n_pixels``, ``level_ratio``,
        ``trusted``, ``verdict``; the header keyword ``NUNTRUST`` counts untrusted amplifiers.
        """
        names = (
            "amp",
            "gain_e_per_adu",
            "gain_err_e_per_adu",
            "read_noise_adu",
            "read_noise_e",
            "n_pairs",
            "max_signal_adu",
            "covariance_fraction",
            "covariance_fraction_err",
            "n_pixels",
            "level_ratio",
            "trusted",
            "verdict",
        )
        rows = [
            (
                a.amp,
                a.gain_e_per_adu,
                a.gain_err_e_per_adu,
                a.read_noise_adu,
                a.read_noise_e,
                len(a.signal_adu),
                max(a.signal_adu),
                float(np.mean(a.covariance_fraction)),
                float(np.sqrt(np.sum(np.square(a.covariance_fraction_err))))
                / len(a.covariance_fraction_err),
                a.n_pixels,
                a.level_ratio,
                a.trusted,
                a.verdict,
            )
            for a in self.amps
        ]
        dtype = (str, float, float, float, float, int, float, float, float, int, float, bool, str)
        table = Table(rows=rows or None, names=names, dtype=dtype)
        table.meta["NUNTRUST"] = sum(not a.trusted for a in self.amps)
        return table


def _clipped_var(image: np.ndarray, clip_sigma: float) -> float:
    _, _, std = sigma_clipped_stats(image, sigma=clip_sigma, maxiters=5)
    return float(std) ** 2


def _half_plane_offsets(reach: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) of one half of the square of half-width ``reach``, centre excluded.

    Each stands for itself and its mirror (-dy, -dx).
    """
    return [
        (dy, dx) for dy in range(reach + 1) for dx in range(-reach, reach + 1) if dy > 0 or dx > 0
    ]


def neighbour_covariance_sum(image: np.ndarray, *, clip_sigma: float, reach: int) -> float:
    """Sum of the covariances of each pixel with its neighbours out to ``reach`` (ADU^2).

    Over every offset ``(dy, dx) != (0, 0)`` with ``|dy|, |dx| <= reach``, so twice the sum
    over a half plane. Pixels more than ``clip_sigma`` from the clipped mean (defects, cosmic
    rays) are left out of every product they take part in.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` difference image (ADU), larger than ``reach`` along both axes.
    clip_sigma : float
        Sigma clip (sigma).
    reach : int
        Largest ``|dy|`` and ``|dx|`` (pixels), positive.

    Returns
    -------
    float
        The sum (ADU^2); its noise for uncorrelated pixels is ``variance * sqrt(4 K / n)``
        with ``K = 2 reach (reach + 1)`` offsets in the half plane.
    """
    mean, _, std = sigma_clipped_stats(image, sigma=clip_sigma, maxiters=5)
    valid = np.abs(image - mean) <= clip_sigma * std
    centred = np.where(valid, image - mean, 0.0)
    weight = valid.astype(float)
    ny, nx = image.shape
    total = 0.0
    for dy, dx in _half_plane_offsets(reach):
        x0, x1 = max(0, -dx), nx - max(0, dx)
        a = (slice(0, ny - dy), slice(x0, x1))
        b = (slice(dy, ny), slice(x0 + dx, x1 + dx))
        pairs = float(np.sum(weight[a] * weight[b]))
        total += 2.0 * float(np.sum(centred[a] * centred[b])) / pairs
    return total


def measure_amp_ptc(
    flat_pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    bias_pair: tuple[np.ndarray, np.ndarray],
    amp: AmpGeometry,
    *,
    config: PhotonTransferConfig | None = None,
) -> PhotonTransferAmpResult:
    """Photon-transfer gain of one amplifier.

    Parameters
    ----------
    flat_pairs : sequence of (numpy.ndarray, numpy.ndarray)
        Raw ``(ny, nx)`` flat frames (ADU), two per illumination level.
    bias_pair : (numpy.ndarray, numpy.ndarray)
        Two raw bias or dark frames of the flats' exposure time (ADU).
    amp : AmpGeometry
        The amplifier.
    config : PhotonTransferConfig, optional
        Settings (defaults if omitted).

    Returns
    -------
    PhotonTransferAmpResult
        Gain, read noise and the verdict.

    Raises
    ------
    ValueError
        If no flat pair is given.
    InputDataError
        If a frame's amplifier is unusable (non-finite, constant bias columns), or the flat
        signal is not above the bias.
    """
    config = config or PhotonTransferConfig()
    if len(flat_pairs) == 0:
        raise ValueError("flat_pairs is empty: photon transfer needs at least one flat pair")

    def level(raw: np.ndarray) -> np.ndarray:
        return subtract_bias(
            raw, amp, region=config.bias_region, method=config.bias_method, poly_degree=2
        ).image_adu

    def covariances(difference: np.ndarray) -> float:
        return neighbour_covariance_sum(
            difference, clip_sigma=config.clip_sigma, reach=config.covariance_reach_pix
        )

    b1, b2 = (level(b) for b in bias_pair)
    dark = 0.5 * float(np.mean(b1) + np.mean(b2))
    read_var = _clipped_var(b1 - b2, config.clip_sigma) / 2.0
    read_cov = covariances(b1 - b2) / 2.0
    n_offsets = len(_half_plane_offsets(config.covariance_reach_pix))
    signals, variances, ratios, cov_sums = [], [], [], []
    for i, (raw1, raw2) in enumerate(flat_pairs):
        f1, f2 = level(raw1) - dark, level(raw2) - dark
        m1, m2 = float(np.mean(f1)), float(np.mean(f2))
        if not (m1 > 0 and m2 > 0):
            raise InputDataError(
                f"amplifier {amp.name}: flat pair {i} has mean signal {m1:.1f}, {m2:.1f} ADU "
                "above bias: not a flat",
                amp=amp.name,
                pair=i,
            )
        ratio = m1 / m2
        difference = f1 - ratio * f2
        variance = _clipped_var(difference, config.clip_sigma) / (1.0 + ratio**2)
        signals.append(0.5 * (m1 + m2))
        variances.append(variance - read_var)
        cov_sums.append(covariances(difference) / (1.0 + ratio**2) - read_cov)
        ratios.append(abs(1.0 - ratio))
    n_pix = int(b1.size)
    signal = np.asarray(signals)
    variance = np.asarray(variances)
    cov_sum = np.asarray(cov_sums)
    reasons = []
    if np.any(variance <= 0):
        reasons.append("flat variance not above read noise")
        variance = np.maximum(variance, 1e-12)
    # noise of a variance and of a covariance sum of n uncorrelated pixels: each of the 2K
    # covariances (K in the half plane, counted twice) scatters by variance / sqrt(n)
    cov_noise = np.sqrt(4.0 * n_offsets / n_pix)
    cov_fraction = cov_sum / variance
    # the flat difference's noise (flat and read) plus the bias pair's, added linearly
    cov_fraction_err = (1.0 + 2.0 * read_var / variance) * cov_noise
    if config.pixel_covariances:
        variance = variance + cov_sum
        var_err = (variance + read_var) * np.sqrt((2.0 + 4.0 * n_offsets) / n_pix)
    else:
        var_err = (variance + read_var) * np.sqrt(2.0 / n_pix)
    w = var_err**-2
    slope = float(np.sum(w * signal * variance) / np.sum(w * signal**2))
    slope_err = float(np.sum(w * signal**2) ** -0.5)
    gain = 1.0 / slope
    gain_err = gain * slope_err / slope
    level_ratio = float(max(ratios))
    if level_ratio > config.max_level_ratio:
        reasons.append(f"flat pair levels differ by {100 * level_ratio:.1f} %")
    if gain_err / gain > config.max_gain_rel_err:
        reasons.append(f"gain error {100 * gain_err / gain:.1f} %")
    verdict = "; ".join(reasons) or "ok"
    read_noise = float(np.sqrt(read_var))
    log.info(
        "amp %s: PTC gain %.4f +- %.4f e-/ADU from %d pair(s)%s, read noise %.2f ADU, "
        "neighbour covariances %+.2f %% of the variance (%s)",
        amp.name,
        gain,
        gain_err,
        len(signals),
        " with pixel covariances" if config.pixel_covariances else "",
        read_noise,
        100 * float(np.mean(cov_fraction)),
        verdict,
    )
    return PhotonTransferAmpResult(
        amp=amp.name,
        gain_e_per_adu=gain,
        gain_err_e_per_adu=gain_err,
        read_noise_adu=read_noise,
        read_noise_e=read_noise * gain,
        signal_adu=tuple(float(s) for s in signal),
        variance_adu2=tuple(float(v) for v in variance),
        covariance_fraction=tuple(float(c) for c in cov_fraction),
        covariance_fraction_err=tuple(float(c) for c in cov_fraction_err),
        n_pixels=n_pix,
        level_ratio=level_ratio,
        trusted=not reasons,
        verdict=verdict,
    )


def measure_photon_transfer(
    flat_pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    bias_pair: tuple[np.ndarray, np.ndarray],
    layout: DetectorLayout,
    *,
    config: PhotonTransferConfig | None = None,
) -> PhotonTransferResult:
    """Photon-transfer gain of every amplifier of a sensor.

    Parameters
    ----------
    flat_pairs : sequence of (numpy.ndarray, numpy.ndarray)
        Raw ``(ny, nx)`` flat pairs (ADU), of shape ``layout.raw_shape``.
    bias_pair : (numpy.ndarray, numpy.ndarray)
        Two raw bias or dark frames (ADU).
    layout : DetectorLayout
        The amplifiers.
    config : PhotonTransferConfig, optional
        Settings.

    Returns
    -------
    PhotonTransferResult
        One result per amplifier.

    Raises
    ------
    ValueError
        If no flat pair is given.
    InputDataError
        If a frame is not 2-D of the layout's shape, or an amplifier is unusable.
    """
    frames = [f for pair in flat_pairs for f in pair] + list(bias_pair)
    if len(flat_pairs) == 0:
        raise ValueError("flat_pairs is empty: photon transfer needs at least one flat pair")
    for i, frame in enumerate(frames):
        shape = np.shape(frame)
        if shape != tuple(layout.raw_shape):
            raise InputDataError(
                f"frame {i} has shape {shape}, the layout's raw_shape is {layout.raw_shape}",
                frame=i,
            )
    pairs = [(np.asarray(a, dtype=float), np.asarray(b, dtype=float)) for a, b in flat_pairs]
    biases = (np.asarray(bias_pair[0], dtype=float), np.asarray(bias_pair[1], dtype=float))
    return PhotonTransferResult(
        amps=tuple(measure_amp_ptc(pairs, biases, amp, config=config) for amp in layout.amps)
    )
