"""Simulated Fe55 exposures of a sensor-test camera, with the gain of every amplifier known.

An Fe55 source emits Mn K-alpha (5.9 keV) and K-beta (6.49 keV) X-rays in a ratio of about
7:1. Each photon absorbed in silicon frees 1620 (K-alpha) or 1778 (K-beta) electrons, with
Fano noise, in a small cloud that diffuses into neighbouring pixels on its way to the
potential wells. The simulator deposits such clouds at random positions in each amplifier's
imaging area (integrating a 2-D Gaussian over the pixel boundaries, so the charge shared by
a pixel is exact), optionally adds hot pixels and cosmic-ray tracks, converts electrons to ADU
with each amplifier's gain, and adds a structured bias (a level per amplifier plus a slow
drift along rows) and read noise to every pixel, prescan and overscan included.

The amplifier geometry is a `dcflow.geometry.DetectorLayout`, so the same code writes a
MegaCam-like two-amplifier CCD or a four-amplifier sensor-test CCD with 50 prescan and
2 overscan columns. The gains are the truth against which the Fe55 analysis is checked; they
go into the returned truth table, never into the frame's header.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy.special import ndtr

from dcflow.configs import check_fields, config_field
from dcflow.geometry import DetectorLayout
from dcflow.stages.fe55 import (
    KALPHA_ELECTRONS,
    KBETA_ELECTRONS,
    MN_KALPHA_EV,
    MN_KBETA_EV,
    kalpha_yield,
)
from dcflow.stages.sensor_layout import TapGridLayout

__all__ = [
    "HARD_SENSOR",
    "KALPHA_ELECTRONS",
    "KBETA_ELECTRONS",
    "Fe55SimConfig",
    "Fe55Simulation",
    "amp_gains",
    "fe55_data_ids",
    "fe55_hdulist",
    "pair_hdulist",
    "simulate_fe55",
    "simulate_fe55_exposure",
    "simulate_flat_pairs",
    "simulate_sensor_flats",
]

_STAMP_HALF = 3  # charge is spread over a 7x7 stamp: beyond 2.5 px a 0.6 px cloud holds < 1e-4


@dataclass(frozen=True, slots=True)
class Fe55SimConfig:
    """The ``fe55`` campaign section: sensor geometry and the simulated Fe55 exposures.

    The geometry fields describe any camera whose amplifiers sit side by side along x
    (`DetectorLayout.regular`); the other fields set the simulated source, sensor and defects.
    """

    n_amps: int = config_field(
        4,
        "Number of amplifiers per row of amplifiers, side by side along x.",
        minimum=1,
        maximum=26,
    )
    amp_nx: int = config_field(
        256, "Imaging columns per amplifier (pixels).", minimum=32, maximum=8192
    )
    ny: int = config_field(512, "Imaging rows of the sensor (pixels).", minimum=32, maximum=8192)
    prescan_cols: int = config_field(
        50, "Prescan columns per amplifier, read before the imaging pixels (pixels).", minimum=0
    )
    overscan_cols: int = config_field(
        2, "Serial overscan columns per amplifier, read after each row (pixels).", minimum=1
    )
    overscan_rows: int = config_field(
        0, "Parallel overscan rows above the imaging area (pixels).", minimum=0
    )
    sensors: tuple[int, ...] = config_field(
        (),
        "Sensor (ccd) numbers taking Fe55 exposures; empty: the campaign has no Fe55 stage.",
        minimum=0,
    )
    exposures: int = config_field(
        2, "Fe55 exposures per sensor, numbered 0..exposures-1.", minimum=1, maximum=10000
    )
    seed: int = config_field(55, "Random seed of the simulation (gains, events, noise).", minimum=0)
    events_per_amp: int = config_field(
        1500,
        "Mean number of X-rays absorbed per amplifier per exposure (Poisson).",
        minimum=0,
        maximum=10_000_000,
    )
    kbeta_fraction: float = config_field(
        0.125,
        "Fraction of X-rays at K-beta (0.125 is the 7:1 K-alpha:K-beta ratio).",
        minimum=0.0,
        maximum=0.5,
    )
    gain_e_per_adu: float = config_field(
        1.6, "Mean gain of the amplifiers (electrons per ADU).", exclusive_minimum=0.0
    )
    gain_spread: float = config_field(
        0.1,
        "Full fractional spread of the amplifier gains around the mean (uniform), per sensor.",
        minimum=0.0,
        maximum=0.5,
    )
    read_noise_e: float = config_field(5.0, "Read noise per pixel (electrons).", minimum=0.0)
    bias_level_adu: float = config_field(
        1000.0, "Mean bias level (ADU); each amplifier is offset by up to +-50 ADU.", minimum=100.0
    )
    bias_drift_adu: float = config_field(
        4.0, "Amplitude of the slow bias drift along rows (ADU).", minimum=0.0
    )
    diffusion_sigma_max_pix: float = config_field(
        0.4,
        "Largest rms radius of a charge cloud (pixels); each event draws from 0.1 to this.",
        minimum=0.1,
        maximum=0.6,
    )
    fano_factor: float = config_field(
        0.12, "Fano factor of silicon (variance / mean of the freed electrons).", minimum=0.0
    )
    hot_pixels_per_amp: int = config_field(
        10, "Hot pixels per amplifier, fixed per sensor (100 to 30000 electrons).", minimum=0
    )
    cosmic_rays_per_amp: int = config_field(
        5, "Mean number of cosmic-ray tracks per amplifier per exposure (Poisson).", minimum=0
    )
    amp_rows: int = config_field(
        1,
        "Rows of amplifiers: 1 (side by side along x) or 2 (a second row mirrored in y, as "
        "the ESIS and LSST sensors; names are then 'xy', '00' lower-left).",
        minimum=1,
        maximum=2,
    )
    temperature_k: float = config_field(
        173.0,
        "Sensor temperature (K): the K-alpha yield follows the pair-creation energy "
        "(`dcflow.stages.fe55.kalpha_yield`).",
        minimum=120.0,
        maximum=300.0,
    )
    partial_charge_fraction: float = config_field(
        0.0,
        "Fraction of X-rays absorbed deep in the silicon: their cloud spreads to 0.5-1.5 px "
        "and keeps only 40-100 % of its charge (the partial-charge continuum; about half the "
        "candidates of the real ESIS1 frame are diffuse).",
        minimum=0.0,
        maximum=0.9,
    )
    deferred_charge: float = config_field(
        0.0,
        "Fraction of each pixel's charge left behind into the next pixel read (serial "
        "deferred charge: a trail behind every event and into the first overscan column).",
        minimum=0.0,
        maximum=0.1,
    )
    dead_rows_per_amp: int = config_field(
        0, "Rows per amplifier that hold no charge (a blocked row; fixed per sensor).", minimum=0
    )
    flat_level_e: float = config_field(
        40000.0,
        "Mean signal of the brightest simulated flat pair (electrons); exposure e of a sensor "
        "has a pair at (e + 1) / exposures of it.",
        exclusive_minimum=0.0,
    )
    prnu: float = config_field(
        0.01,
        "Pixel response non-uniformity of the simulated flats (rms fraction; fixed pattern).",
        minimum=0.0,
        maximum=0.2,
    )
    camera: str = config_field(
        "",
        "Camera description (dcflow/instruments/cameras: esis1, lsst_e2v..., or a YAML path) "
        "giving the geometry of Fe55 raws whose headers lack section keywords; empty: raws "
        "must carry them and match this section's geometry.",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.amp_rows == 2 and self.n_amps % 2 and self.n_amps > 1:
            raise ValueError(
                f"Fe55SimConfig.n_amps must be 1 or even with amp_rows=2; got {self.n_amps}"
            )

    def layout(self) -> DetectorLayout:
        """The raw layout of one sensor."""
        if self.amp_rows == 2:
            return TapGridLayout(
                n_tap_rows=2,
                n_tap_cols=self.n_amps,
                tap_ny=self.ny // 2,
                prescan_cols=self.prescan_cols,
                data_cols=self.amp_nx,
                overscan_cols=self.overscan_cols,
            ).detector_layout()
        return DetectorLayout.regular(
            n_amps=self.n_amps,
            amp_nx=self.amp_nx,
            ny=self.ny,
            prescan_cols=self.prescan_cols,
            overscan_cols=self.overscan_cols,
            overscan_rows=self.overscan_rows,
        )


@dataclass(frozen=True, slots=True)
class Fe55Simulation:
    """One simulated Fe55 exposure and its truth.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(ny, nx)`` int32 raw frame in ADU, laid out as ``layout.raw_shape``.
    layout : DetectorLayout
        Where each amplifier's imaging, prescan and overscan pixels are.
    truth : astropy.table.Table
        One row per amplifier: ``amp``, ``gain_e_per_adu``, ``bias_adu`` (mean level),
        ``read_noise_e``, ``n_kalpha``, ``n_kbeta``, ``n_hot``, ``n_cosmic``.
    events : astropy.table.Table
        One row per X-ray: ``amp``, ``x_pix``, ``y_pix`` (0-based, in the raw array),
        ``electrons``, ``line`` (``Ka`` or ``Kb``), ``sigma_pix``.
    """

    raw: np.ndarray
    layout: DetectorLayout
    truth: Table
    events: Table


HARD_SENSOR = Fe55SimConfig(
    amp_rows=2,
    n_amps=2,
    amp_nx=512,
    ny=1024,
    events_per_amp=1500,
    partial_charge_fraction=0.5,
    deferred_charge=0.002,
    dead_rows_per_amp=3,
    hot_pixels_per_amp=10,
    cosmic_rays_per_amp=5,
)
"""A small 2 x 2 sensor with a real sensor's troubles (partial charge, deferred charge, dead rows,
hot pixels, cosmic rays): the one the hard-simulator tests and the coverage benchmark share."""


def amp_gains(n_amps: int, *, gain_e_per_adu: float, gain_spread: float, seed: int, ccd: int):
    """Per-amplifier gains of one sensor (electrons per ADU), the same for all its exposures.

    Returns
    -------
    numpy.ndarray
        ``(n_amps,)`` gains uniform in ``gain_e_per_adu * (1 +- gain_spread / 2)``.
    """
    rng = np.random.default_rng([seed, ccd, 0])
    return gain_e_per_adu * (1.0 + gain_spread * (rng.random(n_amps) - 0.5))


def _deposit(plane: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, charge):
    """Add Gaussian charge clouds centred at continuous (x, y) to ``plane`` (pixel j = [j, j+1))."""
    if x.size == 0:
        return
    offsets = np.arange(-_STAMP_HALF, _STAMP_HALF + 1)
    ix = np.floor(x).astype(int)
    iy = np.floor(y).astype(int)
    cols = ix[:, None] + offsets[None, :]
    rows = iy[:, None] + offsets[None, :]
    s = sigma[:, None]
    fx = ndtr((cols + 1 - x[:, None]) / s) - ndtr((cols - x[:, None]) / s)
    fy = ndtr((rows + 1 - y[:, None]) / s) - ndtr((rows - y[:, None]) / s)
    stamps = charge[:, None, None] * fy[:, :, None] * fx[:, None, :]
    ny, nx = plane.shape
    rr = np.broadcast_to(rows[:, :, None], stamps.shape)
    cc = np.broadcast_to(cols[:, None, :], stamps.shape)
    inside = (rr >= 0) & (rr < ny) & (cc >= 0) & (cc < nx)
    np.add.at(plane, (rr[inside], cc[inside]), stamps[inside])


def _cosmic_rays(plane: np.ndarray, n: int, rng: np.random.Generator) -> None:
    """Add ``n`` straight cosmic-ray tracks (5-80 px long, ~80 e- per pixel of path)."""
    ny, nx = plane.shape
    for _ in range(n):
        length = rng.uniform(5.0, 80.0)
        angle = rng.uniform(0.0, np.pi)
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        steps = np.arange(0.0, length, 0.25)
        xs = x0 + steps * np.cos(angle)
        ys = y0 + steps * np.sin(angle)
        charge = rng.gamma(2.0, 20.0, steps.size)  # e- per quarter pixel of path
        _deposit(plane, xs, ys, np.full(steps.size, 0.4), charge)


def simulate_fe55(
    layout: DetectorLayout,
    gains_e_per_adu: Sequence[float],
    *,
    events_per_amp: int = 1500,
    kbeta_fraction: float = 0.125,
    read_noise_e: float = 5.0,
    bias_level_adu: float = 1000.0,
    bias_drift_adu: float = 4.0,
    diffusion_sigma_max_pix: float = 0.4,
    fano_factor: float = 0.12,
    hot_pixels_per_amp: int = 0,
    cosmic_rays_per_amp: int = 0,
    kalpha_e: float = KALPHA_ELECTRONS,
    partial_charge_fraction: float = 0.0,
    deferred_charge: float = 0.0,
    dead_rows_per_amp: int = 0,
    seed: int = 0,
    ccd: int = 0,
    exposure: int = 0,
) -> Fe55Simulation:
    """Simulate one Fe55 exposure of a sensor.

    Random streams are separate for the events and noise (``seed, ccd, exposure``), the hot
    pixels (``seed, ccd``: a sensor's hot pixels do not move) and the cosmic rays, so adding
    defects leaves the X-ray events and the noise of a given seed unchanged.

    Parameters
    ----------
    layout : DetectorLayout
        The raw geometry.
    gains_e_per_adu : sequence of float
        Gain of each amplifier, in ``layout.amps`` order (electrons per ADU).
    events_per_amp : int
        Mean number of X-rays per amplifier (Poisson).
    kbeta_fraction : float
        Fraction of X-rays at K-beta.
    read_noise_e : float
        Read noise per pixel (electrons).
    bias_level_adu, bias_drift_adu : float
        Mean bias level and amplitude of its slow drift along rows (ADU).
    diffusion_sigma_max_pix : float
        Largest rms radius of a charge cloud (pixels); radii are uniform from 0.1 to this.
    fano_factor : float
        Fano factor of the freed charge.
    hot_pixels_per_amp, cosmic_rays_per_amp : int
        Hot pixels per amplifier; mean cosmic-ray tracks per amplifier.
    kalpha_e : float
        K-alpha yield (electrons); K-beta scales with the line energies.
    partial_charge_fraction : float
        Fraction of X-rays absorbed deep: cloud rms 0.5-1.5 px, 40-100 % of the charge kept.
    deferred_charge : float
        Fraction of each pixel's charge trailed into the next pixel read (serial direction,
        overscan included).
    dead_rows_per_amp : int
        Imaging rows per amplifier that hold no charge (fixed per sensor).
    seed, ccd, exposure : int
        Seed the random streams.

    Returns
    -------
    Fe55Simulation
        The raw frame with its truth and event tables.

    Raises
    ------
    ValueError
        If the number of gains differs from the number of amplifiers, a gain is not positive,
        or a rate is negative.
    """
    gains = np.asarray(gains_e_per_adu, dtype=float)
    if gains.shape != (len(layout.amps),):
        raise ValueError(
            f"gains_e_per_adu must give one gain per amplifier ({len(layout.amps)}); "
            f"got {gains.size}"
        )
    if not np.all(np.isfinite(gains) & (gains > 0)):
        raise ValueError(f"gains_e_per_adu must be positive and finite; got {gains.tolist()}")
    for name, value in (
        ("events_per_amp", events_per_amp),
        ("read_noise_e", read_noise_e),
        ("hot_pixels_per_amp", hot_pixels_per_amp),
        ("cosmic_rays_per_amp", cosmic_rays_per_amp),
        ("fano_factor", fano_factor),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0; got {value}")
    if not 0.1 <= diffusion_sigma_max_pix <= 0.6:
        raise ValueError(
            f"diffusion_sigma_max_pix must be in [0.1, 0.6]; got {diffusion_sigma_max_pix}"
        )
    if not 0.0 <= kbeta_fraction <= 1.0:
        raise ValueError(f"kbeta_fraction must be in [0, 1]; got {kbeta_fraction}")
    if not 0.0 <= partial_charge_fraction < 1.0:
        raise ValueError(
            f"partial_charge_fraction must be in [0, 1); got {partial_charge_fraction}"
        )
    if not 0.0 <= deferred_charge < 1.0:
        raise ValueError(f"deferred_charge must be in [0, 1); got {deferred_charge}")
    if dead_rows_per_amp < 0:
        raise ValueError(f"dead_rows_per_amp must be >= 0; got {dead_rows_per_amp}")
    kbeta_e = kalpha_e * MN_KBETA_EV / MN_KALPHA_EV

    rng_events = np.random.default_rng([seed, ccd, exposure, 1])
    rng_noise = np.random.default_rng([seed, ccd, exposure, 2])
    rng_hot = np.random.default_rng([seed, ccd, 3])
    rng_cr = np.random.default_rng([seed, ccd, exposure, 4])
    rng_bias = np.random.default_rng([seed, ccd, 5])

    rng_deep = np.random.default_rng([seed, ccd, exposure, 6])
    raw = np.full(layout.raw_shape, float(bias_level_adu))
    raw += np.random.default_rng([seed, ccd, exposure, 7]).normal(0.0, 1.0, raw.shape)
    truth_rows = []
    event_cols: dict[str, list] = {k: [] for k in ("amp", "x_pix", "y_pix", "electrons", "line")}
    event_cols["sigma_pix"] = []
    ny_raw = layout.raw_shape[0]
    rows = np.arange(ny_raw, dtype=float)[:, None]
    for amp, gain in zip(layout.amps, gains, strict=True):
        ys, xs = amp.data
        electrons = np.zeros((ys.stop - ys.start, xs.stop - xs.start))
        ny, nx = electrons.shape

        n_events = rng_events.poisson(events_per_amp)
        is_kbeta = rng_events.random(n_events) < kbeta_fraction
        mean_e = np.where(is_kbeta, kbeta_e, kalpha_e)
        charge = rng_events.normal(mean_e, np.sqrt(fano_factor * mean_e))
        x = rng_events.uniform(0, nx, n_events)
        y = rng_events.uniform(0, ny, n_events)
        sigma = rng_events.uniform(0.1, diffusion_sigma_max_pix, n_events)
        # a separate stream: partial_charge_fraction=0 leaves the events of a seed unchanged
        deep = rng_deep.random(n_events) < partial_charge_fraction
        sigma = np.where(deep, rng_deep.uniform(0.5, 1.5, n_events), sigma)
        charge = np.where(deep, charge * rng_deep.uniform(0.4, 1.0, n_events), charge)
        _deposit(electrons, x, y, sigma, charge)
        if dead_rows_per_amp:
            electrons[rng_hot.choice(ny, min(dead_rows_per_amp, ny), replace=False), :] = 0.0

        n_hot = min(hot_pixels_per_amp, electrons.size)
        hot_flat = rng_hot.choice(electrons.size, n_hot, replace=False)
        hot_e = np.exp(rng_hot.uniform(np.log(100.0), np.log(30000.0), n_hot))
        electrons.flat[hot_flat] += hot_e

        n_cr = rng_cr.poisson(cosmic_rays_per_amp) if cosmic_rays_per_amp else 0
        _cosmic_rays(electrons, n_cr, rng_cr)

        amp_rows = amp.serial_overscan[0]
        if amp.parallel_overscan is not None:
            amp_rows = slice(amp_rows.start, amp.parallel_overscan[0].stop)
        block = np.zeros((amp_rows.stop - amp_rows.start, _block_width(amp)))
        x0 = _block_start(amp)
        block[
            ys.start - amp_rows.start : ys.stop - amp_rows.start, xs.start - x0 : xs.stop - x0
        ] = electrons
        block = _defer_charge(block, deferred_charge, reverse=amp.flip_x)
        level = bias_level_adu + rng_bias.uniform(-50.0, 50.0)
        phase = rng_bias.uniform(0, 2 * np.pi)
        t = rows[amp_rows] / ny_raw
        drift = bias_drift_adu * (np.sin(2 * np.pi * 1.3 * t + phase) + 2.0 * (t - 0.5) ** 2)
        noise = rng_noise.normal(0.0, read_noise_e, block.shape)
        raw[amp_rows, x0 : x0 + block.shape[1]] = (block + noise) / gain + level + drift

        truth_rows.append(
            (
                amp.name,
                gain,
                level,
                read_noise_e,
                int(n_events - is_kbeta.sum()),
                int(is_kbeta.sum()),
                n_hot,
                n_cr,
            )
        )
        event_cols["amp"].extend([amp.name] * n_events)
        event_cols["x_pix"].extend(x + xs.start)
        event_cols["y_pix"].extend(y + ys.start)
        event_cols["electrons"].extend(charge)
        event_cols["line"].extend(np.where(is_kbeta, "Kb", "Ka"))
        event_cols["sigma_pix"].extend(sigma)

    truth = Table(
        rows=truth_rows,
        names=(
            "amp",
            "gain_e_per_adu",
            "bias_adu",
            "read_noise_e",
            "n_kalpha",
            "n_kbeta",
            "n_hot",
            "n_cosmic",
        ),
        dtype=(str, float, float, float, int, int, int, int),
    )
    events = Table(
        {
            k: np.asarray(v, dtype=str if k in ("amp", "line") else float)
            for k, v in event_cols.items()
        }
    )
    return Fe55Simulation(
        raw=np.round(raw).astype(np.int32), layout=layout, truth=truth, events=events
    )


def _defer_charge(block: np.ndarray, fraction: float, *, reverse: bool) -> np.ndarray:
    """Leave ``fraction`` of each pixel's charge in the next pixel read along each row.

    Pixels are read in increasing column order (decreasing when ``reverse``: an amplifier
    reading from the right).
    """
    if fraction == 0.0:
        return block
    out = block * (1.0 - fraction)
    if reverse:
        out[:, :-1] += fraction * block[:, 1:]
    else:
        out[:, 1:] += fraction * block[:, :-1]
    return out


def _block_start(amp) -> int:
    starts = [amp.data[1].start, amp.serial_overscan[1].start]
    if amp.prescan is not None:
        starts.append(amp.prescan[1].start)
    return min(starts)


def _block_width(amp) -> int:
    stops = [amp.data[1].stop, amp.serial_overscan[1].stop]
    if amp.prescan is not None:
        stops.append(amp.prescan[1].stop)
    return max(stops) - _block_start(amp)


def simulate_fe55_exposure(config: Fe55SimConfig, *, ccd: int, exposure: int) -> Fe55Simulation:
    """Simulate exposure ``exposure`` of sensor ``ccd`` as the campaign config describes it.

    The gains depend only on ``(config.seed, ccd)``, so every exposure of a sensor shares them.
    """
    layout = config.layout()
    gains = amp_gains(
        len(layout.amps),
        gain_e_per_adu=config.gain_e_per_adu,
        gain_spread=config.gain_spread,
        seed=config.seed,
        ccd=ccd,
    )
    return simulate_fe55(
        layout,
        gains,
        events_per_amp=config.events_per_amp,
        kbeta_fraction=config.kbeta_fraction,
        read_noise_e=config.read_noise_e,
        bias_level_adu=config.bias_level_adu,
        bias_drift_adu=config.bias_drift_adu,
        diffusion_sigma_max_pix=config.diffusion_sigma_max_pix,
        fano_factor=config.fano_factor,
        hot_pixels_per_amp=config.hot_pixels_per_amp,
        cosmic_rays_per_amp=config.cosmic_rays_per_amp,
        kalpha_e=kalpha_yield(config.temperature_k),
        partial_charge_fraction=config.partial_charge_fraction,
        deferred_charge=config.deferred_charge,
        dead_rows_per_amp=config.dead_rows_per_amp,
        seed=config.seed,
        ccd=ccd,
        exposure=exposure,
    )


def fe55_hdulist(sim: Fe55Simulation, *, ccd: int, exposure: int) -> fits.HDUList:
    """The raw frame as a camera writes it: one primary HDU with the section keywords.

    The header holds the layout's ``header_cards()`` and the exposure's identity; the true
    gains are not in it (they are in ``sim.truth``).
    """
    header = fits.Header()
    header["IMAGETYP"] = ("FE55", "Fe55 X-ray exposure")
    header["CCD"] = (ccd, "sensor number")
    header["EXPOSURE"] = (exposure, "exposure number")
    header["EXPTIME"] = (30.0, "exposure time (s)")
    for key, value in sim.layout.header_cards().items():
        header[key] = value
    return fits.HDUList([fits.PrimaryHDU(data=sim.raw, header=header)])


def fe55_data_ids(config: Fe55SimConfig, *, ccd: int | None = None) -> list[dict[str, int]]:
    """Data ids ``{"ccd", "exposure"}`` of the campaign's Fe55 exposures, sensor by sensor.

    Parameters
    ----------
    config : Fe55SimConfig
        The ``fe55`` section.
    ccd : int, optional
        Only this sensor's exposures.

    Raises
    ------
    ValueError
        If ``ccd`` is given and is not one of ``config.sensors``.
    """
    if ccd is not None and ccd not in config.sensors:
        raise ValueError(f"ccd={ccd} is not an Fe55 sensor (fe55.sensors: {list(config.sensors)})")
    sensors = config.sensors if ccd is None else (ccd,)
    return [{"ccd": int(c), "exposure": e} for c in sensors for e in range(config.exposures)]


def simulate_flat_pairs(
    layout: DetectorLayout,
    gains_e_per_adu: Sequence[float],
    *,
    levels_e: Sequence[float],
    read_noise_e: float = 5.0,
    bias_level_adu: float = 1000.0,
    prnu: float = 0.01,
    deferred_charge: float = 0.0,
    seed: int = 0,
    ccd: int = 0,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Simulate flat pairs at several levels and a bias pair, for the photon-transfer gain.

    Each flat is an illumination with a 30 % gradient along rows times a fixed pixel response
    pattern (``prnu`` rms), drawn with Poisson statistics; every frame gets read noise and a
    bias level per amplifier that moves by up to +-3 ADU from frame to frame (so the bias must
    come from each frame's own prescan or overscan).

    Parameters
    ----------
    layout : DetectorLayout
        The raw geometry.
    gains_e_per_adu : sequence of float
        Gain of each amplifier (electrons per ADU).
    levels_e : sequence of float
        Mean signal of each flat pair (electrons), positive.
    read_noise_e, bias_level_adu, prnu, deferred_charge : float
        Read noise (e-), mean bias (ADU), response non-uniformity (rms fraction), serial
        deferred charge fraction.
    seed, ccd : int
        Seed the random streams.

    Returns
    -------
    pairs : list of (numpy.ndarray, numpy.ndarray)
        ``(ny, nx)`` int32 raw flat frames, one pair per level.
    bias_pair : (numpy.ndarray, numpy.ndarray)
        Two raw bias frames.

    Raises
    ------
    ValueError
        If the gains do not match the amplifiers or a level is not positive.
    """
    gains = np.asarray(gains_e_per_adu, dtype=float)
    if gains.shape != (len(layout.amps),) or not np.all(gains > 0):
        raise ValueError(
            f"gains_e_per_adu must give one positive gain per amplifier ({len(layout.amps)}); "
            f"got {gains.tolist()}"
        )
    levels = np.asarray(levels_e, dtype=float)
    if levels.size == 0 or not np.all(levels > 0):
        raise ValueError(f"levels_e must be positive; got {levels.tolist()}")
    rng_fixed = np.random.default_rng([seed, ccd, 8])
    response = 1.0 + prnu * rng_fixed.standard_normal(layout.raw_shape)
    levels_adu = bias_level_adu + rng_fixed.uniform(-50.0, 50.0, len(layout.amps))
    rng = np.random.default_rng([seed, ccd, 9])
    rows = np.linspace(0.85, 1.15, layout.raw_shape[0])[:, None]

    def frame(level_e: float) -> np.ndarray:
        raw = np.full(layout.raw_shape, float(bias_level_adu))
        for amp, gain, bias in zip(layout.amps, gains, levels_adu, strict=True):
            amp_rows = amp.serial_overscan[0]
            x0, width = _block_start(amp), _block_width(amp)
            electrons = np.zeros((amp_rows.stop - amp_rows.start, width))
            if level_e > 0:
                ys, xs = amp.data
                mean = level_e * rows[ys] * response[ys, xs]
                electrons[
                    ys.start - amp_rows.start : ys.stop - amp_rows.start,
                    xs.start - x0 : xs.stop - x0,
                ] = rng.poisson(mean)
            electrons = _defer_charge(electrons, deferred_charge, reverse=amp.flip_x)
            noise = rng.normal(0.0, read_noise_e, electrons.shape)
            offset = bias + rng.uniform(-3.0, 3.0)
            raw[amp_rows, x0 : x0 + width] = (electrons + noise) / gain + offset
        return np.round(raw).astype(np.int32)

    pairs = [(frame(level), frame(level)) for level in levels]
    return pairs, (frame(0.0), frame(0.0))


