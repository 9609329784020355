"""Warp a calexp onto a patch's pixel grid, in the campaign's common flux unit.

The image and variance of a calibrated exposure are resampled onto the patch WCS and scaled
to a common photometric zero point, so that warps of every visit can be averaged directly.
With the default zero point of 31.4 (the AB magnitude of 1 nJy) and calexps whose header
``ZP`` is an AB zero point for flux in electrons, warp pixels are in nJy per patch pixel.

Resampling follows reproject's interpolation approach (scipy ``map_coordinates`` on the input
array at the input-pixel position of every output pixel) but computes the pixel-to-pixel
mapping once on a coarse grid (every ``interp_length_pixels``, the ``interpLength`` of LSST's
warper) and interpolates it with a bicubic spline: the exact WCS transform of every pixel is
the dominant cost of ``reproject_interp`` (measured: see ``benchmarks/coadd.py``), the mapping
is smooth, and one mapping serves the image, variance and every mask bit. The image is
interpolated with a cubic spline (or bilinearly), the variance always bilinearly (it stays
non-negative), and flux is conserved by the ratio of output to input pixel areas (pixels hold
flux per pixel, not surface brightness).

Interpolation correlates the noise of neighbouring output pixels: the per-pixel scatter of a
warp is smaller than its variance plane says, while sums over a PSF-sized area follow it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_area
from scipy import ndimage
from scipy.interpolate import RectBivariateSpline

from dcflow.configs import check_fields, config_field
from dcflow.errors import InputDataError
from dcflow.exposure import Exposure, MaskPlane, header_number

__all__ = ["WarpConfig", "WarpResult", "calexp_flux_scale", "warp_exposure", "warp_visit"]

log = logging.getLogger(__name__)

_TIME_KEYS = ("MJD-OBS", "DATE-OBS", "MJD-BEG", "MJD-AVG", "MJD-END", "DATE-BEG", "DATE-AVG")

_SPLINE_ORDER = {"bilinear": 1, "cubic": 3}
_STRIP_ROWS = 512
"""Output rows resampled at a time (bounds the temporaries: ~60 MB per 512 x 4200 strip)."""


@dataclass(frozen=True, slots=True)
class WarpConfig:
    """Configuration of `warp_exposure`."""

    interpolation: str = config_field(
        "cubic",
        "Kernel used to resample the image",
        choices={
            "bilinear": "linear in x and y; smooths the PSF by up to a quarter pixel^2",
            "cubic": "cubic B-spline interpolation (exact at pixel centres, sharper PSF)",
        },
    )
    zero_point_mag: float = config_field(
        31.4,
        "Photometric zero point of the warp pixels, mag (31.4 AB = 1 nJy per unit)",
        minimum=0.0,
        maximum=50.0,
    )
    interp_length_pixels: int = config_field(
        16,
        "Spacing of the grid on which the exact WCS mapping is computed, output pixels "
        "(1 = every pixel)",
        minimum=1,
        maximum=256,
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class WarpResult:
    """A calexp resampled onto a patch.

    Attributes
    ----------
    warp : Exposure
        ``(ny, nx)`` patch arrays: image and variance in units of the zero point
        ``header['ZP']`` (flux per patch pixel), mask with ``NO_DATA`` outside the calexp; the
        header keeps the calexp's keys (visit, filter, PSFFWHM, AIRMASS...) without its WCS.
    flux_scale : float
        Factor from calexp electrons to warp units (without the pixel-area ratio).
    pixel_area_ratio : float
        Output over input pixel area that was applied to conserve flux.
    n_covered_pixels : int
        Patch pixels that received data from the calexp.
    psf_fwhm_arcsec : float
        The calexp's PSF FWHM (``PSFFWHM``), arcsec.
    """

    warp: Exposure
    flux_scale: float
    pixel_area_ratio: float
    n_covered_pixels: int
    psf_fwhm_arcsec: float


def calexp_flux_scale(header: fits.Header, zero_point_mag: float) -> float:
    """Factor that turns calexp electrons into flux at ``zero_point_mag``.

    ``mag = ZP - 2.5 log10(electrons) = zero_point_mag - 2.5 log10(flux)``, hence
    ``flux = electrons * 10 ** (0.4 * (zero_point_mag - ZP))``.

    Raises
    ------
    InputDataError
        If the header has no finite ``ZP``.
    """
    zp = header_number(header, "ZP", "calexp")
    return float(10.0 ** (0.4 * (zero_point_mag - zp)))


def _footprint_box(
    calexp_wcs: WCS, calexp_shape: tuple[int, int], out_wcs: WCS, out_shape: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Output pixel box ``(x0, y0, x1, y1)`` covering the calexp, from points along its edges."""
    ny, nx = calexp_shape
    t = np.linspace(0.0, 1.0, 9)
    xs = np.concatenate([t * nx, np.full(9, nx), (1 - t) * nx, np.zeros(9)]) - 0.5
    ys = np.concatenate([np.zeros(9), t * ny, np.full(9, ny), (1 - t) * ny]) - 0.5
    ra, dec = calexp_wcs.all_pix2world(xs, ys, 0)
    ox, oy = out_wcs.all_world2pix(ra, dec, 0)
    if not (np.all(np.isfinite(ox)) and np.all(np.isfinite(oy))):
        return None
    margin = 2
    x0 = max(0, int(np.floor(ox.min())) - margin)
    y0 = max(0, int(np.floor(oy.min())) - margin)
    x1 = min(out_shape[1], int(np.ceil(ox.max())) + margin + 1)
    y1 = min(out_shape[0], int(np.ceil(oy.max())) + margin + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _input_coordinates(
    out_wcs: WCS, in_wcs: WCS, box: tuple[int, int, int, int], step: int
) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
    """A function giving input pixel ``(x_in, y_in)`` of output rows ``[r0, r1)`` of ``box``.

    The exact WCS transform is computed on a grid of nodes every ``step`` output pixels and
    interpolated with a bicubic spline (exact when the box is small or ``step`` is 1).
    """
    x0, y0, x1, y1 = box
    nx, ny = x1 - x0, y1 - y0

    if min(nx, ny) < 8:
        step = 1  # too small for a spline of the mapping: transform every pixel

    def nodes(n: int) -> np.ndarray:
        count = int(np.ceil((n - 1) / step)) + 1
        return np.arange(n, dtype=float) if count >= n else np.linspace(0.0, n - 1.0, max(count, 4))

    def exact(gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mx, my = np.meshgrid(gx + x0, gy + y0)
        ra, dec = out_wcs.all_pix2world(mx.ravel(), my.ravel(), 0)
        ix, iy = in_wcs.all_world2pix(ra, dec, 0)
        return ix.reshape(mx.shape), iy.reshape(mx.shape)

    gx, gy = nodes(nx), nodes(ny)
    fx = np.arange(nx, dtype=float)
    if len(gx) == nx and len(gy) == ny:
        return lambda r0, r1: exact(fx, np.arange(r0, r1, dtype=float))
    ix, iy = exact(gx, gy)
    spline_x = RectBivariateSpline(gy, gx, ix, kx=3, ky=3)
    spline_y = RectBivariateSpline(gy, gx, iy, kx=3, ky=3)

    def rows(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        fy = np.arange(r0, r1, dtype=float)
        return spline_x(fy, fx), spline_y(fy, fx)

    return rows


def _resample(calexp, finite, patch_wcs, box, config, scale, image, variance, mask) -> int:
    """Fill ``image``, ``variance``, ``mask`` in ``box``, by strips of rows; covered pixel count.

    Working by strips of ``_STRIP_ROWS`` output rows, each with the calexp cropped to what the
    strip needs (plus a margin that keeps the cubic spline's boundary away), bounds the
    float64 temporaries; mask bits are grown for the cubic kernel once, over the whole box.
    """
    x0, y0, x1, y1 = box
    mapping = _input_coordinates(patch_wcs, calexp.wcs, box, config.interp_length_pixels)
    in_ny, in_nx = calexp.shape
    order = _SPLINE_ORDER[config.interpolation]
    margin = 8
    n_covered = 0
    flagged_bits: dict[int, np.ndarray] = {}
    for r0 in range(0, y1 - y0, _STRIP_ROWS):
        r1 = min(y1 - y0, r0 + _STRIP_ROWS)
        x_in, y_in = mapping(r0, r1)
        inside = (x_in >= -0.5) & (x_in < in_nx - 0.5) & (y_in >= -0.5) & (y_in < in_ny - 0.5)
        rows = slice(y0 + r0, y0 + r1)
        if not inside.any():
            continue
        cx0 = max(0, int(np.floor(x_in[inside].min())) - margin)
        cx1 = min(in_nx, int(np.ceil(x_in[inside].max())) + margin + 1)
        cy0 = max(0, int(np.floor(y_in[inside].min())) - margin)
        cy1 = min(in_ny, int(np.ceil(y_in[inside].max())) + margin + 1)
        crop = (slice(cy0, cy1), slice(cx0, cx1))
        ok = finite[crop]
        coords = np.array([y_in - cy0, x_in - cx0])
        source = np.where(ok, calexp.image[crop], 0.0).astype(np.float64)
        sub_image = ndimage.map_coordinates(source, coords, order=order, mode="nearest")
        source = np.where(ok, calexp.variance[crop], 0.0).astype(np.float64)
        sub_var = ndimage.map_coordinates(source, coords, order=1, mode="nearest")
        image[rows, x0:x1] = np.where(inside, sub_image * scale, 0.0)
        variance[rows, x0:x1] = np.where(inside, sub_var * scale**2, 0.0)
        mask[rows, x0:x1] = np.where(inside, 0, int(MaskPlane.NO_DATA))
        in_mask = calexp.mask[crop].astype(np.int64) | np.where(ok, 0, int(MaskPlane.NO_DATA))
        for bit in MaskPlane:
            plane = (in_mask & int(bit)) != 0
            if not plane.any():
                continue
            hit = ndimage.map_coordinates(plane.astype(np.float32), coords, order=1, mode="nearest")
            if bit not in flagged_bits:
                flagged_bits[bit] = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            flagged_bits[bit][r0:r1] = hit > 1e-3
        n_covered += int(inside.sum())
    for bit, flagged in flagged_bits.items():
        if order > 1:
            flagged = ndimage.binary_dilation(flagged)
        mask[y0:y1, x0:x1] |= np.where(flagged, int(bit), 0).astype(np.int32)
    return n_covered


def warp_exposure(
    calexp: Exposure,
    patch_wcs: WCS,
    patch_shape: tuple[int, int],
    *,
    config: WarpConfig | None = None,
) -> WarpResult:
    """Resample a calexp's image, variance and mask onto a patch grid at a common zero point.

    Parameters
    ----------
    calexp : Exposure
        Background-subtracted calibrated exposure: image and variance in electrons (and
        electrons^2), a WCS, header ``ZP`` (mag of one electron) and ``PSFFWHM`` (arcsec).
    patch_wcs : astropy.wcs.WCS
        WCS of the patch arrays (pixel origin at ``[0, 0]``), e.g. from
        `dcflow.campaign.skymap.patch_wcs`.
    patch_shape : tuple of int
        ``(ny, nx)`` of the patch arrays.
    config : WarpConfig, optional
        Interpolation kernel, target zero point and mapping grid spacing.

    Returns
    -------
    WarpResult
        The warp and how it was scaled. A calexp that misses the patch gives an all-``NO_DATA``
        warp with ``n_covered_pixels == 0`` (not an error: footprints are conservative).

    Raises
    ------
    InputDataError
        If the calexp has no WCS, no finite ``ZP`` or ``PSFFWHM``, or no finite pixel.
    ValueError
        If ``patch_shape`` is not two positive integers.
    """
    config = config or WarpConfig()
    if len(patch_shape) != 2 or min(patch_shape) < 1:
        raise ValueError(f"patch_shape must be two positive integers (ny, nx); got {patch_shape}")
    patch_shape = (int(patch_shape[0]), int(patch_shape[1]))
    if calexp.wcs is None:
        raise InputDataError("calexp has no WCS: it cannot be warped")
    fwhm_arcsec = header_number(calexp.header, "PSFFWHM", "calexp")
    flux_scale = calexp_flux_scale(calexp.header, config.zero_point_mag)
    finite = np.isfinite(calexp.image) & np.isfinite(calexp.variance)
    if not finite.any():
        raise InputDataError("calexp image or variance has no finite pixel", n_finite=0)

    area_ratio = float(
        proj_plane_pixel_area(patch_wcs.celestial) / proj_plane_pixel_area(calexp.wcs.celestial)
    )
    scale = flux_scale * area_ratio

    image = np.zeros(patch_shape, dtype=np.float32)
    variance = np.zeros(patch_shape, dtype=np.float32)
    mask = np.full(patch_shape, int(MaskPlane.NO_DATA), dtype=np.int32)

    box = _footprint_box(calexp.wcs, calexp.shape, patch_wcs, patch_shape)
    n_covered = 0
    if box is not None:
        n_covered = _resample(calexp, finite, patch_wcs, box, config, scale, image, variance, mask)
    header = calexp.header.copy()
    # the exposure's time cards are WCS keywords too, but they say when, not where: kept (the
    # coadd places each warp in its night by them)
    wcs_keys = set(calexp.wcs.to_header(relax=True)) - set(_TIME_KEYS) | {"WCSAXES"}
    for key in list(header.keys()):
        if key in wcs_keys or key.startswith(("A_", "B_", "AP_", "BP_", "PV")):
            header.remove(key, ignore_missing=True, remove_all=True)
    # The calexp's PSF model is in its own pixel grid (dcflow.stages.psf.PsfFitResult.to_header):
    # it does not describe the warp; PSFFWHM and PSFBETA do.
    for key in list(header.keys()):
        if key.startswith("PSFW") or key in ("PSFMODEL", "PSFALPHA", "PSFE1", "PSFE2", "PSFSUBS"):
            header.remove(key, ignore_missing=True, remove_all=True)
    header["ZP"] = (config.zero_point_mag, "mag of one unit of warp flux")
    header["FLUXSCAL"] = (flux_scale, "warp units per calexp electron")
    header["AREARAT"] = (area_ratio, "patch / calexp pixel area")
    header["PSFFWHM"] = (fwhm_arcsec, "PSF FWHM of the input calexp, arcsec")
    header["NCOVERED"] = (n_covered, "patch pixels covered by the calexp")
    log.debug(
        "warped %d patch pixels (flux scale %.4g, area ratio %.4f)",
        n_covered,
        flux_scale,
        area_ratio,
    )
    warp = Exposure(
        image=image, mask=mask, variance=variance, wcs=patch_wcs.deepcopy(), header=header
    )
    return WarpResult(
        warp=warp,
        flux_scale=flux_scale,
        pixel_area_ratio=area_ratio,
        n_covered_pixels=n_covered,
        psf_fwhm_arcsec=fwhm_arcsec,
    )


def warp_visit(
    calexps: Sequence[Exposure],
    patch_wcs: WCS,
    patch_shape: tuple[int, int],
    *,
    config: WarpConfig | None = None,
) -> WarpResult:
    """One warp per visit and patch: every CCD of the visit warped and pasted together.

    CCDs do not overlap on the sky, so each patch pixel takes its value from the one CCD that
    covers it (the first, should two touch at an edge). Each CCD is scaled with its own ``ZP``.

    Parameters
    ----------
    calexps : sequence of Exposure
        Calexps of one visit (as for `warp_exposure`); CCDs that miss the patch are allowed.
    patch_wcs : astropy.wcs.WCS
        WCS of the patch arrays.
    patch_shape : tuple of int
        ``(ny, nx)`` of the patch arrays.
    config : WarpConfig, optional
        As for `warp_exposure`.

    Returns
    -------
    WarpResult
        The merged warp; ``flux_scale`` and ``pixel_area_ratio`` are coverage-weighted means,
        and so is the header's ``PSFFWHM`` (the coadd's PSF model takes one FWHM per visit).
        The header otherwise comes from the CCD covering most pixels.

    Raises
    ------
    InputDataError
        As `warp_exposure`, for any CCD.
    ValueError
        If ``calexps`` is empty or holds more than one ``VISIT``.
    """
    if len(calexps) == 0:
        raise ValueError("calexps must hold at least one calexp of the visit")
    visits = {c.header.get("VISIT") for c in calexps}
    if len(visits) > 1:
        raise ValueError(
            f"calexps must come from one visit; got VISIT values {sorted(map(str, visits))}"
        )
    results = [warp_exposure(c, patch_wcs, patch_shape, config=config) for c in calexps]
    covered = [r.n_covered_pixels for r in results]
    main = results[int(np.argmax(covered))]
    if len(results) == 1:
        return main
    image = np.zeros(patch_shape, dtype=np.float32)
    variance = np.zeros(patch_shape, dtype=np.float32)
    mask = np.full(patch_shape, int(MaskPlane.NO_DATA), dtype=np.int32)
    for result in results:
        if result.n_covered_pixels == 0:
            continue
        take = ((mask & MaskPlane.NO_DATA) != 0) & ((result.warp.mask & MaskPlane.NO_DATA) == 0)
        image[take] = result.warp.image[take]
        variance[take] = result.warp.variance[take]
        mask[take] = result.warp.mask[take]
    total = max(sum(covered), 1)
    weight = (
        np.array(covered, dtype=float) / total
        if sum(covered)
        else np.ones(len(covered)) / len(covered)
    )
    fwhm = float(np.dot(weight, [r.psf_fwhm_arcsec for r in results]))
    header = main.warp.header.copy()
    header["PSFFWHM"] = (fwhm, "coverage-weighted PSF FWHM of CCDs, arcsec")
    header["NCOVERED"] = (int(sum(covered)), "patch pixels covered by the visit")
    header["NCCDS"] = (int(sum(c > 0 for c in covered)), "CCDs contributing to this warp")
    warp = Exposure(
        image=image, mask=mask, variance=variance, wcs=patch_wcs.deepcopy(), header=header
    )
    return WarpResult(
        warp=warp,
        flux_scale=float(np.dot(weight, [r.flux_scale for r in results])),
        pixel_area_ratio=float(np.dot(weight, [r.pixel_area_ratio for r in results])),
        n_covered_pixels=int(sum(covered)),
        psf_fwhm_arcsec=fwhm,
    )
