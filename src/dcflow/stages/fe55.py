"""Fe55 gain of each amplifier: graded X-ray events, their signal histogram and the K-alpha line.

Each Mn K-alpha photon (5.889 keV) absorbed in silicon frees ``E / w(T)`` electrons, with
``w`` the pair-creation energy at the sensor's temperature (`kalpha_yield`: 1591 e- at 173 K,
1616 e- at 293 K), so the K-alpha line of the histogram of event signals (ADU) gives the gain,
``gain_e_per_adu = yield / peak_adu``. Per amplifier:

1. `subtract_bias`: the bias, from the prescan (default: the overscan can carry deferred
   charge) and/or serial overscan columns, one level or a polynomial along rows, and the
   pixel noise; then the pedestal of the imaging area (dark current, an offset between the
   prescan and the imaging pixels: -0.4 to +0.6 ADU per pixel on ESIS1, 2 % of a 5x5 sum).
2. `dcflow.stages.xray_events.find_xray_events`: local maxima above a threshold, their 3x3 /
   5x5 sums, an isolation cut and the ASCA grade of their 3x3 pattern; the compact grades
   (0, 2, 3, 4, 6) are kept, the diffuse events that fill a partial-charge continuum go.
3. `fit_kalpha_peak`: a binned Poisson maximum-likelihood fit of K-alpha and K-beta lines
   over their partial-charge shelf (events that lost part of their charge, which a real
   sensor holds and a naive simulator does not) and a floor, started at the strongest narrow
   line of the signals of every isolated event (`_line_search`: a real histogram also has a
   continuum and bumps above K-alpha); an amplifier whose strongest line is not significant
   (`Fe55Config.min_line_significance`) takes the strongest of its lines near the sensor's
   most significant one (`Fe55Config.sensor_line_window`: the taps share one spectrum
   through gains a few per cent apart), and is not trusted; the line width held at its
   expectation (freed afterwards for the verdict); errors from the Fisher information, or
   from bootstrap resamples of the events where those spread more (few K-alpha events).
4. `fe55_verdict`: whether the gain can be trusted (enough K-alpha events, a line width within
   30 % of the width expected from the box noise measured on the image and the Fano noise,
   no parameter at a bound, a gain error under half the 1.5 % an Fe55 gain is checked to
   against photon transfer, a sane deviance, a peak that bootstrap resamples of the events
   keep, an imaging area within a noise sigma of the bias: bias columns that are not the
   amplifier's leave a level of tens of ADU, no one-sided charge trail beyond the signal box:
   deferred charge or transfer loss that the event sums miss, `charge_trail`, which leaves
   the line as narrow as ever while the gain comes out high by the charge lost); an
   amplifier that fails, or whose fit fails, is
   marked ``trusted = False`` with its reasons in the table (``NUNTRUST`` counts them).

`measure_fe55_gain` runs these over every amplifier of a raw frame; `pool_exposures` runs
the line search, fit and verdict once over the isolated events of all a sensor's exposures (a
tap too sparse for a fit in any one exposure gets one from all of them); `summarize_gains`
takes that pooled gain as the sensor's, checks that the exposures' own gains agree, and sets
each Fe55 gain against the photon-transfer gain where there is one. Everything here is a pure
function over arrays and tables; the scripts read and write the files.

The fit is a binned Poisson likelihood minimised with scipy.optimize, because
astropy.modeling's fitters minimise least squares, which are biased at the few counts per bin
of the K-beta line and the shelf; Powell then Nelder-Mead from three starting widths, because
the likelihood of a few dozen real events has local minima (a wide line swallowing the shelf).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.stats import sigma_clip, sigma_clipped_stats
from astropy.table import Table
from scipy import ndimage, optimize, stats
from scipy.special import ndtr

from dcflow.configs import check_fields, config_field
from dcflow.errors import CalibrationError, InputDataError
from dcflow.geometry import AmpGeometry, DetectorLayout
from dcflow.stages.xray_events import find_xray_events

__all__ = [
    "KALPHA_ELECTRONS",
    "KBETA_ELECTRONS",
    "MN_KALPHA_EV",
    "MN_KBETA_EV",
    "BiasResult",
    "Fe55AmpResult",
    "Fe55Config",
    "Fe55Events",
    "Fe55Result",
    "PeakFit",
    "charge_trail",
    "fe55_verdict",
    "fit_kalpha_peak",
    "image_pedestal",
    "kalpha_yield",
    "layout_mismatches",
    "line_model",
    "measure_amp_gain",
    "measure_fe55_gain",
    "pair_energy_ev",
    "pool_exposures",
    "subtract_bias",
    "summarize_gains",
]

log = logging.getLogger(__name__)

MN_KALPHA_EV = 5889.0
"""Energy of the Mn K-alpha line (Ka1/Ka2 weighted, eV)."""

MN_KBETA_EV = 6490.0
"""Energy of the Mn K-beta line (eV)."""

KALPHA_ELECTRONS = 1620.0
"""Electrons freed in silicon by one Mn K-alpha photon at room temperature (the usual
figure; a cold sensor frees fewer: see `kalpha_yield`)."""

KBETA_ELECTRONS = KALPHA_ELECTRONS * MN_KBETA_EV / MN_KALPHA_EV
"""Electrons freed in silicon by one Mn K-beta photon at room temperature."""

_KBETA_OVER_KALPHA = MN_KBETA_EV / MN_KALPHA_EV
_SQRT_2PI = np.sqrt(2 * np.pi)


@dataclass(frozen=True, slots=True)
class Fe55Config:
    """Settings of the Fe55 gain analysis (the ``fe55_gain`` config section)."""

    bias_region: str = config_field(
        "prescan",
        "Pixels the bias is measured from.",
        choices={
            "prescan": "the prescan columns (PRESEC): clean, read before any charge",
            "overscan": "the serial overscan columns (BIASSEC): can carry deferred charge",
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
    pedestal: str = config_field(
        "image",
        "Level of the imaging pixels left after the bias (dark current, an offset between the "
        "prescan and the imaging area's video chain), subtracted from every event sum.",
        choices={
            "image": "the sigma-clipped mean of the bias-subtracted imaging pixels",
            "none": "no pedestal: the bias columns give the zero of the imaging area",
        },
    )
    detection_threshold_sigma: float = config_field(
        20.0,
        "An event's peak pixel must exceed this many pixel-noise sigma (noise from the bias "
        "region).",
        exclusive_minimum=0.0,
    )
    split_threshold_sigma: float = config_field(
        4.0,
        "A neighbour holds split charge above this many pixel-noise sigma: it sets the grade "
        "and the isolation cut (ACIS uses ~13 ADU for ~3 ADU noise).",
        exclusive_minimum=0.0,
    )
    grades: tuple[int, ...] = config_field(
        (0, 2, 3, 4, 6),
        "ASCA grades of the events fitted (0 single, 1 single with corners, 2 vertical, "
        "3 left, 4 right split, 5 split with a touching corner, 6 L or square, 7 diffuse); "
        "0, 2, 3, 4, 6 is the standard set of compact events with whole charge (checked per "
        "sensor by the line of each grade: on ESIS1 the grade-7 line sits 2.5-7.8 % below "
        "the compact one in 5x5 and 7x7 sums alike, charge lost, not spread; "
        "benchmarks/fe55_real.py).",
        minimum=0,
        maximum=7,
    )
    isolation_cut: bool = config_field(
        True,
        "Keep only isolated events: no pixel within isolation_radius_pix of the peak, outside "
        "the signal box (3x3 core for a 3x3 box), above the split threshold.",
    )
    isolation_radius_pix: int = config_field(
        3,
        "Half-width of the square examined by the isolation cut (pixels): the signal box "
        "grown by one pixel, the reach of a neighbour's charge cloud into it (measured on "
        "ESIS1: the mean K-alpha event holds within 0.5 % the same charge in 5x5, 7x7 and "
        "9x9 boxes, so a wider square only throws away events, 12-18 % of them for 4).",
        minimum=2,
        maximum=10,
    )
    signal_box_half_pix: int = config_field(
        2,
        "Half-width of the box summed for an event's signal (pixels; 1: 3x3, 2: 5x5, which "
        "holds the whole charge cloud of a 15 um pixel sensor).",
        minimum=1,
        maximum=2,
    )
    temperature_k: float = config_field(
        173.0,
        "Sensor temperature (K): sets the electron-hole pair energy and so the K-alpha yield "
        "(Lowe & Sareen 2007, NIM A 576, 367: 3.654 eV at 270 K, -0.0131 %/K; valid 120-300 K).",
        minimum=120.0,
        maximum=300.0,
    )
    kalpha_yield_e: float = config_field(
        0.0,
        "K-alpha yield (electrons) overriding the temperature law; 0: from temperature_k "
        "(1591 e- at 173 K, 1616 e- at 293 K; msfc-ccd uses 1602.3 e-).",
        minimum=0.0,
        maximum=2000.0,
    )
    fano_factor: float = config_field(
        0.12,
        "Fano factor of silicon, for the expected line width (0.115-0.12 measured at 5.9 keV).",
        minimum=0.0,
        maximum=1.0,
    )
    partial_charge_shelf: bool = config_field(
        True,
        "Model the partial-charge shelf below each line (events that lost part of their "
        "charge) in the fit.",
    )
    line_width: str = config_field(
        "expected",
        "How the K-alpha line width is treated while the peak is fitted.",
        choices={
            "expected": "held at the width expected from the box noise measured on the image "
            "and the Fano noise, then freed from that solution for the width reported and "
            "checked (a free width lets a line of a few dozen events swallow the continuum)",
            "free": "fitted with the peak, from three starting widths",
        },
    )
    bins_per_sigma: float = config_field(
        2.0, "Histogram bins per expected peak sigma in the fit (bins).", minimum=1.0, maximum=20.0
    )
    fit_window_low: float = config_field(
        0.3,
        "The fit starts this fraction of the K-alpha peak below it (the shelf) and ends 5 "
        "sigma above K-beta.",
        minimum=0.05,
        maximum=0.6,
    )
    min_events: int = config_field(
        20, "Fewest graded events in the fit window for a fit at all (events).", minimum=10
    )
    min_kalpha_events: float = config_field(
        20.0,
        "Fewest fitted K-alpha events for a trusted gain (events).",
        minimum=1.0,
    )
    max_width_deviation: float = config_field(
        0.3,
        "Largest relative difference between the fitted line width and the expected one "
        "(box read noise measured on the image, and Fano noise) for a trusted gain.",
        exclusive_minimum=0.0,
    )
    max_gain_rel_err: float = config_field(
        0.0075,
        "Largest relative gain error for a trusted gain (fraction): half of max_ptc_deviation, "
        "so that a trusted gain's 2-sigma statistical range lies within the tolerance it is "
        "checked against (a gain known to 1.2 % cannot be said to agree to 1.5 %).",
        exclusive_minimum=0.0,
    )
    max_deviance_per_dof: float = config_field(
        2.0, "Largest Poisson deviance per degree of freedom for a trusted gain.", minimum=1.0
    )
    resamples: int = config_field(
        30,
        "Bootstrap resamples of the fitted events per amplifier (0: none). Each is refitted "
        "from the same start; the robust spread of their peaks stands for the peak error when "
        "it exceeds the Fisher error (on ESIS1 taps 10 and 01, with 20-30 K-alpha events, "
        "the resampled peak jumps to the K-beta line or the bound in 15-20 % of resamples: "
        "their spread is 2-5 x the Fisher error, while on tap 00 the two agree within 10 %).",
        minimum=0,
        maximum=1000,
    )
    resample_below_kalpha_events: float = config_field(
        150.0,
        "Resample only amplifiers with fewer fitted K-alpha events than this (events): with "
        "hundreds the line is unambiguous and the Fisher error holds (simulator pulls rms "
        "1.0), and each resampled fit costs ~0.25 s of CPU.",
        minimum=0.0,
    )
    max_unstable_fraction: float = config_field(
        0.1,
        "Largest fraction of resampled fits whose peak moves more than 3 stated errors from "
        "the fitted one, for a trusted gain (a line that a resample loses cannot be trusted).",
        minimum=0.0,
        maximum=1.0,
    )
    min_line_significance: float = config_field(
        4.0,
        "Poisson significance (sigma) of a line of the expected width over its surroundings "
        "(the line filter's response over its noise) above which an amplifier's own strongest "
        "line is its K-alpha line; below it the line is looked for near the sensor's most "
        "significant line (sensor_line_window), and the gain is not trusted (ESIS1: 6.0 and "
        "4.9 on the taps with 50 and 29 graded K-alpha events, 1.7 and 2.2 on the sparse ones).",
        exclusive_minimum=0.0,
    )
    sensor_line_window: float = config_field(
        0.15,
        "Fraction of the sensor's most significant K-alpha line (ADU) within which an "
        "amplifier without a significant line of its own looks for it: the taps of one sensor "
        "see the same Fe55 spectrum through gains a few per cent apart; 0.15 keeps K-beta "
        "(+10 %) and leaves out lines or bumps that a sparse histogram shows elsewhere.",
        exclusive_minimum=0.0,
        maximum=0.5,
    )
    max_pedestal_sigma: float = config_field(
        1.0,
        "Largest |level of the imaging area above the bias| for a trusted gain, in pixel-noise "
        "sigma: a dark current or video-chain offset is a fraction of a sigma (ESIS1: at most "
        "0.16), while bias columns that are not this amplifier's (a neighbour's, a wrong "
        "section) leave the difference of two bias levels, tens of ADU.",
        exclusive_minimum=0.0,
    )
    max_trail_fraction: float = config_field(
        0.0075,
        "Largest one-sided charge beyond the signal box (a deferred-charge or transfer "
        "trail, mean over the K-alpha events) as a fraction of the K-alpha peak, for a "
        "trusted gain: that charge is missing from every event sum, so the gain is high by "
        "as much; half the tolerance of max_ptc_deviation, the rest left to statistics.",
        exclusive_minimum=0.0,
    )
    min_trail_significance: float = config_field(
        4.0,
        "A trail above max_trail_fraction fails the verdict only when it is this many "
        "standard errors from zero (sigma): a sparse tap's trail is noisy (about 0.6 % of "
        "the peak for 30 K-alpha events at 4.3 ADU pixel noise), and a sensor tests two "
        "axes on up to 16 taps (at 3 sigma, 1 of 32 sparse simulated taps, gain right to "
        "0.1 %, was flagged; a 2 % trail on a few hundred events is still 5-10 sigma).",
        exclusive_minimum=0.0,
    )
    max_ptc_deviation: float = config_field(
        0.015,
        "Largest |Fe55 / photon-transfer gain - 1| of a trusted amplifier in the sensor "
        "summary (fraction; a correct Fe55 analysis lands within 1-1.5 %).",
        exclusive_minimum=0.0,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.isolation_radius_pix < self.signal_box_half_pix + 1:
            raise ValueError(
                "Fe55Config.isolation_radius_pix must be >= signal_box_half_pix + 1 "
                f"({self.signal_box_half_pix + 1}); got {self.isolation_radius_pix}"
            )
        if self.split_threshold_sigma >= self.detection_threshold_sigma:
            raise ValueError(
                "Fe55Config.split_threshold_sigma must be below detection_threshold_sigma "
                f"({self.detection_threshold_sigma}); got {self.split_threshold_sigma}"
            )
        if not self.grades:
            raise ValueError("Fe55Config.grades must name at least one grade; got ()")

    def kalpha_e(self) -> float:
        """The K-alpha yield used (electrons): the override, or the temperature law."""
        return self.kalpha_yield_e or kalpha_yield(self.temperature_k)


def pair_energy_ev(temperature_k: float) -> float:
    """Mean energy to create one electron-hole pair in silicon (eV) at a temperature (K).

    Lowe & Sareen 2007 (NIM A 576, 367), as eotest's ``fe55_yield`` uses it: 3.654 eV at
    270 K with a slope of -0.0131 % per K.

    Raises
    ------
    ValueError
        If the temperature is outside 100-320 K (beyond the measurement).
    """
    if not 100.0 <= temperature_k <= 320.0:
        raise ValueError(f"temperature_k must be in [100, 320] K; got {temperature_k}")
    return 3.654 * (1.0 - 1.31e-4 * (temperature_k - 270.0))


def kalpha_yield(temperature_k: float) -> float:
    """Electrons freed by one Mn K-alpha photon (5.889 keV, weighted Ka1/Ka2) at a temperature."""
    return MN_KALPHA_EV / pair_energy_ev(temperature_k)


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
    """The graded X-ray events of one amplifier kept for the fit.

    Parameters
    ----------
    y_pix, x_pix : numpy.ndarray
        Row and column of each kept event's peak pixel in the amplifier's imaging array.
    signal_adu : numpy.ndarray
        Sum of the signal box around each kept event, pedestal removed (ADU).
    grade : numpy.ndarray
        ASCA grade of each kept event.
    n_candidates : int
        Local maxima above the detection threshold, away from the edges.
    n_rejected_isolation : int
        Candidates dropped by the isolation cut (0 when it is off).
    n_rejected_grade : int
        Isolated candidates whose grade is not in the fitted set.
    trail_x_adu, trail_y_adu : numpy.ndarray or None
        One-sided charge beyond each event's signal box along x and y
        (`dcflow.stages.xray_events.trail_bands`; ADU, NaN near an edge); None when not
        measured (event tables written before it was).
    """

    y_pix: np.ndarray
    x_pix: np.ndarray
    signal_adu: np.ndarray
    grade: np.ndarray
    n_candidates: int
    n_rejected_isolation: int
    n_rejected_grade: int
    trail_x_adu: np.ndarray | None = None
    trail_y_adu: np.ndarray | None = None

    def select(self, keep: np.ndarray, **counts: int) -> Fe55Events:
        """The events where ``keep`` is true, with ``counts`` replacing the counters."""
        trails = {
            name: None if getattr(self, name) is None else getattr(self, name)[keep]
            for name in ("trail_x_adu", "trail_y_adu")
        }
        fields = {
            "n_candidates": self.n_candidates,
            "n_rejected_isolation": self.n_rejected_isolation,
            "n_rejected_grade": self.n_rejected_grade,
            **counts,
        }
        return Fe55Events(
            y_pix=self.y_pix[keep],
            x_pix=self.x_pix[keep],
            signal_adu=self.signal_adu[keep],
            grade=self.grade[keep],
            **fields,
            **trails,
        )


@dataclass(frozen=True, slots=True)
class PeakFit:
    """The fitted K-alpha / K-beta model of an event-signal histogram.

    Parameters
    ----------
    peak_adu, peak_err_adu : float
        K-alpha peak position and its statistical error (ADU).
    sigma_adu, sigma_err_adu : float
        Gaussian width of the lines and its error (ADU); for a fit with the width held at its
        expectation, the width freed from that solution (the other parameters are the
        fixed-width fit's).
    n_kalpha : float
        Fitted number of K-alpha events.
    kbeta_ratio : float
        Fitted K-beta / K-alpha number ratio.
    shelf_per_adu : float
        Density of the partial-charge shelf just below the K-alpha line (events per ADU).
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
    at_bound : str
        Comma-separated names of the parameters that ended at a bound (empty if none).
    """

    peak_adu: float
    peak_err_adu: float
    sigma_adu: float
    sigma_err_adu: float
    n_kalpha: float
    kbeta_ratio: float
    shelf_per_adu: float
    background_per_adu: float
    edges_adu: np.ndarray
    counts: np.ndarray
    deviance_per_dof: float
    n_in_window: int
    at_bound: str

    def params(self) -> np.ndarray:
        """The fitted parameters in `line_model` order."""
        return np.array(
            [
                self.n_kalpha,
                self.peak_adu,
                self.sigma_adu,
                self.kbeta_ratio,
                self.shelf_per_adu,
                self.background_per_adu,
            ]
        )


@dataclass(frozen=True, slots=True)
class Fe55AmpResult:
    """Gain of one amplifier and the verdict on it.

    Parameters
    ----------
    amp : str
        Amplifier name.
    gain_e_per_adu : float
        ``kalpha_yield_e / fit.peak_adu`` (electrons per ADU).
    gain_err_e_per_adu : float
        Statistical error of the gain: the fit's peak error and ``peak_bias_err_adu`` added in
        quadrature (electrons per ADU); the fit's peak error is the larger of the Fisher
        error and ``peak_resampled_err_adu``.
    peak_bias_err_adu : float
        Error of the peak from the error of the bias level, ``bias_err_adu`` times the number
        of pixels in the signal box (ADU).
    peak_resampled_err_adu : float
        Robust spread (1.4826 x MAD) of the peak over bootstrap resamples of the events
        (ADU; 0 when not resampled: see ``Fe55Config.resample_below_kalpha_events``).
    unstable_fraction : float
        Fraction of resampled fits whose peak lies more than 3 Fisher errors from the fitted
        one, or that failed.
    peak_sigma_e : float
        Width of the K-alpha peak in electrons (read noise of the box and Fano noise).
    expected_sigma_adu : float
        Width expected from the box-sum noise measured on the image and the Fano noise (ADU).
    kalpha_yield_e : float
        K-alpha yield used (electrons).
    bias_adu, bias_err_adu, noise_adu : float
        Mean bias level subtracted, its error and the pixel noise (ADU).
    pedestal_adu : float
        Level of the imaging area above the bias (ADU), measured always and removed from
        the event sums when ``Fe55Config.pedestal`` is ``"image"``.
    box_noise_adu : float
        Noise of a signal-box sum of the imaging area (ADU), from which the expected line
        width follows (`_box_noise`).
    events : Fe55Events
        The events fitted.
    isolated : Fe55Events
        Every isolated event, whatever its grade: the line is located on them, and they are
        what a sensor's exposures pool (`pool_exposures`); ``events`` are those of the
        fitted grades.
    fit : PeakFit or None
        The peak fit (None when it failed: gain and errors are then NaN, and the verdict says
        why).
    trusted : bool
        Whether the gain can be used.
    verdict : str
        ``"ok"`` or every reason the gain cannot be trusted.
    fit_sound : bool
        Whether the fit passes every check but the precision one (``max_gain_rel_err``): such
        an exposure's gain is combined with the sensor's other exposures (`summarize_gains`).
    trail_fraction_x, trail_fraction_y, trail_err_x, trail_err_y : float
        One-sided charge beyond the signal box along x and y, mean over the K-alpha events,
        as a fraction of the peak, and its standard error (`charge_trail`; NaN when not
        measured).
    """

    amp: str
    gain_e_per_adu: float
    gain_err_e_per_adu: float
    peak_bias_err_adu: float
    peak_resampled_err_adu: float
    unstable_fraction: float
    peak_sigma_e: float
    expected_sigma_adu: float
    kalpha_yield_e: float
    bias_adu: float
    bias_err_adu: float
    noise_adu: float
    pedestal_adu: float
    box_noise_adu: float
    events: Fe55Events
    isolated: Fe55Events
    fit: PeakFit | None
    trusted: bool
    verdict: str
    fit_sound: bool = False
    trail_fraction_x: float = float("nan")
    trail_fraction_y: float = float("nan")
    trail_err_x: float = float("nan")
    trail_err_y: float = float("nan")

    @property
    def width_ratio(self) -> float:
        """Fitted over expected line width (NaN without a fit)."""
        if self.fit is None:
            return float("nan")
        return self.fit.sigma_adu / self.expected_sigma_adu


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
        ``peak_resampled_err_adu``, ``unstable_fraction``,
        ``gain_e_per_adu``, ``gain_err_e_per_adu``, ``peak_sigma_adu``, ``peak_sigma_e``,
        ``expected_sigma_adu``, ``width_ratio``, ``kbeta_ratio``, ``shelf_fraction`` (shelf
        events per ADU times the peak, over the K-alpha events), ``kalpha_yield_e``,
        ``bias_adu``, ``noise_adu``, ``pedestal_adu``, ``bias_err_adu``, ``box_noise_adu``,
        ``n_candidates``, ``n_isolated``,
        ``n_graded`` (events fitted), ``n_events`` (in the fit window), ``n_kalpha``,
        ``deviance_per_dof``, ``trusted``, ``verdict``, ``fit_sound``, ``trail_fraction_x``,
        ``trail_fraction_y``, ``trail_err_x``, ``trail_err_y``. Header: ``NUNTRUST``,
        the number of untrusted amplifiers.
        """
        names = (
            "amp",
            "peak_adu",
            "peak_fit_err_adu",
            "peak_bias_err_adu",
            "peak_resampled_err_adu",
            "unstable_fraction",
            "gain_e_per_adu",
            "gain_err_e_per_adu",
            "peak_sigma_adu",
            "peak_sigma_e",
            "expected_sigma_adu",
            "width_ratio",
            "kbeta_ratio",
            "shelf_fraction",
            "kalpha_yield_e",
            "bias_adu",
            "noise_adu",
            "pedestal_adu",
            "bias_err_adu",
            "box_noise_adu",
            "n_candidates",
            "n_isolated",
            "n_graded",
            "n_events",
            "n_kalpha",
            "deviance_per_dof",
            "trusted",
            "verdict",
            "fit_sound",
            "trail_fraction_x",
            "trail_fraction_y",
            "trail_err_x",
            "trail_err_y",
        )
        nan = float("nan")
        rows = [
            (
                a.amp,
                a.fit.peak_adu if a.fit else nan,
                a.fit.peak_err_adu if a.fit else nan,
                a.peak_bias_err_adu,
                a.peak_resampled_err_adu,
                a.unstable_fraction,
                a.gain_e_per_adu,
                a.gain_err_e_per_adu,
                a.fit.sigma_adu if a.fit else nan,
                a.peak_sigma_e,
                a.expected_sigma_adu,
                a.width_ratio,
                a.fit.kbeta_ratio if a.fit else nan,
                a.fit.shelf_per_adu * a.fit.peak_adu / max(a.fit.n_kalpha, 1e-9) if a.fit else nan,
                a.kalpha_yield_e,
                a.bias_adu,
                a.noise_adu,
                a.pedestal_adu,
                a.bias_err_adu,
                a.box_noise_adu,
                a.events.n_candidates,
                a.events.n_candidates - a.events.n_rejected_isolation,
                a.events.signal_adu.size,
                a.fit.n_in_window if a.fit else 0,
                a.fit.n_kalpha if a.fit else 0.0,
                a.fit.deviance_per_dof if a.fit else nan,
                a.trusted,
                a.verdict,
                a.fit_sound,
                a.trail_fraction_x,
                a.trail_fraction_y,
                a.trail_err_x,
                a.trail_err_y,
            )
            for a in self.amps
        ]
        dtype = (str,) + (float,) * 19 + (int,) * 4 + (float, float, bool, str, bool) + (float,) * 4
        table = Table(rows=rows or None, names=names, dtype=dtype)
        table.meta["NUNTRUST"] = sum(not a.trusted for a in self.amps)
        return table

    def events_table(self) -> Table:
        """Every isolated event of every amplifier: one row each (an empty table if none).

        Columns: ``amp``, ``y_pix``, ``x_pix`` (peak pixel in the amplifier's imaging array),
        ``signal_adu`` (signal-box sum, bias and pedestal removed: the per-amplifier levels
        are in `table`), ``grade`` (ASCA) and, when measured, ``trail_x_adu`` and
        ``trail_y_adu`` (one-sided charge beyond the signal box). `pool_exposures` fits a
        sensor's exposures together from these tables and the gain tables.
        """
        columns = {
            "amp": [a.amp for a in self.amps for _ in range(a.isolated.signal_adu.size)],
            "y_pix": [a.isolated.y_pix for a in self.amps],
            "x_pix": [a.isolated.x_pix for a in self.amps],
            "signal_adu": [a.isolated.signal_adu for a in self.amps],
            "grade": [a.isolated.grade for a in self.amps],
        }
        table = Table()
        table["amp"] = np.array(columns["amp"], dtype=str)
        for name, dtype in (("y_pix", int), ("x_pix", int), ("signal_adu", float), ("grade", int)):
            parts = columns[name]
            table[name] = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        if self.amps and all(a.isolated.trail_x_adu is not None for a in self.amps):
            for name in ("trail_x_adu", "trail_y_adu"):
                table[name] = np.concatenate([getattr(a.isolated, name) for a in self.amps])
        return table


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


def line_model(edges_adu: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Expected events per bin: K-alpha and K-beta lines, their partial-charge shelf, a floor.

    Each line is a Gaussian; below each sits a flat shelf of events that lost part of their
    charge, ending at the line in a step smoothed by the line's width (its density is
    ``shelf * ndtr((peak - x) / sigma)``, the K-beta shelf scaled by ``kbeta_ratio``); a flat
    background covers the window.

    Parameters
    ----------
    edges_adu : numpy.ndarray
        ``(n + 1,)`` increasing bin edges (ADU).
    params : numpy.ndarray
        ``(n_kalpha, peak_adu, sigma_adu, kbeta_ratio, shelf_per_adu, background_per_adu)``.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` expected counts integrated over each bin.
    """
    edges = np.asarray(edges_adu, dtype=float)
    return _binned_line_model(edges, edges[1:] - edges[:-1], params)


def _binned_line_model(edges: np.ndarray, widths: np.ndarray, params: np.ndarray) -> np.ndarray:
    """`line_model` over ``edges`` whose bin widths the caller computed once.

    The fit calls this ~10^4 times per fit on a few dozen bins, where numpy's per-call
    overhead, not the arithmetic, sets the cost: both lines share one (2, n + 1) array (1.5x
    faster, measured), and differences are slices rather than ``np.diff`` calls (the same
    arithmetic, so the same values to the last bit).
    """
    # as Python floats: numpy scalars cost more per operation, for the same arithmetic
    n_alpha, peak, sigma, ratio, shelf, background = np.asarray(params, dtype=float).tolist()
    z = (edges - np.array([[peak], [peak * _KBETA_OVER_KALPHA]])) / sigma
    cdf = ndtr(z)
    steps = cdf[:, 1:] - cdf[:, :-1]
    # the shelf: differences of the antiderivative in x of ndtr(-(x - peak) / sigma)
    shelf_cdf = sigma * (z - (z * cdf + np.exp(-0.5 * z * z) / _SQRT_2PI))
    shelf_steps = shelf_cdf[:, 1:] - shelf_cdf[:, :-1]
    lines = n_alpha * (steps[0] + ratio * steps[1])
    shelves = shelf * (shelf_steps[0] + ratio * shelf_steps[1])
    return lines + shelves + background * widths


@dataclass(frozen=True, slots=True)
class _LineSearch:
    """Candidate lines of a signal histogram, strongest first (`_line_search`).

    ``position_adu``: where each local maximum of the line filter lies; ``excess``: its
    response (events of a line of the expected width above their surroundings, in filter
    units); ``significance``: that response over its Poisson noise (sigma).
    """

    position_adu: np.ndarray
    excess: np.ndarray
    significance: np.ndarray


def _line_search(signal: np.ndarray, sigma: float) -> _LineSearch:
    """Every narrow line of the signals, strongest first, with its Poisson significance.

    K-alpha is a line as narrow as the read and Fano noise make it (``sigma``); the rest of
    the histogram is broad or weak (the partial-charge continuum and the escape events below
    it; piled-up events, cosmic rays above it). So the histogram of the signals, in bins of
    an eighth of ``sigma``, is filtered by the difference of a Gaussian of width ``sigma`` and
    one three times wider (equal areas: a continuum flat or sloped across the line cancels, a
    step at the line nearly so); a line is a local maximum of that response, its strength the
    response and its significance the response over the square root of the counts filtered
    by the squared kernel (the Poisson variance of the response).
    """
    low, high = np.percentile(signal, [2.0, 99.5])
    # a width far below the spread of the signals would make millions of bins
    sigma = max(float(sigma), (high - low) / 2.0e4, 1e-6)
    step = sigma / 8.0
    counts, edges = np.histogram(signal, bins=np.arange(low - 6 * sigma, high + 6 * sigma, step))
    counts = counts.astype(float)
    offsets = np.arange(-96, 97) / 8.0  # in units of sigma: 4 wide widths each side
    narrow, wide = np.exp(-0.5 * offsets**2), np.exp(-0.5 * (offsets / 3.0) ** 2)
    kernel = narrow / narrow.sum() - wide / wide.sum()
    response = ndimage.convolve1d(counts, kernel, mode="constant")
    variance = ndimage.convolve1d(counts, kernel**2, mode="constant")
    centres = 0.5 * (edges[1:] + edges[:-1])
    inside = (centres >= low) & (centres <= high)
    maxima = inside & (response == ndimage.maximum_filter1d(response, 17, mode="constant"))
    if not np.any(maxima):
        maxima = inside & (response == response[inside].max())
    order = np.argsort(-response[maxima], kind="stable")
    with np.errstate(divide="ignore", invalid="ignore"):
        significance = np.where(variance > 0, response / np.sqrt(variance), 0.0)
    return _LineSearch(
        position_adu=centres[maxima][order],
        excess=response[maxima][order],
        significance=significance[maxima][order],
    )


def _start_peak(signal: np.ndarray, sigma: float) -> float:
    """The K-alpha line's position to start the fit from: the strongest narrow line.

    The strongest line of `_line_search`, then the median of the signals within 1.5 sigma of
    it. The earlier rule, the highest-signal mode at least half as high as the highest, holds
    for a simulator whose only continuum lies below the line; on the real ESIS1 frame it took
    bumps above the line (tap 01 started at 659 ADU against a line near 640).
    """
    return _median_near(signal, float(_line_search(signal, sigma).position_adu[0]), sigma)


def _median_near(signal: np.ndarray, line_adu: float, sigma: float) -> float:
    """Median of the signals within 1.5 ``sigma`` of a line (the line itself if under 5)."""
    near = signal[np.abs(signal - line_adu) < 1.5 * sigma]
    return float(np.median(near)) if near.size >= 5 else line_adu


_PARAM_NAMES = ("n_kalpha", "peak", "sigma", "kbeta_ratio", "shelf", "background")


def fit_kalpha_peak(
    signal_adu: np.ndarray,
    *,
    expected_sigma_adu: float | None = None,
    start_adu: float | None = None,
    bins_per_sigma: float = 2.0,
    window_low: float = 0.3,
    shelf: bool = True,
    min_events: int = 20,
    line_width: str = "free",
) -> PeakFit:
    """Fit the K-alpha line (with K-beta, their partial-charge shelf and a floor) to signals.

    The fit starts at the most significant narrow line of the signals (`_start_peak`) with the
    expected width (or, without one, the MAD-based rms of the signals near the median); the
    histogram spans ``window_low`` times the peak below it to 5 sigma above K-beta, with
    ``bins_per_sigma`` bins per starting sigma. The binned Poisson likelihood is maximised
    with bounds (peak within 15 % of the start, width 0.3-4 times the start, K-beta ratio
    0.05-0.25); errors come from the Fisher information.

    With ``line_width="expected"`` the width is held at ``expected_sigma_adu`` while the peak
    is fitted, and then freed, from that solution, for the width reported: a free width lets a
    line of a few dozen events on a continuum widen until it swallows the continuum (measured
    on ESIS1 tap 10: 2.8 x the expected width, the peak 7 % low, +-15 %), while a line held at
    the width that the measured box noise and the Fano noise give cannot; the freed width then
    shows whether the line really is that narrow.

    Parameters
    ----------
    signal_adu : numpy.ndarray
        ``(n,)`` event signals (ADU).
    expected_sigma_adu : float, optional
        The expected line width (ADU); required for ``line_width="expected"``.
    start_adu : float, optional
        Where the K-alpha line is to start the fit from (ADU); by default the most
        significant narrow line of ``signal_adu`` (`_start_peak`).
    bins_per_sigma : float
        Histogram bins per starting sigma.
    window_low : float
        Fraction of the peak the window extends below it.
    shelf : bool
        Fit the partial-charge shelf (else it is fixed at zero).
    min_events : int
        Fewest events in the window for a fit.
    line_width : {"free", "expected"}
        Fit the width with the peak, or hold it at the expected width for the peak and free
        it afterwards (see above).

    Returns
    -------
    PeakFit
        The fitted parameters, their errors and the histogram.

    Raises
    ------
    ValueError
        If ``signal_adu`` is not 1-D or holds non-finite values, or ``line_width`` is unknown
        or ``"expected"`` without ``expected_sigma_adu``.
    CalibrationError
        If too few events lie in the window or the fit does not converge.
    """
    signal = np.asarray(signal_adu, dtype=float)
    if signal.ndim != 1:
        raise ValueError(f"signal_adu must be 1-D; got {signal.ndim} dimension(s)")
    if not np.all(np.isfinite(signal)):
        raise ValueError("signal_adu holds non-finite values")
    if line_width not in ("free", "expected"):
        raise ValueError(f"line_width must be 'free' or 'expected'; got {line_width!r}")
    if line_width == "expected" and expected_sigma_adu is None:
        raise ValueError("line_width='expected' needs expected_sigma_adu")
    positive = signal[signal > 0]
    if positive.size < min_events:
        raise CalibrationError(
            f"only {positive.size} events with positive signal, fewer than min_events="
            f"{min_events}: too few X-rays, or a threshold too high",
            n_events=int(positive.size),
            min_events=int(min_events),
        )
    if expected_sigma_adu is None:
        median = float(np.median(positive))
        sigma0 = 1.4826 * float(np.median(np.abs(positive - median)))
        near = positive[np.abs(positive - median) < 2.5 * sigma0]
        if near.size:
            sigma0 = 1.4826 * float(np.median(np.abs(near - np.median(near))))
        sigma0 = max(sigma0, 1e-3 * median)
    else:
        sigma0 = float(expected_sigma_adu)
    peak0 = _start_peak(positive, sigma0) if start_adu is None else float(start_adu)
    low = peak0 * (1.0 - window_low)
    high = peak0 * _KBETA_OVER_KALPHA + 5.0 * sigma0
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
    density = n_window / (high - low)
    scale = np.array([n_window, peak0, sigma0, 0.15, 0.3 * density, 0.05 * density])
    free_width = (0.3, 4.0)
    bounds = [
        (1e-3, 2.0),
        (0.85, 1.15),
        free_width if line_width == "free" else (1.0, 1.0),
        (1 / 3, 5 / 3),
        (0.0, 20.0 if shelf else 0.0),
        (0.0, 20.0),
    ]

    widths = edges[1:] - edges[:-1]

    def nll(u: np.ndarray) -> float:
        mu = np.maximum(_binned_line_model(edges, widths, u * scale), 1e-12)
        return float((mu - counts * np.log(mu)).sum())

    best = None
    # the likelihood of a few dozen events has local minima (a wide line swallowing the
    # shelf): start from a line as wide as expected, wider and narrower, with more or less
    # shelf, and keep the best
    for start in ([0.6, 1, 1, 1, 1, 0.2], [0.3, 1, 1.5, 1, 3, 0.2], [0.6, 1, 0.7, 1, 1, 0.2]):
        trial = _minimize(nll, start, bounds)
        if best is None or trial.fun < best.fun:
            best = trial
    params = best.x * scale
    peak = params[1]
    if not (np.all(np.isfinite(params)) and low < peak < high):
        raise CalibrationError(
            f"K-alpha fit did not converge to a peak inside [{low:.1f}, {high:.1f}] ADU "
            f"({best.message}); the histogram may lack a K-alpha line",
            peak_adu=float(peak),
            n_in_window=n_window,
        )
    free = _free_parameters(bounds, best.x)
    cov = _covariance(edges, params, scale, free)
    mu = np.maximum(line_model(edges, params), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev_terms = np.where(counts > 0, counts * np.log(counts / mu), 0.0) - (counts - mu)
    deviance = 2.0 * float(np.sum(dev_terms))
    dof = max(n_bins - len(free), 1)
    width_x, width_bounds, width_cov = best.x, bounds, cov
    if line_width == "expected":
        # the width freed from the fixed-width solution: the nearest minimum, the line found
        width_bounds = [*bounds[:2], free_width, *bounds[3:]]
        width_x = _minimize(nll, best.x, width_bounds).x
        width_cov = _covariance(
            edges, width_x * scale, scale, _free_parameters(width_bounds, width_x)
        )
    at_bound = [
        name
        for name, x, (lo, hi) in (
            ("peak", best.x[1], bounds[1]),
            ("sigma", width_x[2], width_bounds[2]),
        )
        if hi > lo and min(x - lo, hi - x) < 1e-3
    ]
    return PeakFit(
        peak_adu=float(peak),
        peak_err_adu=float(np.sqrt(max(cov[1, 1], 0.0))),
        sigma_adu=float(width_x[2] * scale[2]),
        sigma_err_adu=float(np.sqrt(max(width_cov[2, 2], 0.0))),
        n_kalpha=float(params[0]),
        kbeta_ratio=float(params[3]),
        shelf_per_adu=float(params[4]),
        background_per_adu=float(params[5]),
        edges_adu=edges,
        counts=counts,
        deviance_per_dof=deviance / dof,
        n_in_window=n_window,
        at_bound=",".join(at_bound),
    )


def _minimize(nll, start, bounds) -> optimize.OptimizeResult:
    """Powell, then Nelder-Mead, then TNC from ``start`` within ``bounds`` (scaled units)."""
    start = np.clip(start, [b[0] for b in bounds], [b[1] for b in bounds])
    trial = optimize.minimize(
        nll,
        start,
        method="Powell",
        bounds=bounds,
        options={"xtol": 1e-6, "ftol": 1e-10, "maxfev": 20000},
    )
    trial = optimize.minimize(
        nll,
        trial.x,
        method="Nelder-Mead",
        bounds=bounds,
        options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 20000},
    )
    return optimize.minimize(nll, trial.x, method="TNC", bounds=bounds)


def _free_parameters(bounds, x) -> list[int]:
    """Indices of the parameters fitted: not fixed, and no shelf or floor fitted at zero.

    A shelf or floor fitted at zero sits on its bound: it is held there for the errors (its
    derivative over bins of almost no expected events would swamp the Fisher matrix).
    """
    return [i for i, (lo, hi) in enumerate(bounds) if hi > lo and not (i >= 4 and x[i] - lo < 1e-4)]


def _covariance(edges, params, scale, free) -> np.ndarray:
    """Covariance of the line-model parameters from the Fisher information of binned counts."""
    mu = np.maximum(line_model(edges, params), 1e-12)
    jac = np.empty((edges.size - 1, len(free)))
    for column, i in enumerate(free):
        step = np.zeros(params.size)
        step[i] = 1e-4 * scale[i]
        jac[:, column] = (line_model(edges, params + step) - line_model(edges, params - step)) / (
            2 * step[i]
        )
    fisher = jac.T @ (jac / mu[:, None])
    cov = np.zeros((params.size, params.size))
    cov[np.ix_(free, free)] = np.linalg.pinv(fisher)
    return cov


def image_pedestal(image_adu: np.ndarray, noise_adu: float) -> float:
    """Level of the bias-subtracted imaging pixels away from any charge (ADU).

    Pixels within 3 px of a pixel above 3 ``noise_adu`` are masked (an X-ray's cloud and
    wings: the wings of a dense Fe55 exposure would otherwise lift a clipped mean by ~0.1 ADU,
    which a 5x5 sum multiplies by 25), then the sigma-clipped mean of the rest.

    Parameters
    ----------
    image_adu : numpy.ndarray
        ``(ny, nx)`` bias-subtracted imaging pixels (ADU).
    noise_adu : float
        Pixel noise (ADU), positive.

    Returns
    -------
    float
        The pedestal (ADU).
    """
    charged = ndimage.maximum_filter(image_adu > 3.0 * noise_adu, size=7)
    quiet = image_adu[~charged]
    if quiet.size < 100:
        quiet = image_adu.ravel()
    return float(sigma_clipped_stats(quiet, sigma=3.0, maxiters=10)[0])


def _box_noise(image: np.ndarray, half: int) -> float:
    """Rms of the sums of a (2 half + 1)^2 box of pedestal-subtracted pixels (ADU).

    Summed on a grid of disjoint boxes: the noise of an event's signal box as the sensor makes
    it, correlations between neighbours included (measured on ESIS1: 5x5 box sums scatter
    25 % less than 5 times the pixel noise). X-rays only add charge, and a dense exposure
    puts one in a large share of the boxes, so the rms comes from the sums below zero alone
    (the half-normal of a zero-mean noise).
    """
    k = 2 * half + 1
    ny, nx = (image.shape[0] // k) * k, (image.shape[1] // k) * k
    sums = image[:ny, :nx].reshape(ny // k, k, nx // k, k).sum(axis=(1, 3))
    below = sums[sums < 0]
    if below.size < 10:
        return float(k * 1.4826 * np.median(np.abs(image - np.median(image))))
    return float(np.sqrt(np.mean(below**2)))


def fe55_verdict(
    fit: PeakFit,
    *,
    expected_sigma_adu: float,
    gain_rel_err: float | None,
    config: Fe55Config,
    unstable_fraction: float = 0.0,
    image_level_sigma: float = 0.0,
    uncorrected_shift: float = 0.0,
    line_significance: float = np.inf,
    trail: tuple[tuple[float, float], tuple[float, float]] = ((0.0, np.inf), (0.0, np.inf)),
) -> str:
    """Why a fitted gain cannot be trusted: ``"ok"`` or the reasons, joined by ``"; "``.

    Checks the fitted K-alpha events (``min_kalpha_events``), the width against its
    expectation (``max_width_deviation``) and against the fit's bounds, the relative gain error
    (``max_gain_rel_err``; skipped when ``gain_rel_err`` is None, which judges only whether the
    fit is sound: an imprecise but sound exposure still counts in a sensor's combined gain),
    the deviance per degree of freedom (``max_deviance_per_dof``) and the share of resampled
    fits that lost the peak (``max_unstable_fraction``), and the bias: the level of the
    imaging area above the bias in pixel-noise sigma, ``image_level_sigma``
    (``max_pedestal_sigma``: beyond it the bias columns are not this amplifier's), and
    ``uncorrected_shift``, the fraction by which that level moves the peak when the
    configuration does not subtract it (``pedestal="none"``), judged against half of
    ``max_gain_rel_err``; with the precision, the significance of the line the fit started on
    (``min_line_significance``: a line weaker than that on its own was found through the
    sensor's other taps, or is a bump of the continuum); and ``trail``, the one-sided charge
    beyond the signal box along x and y as ``(fraction of the peak, standard error)``
    (`charge_trail`; ``max_trail_fraction`` at ``min_trail_significance``: charge the event
    sums miss, so the peak is low and the gain high by as much).
    """
    reasons = []
    if fit.n_kalpha < config.min_kalpha_events:
        reasons.append(
            f"too few K-alpha events ({fit.n_kalpha:.0f} < {config.min_kalpha_events:g})"
        )
    ratio = fit.sigma_adu / expected_sigma_adu
    if abs(ratio - 1.0) > config.max_width_deviation:
        reasons.append(f"line width {ratio:.2f} x expected")
    if fit.at_bound:
        reasons.append(f"fit at its bound ({fit.at_bound})")
    if gain_rel_err is not None and not gain_rel_err <= config.max_gain_rel_err:
        reasons.append(f"gain error {100 * gain_rel_err:.1f} %")
    if gain_rel_err is not None and line_significance < config.min_line_significance:
        reasons.append(f"K-alpha line {line_significance:.1f} sigma on its own")
    if fit.deviance_per_dof > config.max_deviance_per_dof:
        reasons.append(f"deviance/dof {fit.deviance_per_dof:.1f}")
    if unstable_fraction > config.max_unstable_fraction:
        reasons.append(f"peak lost in {100 * unstable_fraction:.0f} % of resampled fits")
    if abs(image_level_sigma) > config.max_pedestal_sigma:
        reasons.append(
            f"imaging area {image_level_sigma:+.1f} sigma off the bias: wrong bias region"
        )
    for axis, (fraction, err) in zip("xy", trail, strict=True):
        if (
            abs(fraction) > config.max_trail_fraction
            and abs(fraction) > config.min_trail_significance * err
        ):
            reasons.append(
                f"charge trail beyond the signal box along {axis}: {100 * fraction:+.1f} % "
                f"+- {100 * err:.1f} % of the peak (deferred charge or transfer loss)"
            )
    if abs(uncorrected_shift) > 0.5 * config.max_gain_rel_err:
        reasons.append(
            f"bias off the imaging area's zero, not subtracted: peak moved "
            f"{100 * uncorrected_shift:+.2f} %"
        )
    return "; ".join(reasons) or "ok"


def measure_amp_gain(
    raw: np.ndarray,
    amp: AmpGeometry,
    *,
    config: Fe55Config | None = None,
    sensor_line_adu: float | None = None,
) -> Fe55AmpResult:
    """Measure the gain of one amplifier from a raw Fe55 frame, with a verdict on it.

    Bias from the configured columns, pedestal of the imaging area, graded events
    (`dcflow.stages.xray_events`), the line fit with its partial-charge shelf, gain from the
    K-alpha yield at the sensor's temperature, and the verdict (`fe55_verdict`).

    Parameters
    ----------
    raw : numpy.ndarray
        ``(ny, nx)`` raw frame (ADU).
    amp : AmpGeometry
        The amplifier.
    config : Fe55Config, optional
        Analysis settings (defaults if omitted).
    sensor_line_adu : float, optional
        Where the sensor's most significant K-alpha line lies (ADU; `measure_fe55_gain`
        finds it): when this amplifier's own strongest line is weaker than
        ``config.min_line_significance``, its line is looked for within
        ``config.sensor_line_window`` of it.

    Returns
    -------
    Fe55AmpResult
        The gain, its error, the events, the fit and the verdict; when the peak fit fails
        (too few events in its window, no line), an untrusted result whose gain is NaN,
        whose ``fit`` is None and whose verdict gives the reason.

    Raises
    ------
    InputDataError
        If the amplifier lies outside ``raw``, its imaging pixels are not all finite, or its
        bias columns are non-finite or constant.
    """
    config = config or Fe55Config()
    return _finish_amp(_prepare_amp(raw, amp, config), config, sensor_line_adu)


@dataclass(frozen=True, slots=True)
class _PreparedAmp:
    """One amplifier's events and the lines of its isolated events, before the fit.

    ``image_level_sigma``: the level of the imaging area above the bias in pixel-noise
    sigma (the verdict's bias check); ``bias_err_adu``: the error of the bias level, which
    the signal box multiplies into the peak.
    """

    amp: str
    bias_adu: float
    bias_err_adu: float
    noise_adu: float
    pedestal_adu: float
    image_level_sigma: float
    box_noise_adu: float
    events: Fe55Events
    isolated: Fe55Events
    located_adu: np.ndarray
    lines: _LineSearch
    line_sigma_adu: float


def _prepare_amp(raw: np.ndarray, amp: AmpGeometry, config: Fe55Config) -> _PreparedAmp:
    """Bias, pedestal, graded events and the candidate K-alpha lines of one amplifier."""
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
    image = bias.image_adu
    # measured whatever the configuration: a level far from zero means the bias columns are
    # not this amplifier's, and an unsubtracted level moves every event sum (the verdict)
    pedestal = image_pedestal(image, bias.noise_adu)
    if config.pedestal == "image":
        image = image - pedestal
    half = config.signal_box_half_pix
    candidates = find_xray_events(
        image,
        threshold_adu=config.detection_threshold_sigma * bias.noise_adu,
        split_threshold_adu=config.split_threshold_sigma * bias.noise_adu,
        isolation_radius_pix=config.isolation_radius_pix,
        isolation_box_half_pix=half,
    )
    isolated = candidates.isolated if config.isolation_cut else np.ones_like(candidates.isolated)
    sums = candidates.sum5_adu if half == 2 else candidates.sum3_adu
    every_isolated = Fe55Events(
        y_pix=candidates.y_pix[isolated],
        x_pix=candidates.x_pix[isolated],
        signal_adu=sums[isolated],
        grade=candidates.grade[isolated],
        n_candidates=candidates.n_candidates,
        n_rejected_isolation=int(np.sum(~isolated)),
        n_rejected_grade=0,
        trail_x_adu=candidates.trail_x_adu[isolated],
        trail_y_adu=candidates.trail_y_adu[isolated],
    )
    return _prepared(
        amp.name,
        every_isolated,
        config,
        bias_adu=bias.bias_adu,
        bias_err_adu=bias.bias_err_adu,
        noise_adu=bias.noise_adu,
        pedestal_adu=pedestal,
        image_level_sigma=pedestal / bias.noise_adu,
        box_noise_adu=_box_noise(image, half),
    )


def _prepared(amp: str, isolated: Fe55Events, config: Fe55Config, **levels: float) -> _PreparedAmp:
    """An amplifier's graded events and candidate lines, from its isolated events.

    The line is located on every isolated event, whatever its grade (diffuse events keep
    most of their charge, and double the events that show where K-alpha is: on ESIS1 the
    graded events alone hold 15-40 K-alpha events per tap, few enough for a bump of the
    continuum to look like the line), then fitted on the graded events alone. ``levels``:
    the remaining `_PreparedAmp` fields (bias, noise, pedestal, box noise).
    """
    graded = np.isin(isolated.grade, config.grades)
    events = isolated.select(graded, n_rejected_grade=int(np.sum(~graded)))
    box_noise = levels["box_noise_adu"]
    located = isolated.signal_adu[isolated.signal_adu > 0]
    if located.size < 5:
        line = float(np.median(located)) if located.size else 1.0
        lines = _LineSearch(np.array([line]), np.zeros(1), np.zeros(1))
        sigma = box_noise
    else:
        first = _start_peak(located, box_noise)
        sigma = _expected_sigma(box_noise, first, config)
        lines = _line_search(located, sigma)
    return _PreparedAmp(
        amp=amp,
        events=events,
        isolated=isolated,
        located_adu=located,
        lines=lines,
        line_sigma_adu=sigma,
        **levels,
    )


def _expected_sigma(box_noise_adu: float, peak_adu: float, config: Fe55Config) -> float:
    """Width of the K-alpha line at a peak (ADU): the box noise and the Fano noise."""
    return float(np.sqrt(box_noise_adu**2 + config.fano_factor * peak_adu**2 / config.kalpha_e()))


def _choose_line(
    prepared: _PreparedAmp, config: Fe55Config, sensor_line_adu: float | None
) -> tuple[float, float]:
    """The amplifier's K-alpha line (ADU) and its significance (sigma).

    Its own strongest line when that is significant (``min_line_significance``) or there is
    no sensor line; else the strongest of its lines within ``sensor_line_window`` of the
    sensor's line: every tap of a sensor sees the same Fe55 spectrum through gains a few
    per cent apart, so a tap whose histogram is too sparse to show its own line has it near
    the line of the taps that do (ESIS1 tap 11, 5 graded K-alpha events, has a bump of the
    continuum at 1.37 times the line as strong as the line).
    """
    lines = prepared.lines
    chosen = 0
    if lines.significance[0] < config.min_line_significance and sensor_line_adu is not None:
        near = np.flatnonzero(
            np.abs(lines.position_adu / sensor_line_adu - 1.0) <= config.sensor_line_window
        )
        if near.size:
            chosen = int(near[0])
    return float(lines.position_adu[chosen]), float(lines.significance[chosen])


def _finish_amp(
    prepared: _PreparedAmp, config: Fe55Config, sensor_line_adu: float | None
) -> Fe55AmpResult:
    """The line fit, gain, errors and verdict of a prepared amplifier."""
    events, pedestal = prepared.events, prepared.pedestal_adu
    half = config.signal_box_half_pix
    yield_e = config.kalpha_e()
    box_noise = prepared.box_noise_adu

    def expected_sigma(peak_adu: float) -> float:
        return _expected_sigma(box_noise, peak_adu, config)

    line, line_significance = _choose_line(prepared, config, sensor_line_adu)
    start = _median_near(prepared.located_adu, line, prepared.line_sigma_adu)
    # diffuse events put their line a few per cent lower (2-6 % on ESIS1): the start is the
    # median of the graded events near the line found
    near = events.signal_adu[np.abs(events.signal_adu - start) < 1.5 * expected_sigma(start)]
    if near.size >= 5:
        start = float(np.median(near))
    try:
        fit = fit_kalpha_peak(
            events.signal_adu,
            expected_sigma_adu=expected_sigma(start),
            start_adu=start,
            bins_per_sigma=config.bins_per_sigma,
            window_low=config.fit_window_low,
            shelf=config.partial_charge_shelf,
            min_events=config.min_events,
            line_width=config.line_width,
        )
    except CalibrationError as exc:
        # one amplifier without a line (too few X-rays, a dead tap) is an untrusted
        # amplifier, not a failed frame: the other amplifiers' gains stand
        log.warning("amp %s: no gain: %s", prepared.amp, exc)
        return Fe55AmpResult(
            amp=prepared.amp,
            gain_e_per_adu=float("nan"),
            gain_err_e_per_adu=float("nan"),
            peak_bias_err_adu=float("nan"),
            peak_resampled_err_adu=float("nan"),
            unstable_fraction=float("nan"),
            peak_sigma_e=float("nan"),
            expected_sigma_adu=expected_sigma(start),
            kalpha_yield_e=yield_e,
            bias_adu=prepared.bias_adu,
            bias_err_adu=prepared.bias_err_adu,
            noise_adu=prepared.noise_adu,
            pedestal_adu=pedestal,
            box_noise_adu=box_noise,
            events=events,
            isolated=prepared.isolated,
            fit=None,
            trusted=False,
            verdict=f"no fit: {exc}",
        )
    gain = yield_e / fit.peak_adu
    box_pixels = (2 * half + 1) ** 2
    peak_bias_err = box_pixels * prepared.bias_err_adu
    resampled_sigma, unstable = _resampled_peak_spread(
        events.signal_adu,
        fit,
        n_resamples=config.resamples if fit.n_kalpha < config.resample_below_kalpha_events else 0,
        expected_sigma_adu=expected_sigma(start),
        start_adu=start,
        bins_per_sigma=config.bins_per_sigma,
        window_low=config.fit_window_low,
        shelf=config.partial_charge_shelf,
        min_events=config.min_events,
        line_width=config.line_width,
    )
    peak_err = float(np.hypot(max(fit.peak_err_adu, resampled_sigma), peak_bias_err))
    gain_err = gain * peak_err / fit.peak_adu
    sigma_expected = expected_sigma(fit.peak_adu)
    trail = charge_trail(events, fit.peak_adu, sigma_expected)
    checks = {
        "image_level_sigma": prepared.image_level_sigma,
        "uncorrected_shift": 0.0
        if config.pedestal == "image"
        else pedestal * box_pixels / fit.peak_adu,
        "trail": trail,
    }
    verdict = fe55_verdict(
        fit,
        expected_sigma_adu=sigma_expected,
        gain_rel_err=gain_err / gain,
        unstable_fraction=unstable,
        line_significance=line_significance,
        config=config,
        **checks,
    )
    sound = (
        fe55_verdict(
            fit,
            expected_sigma_adu=sigma_expected,
            gain_rel_err=None,
            unstable_fraction=unstable,
            config=config,
            **checks,
        )
        == "ok"
    )
    log.info(
        "amp %s: %d candidates, %d graded, peak %.2f +- %.2f ADU, gain %.4f e-/ADU "
        "(yield %.1f e-), width %.2f x expected: %s",
        prepared.amp,
        events.n_candidates,
        events.signal_adu.size,
        fit.peak_adu,
        peak_err,
        gain,
        yield_e,
        fit.sigma_adu / sigma_expected,
        verdict,
    )
    return Fe55AmpResult(
        amp=prepared.amp,
        gain_e_per_adu=gain,
        gain_err_e_per_adu=gain_err,
        peak_bias_err_adu=peak_bias_err,
        peak_resampled_err_adu=resampled_sigma,
        unstable_fraction=unstable,
        peak_sigma_e=fit.sigma_adu * gain,
        expected_sigma_adu=sigma_expected,
        kalpha_yield_e=yield_e,
        bias_adu=prepared.bias_adu,
        bias_err_adu=prepared.bias_err_adu,
        noise_adu=prepared.noise_adu,
        pedestal_adu=pedestal,
        box_noise_adu=box_noise,
        events=events,
        isolated=prepared.isolated,
        fit=fit,
        trusted=verdict == "ok",
        verdict=verdict,
        fit_sound=sound,
        trail_fraction_x=trail[0][0],
        trail_fraction_y=trail[1][0],
        trail_err_x=trail[0][1],
        trail_err_y=trail[1][1],
    )


def charge_trail(
    events: Fe55Events, peak_adu: float, sigma_adu: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Mean one-sided charge beyond the signal box of the K-alpha events, over the peak.

    The events within 2 ``sigma_adu`` of the fitted peak; per axis the 4-sigma-clipped mean
    of their one-sided band charge (`dcflow.stages.xray_events.trail_bands`; clipped about
    the median with the MAD-based sigma: an unrelated X-ray in a band is an outlier of
    hundreds of ADU either way, one event in ten on a dense exposure, while a trail shifts
    every event) and its standard error, both over ``peak_adu``. ``(0, inf)`` per axis when
    the trails were not measured or fewer than 5 events have them.

    Returns
    -------
    tuple
        ``((fraction_x, err_x), (fraction_y, err_y))``.
    """
    if events.trail_x_adu is None or events.trail_y_adu is None:
        return (0.0, np.inf), (0.0, np.inf)
    near = np.abs(events.signal_adu - peak_adu) < 2.0 * sigma_adu
    result = []
    for trail in (events.trail_x_adu[near], events.trail_y_adu[near]):
        trail = trail[np.isfinite(trail)]
        if trail.size < 5:
            result.append((0.0, np.inf))
            continue
        clipped = sigma_clip(
            trail, sigma=4.0, maxiters=10, stdfunc="mad_std", masked=False, axis=None
        )
        kept = clipped[np.isfinite(clipped)]
        err = float(np.std(kept)) / np.sqrt(kept.size)
        result.append((float(np.mean(kept)) / peak_adu, err / peak_adu))
    return result[0], result[1]


def _resampled_peak_spread(
    signal_adu: np.ndarray, fit: PeakFit, *, n_resamples: int, **fit_options
) -> tuple[float, float]:
    """Robust spread of the K-alpha peak over bootstrap resamples, and the share that lost it.

    The Fisher error describes the likelihood near its best point; with a few dozen K-alpha
    events on a continuum, another line (K-beta) or a bump of the continuum can win in a
    resample, which the Fisher error cannot see. Resampled with a fixed seed: the same events
    give the same result.
    """
    if n_resamples == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(55)
    peaks = np.full(n_resamples, np.nan)
    for i in range(n_resamples):
        try:
            resample = rng.choice(signal_adu, signal_adu.size)
            peaks[i] = fit_kalpha_peak(resample, **fit_options).peak_adu
        except CalibrationError:
            continue
    found = peaks[np.isfinite(peaks)]
    if found.size < 2:
        return float("inf"), 1.0
    spread = 1.4826 * float(np.median(np.abs(found - np.median(found))))
    lost = ~(np.abs(peaks - fit.peak_adu) <= 3.0 * fit.peak_err_adu)
    return spread, float(np.mean(lost))


def measure_fe55_gain(
    raw: np.ndarray, layout: DetectorLayout, *, config: Fe55Config | None = None
) -> Fe55Result:
    """Measure the gain of every amplifier of a raw Fe55 frame.

    Every amplifier's events and candidate lines are found first; an amplifier whose own
    strongest line is weaker than ``config.min_line_significance`` looks for its K-alpha line
    within ``config.sensor_line_window`` of the most significant line of the others (see
    `measure_amp_gain`).

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
        pixels are unusable. (An amplifier whose peak fit fails is an untrusted result, not
        an error: see `measure_amp_gain`.)
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
    config = config or Fe55Config()
    return _finish_sensor([_prepare_amp(raw, amp, config) for amp in layout.amps], config)


def _finish_sensor(prepared: Sequence[_PreparedAmp], config: Fe55Config) -> Fe55Result:
    """Fit every prepared amplifier.

    The most significant line of the sensor guides amplifiers without one of their own.
    """
    significance = [p.lines.significance[0] for p in prepared]
    best = int(np.argmax(significance)) if prepared else 0
    sensor_line = (
        float(prepared[best].lines.position_adu[0])
        if prepared and significance[best] >= config.min_line_significance
        else None
    )
    return Fe55Result(amps=tuple(_finish_amp(p, config, sensor_line) for p in prepared))


def pool_exposures(
    gain_tables: Sequence[Table],
    event_tables: Sequence[Table],
    *,
    config: Fe55Config | None = None,
) -> Fe55Result:
    """Fit each amplifier once over the events of all a sensor's exposures.

    A tap with a few hundred K-alpha events per exposure gives per-exposure fits that are
    noisy, sometimes unsound, and whose weighted mean inherits each fit's bias; the same
    events in one histogram give one line with all of them. The line is located on the
    pooled isolated events (a tap too sparse in one exposure still shows it), guided by the
    sensor's most significant pooled line as for one exposure, and fitted, resampled and
    judged as `measure_fe55_gain` does. No per-exposure offset: the bias and pedestal are
    removed per exposure before the events are summed (measured: the per-exposure gains of
    160 taps of the hard simulator scatter about their mean with chi2/dof 0.77 on average;
    `benchmarks/fe55_pooled.py`), and exposures that do not agree are flagged by
    `summarize_gains`.

    The levels of the pooled amplifier are the exposures' weighted by their graded events:
    the box noise in quadrature (a mixture of lines of those widths has that variance), the
    pedestal and noise linearly, the bias error as that of a weighted mean; the bias check
    takes the exposure whose imaging area lies furthest from its bias. One exposure gives
    exactly its own fit.

    Parameters
    ----------
    gain_tables : sequence of astropy.table.Table
        Gain tables of the exposures (`Fe55Result.table`), amplifiers in the same order.
    event_tables : sequence of astropy.table.Table
        Their event tables (`Fe55Result.events_table`), in the same exposure order.
    config : Fe55Config, optional
        Analysis settings (defaults if omitted): those the exposures were measured with.

    Returns
    -------
    Fe55Result
        One pooled result per amplifier; its `table` is a gain table of the sensor.

    Raises
    ------
    ValueError
        If there are no tables, the two sequences differ in length, a table lacks a column,
        or the gain tables name different amplifiers.
    """
    config = config or Fe55Config()
    if len(gain_tables) == 0 or len(gain_tables) != len(event_tables):
        raise ValueError(
            f"gain_tables and event_tables must be equally many and not empty; got "
            f"{len(gain_tables)} and {len(event_tables)}"
        )
    levels = ("bias_adu", "bias_err_adu", "noise_adu", "pedestal_adu", "box_noise_adu")
    for kind, tables, needed in (
        ("gain_tables", gain_tables, ("amp", "n_candidates", "n_isolated", *levels)),
        ("event_tables", event_tables, ("amp", "y_pix", "x_pix", "signal_adu", "grade")),
    ):
        for i, table in enumerate(tables):
            missing = [c for c in needed if c not in table.colnames]
            if missing:
                raise ValueError(f"{kind}[{i}] lacks column(s) {', '.join(missing)}")
    amps = [str(a) for a in gain_tables[0]["amp"]]
    for i, table in enumerate(gain_tables[1:], start=1):
        if [str(a) for a in table["amp"]] != amps:
            raise ValueError(
                f"gain_tables[{i}] has amplifiers {','.join(map(str, table['amp']))}, "
                f"gain_tables[0] has {','.join(amps)}"
            )
    prepared = []
    for j, amp in enumerate(amps):
        parts = [t[np.asarray(t["amp"]).astype(str) == amp] for t in event_tables]
        n_graded = np.array([np.sum(np.isin(p["grade"], config.grades)) for p in parts], float)
        weight = (
            n_graded / n_graded.sum() if n_graded.sum() else np.full(len(parts), 1 / len(parts))
        )
        value = {name: np.array([float(t[name][j]) for t in gain_tables]) for name in levels}
        level_sigma = value["pedestal_adu"] / value["noise_adu"]
        worst = int(np.argmax(np.where(weight > 0, np.abs(level_sigma), -1.0)))
        n_candidates = int(sum(int(t["n_candidates"][j]) for t in gain_tables))
        isolated = Fe55Events(
            y_pix=np.concatenate([np.asarray(p["y_pix"], int) for p in parts]),
            x_pix=np.concatenate([np.asarray(p["x_pix"], int) for p in parts]),
            signal_adu=np.concatenate([np.asarray(p["signal_adu"], float) for p in parts]),
            grade=np.concatenate([np.asarray(p["grade"], int) for p in parts]),
            n_candidates=n_candidates,
            n_rejected_isolation=n_candidates
            - int(sum(int(t["n_isolated"][j]) for t in gain_tables)),
            n_rejected_grade=0,
            **{
                name: np.concatenate([np.asarray(p[name], float) for p in parts])
                if all(name in t.colnames for t in event_tables)
                else None
                for name in ("trail_x_adu", "trail_y_adu")
            },
        )
        prepared.append(
            _prepared(
                amp,
                isolated,
                config,
                bias_adu=float(weight @ value["bias_adu"]),
                bias_err_adu=float(np.sqrt(weight**2 @ value["bias_err_adu"] ** 2)),
                noise_adu=float(weight @ value["noise_adu"]),
                pedestal_adu=float(weight @ value["pedestal_adu"]),
                image_level_sigma=float(level_sigma[worst]),
                box_noise_adu=float(np.sqrt(weight @ value["box_noise_adu"] ** 2)),
            )
        )
    return _finish_sensor(prepared, config)


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


def summarize_gains(
    tables: Sequence[Table],
    *,
    pooled: Table | None = None,
    truth: Table | None = None,
    ptc: Table | None = None,
    max_ptc_deviation: float = 0.015,
    max_gain_rel_err: float = 0.0075,
    min_agreement_p: float = 1e-3,
) -> Table:
    """Combine the gain tables of several exposures of one sensor, per amplifier, with a verdict.

    Per amplifier the exposures whose fit is sound (``fit_sound``, else ``trusted``) are
    combined, however imprecise each is alone: a few dozen K-alpha events per exposure give a
    gain known to 1-2 %, and four such exposures together to half that. When no exposure's fit
    is sound all are combined and the amplifier is untrusted. The combined gain is untrusted
    when its relative error exceeds ``max_gain_rel_err``; with a photon-transfer table the Fe55
    gain is set against it and an amplifier whose ratio departs from 1 by more than
    ``max_ptc_deviation`` is untrusted.

    With ``pooled`` (the gain table of `pool_exposures`: one fit over every exposure's
    events) the pooled gain is the sensor's gain, its error (scaled as below) the gain's
    error and its verdict the reasons of the fit; the per-exposure gains still give the
    weighted mean (``mean_gain_*``) and the check that the exposures agree. On the hard
    simulator the two agree where every exposure fits (4 exposures of 150-180 K-alpha events
    per tap: `benchmarks/fe55_pooled.py`); with 12-20 per tap and exposure no exposure fits
    soundly and only the pooled fit gives gains (`tests/test_fe55_hard.py`).

    Parameters
    ----------
    tables : sequence of astropy.table.Table
        Gain tables (`Fe55Result.table`), one per exposure (tables without ``trusted`` count
        as trusted).
    pooled : astropy.table.Table, optional
        The pooled gain table of the same amplifiers (`pool_exposures`).
    truth : astropy.table.Table, optional
        True gains (columns ``amp``, ``gain_e_per_adu``), for simulated sensors.
    ptc : astropy.table.Table, optional
        Photon-transfer gains (`dcflow.stages.photon_transfer.PhotonTransferResult.table`).
    max_ptc_deviation : float
        Largest ``|Fe55 / PTC - 1|`` of a trusted amplifier.
    max_gain_rel_err : float
        Largest relative error of a trusted combined gain.
    min_agreement_p : float
        Smallest chance probability of the combined exposures' chi2 about their mean for a
        trusted gain (exposures that disagree beyond their errors: one fit on a wrong line, a
        changed setup). Whatever it is, a chi2 per degree of freedom above 1 scales the
        combined error by its square root.

    Returns
    -------
    astropy.table.Table
        One row per amplifier: ``amp``, ``n_exposures``, ``n_trusted`` (exposures trusted on
        their own), ``n_combined`` (exposures combined),
        ``gain_e_per_adu`` (the pooled gain, else the inverse-variance weighted mean),
        ``gain_err_e_per_adu`` (its error, times ``sqrt(chi2_per_dof)`` when that exceeds 1),
        ``mean_gain_e_per_adu`` and ``mean_gain_err_e_per_adu`` (the weighted mean and its
        scaled error),
        ``gain_scatter_e_per_adu`` (standard deviation over the combined exposures, 0 for
        one), ``chi2_per_dof`` (of those exposures about the mean; 0 for one),
        ``peak_sigma_e`` (pooled, else the mean over the combined exposures), ``n_events``
        (events in the fit window: pooled, else the total); with ``pooled`` also
        ``n_kalpha`` (pooled K-alpha events); with
        ``ptc`` also
        ``ptc_gain_e_per_adu``, ``ptc_gain_err_e_per_adu``, ``fe55_over_ptc`` and
        ``fe55_over_ptc_err``; with ``truth`` also ``gain_truth_e_per_adu`` and
        ``gain_dev_sigma`` ((mean - truth) / error); last ``trusted`` and ``verdict``. Header
        ``NUNTRUST``: untrusted amplifiers.

    Raises
    ------
    ValueError
        If ``tables`` is empty, a table lacks a column, the tables (or ``pooled``) name
        different amplifiers, an error is not positive, or ``truth`` or ``ptc`` lacks an
        amplifier.
    """
    if len(tables) == 0:
        raise ValueError("tables is empty: no gain table to summarize")
    needed = ("amp", "gain_e_per_adu", "gain_err_e_per_adu", "peak_sigma_e", "n_events")
    for i, table in enumerate(tables):
        missing = [c for c in needed if c not in table.colnames]
        if missing:
            raise ValueError(f"tables[{i}] lacks column(s) {', '.join(missing)}")
    amps = [str(a) for a in tables[0]["amp"]]
    named = [(f"tables[{i}]", t) for i, t in enumerate(tables)]
    if pooled is not None:
        missing = [c for c in (*needed, "trusted", "verdict") if c not in pooled.colnames]
        if missing:
            raise ValueError(f"pooled lacks column(s) {', '.join(missing)}")
        named.append(("pooled", pooled))
    for name, table in named[1:]:
        if [str(a) for a in table["amp"]] != amps:
            raise ValueError(
                f"{name} has amplifiers {','.join(map(str, table['amp']))}, "
                f"tables[0] has {','.join(amps)}"
            )
    gains = np.array([np.asarray(t["gain_e_per_adu"], dtype=float) for t in tables])
    errors = np.array([np.asarray(t["gain_err_e_per_adu"], dtype=float) for t in tables])
    measured = np.isfinite(gains) & np.isfinite(errors)
    if not np.all(errors[measured] > 0):
        raise ValueError("gain_err_e_per_adu must be > 0 in every table")
    trusted = np.array(
        [
            np.asarray(t["trusted"], dtype=bool)
            if "trusted" in t.colnames
            else np.ones(len(amps), dtype=bool)
            for t in tables
        ]
    )
    if np.any(trusted & ~measured):
        raise ValueError("a trusted amplifier has a non-finite gain or error")
    sound = np.array(
        [
            np.asarray(t["fit_sound"], dtype=bool) if "fit_sound" in t.colnames else trusted[i]
            for i, t in enumerate(tables)
        ]
    ) & (measured | trusted)
    verdicts = [
        [str(v) for v in t["verdict"]] if "verdict" in t.colnames else ["ok"] * len(amps)
        for t in tables
    ]
    any_sound = sound.any(axis=0)
    # an amplifier without a fit (NaN gain) takes no part in the mean
    use = np.where(any_sound[None, :], sound, measured)
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(use, errors**-2, 0.0)
        gains_used = np.where(use, gains, 0.0)
        mean = np.sum(weights * gains_used, axis=0) / np.sum(weights, axis=0)
    n_used = use.sum(axis=0)
    chi2 = np.sum(weights * (gains_used - mean) ** 2, axis=0) / np.maximum(n_used - 1, 1)
    scatter = np.array(
        [gains[use[:, j], j].std(ddof=1) if n_used[j] > 1 else 0.0 for j in range(len(amps))]
    )
    out = Table()
    out["amp"] = amps
    out["n_exposures"] = np.full(len(amps), len(tables))
    out["n_trusted"] = trusted.sum(axis=0)
    out["n_combined"] = n_used
    # exposures that scatter more than their errors say: the error grows by sqrt(chi2/dof)
    # (the Particle Data Group's scale factor), and a scatter no chance explains is a reason
    scale_factor = np.where(n_used > 1, np.sqrt(np.maximum(chi2, 1.0)), 1.0)
    agreement_p = np.where(
        n_used > 1, stats.chi2.sf(chi2 * (n_used - 1), np.maximum(n_used - 1, 1)), 1.0
    )
    with np.errstate(divide="ignore"):
        mean_err = scale_factor * np.sum(weights, axis=0) ** -0.5
    sigmas = np.array([np.asarray(t["peak_sigma_e"], float) for t in tables])
    if pooled is None:
        gain, gain_err = mean, mean_err
        peak_sigma = np.array(
            [np.mean(sigmas[use[:, j], j]) if n_used[j] else np.nan for j in range(len(amps))]
        )
        n_events = np.sum([np.asarray(t["n_events"], int) for t in tables], axis=0)
        reasons = [
            []
            if any_sound[j]
            else [
                "no sound fit in any exposure (" + ", ".join(sorted({v[j] for v in verdicts})) + ")"
            ]
            for j in range(len(amps))
        ]
    else:
        gain = np.asarray(pooled["gain_e_per_adu"], dtype=float)
        gain_err = scale_factor * np.asarray(pooled["gain_err_e_per_adu"], dtype=float)
        peak_sigma = np.asarray(pooled["peak_sigma_e"], dtype=float)
        n_events = np.asarray(pooled["n_events"], dtype=int)
        reasons = [
            [] if ok else [f"pooled fit: {v}"]
            for ok, v in zip(pooled["trusted"], pooled["verdict"], strict=True)
        ]
    out["gain_e_per_adu"] = gain
    out["gain_err_e_per_adu"] = gain_err
    out["mean_gain_e_per_adu"] = mean
    out["mean_gain_err_e_per_adu"] = mean_err
    relative_error = gain_err / gain
    out["gain_scatter_e_per_adu"] = scatter
    out["chi2_per_dof"] = np.where(n_used > 1, chi2, 0.0)
    out["peak_sigma_e"] = peak_sigma
    out["n_events"] = n_events
    if pooled is not None and "n_kalpha" in pooled.colnames:
        out["n_kalpha"] = np.asarray(pooled["n_kalpha"], dtype=float)
    for j in range(len(amps)):
        if agreement_p[j] < min_agreement_p:
            reasons[j].append(
                f"exposures disagree: chi2/dof {chi2[j]:.1f} over {n_used[j]} exposures"
            )
        # the pooled fit's verdict judged its own error; the scale factor may add to it
        judged = any_sound[j] if pooled is None else scale_factor[j] > 1.0
        if judged and not relative_error[j] <= max_gain_rel_err:
            reasons[j].append(
                f"gain error {100 * relative_error[j]:.1f} % over {n_used[j]} exposure(s)"
            )
    if ptc is not None:
        by_amp = {
            str(a): (float(g), float(e))
            for a, g, e in zip(
                ptc["amp"], ptc["gain_e_per_adu"], ptc["gain_err_e_per_adu"], strict=True
            )
        }
        absent = [a for a in amps if a not in by_amp]
        if absent:
            raise ValueError(f"ptc lacks amplifier(s) {', '.join(absent)}")
        ptc_gain = np.array([by_amp[a][0] for a in amps])
        ptc_err = np.array([by_amp[a][1] for a in amps])
        ratio = gain / ptc_gain
        out["ptc_gain_e_per_adu"] = ptc_gain
        out["ptc_gain_err_e_per_adu"] = ptc_err
        out["fe55_over_ptc"] = ratio
        out["fe55_over_ptc_err"] = ratio * np.hypot(gain_err / gain, ptc_err / ptc_gain)
        for j in range(len(amps)):
            if abs(ratio[j] - 1.0) > max_ptc_deviation:
                reasons[j].append(f"Fe55/PTC {ratio[j]:.3f} +- {out['fe55_over_ptc_err'][j]:.3f}")
    if truth is not None:
        by_amp = {
            str(a): float(g) for a, g in zip(truth["amp"], truth["gain_e_per_adu"], strict=True)
        }
        absent = [a for a in amps if a not in by_amp]
        if absent:
            raise ValueError(f"truth lacks amplifier(s) {', '.join(absent)}")
        true_gain = np.array([by_amp[a] for a in amps])
        out["gain_truth_e_per_adu"] = true_gain
        out["gain_dev_sigma"] = (gain - true_gain) / gain_err
    out["trusted"] = np.array([not r for r in reasons], dtype=bool)
    out["verdict"] = ["; ".join(r) or "ok" for r in reasons]
    out.meta["NUNTRUST"] = int(np.sum(~out["trusted"]))
    return out