def simulate_sensor_flats(
    config: Fe55SimConfig, *, ccd: int, exposure: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The flat pair and bias pair simulated with Fe55 exposure ``exposure`` of sensor ``ccd``.

    The pair's level is ``config.flat_level_e * (exposure + 1) / config.exposures``, so a
    sensor's exposures span a photon-transfer curve; the gains are the sensor's.

    Returns
    -------
    flat_pair, bias_pair : (numpy.ndarray, numpy.ndarray)
        Raw frames (int32).
    gains : numpy.ndarray
        The true gain of each amplifier.
    """
    layout = config.layout()
    gains = amp_gains(
        len(layout.amps),
        gain_e_per_adu=config.gain_e_per_adu,
        gain_spread=config.gain_spread,
        seed=config.seed,
        ccd=ccd,
    )
    pairs, bias_pair = simulate_flat_pairs(
        layout,
        gains,
        levels_e=[config.flat_level_e * (exposure + 1) / config.exposures],
        read_noise_e=config.read_noise_e,
        bias_level_adu=config.bias_level_adu,
        prnu=config.prnu,
        deferred_charge=config.deferred_charge,
        seed=config.seed + 1000 * exposure,
        ccd=ccd,
    )
    return pairs[0], bias_pair, gains


def pair_hdulist(
    pair: tuple[np.ndarray, np.ndarray],
    layout: DetectorLayout,
    *,
    imagetyp: str,
    ccd: int,
    exposure: int,
) -> fits.HDUList:
    """Two raw frames (a flat or bias pair) as one FITS file.

    The primary header holds the exposure type, the sensor and exposure numbers and the
    section keywords; the frames are the image extensions ``FRAME1`` and ``FRAME2``.
    """
    header = fits.Header()
    header["IMAGETYP"] = (imagetyp, "exposure type of both frames")
    header["CCD"] = (ccd, "sensor number")
    header["EXPOSURE"] = (exposure, "exposure number")
    for key, value in layout.header_cards().items():
        header[key] = value
    hdus = [fits.PrimaryHDU(header=header)]
    for i, frame in enumerate(pair, start=1):
        ext = fits.ImageHDU(data=np.asarray(frame), name=f"FRAME{i}")
        for key, value in layout.header_cards().items():
            ext.header[key] = value
        hdus.append(ext)
    return fits.HDUList(hdus)
