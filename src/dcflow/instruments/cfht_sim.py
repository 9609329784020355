"""A simulated CFHT MegaCam: focal plane, electronics, sky, stars and raw FITS frames.

Everything here is deterministic from `SimConfig.seed` and returns arrays, tables and HDU
lists; `dcflow.simulate` writes them to disk.

Raw file contract
-----------------
One FITS file per (visit, ccd); the primary HDU holds ``uint16`` data (written by astropy with
``BZERO = 32768``) in the raw layout of ``DetectorLayout.regular(n_amps=2, amp_nx=ccd_nx // 2,
ny=ccd_ny, prescan_cols=0, overscan_cols=overscan_cols, overscan_rows=overscan_rows)``: amp A
on the left reads from the left, amp B on the right reads from the right, so its raw columns
are mirrored (``DETSECB`` has x1 > x2). Readers must rebuild the layout with
`DetectorLayout.from_header`. Header keywords:

========================  ===============================================================
``INSTRUME``              ``'cfht_sim'``
``OBSTYPE``               ``'object'``, ``'bias'`` or ``'flat'``
``EXPNUM``                visit id (int); bias and flat exposures have their own ids
``CCDNUM``                CCD number, 0 .. n_ccds - 1
``FILTER``                band (``'g'``, ``'r'``...) for object and flat, ``'none'`` for bias
``EXPTIME``               exposure time (s)
``MJD-OBS``               start of the exposure (MJD)
``AIRMASS``               airmass at the start
``RA_DEG``, ``DEC_DEG``   telescope pointing (deg), including the pointing error
``SATURATE``              ADC saturation (ADU), 65535
``GAIN<amp>``             gain of amplifier ``<amp>`` (e-/ADU)
``RDNOISE<amp>``          read noise of amplifier ``<amp>`` (e-)
``NAMPS``, ``AMPNAMES``,  amplifier layout (`dcflow.geometry`)
``DATASEC<amp>`` ...
WCS (TAN, CD matrix)      the nominal WCS of the ASSEMBLED, trimmed CCD: array index
                          ``(y, x)`` is FITS pixel ``(x + 1, y + 1)``. It carries the pointing
                          error and omits the optical distortion.
``SIMHASH``               digest of the `SimConfig` that made the file (idempotent rewrites)
========================  ===============================================================

Photometric model
-----------------
A star of magnitude ``m`` in band ``b`` delivers ``N_e = exptime_s * 10**(-0.4 * (m -
zero_point_1s_mag[b])) * transparency`` electrons to the focal plane (transparency includes
extinction and clouds; it is drawn per visit). Each pixel then records ``(sky + stars) *
flat(x, y) + dark`` electrons, where ``flat`` = vignetting x pixel response. After ISR with a
master flat normalised to median 1 over the CCD, a star's total is ``N_e * median(flat)``, so
the zero point of the calibrated electron image (``m = zp - 2.5 log10(flux_e)``) is
``zp_1s + 2.5 log10(exptime_s * transparency * median(flat))``; `truth_table` gives it per
(visit, ccd) as ``zp_mag``. The PSF is a Moffat sampled at pixel centres.

Astrometric model
-----------------
Sky to pixel: gnomonic projection about the true pointing gives ideal coordinates
``(xi, eta)``; the ideal focal-plane pixel is ``(P, Q) = (-xi, eta) / pixel_scale``; the
detector position ``(u, v)`` obeys ``(P, Q) = (u, v) * (1 + k r**2)`` with ``r**2 = u**2 +
v**2`` (radial distortion); a CCD's pixel ``(x, y)`` sits at ``(u, v) = (x + u0, y + v0)``
with ``(u0, v0)`` its corner in the focal-plane grid (CCD columns along x, gaps between).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import warnings

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from dcflow.configs import check_fields, config_field
from dcflow.geometry import DetectorLayout

__all__ = [
    "INSTRUMENT",
    "SATURATION_ADU",
    "CcdElectronics",
    "ExposureSpec",
    "SimConfig",
    "SimulatedCcd",
    "campaign_exposures",
    "ccd_electronics",
    "ccd_layout",
    "ccd_origin_pix",
    "config_digest",
    "flat_pattern",
    "header_wcs",
    "make_reference_catalog",
    "make_truth_catalog",
    "make_variable_catalog",
    "pixel_to_sky_true",
    "simulate_ccd",
    "simulate_raw",
    "sky_to_pixel_true",
    "truth_table",
    "variable_epochs",
    "variable_truth_table",
]

INSTRUMENT = "cfht_sim"
"""Value of the INSTRUME keyword and of the data id's ``instrument``."""

SATURATION_ADU = 65535
"""The 16-bit ADC's ceiling: every raw pixel at this value is saturated."""

_BANDS = {
    "u": "MegaCam u (u.MP9302)",
    "g": "MegaCam g (g.MP9402)",
    "r": "MegaCam r (r.MP9602)",
    "i": "MegaCam i (i.MP9702)",
    "z": "MegaCam z (z.MP9801)",
}
_NOMINAL_PER_BAND = {
    "zero_point_1s_mag": {"u": 25.6, "g": 26.9, "r": 26.6, "i": 26.3, "z": 25.3},
    "sky_mag_arcsec2": {"u": 22.7, "g": 22.0, "r": 21.2, "i": 20.5, "z": 19.6},
}
"""Per-band values taken when the config leaves a per-filter list out (MegaCam-like: 1 e-/s
zero points and dark-sky brightness)."""
_COLOR_TERMS = {"u": 1.8, "g": 1.0, "r": 0.0, "i": -0.45, "z": -0.7}
"""Band magnitude = r magnitude + term * (g - r) colour, for the truth catalog."""

# Tags that keep the random streams of different products independent.
_TAG_CATALOG, _TAG_VISIT, _TAG_STATIC, _TAG_FLAT, _TAG_NOISE, _TAG_REF = 1, 2, 3, 4, 5, 6


