"""Instrument signature removal: raw CCD readout to an Exposure in electrons.

The steps follow ip_isr: per-amplifier overscan fit and subtraction, trim and assembly (amps
read from the right are mirrored back), gain, master-bias subtraction, master-flat division,
masks (SAT incl. bleed trails, BAD from the flat, CR from a sharpness test) and a variance
plane. `assemble_ccd` stops after the gain, which is what the calibration products combine.

Everything works on float32 arrays in place on a single assembled buffer: a full
2048 x 4612 MegaCam CCD takes a few tenths of a second.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from dcflow.configs import check_fields, config_field
from dcflow.errors import InputDataError
from dcflow.exposure import Exposure, MaskPlane
from dcflow.instruments import RawCcd

if TYPE_CHECKING:
    from dcflow.stages.calibs import BiasResult, FlatResult

__all__ = [
    "AssembledCcd",
    "IsrConfig",
    "IsrResult",
    "assemble_ccd",
    "check_finite",
    "find_cosmic_rays",
    "interpolate_masked_columns",
    "overscan_levels",
    "run_isr",
]

logger = logging.getLogger(__name__)

_COPIED_KEYS = (
    "INSTRUME", "OBSTYPE", "EXPNUM", "CCDNUM", "FILTER", "EXPTIME", "MJD-OBS", "AIRMASS",
    "RA_DEG", "DEC_DEG", "SATURATE", "NAMPS", "AMPNAMES",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class IsrConfig:
    """Configuration of `run_isr` and `assemble_ccd` (the ``isr:`` config section)."""

    overscan_method: str = config_field(
        "median_per_row",
        "How the serial overscan is turned into a bias level per row.",
        choices={
            "median_per_row": "the median of each row's overscan pixels (follows row noise)",
            "poly": "a sigma-clipped polynomial in row number fitted to the row medians",
        },
    )
    overscan_poly_order: int = config_field(
        3, "Order of the overscan polynomial (used with overscan_method=poly).", minimum=0,
        maximum=12,
    )  # fmt: skip
    overscan_skip_cols: int = config_field(
        2, "Overscan columns next to the data left out of the fit (pixels).", minimum=0
    )
    saturation_grow_pix: int = config_field(
        1, "Grow the SAT mask by this many pixels in x and y (pixels).", minimum=0, maximum=20
    )
    interpolate_bad: bool = config_field(
        True, "Replace BAD pixels by linear interpolation along their row (flags INTRP)."
    )
    detect_cosmic_rays: bool = config_field(True, "Find cosmic rays and flag them CR.")
    cr_nsigma: float = config_field(
        6.0, "Cosmic-ray seeds exceed the local background by this many sigma.", minimum=1.0
    )
    cr_psf_fwhm_pix: float = config_field(
        2.0,
        "Smallest PSF FWHM a real source can have (pixels): a pixel sharper than a Gaussian of "
        "this FWHM against its neighbours is a cosmic ray (keep below the best seeing).",
        exclusive_minimum=0.5,
    )
    cr_sharpness_nsigma: float = config_field(
        2.5, "Noise allowance of the sharpness test (sigma).", minimum=0.0
    )
    cr_grow_nsigma: float = config_field(
        3.0, "Neighbours of a cosmic ray above this many sigma join it.", minimum=0.0
    )
    background_block_pix: int = config_field(
        128, "Block size of the coarse background used by the cosmic-ray finder (pixels).",
        minimum=16,
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class AssembledCcd:
    """A raw CCD after overscan subtraction, trimming, assembly and gain.

    Attributes
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` float32 assembled CCD (electrons).
    saturated : numpy.ndarray
        ``(ny, nx)`` bool, pixels at or above the raw saturation level (not grown).
    read_noise_e : numpy.ndarray
        ``(nx,)`` float32 read noise of the amplifier reading each column (electrons).
    overscan_level_adu : dict of str to float
        Mean overscan level per amplifier (ADU).
    """

    image: np.ndarray
    saturated: np.ndarray
    read_noise_e: np.ndarray
    overscan_level_adu: dict[str, float]


@dataclass(frozen=True, slots=True)
class IsrResult:
    """Output of `run_isr`.

    Attributes
    ----------
    exposure : Exposure
        Image (electrons), mask, variance (electrons^2), header WCS and header values.
    overscan_level_adu : dict of str to float
        Mean overscan level per amplifier (ADU).
    n_saturated : int
        Pixels flagged SAT.
    n_cosmic_ray : int
        Pixels flagged CR.
    n_bad : int
        Pixels flagged BAD.
    """

    exposure: Exposure
    overscan_level_adu: dict[str, float]
    n_saturated: int
    n_cosmic_ray: int
    n_bad: int


def check_finite(raw: RawCcd) -> None:
    """Raise `InputDataError` naming the amplifier if any of its pixels is NaN or infinite.

    Raises
    ------
    InputDataError
        If an amplifier's data or overscan holds non-finite values.
    """
    if raw.data.shape != raw.layout.raw_shape:
        raise InputDataError(
            f"{raw.source}: raw data shape {raw.data.shape} differs from the layout's "
            f"{raw.layout.raw_shape}"
        )
    if np.isfinite(raw.data).all():
        return
    for amp in raw.layout.amps:
        for what, region in (("data", amp.data), ("overscan", amp.serial_overscan)):
            block = raw.data[region]
            n_bad = int(block.size - np.count_nonzero(np.isfinite(block)))
            if n_bad:
                extent = "all" if n_bad == block.size else f"{n_bad} of {block.size}"
                raise InputDataError(
                    f"{raw.source}: amplifier {amp.name} {what} has non-finite (NaN/inf) "
                    f"values in {extent} pixels",
                    amp=amp.name,
                    n_nonfinite=n_bad,
                )


def overscan_levels(raw: RawCcd, *, config: IsrConfig = IsrConfig()) -> dict[str, np.ndarray]:
    """The bias level of every data row of each amplifier, from its serial overscan.

    Returns
    -------
    dict of str to numpy.ndarray
        Amplifier name to ``(ny_amp,)`` float32 level per data row (ADU).
    """
    levels = {}
    for amp in raw.layout.amps:
        over = raw.data[amp.serial_overscan]
        skip = min(config.overscan_skip_cols, over.shape[1] - 1)
        # Skip the columns nearest the data (charge-transfer tail): they come first when the
        # overscan follows the data in the raw row, last when it precedes it.
        over = (
            over[:, skip:]
            if amp.serial_overscan[1].start >= amp.data[1].stop
            else over[:, : over.shape[1] - skip]
        )
        per_row = np.median(over, axis=1)
        if config.overscan_method == "poly":
            rows = np.arange(per_row.size, dtype=float)
            keep = np.ones(per_row.size, dtype=bool)
            fit = None
            for _ in range(3):
                fit = np.polynomial.Polynomial.fit(
                    rows[keep], per_row[keep], config.overscan_poly_order
                )
                resid = per_row - fit(rows)
                scale = 1.4826 * np.median(np.abs(resid[keep])) + 1e-6
                keep = np.abs(resid) < 4.0 * scale
            per_row = fit(rows)
        ys = amp.data[0]
        over_rows = amp.serial_overscan[0]
        levels[amp.name] = np.asarray(
            per_row[ys.start - over_rows.start : ys.stop - over_rows.start], dtype=np.float32
        )
    return levels


def assemble_ccd(raw: RawCcd, *, config: IsrConfig = IsrConfig()) -> AssembledCcd:
    """Overscan-subtract, trim, assemble and gain-correct a raw CCD.

    Parameters
    ----------
    raw : RawCcd
        The raw frame (unchanged).
    config : IsrConfig
        Overscan settings.

    Returns
    -------
    AssembledCcd
        The assembled CCD in electrons, ``(ny, nx)`` = ``raw.layout.assembled_shape``.

    Raises
    ------
    InputDataError
        If an amplifier holds non-finite values (the message names it).
    """
    check_finite(raw)
    layout = raw.layout
    levels = overscan_levels(raw, config=config)
    image = np.empty(layout.assembled_shape, dtype=np.float32)
    saturated = np.zeros(layout.assembled_shape, dtype=bool)
    read_noise = np.zeros(layout.assembled_shape[1], dtype=np.float32)
    for amp in layout.amps:
        block = raw.data[amp.data]
        sat = block >= raw.saturation_adu
        if amp.flip_x:
            block, sat = block[:, ::-1], sat[:, ::-1]
        out = image[amp.assembled]
        np.subtract(block, levels[amp.name][:, None], out=out)
        out *= np.float32(raw.gain_e_per_adu[amp.name])
        saturated[amp.assembled] = sat
        read_noise[amp.assembled[1]] = raw.read_noise_e[amp.name]
    return AssembledCcd(
        image=image,
        saturated=saturated,
        read_noise_e=read_noise,
        overscan_level_adu={name: float(np.mean(lv)) for name, lv in levels.items()},
    )


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a sparse boolean mask by ``radius`` pixels (square), touching only its pixels."""
    if radius == 0 or not mask.any():
        return mask
    ys, xs = np.nonzero(mask)
    ny, nx = mask.shape
    out = mask.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)] = True
    return out


def _coarse_background(image: np.ndarray, block: int) -> np.ndarray:
    """Median per ``block`` x ``block`` cell, from every 4th pixel (for thresholds only).

    Partial cells at the far edges are padded by repeating the last row/column, which keeps
    the median vectorised (a NaN pad would send numpy's nanmedian into a per-cell loop).
    """
    step = 4
    sub = image[::step, ::step]
    cell = max(block // step, 1)
    ny, nx = sub.shape
    nby, nbx = -(-ny // cell), -(-nx // cell)
    padded = np.pad(sub, ((0, nby * cell - ny), (0, nbx * cell - nx)), mode="edge")
    cells = padded.reshape(nby, cell, nbx, cell).transpose(0, 2, 1, 3).reshape(nby, nbx, -1)
    return np.median(cells, axis=2)


def find_cosmic_rays(
    image: np.ndarray,
    variance: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
    config: IsrConfig = IsrConfig(),
) -> np.ndarray:
    """Flag cosmic-ray pixels: bright pixels sharper than any PSF against their neighbours.

    A seed pixel exceeds the local background ``b`` by ``cr_nsigma`` sigma, and for at least
    one of the four pairs of opposite neighbours (at distance ``d`` = 1 or sqrt 2) it obeys
    ``I - b > (mean(pair) - b) / psi(d) + cr_sharpness_nsigma * sigma``, where ``psi(d)`` is
    a Gaussian of FWHM ``cr_psf_fwhm_pix`` at distance ``d`` relative to its peak. A star's
    centre cannot beat its neighbours that way when its FWHM exceeds ``cr_psf_fwhm_pix``,
    so star cores are kept. Seeds then take in their 8 neighbours above ``cr_grow_nsigma``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` float32 image (electrons, flat-fielded; background not subtracted).
    variance : numpy.ndarray
        ``(ny, nx)`` variance of ``image``.
    exclude : numpy.ndarray, optional
        ``(ny, nx)`` bool, pixels never flagged (saturated, bad).
    config : IsrConfig
        Thresholds.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` bool mask of cosmic-ray pixels.
    """
    ny, nx = image.shape
    block = max(config.background_block_pix // 4, 1) * 4
    background = _coarse_background(image, block)
    sigma = np.sqrt(np.maximum(variance, 0, dtype=np.float32))
    low = np.float32(np.min(background))
    candidate = image > low + np.float32(config.cr_nsigma) * sigma
    candidate[0, :] = candidate[-1, :] = False
    candidate[:, 0] = candidate[:, -1] = False
    if exclude is not None:
        candidate &= ~exclude
    ys, xs = np.nonzero(candidate)
    found = np.zeros((ny, nx), dtype=bool)
    if ys.size == 0:
        return found
    b = background[ys // block, xs // block].astype(np.float32)
    s = sigma[ys, xs]
    c = image[ys, xs] - b
    seeds = c > np.float32(config.cr_nsigma) * s
    gauss_sigma = config.cr_psf_fwhm_pix / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    psi1 = math.exp(-1.0 / (2.0 * gauss_sigma**2))
    sharp = np.zeros(ys.size, dtype=bool)
    for dy, dx, psi in ((0, 1, psi1), (1, 0, psi1), (1, 1, psi1**2), (1, -1, psi1**2)):
        pair = 0.5 * (image[ys + dy, xs + dx] + image[ys - dy, xs - dx]) - b
        sharp |= c > pair / np.float32(psi) + np.float32(config.cr_sharpness_nsigma) * s
    seeds &= sharp
    sy, sx = ys[seeds], xs[seeds]
    found[sy, sx] = True
    if sy.size:
        grow_b = b[seeds]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                gy, gx = np.clip(sy + dy, 0, ny - 1), np.clip(sx + dx, 0, nx - 1)
                bright = image[gy, gx] - grow_b > np.float32(config.cr_grow_nsigma) * sigma[gy, gx]
                if exclude is not None:
                    bright &= ~exclude[gy, gx]
                found[gy[bright], gx[bright]] = True
    return found


def interpolate_masked_columns(
    image: np.ndarray, variance: np.ndarray, bad: np.ndarray, *, max_distance_pix: int = 16
) -> int:
    """Replace ``bad`` pixels by linear interpolation along their row, in place.

    Each bad pixel takes the line between the nearest good pixels left and right of it
    within ``max_distance_pix`` (or the one found, or is left as is if none). Meant for bad
    columns, which are narrow; the variance is interpolated the same way.

    Parameters
    ----------
    image, variance : numpy.ndarray
        ``(ny, nx)`` float32 arrays, modified in place (only at ``bad`` pixels).
    bad : numpy.ndarray
        ``(ny, nx)`` bool pixels to replace.
    max_distance_pix : int
        How far to search for good neighbours (pixels).

    Returns
    -------
    int
        Number of pixels replaced.
    """
    ys, xs = np.nonzero(bad)
    if ys.size == 0:
        return 0
    nx = image.shape[1]
    sides = []
    for step in (-1, 1):
        pos = np.full(ys.size, -1, dtype=np.int64)
        for k in range(1, max_distance_pix + 1):
            cand = xs + step * k
            inside = (cand >= 0) & (cand < nx) & (pos < 0)
            ok = np.zeros(ys.size, dtype=bool)
            ok[inside] = ~bad[ys[inside], cand[inside]]
            pos[ok] = cand[ok]
        sides.append(pos)
    left, right = sides
    has_l, has_r = left >= 0, right >= 0
    done = has_l | has_r
    for plane in (image, variance):
        vl = np.where(has_l, plane[ys, np.maximum(left, 0)], 0.0)
        vr = np.where(has_r, plane[ys, np.maximum(right, 0)], 0.0)
        both = has_l & has_r
        w = np.where(both, (xs - left) / np.maximum(right - left, 1), 0.0)
        value = np.where(both, vl + w * (vr - vl), np.where(has_l, vl, vr))
        plane[ys[done], xs[done]] = value[done]
    return int(done.sum())


def _check_calib(name: str, product, shape: tuple[int, int], source: str) -> None:
    if product.image.shape != shape:
        raise InputDataError(
            f"{source}: {name} shape {product.image.shape} differs from the assembled CCD {shape}"
        )


def run_isr(
    raw: RawCcd,
    *,
    bias: BiasResult | None = None,
    flat: FlatResult | None = None,
    config: IsrConfig = IsrConfig(),
) -> IsrResult:
    """Remove the instrument signature of a raw CCD.

    Parameters
    ----------
    raw : RawCcd
        The raw frame (unchanged).
    bias : BiasResult, optional
        Master bias in electrons (from `dcflow.stages.calibs.combine_bias`); its variance is
        added to the output's.
    flat : FlatResult, optional
        Master flat normalised to median 1 (`dcflow.stages.calibs.combine_flat`); its BAD
        mask is carried over.
    config : IsrConfig
        Settings.

    Returns
    -------
    IsrResult
        The exposure in electrons, ``(ny, nx)`` = ``raw.layout.assembled_shape``, with mask,
        variance (Poisson from the bias-subtracted signal plus read noise squared plus the
        master bias variance, divided by the flat squared; the master flat's own noise is
        left out), the header WCS and the raw header's observing keywords.

    Raises
    ------
    TypeError
        If ``raw`` is not a `RawCcd`.
    InputDataError
        If an amplifier holds NaN values, or a calibration does not match the CCD's shape.
    """
    if not isinstance(raw, RawCcd):
        raise TypeError(f"raw must be a RawCcd (see raw_ccd_from_hdu), not {type(raw).__name__}")
    asm = assemble_ccd(raw, config=config)
    image = asm.image
    shape = image.shape
    if bias is not None:
        _check_calib("bias", bias, shape, raw.source)
        image -= bias.image
    variance = np.maximum(image, np.float32(0))
    variance += (asm.read_noise_e**2)[None, :]
    if bias is not None:
        variance += bias.variance
    mask = np.zeros(shape, dtype=np.int32)
    saturated = _grow(asm.saturated, config.saturation_grow_pix)
    mask[saturated] |= MaskPlane.SAT
    bad = None
    if flat is not None:
        _check_calib("flat", flat, shape, raw.source)
        inverse = np.reciprocal(flat.image, dtype=np.float32)
        image *= inverse
        inverse *= inverse
        variance *= inverse
        del inverse
        mask |= flat.mask
        bad = (flat.mask & MaskPlane.BAD) != 0
        if config.interpolate_bad and bad.any():
            interpolate_masked_columns(image, variance, bad)
            mask[bad] |= MaskPlane.INTRP
    n_cr = 0
    if config.detect_cosmic_rays and raw.obstype == "object":
        exclude = saturated if bad is None else saturated | bad
        cosmic = find_cosmic_rays(image, variance, exclude=exclude, config=config)
        mask[cosmic] |= MaskPlane.CR
        n_cr = int(np.count_nonzero(cosmic))
    header = fits.Header()
    for key in _COPIED_KEYS:
        if key in raw.header:
            header[key] = raw.header[key]
    for amp in raw.layout.amps:
        header[f"GAIN{amp.name}"] = raw.gain_e_per_adu[amp.name]
        header[f"RDNOISE{amp.name}"] = raw.read_noise_e[amp.name]
        header[f"OSCAN{amp.name}"] = (asm.overscan_level_adu[amp.name], "mean overscan (ADU)")
    header["VISIT"] = raw.visit
    header["CCD"] = raw.ccd
    header["BUNIT"] = "electron"
    header["ISR_OSCN"] = (config.overscan_method, "overscan method")
    header["ISR_BIAS"] = (bias is not None, "master bias subtracted")
    header["ISR_FLAT"] = (flat is not None, "master flat divided")
    n_sat = int(np.count_nonzero(saturated))
    n_bad = 0 if bad is None else int(np.count_nonzero(bad))
    header["N_SAT"] = (n_sat, "pixels flagged SAT")
    header["N_CR"] = (n_cr, "pixels flagged CR")
    header["N_BAD"] = (n_bad, "pixels flagged BAD")
    logger.info(
        "ISR visit %d ccd %d: %d SAT, %d CR, %d BAD pixels", raw.visit, raw.ccd, n_sat, n_cr, n_bad
    )
    exposure = Exposure(image=image, mask=mask, variance=variance, wcs=raw.wcs, header=header)
    return IsrResult(
        exposure=exposure,
        overscan_level_adu=asm.overscan_level_adu,
        n_saturated=n_sat,
        n_cosmic_ray=n_cr,
        n_bad=n_bad,
    )