@dataclasses.dataclass(frozen=True, slots=True)
class SimConfig:
    """Parameters of a simulated MegaCam campaign (the ``simulation:`` config section)."""

    seed: int = config_field(1234, "Seed of every random stream (int).", minimum=0)
    n_ccds: int = config_field(36, "Number of CCDs in the focal plane.", minimum=1, maximum=36)
    ccd_columns: int = config_field(
        9, "CCDs per focal-plane row (MegaCam: 9 x 4).", minimum=1, maximum=36
    )
    ccd_nx: int = config_field(
        2048, "Imaging columns per CCD (pixels, even: two amplifiers).", minimum=64
    )
    ccd_ny: int = config_field(4612, "Imaging rows per CCD (pixels).", minimum=64)
    ccd_gap_pix: int = config_field(
        80, "Gap between neighbouring CCDs (pixels).", minimum=0, maximum=2000
    )
    overscan_cols: int = config_field(
        32, "Serial overscan columns per amplifier (pixels).", minimum=4, maximum=256
    )
    overscan_rows: int = config_field(
        16, "Parallel overscan rows (pixels).", minimum=0, maximum=256
    )
    pixel_scale_arcsec: float = config_field(
        0.187, "Pixel scale on the sky (arcsec/pixel).", exclusive_minimum=0.0
    )
    pixel_size_um: float = config_field(
        13.5, "Physical pixel size (micron), for the cosmic-ray rate.", exclusive_minimum=0.0
    )
    filters: tuple[str, ...] = config_field(("g", "r"), "Bands observed, in order.", choices=_BANDS)
    visits_per_filter: int = config_field(4, "Science visits per band.", minimum=1, maximum=10000)
    n_bias: int = config_field(3, "Bias exposures.", minimum=1, maximum=100)
    n_flat: int = config_field(3, "Flat exposures per band.", minimum=1, maximum=100)
    first_visit: int = config_field(1001, "Visit id of the first science visit.", minimum=0)
    first_calib_visit: int = config_field(
        9001, "Visit id of the first bias; flats follow (must not overlap science ids).", minimum=0
    )
    exptime_s: float = config_field(60.0, "Science exposure time (s).", exclusive_minimum=0.0)
    flat_level_e: float = config_field(
        25000.0, "Mean dome-flat level (electrons/pixel).", minimum=100.0, maximum=80000.0
    )
    flat_exptime_s: float = config_field(5.0, "Flat exposure time (s).", exclusive_minimum=0.0)
    zero_point_1s_mag: tuple[float, ...] = config_field(
        (),
        "Magnitude giving 1 electron in 1 s at transparency 1, per band (same order as "
        "filters); empty: each band's nominal value (u 25.6, g 26.9, r 26.6, i 26.3, z 25.3).",
        minimum=15.0,
        maximum=35.0,
    )
    sky_mag_arcsec2: tuple[float, ...] = config_field(
        (),
        "Sky surface brightness per band (mag/arcsec^2, same order as filters); empty: each "
        "band's nominal value (u 22.7, g 22.0, r 21.2, i 20.5, z 19.6).",
        minimum=10.0,
        maximum=30.0,
    )
    transparency_min: float = config_field(
        0.85,
        "Lowest transparency (extinction + clouds) drawn per visit.",
        minimum=0.05,
        maximum=1.0,
    )
    airmass_max: float = config_field(1.5, "Highest airmass drawn per visit.", minimum=1.0)
    dark_e_per_s: float = config_field(
        0.01, "Dark current (electrons/pixel/s).", minimum=0.0, maximum=100.0
    )
    star_density_per_deg2: float = config_field(
        60000.0, "Stars per square degree between mag_min and mag_max.", minimum=0.0
    )
    mag_min: float = config_field(14.0, "Brightest r magnitude in the truth catalog (mag).")
    mag_max: float = config_field(24.0, "Faintest r magnitude in the truth catalog (mag).")
    count_slope: float = config_field(
        0.25, "Slope of the number counts, d log10 N / dm (1/mag).", minimum=0.0, maximum=1.0
    )
    ref_mag_max: float = config_field(
        22.5, "Faintest r magnitude kept in the reference catalog (mag)."
    )
    ref_pos_noise_mas: float = config_field(
        15.0, "Per-axis position noise of the reference catalog (mas).", minimum=0.0
    )
    ref_mag_noise: float = config_field(
        0.015, "Magnitude noise of the reference catalog (mag).", minimum=0.0
    )
    ra_deg: float = config_field(
        150.0, "Field centre right ascension (deg).", minimum=0.0, maximum=360.0
    )
    dec_deg: float = config_field(
        2.2, "Field centre declination (deg).", minimum=-85.0, maximum=85.0
    )
    dither_arcsec: float = config_field(
        60.0, "Half-width of the uniform dither between visits (arcsec).", minimum=0.0
    )
    pointing_error_arcsec: float = config_field(
        3.0, "Largest error of the header pointing (arcsec).", minimum=0.0, maximum=60.0
    )
    fwhm_min_arcsec: float = config_field(
        0.5, "Best seeing drawn per visit (FWHM, arcsec).", exclusive_minimum=0.1
    )
    fwhm_max_arcsec: float = config_field(
        1.2, "Worst seeing drawn per visit (FWHM, arcsec).", exclusive_minimum=0.1
    )
    fwhm_field_variation: float = config_field(
        0.06,
        "Fractional FWHM increase from the optical axis to the focal-plane corner.",
        minimum=0.0,
        maximum=1.0,
    )
    moffat_beta: float = config_field(3.0, "Moffat PSF beta.", minimum=1.5, maximum=10.0)
    distortion_pix: float = config_field(
        5.0,
        "Radial distortion: displacement (pixels) at 10000 pixels from the optical axis.",
        minimum=-100.0,
        maximum=100.0,
    )
    gain_min_e_per_adu: float = config_field(
        1.5, "Lowest amplifier gain (e-/ADU).", exclusive_minimum=0.0
    )
    gain_max_e_per_adu: float = config_field(
        2.1, "Highest amplifier gain (e-/ADU).", exclusive_minimum=0.0
    )
    read_noise_min_e: float = config_field(3.0, "Lowest read noise (e-).", minimum=0.0)
    read_noise_max_e: float = config_field(7.0, "Highest read noise (e-).", minimum=0.0)
    bias_level_adu: float = config_field(
        1000.0,
        "Mean bias level (ADU); each amplifier differs by up to 10 %.",
        minimum=100.0,
        maximum=20000.0,
    )
    bias_row_amplitude_adu: float = config_field(
        3.0, "Amplitude of the per-exposure row structure of the bias (ADU).", minimum=0.0
    )
    bias_column_amplitude_adu: float = config_field(
        2.0, "Rms of the static column structure of the bias (ADU).", minimum=0.0
    )
    full_well_e: float = config_field(
        150000.0,
        "Charge a pixel holds before it bleeds along its column (electrons).",
        minimum=1000.0,
    )
    vignetting: float = config_field(
        0.1, "Fractional illumination loss at the focal-plane corner.", minimum=0.0, maximum=0.9
    )
    prnu_rms: float = config_field(
        0.01, "Rms of the pixel response non-uniformity (fraction).", minimum=0.0, maximum=0.2
    )
    n_bad_columns: int = config_field(
        2, "Dead columns per CCD (response 5 %).", minimum=0, maximum=100
    )
    cosmic_ray_rate_per_cm2_min: float = config_field(
        2.0, "Cosmic-ray hits per cm^2 of detector per minute of exposure.", minimum=0.0
    )
    mjd_start: float = config_field(60000.3, "MJD of the first exposure (d).", minimum=0.0)
    visits_per_night: int = config_field(
        0,
        "Science visits per night, each night's visits revisit_minutes apart (0: every visit "
        "in one night, back to back)",
        minimum=0,
    )
    revisit_minutes: float = config_field(
        30.0, "Time between the starts of two visits of one night (minutes)", minimum=0.0
    )
    transients_per_deg2: float = config_field(
        0.0, "Transients (appear, then fade exponentially) per square degree", minimum=0.0
    )
    variables_per_deg2: float = config_field(
        0.0, "Sinusoidal variable stars per square degree", minimum=0.0
    )
    movers_per_deg2: float = config_field(
        0.0, "Moving objects (asteroids on straight lines) per square degree", minimum=0.0
    )
    variable_mag_min: float = config_field(
        18.5, "Brightest peak (transient) or mean (variable, mover) r magnitude (mag)"
    )
    variable_mag_max: float = config_field(
        21.5, "Faintest peak (transient) or mean (variable, mover) r magnitude (mag)"
    )
    mover_rate_min_arcsec_per_hour: float = config_field(
        3.0, "Slowest mover (arcsec/hour)", exclusive_minimum=0.0
    )
    mover_rate_max_arcsec_per_hour: float = config_field(
        10.0, "Fastest mover (arcsec/hour)", exclusive_minimum=0.0
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.ccd_nx % 2:
            raise ValueError(f"SimConfig.ccd_nx must be even (two amplifiers); got {self.ccd_nx}")
        if len(set(self.filters)) != len(self.filters):
            raise ValueError(f"simulation.filters must not repeat a band; got {list(self.filters)}")
        for name, nominal in _NOMINAL_PER_BAND.items():
            values = getattr(self, name)
            if not values:
                object.__setattr__(self, name, tuple(nominal[b] for b in self.filters))
            elif len(values) != len(self.filters):
                defaults = ", ".join(f"{b} {nominal[b]}" for b in self.filters)
                raise ValueError(
                    f"simulation.{name} must give one value per filter of simulation.filters "
                    f"{list(self.filters)}, in the same order; got {list(values)}. Give "
                    f"{len(self.filters)} value(s), or leave simulation.{name} out to use "
                    f"each band's nominal value ({defaults})"
                )
        for low, high in (
            ("mag_min", "mag_max"),
            ("fwhm_min_arcsec", "fwhm_max_arcsec"),
            ("variable_mag_min", "variable_mag_max"),
            ("mover_rate_min_arcsec_per_hour", "mover_rate_max_arcsec_per_hour"),
            ("gain_min_e_per_adu", "gain_max_e_per_adu"),
            ("read_noise_min_e", "read_noise_max_e"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(
                    f"SimConfig.{low} ({getattr(self, low)}) exceeds {high} ({getattr(self, high)})"
                )
        n_science = len(self.filters) * self.visits_per_filter
        n_calib = self.n_bias + len(self.filters) * self.n_flat
        science = range(self.first_visit, self.first_visit + n_science)
        calib = range(self.first_calib_visit, self.first_calib_visit + n_calib)
        if science.start < calib.stop and calib.start < science.stop:
            raise ValueError(
                f"SimConfig.first_calib_visit={self.first_calib_visit}: calibration visits "
                f"{calib.start}..{calib.stop - 1} overlap science visits "
                f"{science.start}..{science.stop - 1}"
            )

    def band_index(self, band: str) -> int:
        """Position of ``band`` in `filters` (raises ValueError naming it if absent)."""
        if band not in self.filters:
            raise ValueError(f"band {band!r} is not among the simulated filters {self.filters}")
        return self.filters.index(band)


def config_digest(config: SimConfig) -> str:
    """A short digest of every field of ``config``: files made from equal configs share it."""
    text = json.dumps(dataclasses.asdict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True, slots=True)
class ExposureSpec:
    """What the telescope did for one exposure (the same for all its CCDs).

    ``ra_deg``/``dec_deg`` is the true pointing; ``header_ra_deg``/``header_dec_deg`` what the
    telescope reports (true + pointing error).
    """

    visit: int
    obstype: str
    band: str
    exptime_s: float
    mjd_obs: float
    airmass: float
    ra_deg: float
    dec_deg: float
    header_ra_deg: float
    header_dec_deg: float
    fwhm_arcsec: float
    transparency: float


def _rng(config: SimConfig, *keys: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, *keys])


def campaign_exposures(config: SimConfig) -> tuple[ExposureSpec, ...]:
    """Every exposure of the campaign: biases, flats per band, then science visits per band."""
    specs: list[ExposureSpec] = []
    mjd = config.mjd_start
    calib_visit = config.first_calib_visit

    def calib(obstype: str, band: str, exptime: float) -> None:
        nonlocal mjd, calib_visit
        specs.append(
            ExposureSpec(
                visit=calib_visit,
                obstype=obstype,
                band=band,
                exptime_s=exptime,
                mjd_obs=round(mjd, 6),
                airmass=1.0,
                ra_deg=config.ra_deg,
                dec_deg=config.dec_deg,
                header_ra_deg=config.ra_deg,
                header_dec_deg=config.dec_deg,
                fwhm_arcsec=0.0,
                transparency=1.0,
            )
        )
        calib_visit += 1
        mjd += 60.0 / 86400.0

    for _ in range(config.n_bias):
        calib("bias", "none", 0.0)
    for band in config.filters:
        for _ in range(config.n_flat):
            calib("flat", band, config.flat_exptime_s)
    mjd = math.floor(config.mjd_start) + 0.3 + 0.25  # the night starts after the calibrations
    visit = config.first_visit
    cos_dec = math.cos(math.radians(config.dec_deg))
    night_start = mjd
    for band in config.filters:
        for _ in range(config.visits_per_filter):
            if config.visits_per_night:
                k = visit - config.first_visit
                night, slot = divmod(k, config.visits_per_night)
                mjd = night_start + night + slot * config.revisit_minutes / 1440.0
            rng = _rng(config, _TAG_VISIT, visit)
            dx, dy = (float(d) for d in rng.uniform(-1.0, 1.0, 2) * config.dither_arcsec / 3600.0)
            ra = config.ra_deg + dx / cos_dec
            dec = config.dec_deg + dy
            err = rng.uniform(0.0, config.pointing_error_arcsec) / 3600.0
            angle = rng.uniform(0.0, 2.0 * math.pi)
            specs.append(
                ExposureSpec(
                    visit=visit,
                    obstype="object",
                    band=band,
                    exptime_s=config.exptime_s,
                    mjd_obs=round(mjd, 6),
                    airmass=round(float(rng.uniform(1.0, config.airmass_max)), 4),
                    ra_deg=float(ra % 360.0),
                    dec_deg=float(dec),
                    header_ra_deg=float((ra + err * math.cos(angle) / cos_dec) % 360.0),
                    header_dec_deg=float(dec + err * math.sin(angle)),
                    fwhm_arcsec=float(rng.uniform(config.fwhm_min_arcsec, config.fwhm_max_arcsec)),
                    transparency=float(rng.uniform(config.transparency_min, 1.0)),
                )
            )
            visit += 1
            mjd += (config.exptime_s + 40.0) / 86400.0
    return tuple(specs)


def ccd_layout(config: SimConfig) -> DetectorLayout:
    """The raw layout of every CCD: two amplifiers side by side, B read from the right."""
    return DetectorLayout.regular(
        n_amps=2,
        amp_nx=config.ccd_nx // 2,
        ny=config.ccd_ny,
        prescan_cols=0,
        overscan_cols=config.overscan_cols,
        overscan_rows=config.overscan_rows,
    )


def _grid_shape(config: SimConfig) -> tuple[int, int]:
    ncol = min(config.n_ccds, config.ccd_columns)
    return ncol, -(-config.n_ccds // ncol)


def ccd_origin_pix(config: SimConfig, ccd: int) -> tuple[float, float]:
    """Focal-plane position ``(u0, v0)`` (pixels from the optical axis) of pixel (0, 0) of ``ccd``.

    Raises
    ------
    ValueError
        If ``ccd`` is not in 0 .. n_ccds - 1.
    """
    if not 0 <= ccd < config.n_ccds:
        raise ValueError(f"ccd must be in 0..{config.n_ccds - 1}; got {ccd}")
    ncol, nrow = _grid_shape(config)
    width = ncol * config.ccd_nx + (ncol - 1) * config.ccd_gap_pix
    height = nrow * config.ccd_ny + (nrow - 1) * config.ccd_gap_pix
    col, row = ccd % ncol, ccd // ncol
    return (
        col * (config.ccd_nx + config.ccd_gap_pix) - width / 2.0,
        row * (config.ccd_ny + config.ccd_gap_pix) - height / 2.0,
    )


def _field_radius_pix(config: SimConfig) -> float:
    ncol, nrow = _grid_shape(config)
    width = ncol * config.ccd_nx + (ncol - 1) * config.ccd_gap_pix
    height = nrow * config.ccd_ny + (nrow - 1) * config.ccd_gap_pix
    return 0.5 * math.hypot(width, height)


def _k_distortion(config: SimConfig) -> float:
    return config.distortion_pix / 1.0e4**3


def _gnomonic(ra0, dec0, ra, dec):
    a0, d0 = np.radians(ra0), np.radians(dec0)
    a, d = np.radians(ra), np.radians(dec)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cos_c
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cos_c
    return np.degrees(xi), np.degrees(eta)


def _inverse_gnomonic(ra0, dec0, xi_deg, eta_deg):
    a0, d0 = np.radians(ra0), np.radians(dec0)
    xi, eta = np.radians(xi_deg), np.radians(eta_deg)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(
            np.cos(c) * np.sin(d0) + np.where(rho > 0, eta * np.sin(c) * np.cos(d0) / rho, 0.0)
        )
    ra = a0 + np.arctan2(
        xi * np.sin(c), rho * np.cos(d0) * np.cos(c) - eta * np.sin(d0) * np.sin(c)
    )
    return np.degrees(ra) % 360.0, np.degrees(dec)


def sky_to_pixel_true(
    config: SimConfig, spec: ExposureSpec, ccd: int, ra_deg, dec_deg
) -> tuple[np.ndarray, np.ndarray]:
    """True 0-based assembled pixel ``(x, y)`` of sky positions, with distortion.

    Parameters
    ----------
    config : SimConfig
        The simulation.
    spec : ExposureSpec
        The exposure (its true pointing is used).
    ccd : int
        The CCD.
    ra_deg, dec_deg : array-like
        Sky positions (deg).
    """
    xi, eta = _gnomonic(spec.ra_deg, spec.dec_deg, np.asarray(ra_deg), np.asarray(dec_deg))
    scale = config.pixel_scale_arcsec / 3600.0
    p, q = -xi / scale, eta / scale
    k = _k_distortion(config)
    u, v = p, q
    for _ in range(6):
        factor = 1.0 + k * (u * u + v * v)
        u, v = p / factor, q / factor
    u0, v0 = ccd_origin_pix(config, ccd)
    return u - u0, v - v0


def pixel_to_sky_true(
    config: SimConfig, spec: ExposureSpec, ccd: int, x, y
) -> tuple[np.ndarray, np.ndarray]:
    """True sky position ``(ra_deg, dec_deg)`` of 0-based assembled pixels ``(x, y)`` of ``ccd``."""
    u0, v0 = ccd_origin_pix(config, ccd)
    u, v = np.asarray(x, dtype=float) + u0, np.asarray(y, dtype=float) + v0
    factor = 1.0 + _k_distortion(config) * (u * u + v * v)
    scale = config.pixel_scale_arcsec / 3600.0
    return _inverse_gnomonic(spec.ra_deg, spec.dec_deg, -u * factor * scale, v * factor * scale)


def header_wcs(config: SimConfig, spec: ExposureSpec, ccd: int) -> WCS:
    """The nominal WCS written in the raw header: TAN about the reported pointing, no distortion."""
    u0, v0 = ccd_origin_pix(config, ccd)
    scale = config.pixel_scale_arcsec / 3600.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [spec.header_ra_deg, spec.header_dec_deg]
    wcs.wcs.crpix = [-u0 + 1.0, -v0 + 1.0]
    wcs.wcs.cd = np.array([[-scale, 0.0], [0.0, scale]])
    wcs.wcs.radesys = "ICRS"
    return wcs


def _fwhm_pix(config: SimConfig, spec: ExposureSpec, u, v):
    r2 = (np.asarray(u) ** 2 + np.asarray(v) ** 2) / _field_radius_pix(config) ** 2
    return spec.fwhm_arcsec / config.pixel_scale_arcsec * (1.0 + config.fwhm_field_variation * r2)


# --------------------------------------------------------------------------------------------
# Catalogs


def _catalog_radius_deg(config: SimConfig) -> float:
    field = _field_radius_pix(config) * config.pixel_scale_arcsec / 3600.0
    return field * 1.02 + (config.dither_arcsec * math.sqrt(2.0) + 60.0) / 3600.0


def make_truth_catalog(config: SimConfig) -> Table:
    """The true stars: ``id``, ``ra_deg``, ``dec_deg`` and ``<band>_mag`` for every band.

    Stars are uniform on the sky over a disc that covers every dithered visit; r magnitudes
    follow power-law counts ``dN/dm ~ 10**(count_slope * m)`` between ``mag_min`` and
    ``mag_max``; other bands follow from a g - r colour uniform in 0.2 .. 1.4.
    """
    rng = _rng(config, _TAG_CATALOG)
    radius = _catalog_radius_deg(config)
    area = math.pi * radius**2
    n = int(rng.poisson(config.star_density_per_deg2 * area))
    # Uniform in the tangent plane (the disc is ~1 deg: the projection is nearly equal-area).
    r = radius * np.sqrt(rng.uniform(0.0, 1.0, n))
    theta = rng.uniform(0.0, 2.0 * math.pi, n)
    ra, dec = _inverse_gnomonic(config.ra_deg, config.dec_deg, r * np.cos(theta), r * np.sin(theta))
    slope = config.count_slope * math.log(10.0)
    u = rng.uniform(0.0, 1.0, n)
    if slope > 0:
        lo, hi = np.exp(slope * config.mag_min), np.exp(slope * config.mag_max)
        r_mag = np.log(lo + u * (hi - lo)) / slope
    else:
        r_mag = config.mag_min + u * (config.mag_max - config.mag_min)
    color = rng.uniform(0.2, 1.4, n)
    table = Table()
    table["id"] = np.arange(1, n + 1, dtype=np.int64)
    table["ra_deg"] = ra
    table["dec_deg"] = dec
    for band in config.filters:
        table[f"{band}_mag"] = r_mag + _COLOR_TERMS[band] * color
    table.meta["SIMHASH"] = config_digest(config)
    return table


_TAG_VARIABLE = 7
_KIND_CODES = {"transient": 1, "variable": 2, "mover": 3}
VARIABLE_ID_OFFSET = 100_000_000
"""Ids of transients, variables and movers start here (above every star id)."""


def make_variable_catalog(config: SimConfig) -> Table:
    """Sources whose brightness or position changes: transients, variable stars, movers.

    Columns: ``id`` (from `VARIABLE_ID_OFFSET`), ``kind`` (``transient``, ``variable``,
    ``mover``), ``ra_deg``, ``dec_deg`` (movers: at ``t0_mjd``), ``mag`` (transients: peak;
    variables: mean; the same in every band), ``t0_mjd`` (transients: appearance; variables:
    phase zero; movers: reference epoch, a science visit's), ``timescale_d`` (transients:
    e-folding time of the fading flux; variables: period), ``amplitude_mag`` (variables),
    ``ra_rate_deg_per_day`` (great-circle) and ``dec_rate_deg_per_day`` (movers). Spread
    uniformly over the same disc as the stars.
    """
    rng = _rng(config, _TAG_VARIABLE)
    radius = _catalog_radius_deg(config)
    area = math.pi * radius**2
    science = [e.mjd_obs for e in campaign_exposures(config) if e.obstype == "object"]
    rows = []
    for kind in ("transient", "variable", "mover"):
        density = getattr(config, f"{kind}s_per_deg2")
        n = int(rng.poisson(density * area)) if density > 0 else 0
        r = radius * np.sqrt(rng.uniform(0.0, 1.0, n))
        theta = rng.uniform(0.0, 2.0 * math.pi, n)
        ra, dec = _inverse_gnomonic(
            config.ra_deg, config.dec_deg, r * np.cos(theta), r * np.sin(theta)
        )
        mag = rng.uniform(config.variable_mag_min, config.variable_mag_max, n)
        zeros = np.zeros(n)
        if kind == "transient":
            t0 = rng.uniform(min(science) - 2.0, max(science), n)
            timescale, amplitude, rates = rng.uniform(1.0, 4.0, n), zeros, (zeros, zeros)
        elif kind == "variable":
            t0 = rng.uniform(0.0, 1.0, n) + config.mjd_start
            timescale, amplitude = rng.uniform(0.2, 2.0, n), rng.uniform(0.2, 0.6, n)
            rates = (zeros, zeros)
        else:
            t0 = rng.choice(np.asarray(science), n)
            speed = (
                rng.uniform(
                    config.mover_rate_min_arcsec_per_hour, config.mover_rate_max_arcsec_per_hour, n
                )
                * 24.0
                / 3600.0
            )
            angle = rng.uniform(0.0, 2.0 * math.pi, n)
            timescale, amplitude = zeros, zeros
            rates = (speed * np.cos(angle), speed * np.sin(angle))
        for k in range(n):
            rows.append((kind, ra[k], dec[k], mag[k], t0[k], timescale[k], amplitude[k],
                         rates[0][k], rates[1][k]))  # fmt: skip
    names = ("kind", "ra_deg", "dec_deg", "mag", "t0_mjd", "timescale_d", "amplitude_mag",
             "ra_rate_deg_per_day", "dec_rate_deg_per_day")  # fmt: skip
    table = Table(rows=rows, names=names, dtype=("U9",) + (float,) * 8)
    table.add_column(np.arange(len(table), dtype=np.int64) + VARIABLE_ID_OFFSET, 0, name="id")
    table.meta["SIMHASH"] = config_digest(config)
    return table


def variable_epochs(variables: Table, mjd: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (deg) and magnitudes of `make_variable_catalog` sources at one epoch.

    Returns ``(ra_deg, dec_deg, mag)``; ``mag`` is ``inf`` for a transient not yet there.
    """
    kind = np.asarray(variables["kind"]).astype(str)
    dt = mjd - np.asarray(variables["t0_mjd"], float)
    mag = np.asarray(variables["mag"], float).copy()
    timescale = np.asarray(variables["timescale_d"], float)
    transient = kind == "transient"
    with np.errstate(divide="ignore", invalid="ignore"):
        fade = 2.5 / math.log(10.0) * dt / np.where(timescale > 0, timescale, 1.0)
    mag[transient] = np.where(dt[transient] >= 0, mag[transient] + fade[transient], np.inf)
    variable = kind == "variable"
    mag[variable] += np.asarray(variables["amplitude_mag"], float)[variable] * np.sin(
        2.0 * math.pi * dt[variable] / timescale[variable]
    )
    dec = np.asarray(variables["dec_deg"], float) + np.asarray(
        variables["dec_rate_deg_per_day"], float
    ) * dt * (kind == "mover")
    cos_dec = np.cos(np.radians(dec))
    ra = (
        np.asarray(variables["ra_deg"], float)
        + np.asarray(variables["ra_rate_deg_per_day"], float) * dt * (kind == "mover") / cos_dec
    )
    return ra % 360.0, dec, mag


def variable_truth_table(config: SimConfig, variables: Table) -> Table:
    """Per (science visit, source) truth of `make_variable_catalog` sources on some CCD.

    Columns: ``visit``, ``ccd``, ``id``, ``kind``, ``mjd``, ``ra_deg``, ``dec_deg``, ``mag``
    (``inf``: not there yet), ``x``, ``y`` (0-based CCD pixels). Only sources inside a CCD.
    """
    rows = []
    for spec in campaign_exposures(config):
        if spec.obstype != "object":
            continue
        ra, dec, mag = variable_epochs(variables, spec.mjd_obs)
        for ccd in range(config.n_ccds):
            x, y = sky_to_pixel_true(config, spec, ccd, ra, dec)
            on = np.flatnonzero((x >= 0) & (x < config.ccd_nx) & (y >= 0) & (y < config.ccd_ny))
            for k in on.tolist():
                rows.append((spec.visit, ccd, int(variables["id"][k]), str(variables["kind"][k]),
                             spec.mjd_obs, ra[k], dec[k], mag[k], x[k], y[k]))  # fmt: skip
    names = ("visit", "ccd", "id", "kind", "mjd", "ra_deg", "dec_deg", "mag", "x", "y")
    dtypes = (np.int64, np.int64, np.int64, "U9") + (float,) * 6
    table = (
        Table(rows=rows, names=names, dtype=dtypes) if rows else Table(names=names, dtype=dtypes)
    )
    table.meta["SIMHASH"] = config_digest(config)
    return table


def make_reference_catalog(config: SimConfig, truth: Table) -> Table:
    """A reference catalog: the truth brighter than ``ref_mag_max`` in r-like terms, with noise.

    Columns ``id``, ``ra_deg``, ``dec_deg``, ``<band>_mag``, ``<band>_mag_err``: positions
    carry Gaussian noise of ``ref_pos_noise_mas`` per axis, magnitudes of ``ref_mag_noise``;
    the error columns hold those nominal values.
    """
    rng = _rng(config, _TAG_REF)
    # A selection on the faintest simulated band keeps every reference star in every band.
    faint = np.max([np.asarray(truth[f"{b}_mag"]) for b in config.filters], axis=0)
    keep = faint <= config.ref_mag_max
    sub = truth[keep]
    n = len(sub)
    noise_deg = config.ref_pos_noise_mas / 3.6e6
    dec = np.asarray(sub["dec_deg"]) + rng.normal(0.0, noise_deg, n)
    ra = np.asarray(sub["ra_deg"]) + rng.normal(0.0, noise_deg, n) / np.cos(np.radians(dec))
    table = Table()
    table["id"] = np.asarray(sub["id"])
    table["ra_deg"] = ra % 360.0
    table["dec_deg"] = dec
    for band in config.filters:
        table[f"{band}_mag"] = np.asarray(sub[f"{band}_mag"]) + rng.normal(
            0.0, config.ref_mag_noise, n
        )
        table[f"{band}_mag_err"] = np.full(n, config.ref_mag_noise)
    table.meta["SIMHASH"] = config_digest(config)
    return table


# --------------------------------------------------------------------------------------------
# Static CCD properties


@dataclasses.dataclass(frozen=True, slots=True)
class CcdElectronics:
    """Per-amplifier electronics of one CCD (dicts keyed by amplifier name)."""

    gain_e_per_adu: dict[str, float]
    read_noise_e: dict[str, float]
    bias_level_adu: dict[str, float]
    bias_columns_adu: np.ndarray
    """``(nx,)`` static column structure of the bias over the assembled CCD (ADU)."""
    bad_columns: tuple[int, ...]
    """Assembled columns with 5 % response."""


def ccd_electronics(config: SimConfig, ccd: int) -> CcdElectronics:
    """Gains, read noises, bias levels, bias column structure and dead columns of ``ccd``."""
    rng = _rng(config, _TAG_STATIC, ccd)
    layout = ccd_layout(config)
    names = [amp.name for amp in layout.amps]
    gains = rng.uniform(config.gain_min_e_per_adu, config.gain_max_e_per_adu, len(names))
    noises = rng.uniform(config.read_noise_min_e, config.read_noise_max_e, len(names))
    levels = config.bias_level_adu * rng.uniform(0.9, 1.1, len(names))
    columns = rng.normal(0.0, config.bias_column_amplitude_adu, config.ccd_nx)
    # A warm "roll-off" near each amplifier's first read columns.
    for amp in layout.amps:
        xs = np.arange(amp.assembled[1].stop - amp.assembled[1].start)
        ramp = 4.0 * config.bias_column_amplitude_adu * np.exp(-xs / 20.0)
        block = columns[amp.assembled[1]]
        block += ramp[::-1] if amp.flip_x else ramp
    bad = rng.choice(np.arange(8, config.ccd_nx - 8), config.n_bad_columns, replace=False)
    return CcdElectronics(
        gain_e_per_adu={n: round(float(g), 4) for n, g in zip(names, gains, strict=True)},
        read_noise_e={n: round(float(r), 3) for n, r in zip(names, noises, strict=True)},
        bias_level_adu={n: float(b) for n, b in zip(names, levels, strict=True)},
        bias_columns_adu=columns.astype(np.float32),
        bad_columns=tuple(sorted(int(c) for c in bad)),
    )


@functools.lru_cache(maxsize=4)
def flat_pattern(config: SimConfig, ccd: int) -> np.ndarray:
    """Relative response ``(ny, nx)`` of ``ccd``: vignetting x pixel response x dead columns.

    The returned array is cached and read-only.
    """
    rng = _rng(config, _TAG_FLAT, ccd)
    u0, v0 = ccd_origin_pix(config, ccd)
    radius2 = _field_radius_pix(config) ** 2
    u = (np.arange(config.ccd_nx, dtype=np.float32) + np.float32(u0)) ** 2
    v = (np.arange(config.ccd_ny, dtype=np.float32) + np.float32(v0)) ** 2
    flat = rng.standard_normal((config.ccd_ny, config.ccd_nx), dtype=np.float32)
    flat *= np.float32(config.prnu_rms)
    flat += np.float32(1.0)
    flat *= 1.0 - np.float32(config.vignetting / radius2) * (v[:, None] + u[None, :])
    for col in ccd_electronics(config, ccd).bad_columns:
        flat[:, col] *= np.float32(0.05)
    flat.flags.writeable = False
    return flat


def truth_table(config: SimConfig) -> Table:
    """Per (visit, ccd) truth of the science visits.

    Columns: ``visit``, ``ccd``, ``filter``, ``exptime_s``, ``airmass``, ``transparency``,
    ``fwhm_arcsec`` (at the CCD centre), ``zp_mag`` (zero point of the ISR'd electron image,
    see the module docstring), ``sky_e`` (sky electrons per pixel before the flat), ``ra_deg``,
    ``dec_deg`` (true pointing), ``header_ra_deg``, ``header_dec_deg``.
    """
    rows = []
    medians = {ccd: float(np.median(flat_pattern(config, ccd))) for ccd in range(config.n_ccds)}
    for spec in campaign_exposures(config):
        if spec.obstype != "object":
            continue
        for ccd in range(config.n_ccds):
            u0, v0 = ccd_origin_pix(config, ccd)
            fwhm = float(
                _fwhm_pix(config, spec, u0 + config.ccd_nx / 2, v0 + config.ccd_ny / 2)
                * config.pixel_scale_arcsec
            )
            zp = config.zero_point_1s_mag[config.band_index(spec.band)] + 2.5 * math.log10(
                spec.exptime_s * spec.transparency * medians[ccd]
            )
            rows.append(
                (
                    spec.visit,
                    ccd,
                    spec.band,
                    spec.exptime_s,
                    spec.airmass,
                    spec.transparency,
                    fwhm,
                    zp,
                    _sky_e(config, spec),
                    spec.ra_deg,
                    spec.dec_deg,
                    spec.header_ra_deg,
                    spec.header_dec_deg,
                )
            )
    names = (
        "visit", "ccd", "filter", "exptime_s", "airmass", "transparency", "fwhm_arcsec",
        "zp_mag", "sky_e", "ra_deg", "dec_deg", "header_ra_deg", "header_dec_deg",
    )  # fmt: skip
    table = Table(rows=rows, names=names) if rows else Table(names=names)
    table.meta["SIMHASH"] = config_digest(config)
    return table


def _sky_e(config: SimConfig, spec: ExposureSpec) -> float:
    i = config.band_index(spec.band)
    per_arcsec2 = 10.0 ** (-0.4 * (config.sky_mag_arcsec2[i] - config.zero_point_1s_mag[i]))
    return float(spec.exptime_s * per_arcsec2 * config.pixel_scale_arcsec**2)


# --------------------------------------------------------------------------------------------
# Rendering


def _render_stars(
    image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, fwhm: np.ndarray,
    beta: float, noise_e: float,
) -> None:  # fmt: skip
    """Add Moffat stars (normalised to ``flux`` over their stamp) to ``image`` in place."""
    ny, nx = image.shape
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    # Stamp half-size: where a star's profile falls below a fifth of the sky noise, within
    # 6 .. 25 alpha (at 6 alpha the truncated wing holds < 0.1 % of the flux).
    threshold = max(0.2 * noise_e, 0.05)
    reach = alpha * (flux * (beta - 1.0) / (np.pi * alpha**2 * threshold)) ** (1.0 / (2.0 * beta))
    half = np.ceil(np.clip(reach, 6.0 * alpha, 25.0 * alpha)).astype(int)
    for xc, yc, f, a, h in zip(x, y, flux, alpha, half, strict=True):
        ix, iy = round(xc), round(yc)
        x1, x2 = max(ix - h, 0), min(ix + h + 1, nx)
        y1, y2 = max(iy - h, 0), min(iy + h + 1, ny)
        if x1 >= x2 or y1 >= y2:
            continue
        dx = np.arange(ix - h, ix + h + 1) - xc
        dy = np.arange(iy - h, iy + h + 1) - yc
        prof = (1.0 + (dy[:, None] ** 2 + dx[None, :] ** 2) / (a * a)) ** (-beta)
        prof *= f / prof.sum()
        image[y1:y2, x1:x2] += prof[
            y1 - (iy - h) : y2 - (iy - h), x1 - (ix - h) : x2 - (ix - h)
        ].astype(np.float32)


def _add_cosmic_rays(
    config: SimConfig, image: np.ndarray, exptime_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Add cosmic-ray tracks to ``image`` in place; return the boolean mask of hit pixels."""
    ny, nx = image.shape
    area_cm2 = nx * ny * (config.pixel_size_um * 1e-4) ** 2
    n = int(rng.poisson(config.cosmic_ray_rate_per_cm2_min * area_cm2 * exptime_s / 60.0))
    hit = np.zeros(image.shape, dtype=bool)
    if n == 0:
        return hit
    x0 = rng.uniform(0, nx, n)
    y0 = rng.uniform(0, ny, n)
    length = rng.exponential(4.0, n)
    angle = rng.uniform(0, np.pi, n)
    ys, xs, es = [], [], []
    for i in range(n):
        steps = max(int(np.ceil(length[i])), 1)
        t = np.arange(steps + 1) / steps * length[i]
        px = np.round(x0[i] + t * np.cos(angle[i])).astype(int)
        py = np.round(y0[i] + t * np.sin(angle[i])).astype(int)
        keep = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        pairs = np.unique(np.stack([py[keep], px[keep]]), axis=1)
        ys.append(pairs[0])
        xs.append(pairs[1])
        es.append(rng.lognormal(np.log(1500.0), 0.5, pairs.shape[1]))
    yy, xx, ee = np.concatenate(ys), np.concatenate(xs), np.concatenate(es)
    np.add.at(image, (yy, xx), ee.astype(np.float32))
    hit[yy, xx] = True
    return hit


def _bleed(image: np.ndarray, full_well_e: float) -> None:
    """Spill charge above the full well up and down its column, in place."""
    over = image > full_well_e
    if not over.any():
        return
    fw = np.float32(full_well_e)
    for col in np.flatnonzero(over.any(axis=0)):
        column = image[:, col]
        rows = np.flatnonzero(column > fw)
        excess = float(np.sum(column[rows] - fw))
        column[rows] = fw
        top, bottom = rows.max() + 1, rows.min()
        for direction, share in ((+1, 0.5), (-1, 0.5)):
            left = excess * share
            segment = column[top:] if direction > 0 else column[:bottom][::-1]
            room = np.cumsum(fw - segment, dtype=np.float64)
            n_full = int(np.searchsorted(room, left))
            segment[:n_full] = fw
            if n_full < segment.size:
                done = room[n_full - 1] if n_full else 0.0
                segment[n_full] += np.float32(left - done)


@dataclasses.dataclass(frozen=True, slots=True)
class SimulatedCcd:
    """One simulated raw CCD and the truth behind it.

    Attributes
    ----------
    raw : numpy.ndarray
        ``(ny_raw, nx_raw)`` uint16 raw frame (ADU).
    header : astropy.io.fits.Header
        The raw header (see the module docstring).
    stars : astropy.table.Table
        Stars rendered on this CCD: ``id``, ``x``, ``y`` (0-based assembled pixels), ``flux_e``
        (electrons before the flat), ``fwhm_pix``.
    cosmic_rays : numpy.ndarray
        ``(ny, nx)`` bool: assembled pixels hit by a cosmic ray.
    saturated : numpy.ndarray
        ``(ny, nx)`` bool: assembled pixels whose charge reached the ADC ceiling (bleed trails
        included).
    """

    raw: np.ndarray
    header: fits.Header
    stars: Table
    cosmic_rays: np.ndarray
    saturated: np.ndarray


def _header(config: SimConfig, spec: ExposureSpec, ccd: int, elec: CcdElectronics) -> fits.Header:
    header = fits.Header()
    header["INSTRUME"] = (INSTRUMENT, "simulated CFHT MegaCam")
    header["OBSTYPE"] = (spec.obstype, "object, bias or flat")
    header["EXPNUM"] = (spec.visit, "visit id")
    header["CCDNUM"] = (ccd, "CCD number")
    header["FILTER"] = (spec.band, "band")
    header["EXPTIME"] = (spec.exptime_s, "exposure time (s)")
    header["MJD-OBS"] = (spec.mjd_obs, "start of exposure (MJD)")
    header["AIRMASS"] = (spec.airmass, "airmass at start")
    header["RA_DEG"] = (spec.header_ra_deg, "telescope pointing RA (deg)")
    header["DEC_DEG"] = (spec.header_dec_deg, "telescope pointing Dec (deg)")
    header["SATURATE"] = (SATURATION_ADU, "ADC saturation (ADU)")
    header["BUNIT"] = ("adu", "pixel unit")
    for name in elec.gain_e_per_adu:
        header[f"GAIN{name}"] = (elec.gain_e_per_adu[name], f"amp {name} gain (e-/ADU)")
        header[f"RDNOISE{name}"] = (elec.read_noise_e[name], f"amp {name} read noise (e-)")
    for key, value in ccd_layout(config).header_cards().items():
        header[key] = value
    wcs = header_wcs(config, spec, ccd)
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = (float(v) for v in wcs.wcs.crval)
    header["CRPIX1"], header["CRPIX2"] = (float(v) for v in wcs.wcs.crpix)
    for (i, j), value in np.ndenumerate(wcs.wcs.cd):
        header[f"CD{i + 1}_{j + 1}"] = float(value)
    header["RADESYS"] = "ICRS"
    header["SIMHASH"] = (config_digest(config), "digest of the simulation config")
    return header


def simulate_ccd(
    config: SimConfig,
    spec: ExposureSpec,
    ccd: int,
    *,
    stars: Table | None = None,
    variables: Table | None = None,
) -> SimulatedCcd:
    """Simulate one raw CCD of one exposure.

    Parameters
    ----------
    config : SimConfig
        The simulation.
    spec : ExposureSpec
        The exposure, from `campaign_exposures`.
    ccd : int
        CCD number, 0 .. n_ccds - 1.
    stars : astropy.table.Table, optional
        The truth catalog (`make_truth_catalog`); required for ``object`` exposures.
    variables : astropy.table.Table, optional
        Transients, variables and movers (`make_variable_catalog`), rendered at the
        exposure's epoch.

    Returns
    -------
    SimulatedCcd
        The raw frame, its header and the truth of what was rendered.

    Raises
    ------
    ValueError
        If ``ccd`` is out of range or an object exposure comes without ``stars``.
    """
    u0, v0 = ccd_origin_pix(config, ccd)
    ny, nx = config.ccd_ny, config.ccd_nx
    elec = ccd_electronics(config, ccd)
    rng = _rng(config, _TAG_NOISE, spec.visit, ccd)
    rendered = Table(names=("id", "x", "y", "flux_e", "fwhm_pix"), dtype=(np.int64,) + (float,) * 4)
    image = np.zeros((ny, nx), dtype=np.float32)
    if spec.obstype == "object":
        if stars is None:
            raise ValueError("stars (the truth catalog) is required for an object exposure")
        sky = _sky_e(config, spec)
        x, y = sky_to_pixel_true(config, spec, ccd, stars["ra_deg"], stars["dec_deg"])
        margin = 60
        on = (x > -margin) & (x < nx + margin) & (y > -margin) & (y < ny + margin)
        mags = np.asarray(stars[f"{spec.band}_mag"])[on]
        flux = (
            spec.exptime_s
            * 10.0 ** (-0.4 * (mags - config.zero_point_1s_mag[config.band_index(spec.band)]))
            * spec.transparency
        )
        fwhm = _fwhm_pix(config, spec, x[on] + u0, y[on] + v0)
        _render_stars(
            image, x[on], y[on], flux, fwhm, config.moffat_beta, math.sqrt(sky) if sky > 0 else 1.0
        )
        if variables is not None and len(variables):
            v_ra, v_dec, v_mag = variable_epochs(variables, spec.mjd_obs)
            vx, vy = sky_to_pixel_true(config, spec, ccd, v_ra, v_dec)
            v_on = (vx > -margin) & (vx < nx + margin) & (vy > -margin) & (vy < ny + margin)
            v_on &= np.isfinite(v_mag)
            v_flux = (
                spec.exptime_s
                * 10.0
                ** (-0.4 * (v_mag[v_on] - config.zero_point_1s_mag[config.band_index(spec.band)]))
                * spec.transparency
            )
            _render_stars(
                image, vx[v_on], vy[v_on], v_flux, _fwhm_pix(config, spec, vx[v_on] + u0,
                vy[v_on] + v0), config.moffat_beta, math.sqrt(sky) if sky > 0 else 1.0,
            )  # fmt: skip
        rendered = Table(
            {
                "id": np.asarray(stars["id"])[on],
                "x": x[on],
                "y": y[on],
                "flux_e": flux,
                "fwhm_pix": fwhm,
            }
        )
        image += np.float32(sky)
        image *= flat_pattern(config, ccd)
    elif spec.obstype == "flat":
        image += np.float32(config.flat_level_e)
        image *= flat_pattern(config, ccd)
    elif spec.obstype != "bias":
        raise ValueError(f"spec.obstype must be object, bias or flat; got {spec.obstype!r}")
    image += np.float32(config.dark_e_per_s * spec.exptime_s)
    electrons = rng.poisson(image).astype(np.float32)
    del image
    if spec.obstype == "object":
        cosmic = _add_cosmic_rays(config, electrons, spec.exptime_s, rng)
    else:
        cosmic = np.zeros((ny, nx), dtype=bool)
    _bleed(electrons, config.full_well_e)

    layout = ccd_layout(config)
    raw = np.empty(layout.raw_shape, dtype=np.float32)
    n_rows = layout.raw_shape[0]
    saturated = np.zeros((ny, nx), dtype=bool)
    t = np.arange(n_rows, dtype=np.float32) / n_rows
    for amp in layout.amps:
        gain = elec.gain_e_per_adu[amp.name]
        noise_adu = elec.read_noise_e[amp.name] / gain
        ys, xs = amp.assembled
        block = electrons[ys, xs] / np.float32(gain) + elec.bias_columns_adu[xs]
        cols = slice(
            min(amp.data[1].start, amp.serial_overscan[1].start),
            max(amp.data[1].stop, amp.serial_overscan[1].stop),
        )
        # Per-exposure row structure: a few smooth waves plus row-to-row jitter, common to
        # the data and overscan of a row.
        phases = rng.uniform(0, 2 * np.pi, 3)
        rows = sum(
            np.sin(2 * np.pi * (k + 1) * t + phases[k]) / (k + 1) for k in range(3)
        ) * np.float32(config.bias_row_amplitude_adu)
        rows += rng.normal(0.0, 0.3 * config.bias_row_amplitude_adu, n_rows).astype(np.float32)
        level = elec.bias_level_adu[amp.name] + rng.normal(0.0, 5.0)
        region = raw[:, cols]
        region[...] = rng.standard_normal(region.shape, dtype=np.float32)
        region *= np.float32(noise_adu)
        region += (rows + np.float32(level))[:, None]
        raw[amp.data[0], amp.data[1]] += block[:, ::-1] if amp.flip_x else block
    np.rint(raw, out=raw)
    np.clip(raw, 0, SATURATION_ADU, out=raw)
    for amp in layout.amps:
        amp_sat = raw[amp.data[0], amp.data[1]] >= SATURATION_ADU
        saturated[amp.assembled] = amp_sat[:, ::-1] if amp.flip_x else amp_sat
    return SimulatedCcd(
        raw=raw.astype(np.uint16),
        header=_header(config, spec, ccd, elec),
        stars=rendered,
        cosmic_rays=cosmic,
        saturated=saturated,
    )


def simulate_raw(
    config: SimConfig,
    spec: ExposureSpec,
    ccd: int,
    *,
    stars: Table | None = None,
    variables: Table | None = None,
) -> fits.HDUList:
    """The raw FITS file of one (exposure, ccd) as an HDU list (see `simulate_ccd`)."""
    sim = simulate_ccd(config, spec, ccd, stars=stars, variables=variables)
    return fits.HDUList([fits.PrimaryHDU(data=sim.raw, header=sim.header)])
