"""The ``sdss`` instrument: real SDSS imaging (Stripe 82) corrected frames as calexp inputs.

SDSS's own pipeline (photo) has already bias-subtracted and flat-fielded its ``fpC`` frames, so
this instrument has no ISR: it turns the SDSS files of one frame into an `Exposure` in
electrons that the processCcd stage takes like any other instrument's post-ISR exposure.

Files of one frame (run, camcol, field, filter), all read by the caller through
`dcflow.io.read_fits` and handed here as HDU lists:

``fpC``
    Corrected frame, 2048 x 1489 uint16 (BZERO 32768) in ADU with a software bias
    ``SOFTBIAS`` added; a TAN WCS and ``FLUX20`` (ADU of a 20th-magnitude star in the whole
    exposure) in the header.
``fpM``
    Photo's mask planes: one binary table per plane, each row an object mask given as spans
    ``(row, first column, last column)`` stored as big-endian int16 triplets, offset by the row's
    ``row0``/``col0``; the last table (``S_MASKTYPE``) names the planes.
``psField``
    Per-filter gain (e-/ADU), dark variance (ADU^2 per pixel), sky and PSF width (HDU 6).
``tsField``
    Photometric calibration of the field: ``aa`` (zero point), ``kk`` (extinction) and
    ``airmass`` per filter.

Data ids: each filter of a drift-scan field is its own exposure, so `sdss_data_id` maps
(run, field, filter) to ``visit`` and the camera column to ``ccd``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from dcflow.campaign.registry import RawRecord
from dcflow.errors import InputDataError
from dcflow.exposure import Exposure, MaskPlane

__all__ = [
    "FPM_MASK_PLANES",
    "INSTRUMENT",
    "PIXEL_SCALE_ARCSEC",
    "SDSS_BANDS",
    "FrameCalibration",
    "SdssFrame",
    "SdssZeroPoint",
    "fpc_band",
    "fpc_counts_adu",
    "fpc_data_id",
    "fpc_exptime_s",
    "fpm_mask",
    "fpm_plane_spans",
    "frame_calibration",
    "header_wcs",
    "make_exposure",
    "prepare_frame",
    "psfield_psf_image",
    "record_from_fpc_header",
    "record_from_header",
    "refcat_in_frame",
    "reference_catalog",
    "sdss_data_id",
    "sdss_frame_of_data_id",
    "sdss_zero_point",
]

INSTRUMENT = "sdss"
"""Instrument name used in data ids and layout templates."""

SDSS_BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z")
"""SDSS filters, in the order of the per-filter arrays of psField and tsField."""

PIXEL_SCALE_ARCSEC = 0.396
"""Nominal pixel scale of the SDSS imaging camera (arcsec per pixel)."""

FPM_MASK_PLANES: Mapping[str, MaskPlane] = {
    "S_MASK_INTERP": MaskPlane.INTRP,
    "S_MASK_SATUR": MaskPlane.SAT,
    "S_MASK_CR": MaskPlane.CR,
    "S_MASK_GHOST": MaskPlane.SUSPECT,
    "S_MASK_NOTCHECKED": MaskPlane.SUSPECT,
    "S_MASK_SUBTRACTED": MaskPlane.SUSPECT,
}
"""fpM plane name to calexp mask bit.

INTERP (value interpolated over: bad columns, cosmic rays), SATUR and CR map to their LSST
namesakes. GHOST (optical ghost), NOTCHECKED (not searched for objects: the frame's 4-6 pixel
border and the cores of saturated stars) and SUBTRACTED (a model was subtracted) make a pixel
doubtful, hence SUSPECT. The OBJECT, BRIGHTOBJECT, BINOBJECT and CATOBJECT planes are photo's
own detections, not pixel defects: they are not carried over (processCcd detects anew).
"""

_FPM_TYPE_TABLE = "S_MASKTYPE"
_CAMERA_COLUMNS = range(1, 7)
_FIELD_SPAN = 10_000
_FRAMES_PER_CAMROW = 2


def _check_band(band: str) -> int:
    if band not in SDSS_BANDS:
        raise ValueError(f"band must be one of {', '.join(SDSS_BANDS)}; got {band!r}")
    return SDSS_BANDS.index(band)


def _header_value(header: fits.Header, key: str, what: str) -> object:
    if key not in header:
        raise InputDataError(f"{what} header lacks keyword {key}", missing_key=key)
    return header[key]


def _header_float(header: fits.Header, key: str, what: str) -> float:
    value = _header_value(header, key, what)
    try:
        number = float(value)  # fpC stores EXPTIME as a string
    except (TypeError, ValueError):
        raise InputDataError(
            f"{what} header keyword {key} is not a number: {value!r}", key=key
        ) from None
    if not math.isfinite(number):
        raise InputDataError(f"{what} header keyword {key} is not finite: {value!r}", key=key)
    return number


# ---------------------------------------------------------------------------------------------
# Data ids


def sdss_data_id(run: int, camcol: int, field: int, band: str) -> dict[str, int | str]:
    """Data id of one SDSS frame.

    Each filter of a drift-scan field is a separate exposure (the filters cross a point of
    the sky about a minute apart), so a visit is one (run, field, filter) and the ccd is the
    camera column: ``visit = (run * 10000 + field) * 10 + filter index`` (u=0 ... z=4) and
    ``ccd = camcol``. Run 6377, camcol 4, field 399 in r is visit 637703992, ccd 4.

    Raises
    ------
    ValueError
        If run or field is negative, field >= 10000, camcol outside 1-6 or band not u g r i z.
    """
    index = _check_band(band)
    if run < 0:
        raise ValueError(f"run must be >= 0; got {run}")
    if not 0 <= field < _FIELD_SPAN:
        raise ValueError(f"field must be in 0..{_FIELD_SPAN - 1}; got {field}")
    if camcol not in _CAMERA_COLUMNS:
        raise ValueError(f"camcol must be 1..6; got {camcol}")
    return {
        "instrument": INSTRUMENT,
        "visit": (run * _FIELD_SPAN + field) * 10 + index,
        "ccd": camcol,
        "filter": band,
    }


def sdss_frame_of_data_id(visit: int, ccd: int) -> tuple[int, int, int, str]:
    """Invert `sdss_data_id`: ``(run, camcol, field, band)`` of a visit and ccd.

    Raises
    ------
    ValueError
        If ``ccd`` is not a camera column 1-6 or the visit's last digit is not a filter
        index 0-4.
    """
    if int(ccd) not in _CAMERA_COLUMNS:
        raise ValueError(f"ccd must be the camera column 1..6; got {ccd}")
    run_field, index = divmod(int(visit), 10)
    if index >= len(SDSS_BANDS):
        raise ValueError(f"visit must end in a filter index 0-4; got {visit}")
    run, field = divmod(run_field, _FIELD_SPAN)
    return run, int(ccd), field, SDSS_BANDS[index]


def fpc_data_id(header: fits.Header) -> dict[str, int | str]:
    """`sdss_data_id` of an fpC frame from its header.

    Keywords: ``RUN``, ``CAMCOL``, ``FRAME``, ``CAMROW``, ``FILTER``.

    ``FRAME`` counts the frames of that CCD; the filters' rows of the camera (``CAMROW`` 1-5:
    r i u z g) reach the same sky 2 frames apart, and SDSS numbers a field by its r frame, so
    ``field = FRAME - 2 * (CAMROW - 1)`` (run 6377: u frame 403, g frame 407 are field 399).

    Raises
    ------
    InputDataError
        If a keyword is missing or out of range.
    """
    keys = ("RUN", "CAMCOL", "FRAME", "CAMROW")
    values = {key: int(_header_float(header, key, "fpC")) for key in keys}
    field = values["FRAME"] - _FRAMES_PER_CAMROW * (values["CAMROW"] - 1)
    try:
        return sdss_data_id(values["RUN"], values["CAMCOL"], field, fpc_band(header))
    except ValueError as exc:
        raise InputDataError(f"fpC header gives no valid data id: {exc}") from None


def record_from_fpc_header(header: fits.Header, path: str) -> RawRecord:
    """Registry record of an fpC file: the ``translate`` of `dcflow.campaign.registry.ingest`.

    ``mjd`` is ``TAI / 86400`` (TAI seconds since MJD 0 at the frame's first row); ``ra_deg``,
    ``dec_deg`` the WCS reference point (the frame's centre); ``airmass`` is not in fpC headers.

    Raises
    ------
    KeyError
        If a keyword is missing (as the registry's ingest expects).
    ValueError
        If a value is out of range.
    """
    for key in ("RUN", "CAMCOL", "FRAME", "CAMROW", "FILTER", "EXPTIME", "TAI", "CRVAL1", "CRVAL2"):
        if key not in header:
            raise KeyError(f"missing header keyword {key}")
    try:
        data_id = fpc_data_id(header)
        exptime_s = fpc_exptime_s(header)
    except InputDataError as exc:
        raise ValueError(str(exc)) from None
    return RawRecord(
        instrument=INSTRUMENT,
        visit=int(data_id["visit"]),
        ccd=int(data_id["ccd"]),
        obstype="object",
        filter=str(data_id["filter"]),
        exptime=exptime_s,
        mjd=float(header["TAI"]) / 86400.0,
        airmass=None,
        ra_deg=float(header["CRVAL1"]),
        dec_deg=float(header["CRVAL2"]),
        path=path,
    )


# ---------------------------------------------------------------------------------------------
# fpC: corrected frame


def _fpc_primary(hdus: fits.HDUList) -> fits.PrimaryHDU:
    if len(hdus) == 0 or hdus[0].data is None:
        raise InputDataError("fpC has no image in its primary HDU")
    data = hdus[0].data
    if data.ndim != 2:
        raise InputDataError(f"fpC image must be 2-d (ny, nx); got shape {data.shape}")
    return hdus[0]


def fpc_band(header: fits.Header) -> str:
    """Filter of an fpC frame (``FILTER`` keyword), one of u g r i z.

    Raises
    ------
    InputDataError
        If ``FILTER`` is missing or not an SDSS filter.
    """
    band = str(_header_value(header, "FILTER", "fpC")).strip()
    if band not in SDSS_BANDS:
        raise InputDataError(f"fpC FILTER must be one of {', '.join(SDSS_BANDS)}; got {band!r}")
    return band


def fpc_exptime_s(header: fits.Header) -> float:
    """Exposure time of an fpC frame in seconds (``EXPTIME``, stored by SDSS as a string)."""
    exptime = _header_float(header, "EXPTIME", "fpC")
    if exptime <= 0:
        raise InputDataError(f"fpC EXPTIME must be > 0 s; got {exptime}", exptime_s=exptime)
    return exptime


def fpc_counts_adu(hdus: fits.HDUList) -> np.ndarray:
    """Pixel values of an fpC frame in ADU above the software bias.

    Parameters
    ----------
    hdus : astropy.io.fits.HDUList
        The fpC file; its primary HDU holds the uint16 image (BZERO 32768 already applied by
        astropy) and ``SOFTBIAS``.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` float32, ``image - SOFTBIAS``: sky and sources in ADU (flat-fielded).

    Raises
    ------
    InputDataError
        If the image is missing or not 2-d, or ``SOFTBIAS`` is missing.
    """
    primary = _fpc_primary(hdus)
    softbias = _header_float(primary.header, "SOFTBIAS", "fpC")
    return np.asarray(primary.data, dtype=np.float32) - np.float32(softbias)


def header_wcs(header: fits.Header) -> WCS:
    """The fpC header's TAN WCS (good to ~0.1"), pixel origin at array ``[0, 0]``.

    Raises
    ------
    InputDataError
        If the header has no celestial TAN WCS.
    """
    for key in ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2"):
        _header_value(header, key, "fpC")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    if not wcs.has_celestial or "TAN" not in wcs.wcs.ctype[0]:
        raise InputDataError(f"fpC WCS must be celestial TAN; got CTYPE {list(wcs.wcs.ctype)}")
    return wcs


# ---------------------------------------------------------------------------------------------
# fpM: mask planes


def fpm_plane_spans(hdus: fits.HDUList) -> dict[str, np.ndarray]:
    """Spans of every fpM mask plane, in frame pixel coordinates.

    SDSS stores each plane as a binary table in HDU ``value + 1`` (``value`` from the last
    table, ``S_MASKTYPE``); each row is one object mask whose column ``s`` holds its spans as
    big-endian int16 triplets ``(row, first column, last column)``, relative to the row's
    ``row0``/``col0``.

    Parameters
    ----------
    hdus : astropy.io.fits.HDUList
        The fpM file.

    Returns
    -------
    dict of str to numpy.ndarray
        Plane name (``S_MASK_INTERP``...) to an ``(n, 3)`` int64 array of ``(y, x_first,
        x_last)`` spans, inclusive, unclipped (photo's masks may reach one pixel off the frame).

    Raises
    ------
    InputDataError
        If the plane-name table is missing, a plane's HDU is missing, or a span list is not a
        whole number of triplets or disagrees with ``nspan``.
    """
    type_table = None
    for hdu in hdus[1:]:
        if isinstance(hdu, fits.BinTableHDU) and hdu.header.get("TYPENAME") == _FPM_TYPE_TABLE:
            type_table = hdu.data
    if type_table is None:
        raise InputDataError(f"fpM has no {_FPM_TYPE_TABLE} table naming its mask planes")
    spans: dict[str, np.ndarray] = {}
    for name, value in zip(type_table["attributeName"], type_table["Value"], strict=True):
        name = str(name).strip()
        if name == "S_NMASK_TYPES":
            continue
        index = int(value) + 1
        if index >= len(hdus) or not isinstance(hdus[index], fits.BinTableHDU):
            raise InputDataError(f"fpM plane {name} (HDU {index}) is missing")
        table = hdus[index].data
        parts = [np.empty((0, 3), dtype=np.int64)]
        for row in table:
            raw = np.asarray(row["s"], dtype=np.uint8)
            if raw.size % 6 or raw.size // 6 != int(row["nspan"]):
                raise InputDataError(
                    f"fpM plane {name}: span list of {raw.size} bytes does not hold "
                    f"nspan={int(row['nspan'])} int16 triplets",
                    plane=name,
                )
            triplets = raw.view(">i2").reshape(-1, 3).astype(np.int64)
            triplets[:, 0] += int(row["row0"])
            triplets[:, 1:] += int(row["col0"])
            parts.append(triplets)
        spans[name] = np.concatenate(parts)
    return spans


def _paint_spans(mask: np.ndarray, spans: np.ndarray, bit: int) -> None:
    ny, nx = mask.shape
    y = spans[:, 0]
    x0 = np.clip(spans[:, 1], 0, nx - 1)
    x1 = np.clip(spans[:, 2], 0, nx - 1)
    keep = (y >= 0) & (y < ny) & (spans[:, 2] >= 0) & (spans[:, 1] < nx) & (x1 >= x0)
    y, x0, x1 = y[keep], x0[keep], x1[keep]
    lengths = x1 - x0 + 1
    rows = np.repeat(y, lengths)
    starts = np.repeat(x0 - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    cols = starts + np.arange(lengths.sum())
    mask[rows, cols] |= bit


def fpm_mask(
    hdus: fits.HDUList,
    *,
    shape: tuple[int, int] | None = None,
    planes: Mapping[str, MaskPlane] = FPM_MASK_PLANES,
) -> np.ndarray:
    """The fpM mask planes as a calexp mask.

    Parameters
    ----------
    hdus : astropy.io.fits.HDUList
        The fpM file.
    shape : tuple of int, optional
        ``(ny, nx)`` of the frame; checked against the fpM's ``MASKROWS``/``MASKCOLS``.
    planes : mapping of str to MaskPlane
        fpM plane name to the mask bit it sets; planes not listed are ignored
        (default `FPM_MASK_PLANES`).

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` int32 bit mask of `MaskPlane` values.

    Raises
    ------
    InputDataError
        If the fpM's size disagrees with ``shape`` or its tables are malformed.
    """
    header = hdus[0].header
    mask_shape = (
        int(_header_float(header, "MASKROWS", "fpM")),
        int(_header_float(header, "MASKCOLS", "fpM")),
    )
    if shape is not None and tuple(shape) != mask_shape:
        raise InputDataError(
            f"fpM covers {mask_shape} (MASKROWS, MASKCOLS) but the frame is {tuple(shape)}",
            mask_rows=mask_shape[0],
            mask_cols=mask_shape[1],
        )
    mask = np.zeros(mask_shape, dtype=np.int32)
    for name, spans in fpm_plane_spans(hdus).items():
        if name in planes and len(spans):
            _paint_spans(mask, spans, int(planes[name]))
    return mask


# ---------------------------------------------------------------------------------------------
# psField / tsField: per-filter calibration


@dataclass(frozen=True, slots=True)
class FrameCalibration:
    """What SDSS measured of one frame (psField HDU 6 and tsField).

    Attributes
    ----------
    band : str
        Filter.
    gain_e_per_adu : float
        Amplifier gain (electrons per ADU).
    dark_variance_adu2 : float
        Per-pixel variance at zero signal (read noise and dark current), ADU^2.
    sky_adu : float
        Sky level per pixel, ADU.
    psf_fwhm_arcsec : float
        psField's ``psf_width``, arcsec: the noise-equivalent width of photo's double-Gaussian
        fit to its PSF, which has no wing (3-4 % below the KL PSF's own in g r i z;
        `psfield_psf_image`). A seeing figure, not a check of a PSF model's width.
    aa_mag : float
        Photometric zero point ``aa`` (mag for 1 ADU/s above the atmosphere; negative).
    aa_err_mag : float
        SDSS's error of ``aa`` (``aaErr``; 0.036 mag in u, 0.002-0.005 in g r i z on run 6377).
    kk_mag_per_airmass : float
        Extinction coefficient ``kk``.
    airmass : float
        Airmass of the frame in this filter.
    """

    band: str
    gain_e_per_adu: float
    dark_variance_adu2: float
    sky_adu: float
    psf_fwhm_arcsec: float
    aa_mag: float
    aa_err_mag: float
    kk_mag_per_airmass: float
    airmass: float


def _band_value(table: fits.FITS_rec, column: str, index: int, what: str) -> float:
    if column not in table.columns.names:
        raise InputDataError(f"{what} lacks column {column}", column=column)
    value = float(np.asarray(table[column][0]).ravel()[index])
    if not math.isfinite(value):
        raise InputDataError(f"{what} column {column} is not finite: {value}", column=column)
    return value


def frame_calibration(
    psfield_hdus: fits.HDUList, tsfield_hdus: fits.HDUList, *, band: str
) -> FrameCalibration:
    """Gain, dark variance, sky, PSF width and photometric terms of one filter.

    Parameters
    ----------
    psfield_hdus : astropy.io.fits.HDUList
        The psField file (HDU 6 holds the per-filter arrays, in u g r i z order).
    tsfield_hdus : astropy.io.fits.HDUList
        The tsField file (HDU 1: ``aa``, ``kk``, ``airmass`` per filter).
    band : str
        Filter, one of u g r i z.

    Raises
    ------
    ValueError
        If ``band`` is not an SDSS filter.
    InputDataError
        If a table or column is missing, or the gain is not positive.
    """
    index = _check_band(band)
    if len(psfield_hdus) < 7 or not isinstance(psfield_hdus[6], fits.BinTableHDU):
        raise InputDataError("psField lacks its per-filter table (HDU 6)")
    if len(tsfield_hdus) < 2 or not isinstance(tsfield_hdus[1], fits.BinTableHDU):
        raise InputDataError("tsField lacks its calibration table (HDU 1)")
    ps = psfield_hdus[6].data
    ts = tsfield_hdus[1].data
    gain = _band_value(ps, "gain", index, "psField")
    if gain <= 0:
        raise InputDataError(f"psField gain must be > 0 e-/ADU; got {gain}", gain_e_per_adu=gain)
    return FrameCalibration(
        band=band,
        gain_e_per_adu=gain,
        dark_variance_adu2=_band_value(ps, "dark_variance", index, "psField"),
        sky_adu=_band_value(ps, "sky", index, "psField"),
        psf_fwhm_arcsec=_band_value(ps, "psf_width", index, "psField"),
        aa_mag=_band_value(ts, "aa", index, "tsField"),
        aa_err_mag=_band_value(ts, "aaErr", index, "tsField"),
        kk_mag_per_airmass=_band_value(ts, "kk", index, "tsField"),
        airmass=_band_value(ts, "airmass", index, "tsField"),
    )


def psfield_psf_image(
    psfield_hdus: fits.HDUList, *, band: str, row: float, col: float
) -> np.ndarray:
    """The PSF of SDSS's photo pipeline for one filter at a frame position (psField KL basis).

    ``image = sum_k a_k(row, col) RROWS_k`` with ``a_k = sum_ij C_kij (0.001 row)^i
    (0.001 col)^j`` (the psField data model; photoop's ``sdss_psf_recon``). The image is the
    pixelised PSF centred on its middle pixel, not normalised (its sum is 0.97-1.02 on run 6377).

    This is the PSF photo measured its PSF fluxes with. psField's ``psf_width`` is not its
    width: it is the noise-equivalent width of the double Gaussian fitted to it
    (``psf_sigma1_2G``, ``psf_sigma2_2G``, ``psf_b_2G``), which has no power-law wing, and is
    3-4 % narrower than this image's in g r i z on run 6377 (tests/test_sdss.py).

    Parameters
    ----------
    psfield_hdus : astropy.io.fits.HDUList
        The psField file (HDUs 1-5: the KL basis of u g r i z).
    band : str
        Filter, one of u g r i z.
    row, col : float
        Frame position (row = y, col = x, 0-based pixels of the fpC frame).

    Returns
    -------
    numpy.ndarray
        ``(RNROW, RNCOL)`` image (51 x 51 for SDSS).

    Raises
    ------
    ValueError
        If ``band`` is not an SDSS filter.
    InputDataError
        If the filter's KL table is missing or lacks a column.
    """
    index = _check_band(band)
    if len(psfield_hdus) < index + 2 or not isinstance(psfield_hdus[index + 1], fits.BinTableHDU):
        raise InputDataError(f"psField lacks the KL PSF table of filter {band} (HDU {index + 1})")
    table = psfield_hdus[index + 1].data
    for column in ("RROWS", "RNROW", "RNCOL", "c", "nrow_b", "ncol_b"):
        if column not in table.columns.names:
            raise InputDataError(f"psField KL PSF table of {band} lacks column {column}")
    shape = (int(table["RNROW"][0]), int(table["RNCOL"][0]))
    image = np.zeros(shape[0] * shape[1])
    for k in range(len(table)):
        nrow_b, ncol_b = int(table["nrow_b"][k]), int(table["ncol_b"][k])
        c = np.asarray(table["c"][k], dtype=float).reshape(5, 5)[:nrow_b, :ncol_b]
        i, j = np.meshgrid(np.arange(nrow_b), np.arange(ncol_b), indexing="ij")
        a = float(np.sum(c * (0.001 * row) ** i * (0.001 * col) ** j))
        image += a * np.asarray(table["RROWS"][k], dtype=float)
    return image.reshape(shape)


@dataclass(frozen=True, slots=True)
class SdssZeroPoint:
    """SDSS's own photometric calibration of a frame, as zero points for electrons.

    Both are the magnitude of a source giving 1 electron in the whole exposure, the convention
    of the calexp's ``ZP`` (``mag = ZP - 2.5 log10(flux_e)``).

    Attributes
    ----------
    flux20_zp_mag : float
        ``20 + 2.5 log10(FLUX20 * gain)``: from the fpC header's ADU of a 20th-mag star.
    tsfield_zp_mag : float
        ``-(aa + kk * airmass) + 2.5 log10(exptime_s * gain)``: from tsField, which calibrates
        ADU per second above the atmosphere.

    Notes
    -----
    SDSS calibrates PSF fluxes aperture-corrected to a 7.43" radius, i.e. total fluxes of
    stars, as processCcd's ``ZP`` does. On run 6377 camcol 4 field 399 the two disagree: FLUX20
    minus tsField is -0.101 (u), -0.027 (g), -0.003 (r), -0.018 (i), -0.028 (z) mag, and sep
    7.43" photometry of the Stripe 82 catalog stars follows tsField (within 0.01 mag in g r z,
    0.023 in i and -0.046 in u, where tsField's own ``aaErr`` is 0.036 mag); tests take tsField
    as SDSS's calibration.
    """

    flux20_zp_mag: float
    tsfield_zp_mag: float


def sdss_zero_point(fpc_header: fits.Header, calibration: FrameCalibration) -> SdssZeroPoint:
    """SDSS's zero points of a frame, in the calexp's convention (flux in electrons).

    Parameters
    ----------
    fpc_header : astropy.io.fits.Header
        The fpC primary header (``FLUX20``, ``EXPTIME``, ``FILTER``).
    calibration : FrameCalibration
        The same frame's `frame_calibration`.

    Raises
    ------
    InputDataError
        If ``FLUX20`` is missing or not positive, or the fpC filter differs from the
        calibration's.
    """
    band = fpc_band(fpc_header)
    if band != calibration.band:
        raise InputDataError(
            f"fpC is filter {band} but the calibration is for {calibration.band}", band=band
        )
    flux20_adu = _header_float(fpc_header, "FLUX20", "fpC")
    if flux20_adu <= 0:
        raise InputDataError(f"fpC FLUX20 must be > 0 ADU; got {flux20_adu}", flux20=flux20_adu)
    gain = calibration.gain_e_per_adu
    exptime = fpc_exptime_s(fpc_header)
    return SdssZeroPoint(
        flux20_zp_mag=20.0 + 2.5 * math.log10(flux20_adu * gain),
        tsfield_zp_mag=-(calibration.aa_mag + calibration.kk_mag_per_airmass * calibration.airmass)
        + 2.5 * math.log10(exptime * gain),
    )


# ---------------------------------------------------------------------------------------------
# Exposure


def make_exposure(
    fpc_hdus: fits.HDUList, fpm_hdus: fits.HDUList, calibration: FrameCalibration
) -> Exposure:
    """Build the exposure of one SDSS frame in electrons, ready for processCcd.

    ``image = (fpC - SOFTBIAS) * gain`` (sky not subtracted); ``variance = max(image, 0) +
    dark_variance * gain**2`` (Poisson noise of sky and sources plus read noise and dark, in
    electrons^2); ``mask`` from the fpM planes (`FPM_MASK_PLANES`); ``wcs`` the header's TAN WCS.
    The header is the fpC's, minus the integer-scaling keywords, with ``EXPTIME`` as a number and
    ``BUNIT = 'electron'``, ``GAIN = 1`` (the image is already in electrons), ``SDSSGAIN`` (the
    ADU gain used), ``RDVAR`` (the dark variance in e-^2), ``SEEING`` (psField psf_width, arcsec)
    and ``SKYLEVEL`` (photo's sky, e-/pixel).

    Parameters
    ----------
    fpc_hdus : astropy.io.fits.HDUList
        The fpC file.
    fpm_hdus : astropy.io.fits.HDUList
        The fpM file of the same frame.
    calibration : FrameCalibration
        `frame_calibration` of the same frame and filter.

    Returns
    -------
    Exposure
        ``(ny, nx) = (1489, 2048)`` float32 image and variance, int32 mask, TAN WCS.

    Raises
    ------
    InputDataError
        If the files disagree (filter, size) or lack required keywords.
    """
    counts_adu = fpc_counts_adu(fpc_hdus)
    source = fpc_hdus[0].header
    band = fpc_band(source)
    if band != calibration.band:
        raise InputDataError(
            f"fpC is filter {band} but the calibration is for {calibration.band}", band=band
        )
    gain = calibration.gain_e_per_adu
    image = counts_adu * np.float32(gain)
    read_variance_e2 = calibration.dark_variance_adu2 * gain**2
    variance = np.maximum(image, 0.0) + np.float32(read_variance_e2)
    mask = fpm_mask(fpm_hdus, shape=image.shape)
    wcs = header_wcs(source)

    header = source.copy()
    for key in ("BZERO", "BSCALE", "BUNITS", "CHECKSUM", "DATASUM"):
        header.remove(key, ignore_missing=True)
    header["EXPTIME"] = (fpc_exptime_s(source), "exposure time (s)")
    header["BUNIT"] = ("electron", "pixel unit")
    header["SOFTBIAS"] = (0, "software bias removed by the sdss instrument")
    header["GAIN"] = (1.0, "e-/unit: the image is in electrons")
    header["SDSSGAIN"] = (gain, "psField gain used to convert ADU to e-")
    header["RDVAR"] = (read_variance_e2, "psField dark variance in e-^2 per pixel")
    header["SEEING"] = (
        calibration.psf_fwhm_arcsec,
        "photo psf_width: 2-Gaussian eff. FWHM (arcsec)",
    )
    header["SKYLEVEL"] = (calibration.sky_adu * gain, "photo sky level (e- per pixel)")
    return Exposure(
        image=image.astype(np.float32),
        mask=mask,
        variance=variance.astype(np.float32),
        wcs=wcs,
        header=header,
    )


# ---------------------------------------------------------------------------------------------
# Reference catalog


def reference_catalog(stars: Table, *, bands: tuple[str, ...] = SDSS_BANDS) -> Table:
    """Adapt the Stripe 82 star catalog (``ref_stars.fits``) to processCcd's refcat columns.

    Parameters
    ----------
    stars : astropy.table.Table
        Columns ``id``, ``ra`` (degrees, stored as ra - 360 for Stripe 82's RA < 0 side),
        ``dec`` (degrees), and ``<band>``, ``<band>_err`` (mag) for each band; ``starnotgal``
        (1 for stars) if present.
    bands : tuple of str
        Filters to carry over.

    Returns
    -------
    astropy.table.Table
        ``id``, ``ra_deg`` in [0, 360), ``dec_deg``, and ``<band>_mag``, ``<band>_mag_err`` per
        band (float64), stars only.

    Raises
    ------
    ValueError
        If a band is not an SDSS filter.
    InputDataError
        If a needed column is missing.
    """
    for band in bands:
        _check_band(band)
    needed = ["id", "ra", "dec"] + [c for b in bands for c in (b, f"{b}_err")]
    missing = [c for c in needed if c not in stars.colnames]
    if missing:
        raise InputDataError(
            f"reference star table lacks column(s) {', '.join(missing)}", n_missing=len(missing)
        )
    keep = np.ones(len(stars), dtype=bool)
    if "starnotgal" in stars.colnames:
        keep &= np.asarray(stars["starnotgal"]) == 1
    rows = stars[keep]
    out = Table()
    out["id"] = np.asarray(rows["id"], dtype=np.int64)
    out["ra_deg"] = np.mod(np.asarray(rows["ra"], dtype=np.float64), 360.0)
    out["dec_deg"] = np.asarray(rows["dec"], dtype=np.float64)
    for band in bands:
        out[f"{band}_mag"] = np.asarray(rows[band], dtype=np.float64)
        out[f"{band}_mag_err"] = np.asarray(rows[f"{band}_err"], dtype=np.float64)
    return out


def refcat_in_frame(
    refcat: Table, wcs: WCS, shape: tuple[int, int], *, margin_pix: float = 50.0
) -> Table:
    """Rows of a refcat that fall on a frame (plus a margin), by its starting WCS.

    Parameters
    ----------
    refcat : astropy.table.Table
        With ``ra_deg``, ``dec_deg``.
    wcs : astropy.wcs.WCS
        The frame's WCS, pixel origin at array ``[0, 0]``.
    shape : tuple of int
        ``(ny, nx)`` of the frame.
    margin_pix : float
        Extra border kept around the frame (pixels), for the starting WCS's error.
    """
    x, y = wcs.world_to_pixel_values(refcat["ra_deg"], refcat["dec_deg"])
    ny, nx = shape
    inside = (
        (x >= -margin_pix)
        & (x <= nx - 1 + margin_pix)
        & (y >= -margin_pix)
        & (y <= ny - 1 + margin_pix)
    )
    return refcat[inside]


# ---------------------------------------------------------------------------------------------
# Everything processCcd needs from one frame


@dataclass(frozen=True, slots=True)
class SdssFrame:
    """One SDSS frame ready for processCcd, with SDSS's own calibration beside it.

    Attributes
    ----------
    exposure : Exposure
        `make_exposure` of the frame (electrons).
    refcat : astropy.table.Table
        `reference_catalog` rows on the frame (`refcat_in_frame`).
    band : str
        Filter.
    data_id : dict
        `fpc_data_id` of the frame.
    calibration : FrameCalibration
        psField / tsField values of the frame.
    zero_point : SdssZeroPoint
        SDSS's zero points, in the calexp's ``ZP`` convention.
    """

    exposure: Exposure
    refcat: Table
    band: str
    data_id: dict
    calibration: FrameCalibration
    zero_point: SdssZeroPoint


def prepare_frame(
    fpc_hdus: fits.HDUList,
    fpm_hdus: fits.HDUList,
    psfield_hdus: fits.HDUList,
    tsfield_hdus: fits.HDUList,
    ref_stars: Table,
    *,
    margin_pix: float = 50.0,
) -> SdssFrame:
    """Turn the SDSS files of one frame into processCcd's inputs.

    A script reads the five files through `dcflow.io` and calls
    ``process_ccd(frame.exposure, frame.refcat, band=frame.band, config=...)``.

    Parameters
    ----------
    fpc_hdus, fpm_hdus, psfield_hdus, tsfield_hdus : astropy.io.fits.HDUList
        The frame's fpC, fpM, psField and tsField files.
    ref_stars : astropy.table.Table
        The Stripe 82 star catalog as stored (``ref_stars.fits``).
    margin_pix : float
        Border around the frame within which reference stars are kept, pixels.

    Raises
    ------
    InputDataError
        If a file lacks what is needed or the files disagree.
    """
    header = fpc_hdus[0].header if len(fpc_hdus) else fits.Header()
    band = fpc_band(header)
    calibration = frame_calibration(psfield_hdus, tsfield_hdus, band=band)
    exposure = make_exposure(fpc_hdus, fpm_hdus, calibration)
    refcat = refcat_in_frame(
        reference_catalog(ref_stars), exposure.wcs, exposure.shape, margin_pix=margin_pix
    )
    return SdssFrame(
        exposure=exposure,
        refcat=refcat,
        band=band,
        data_id=fpc_data_id(header),
        calibration=calibration,
        zero_point=sdss_zero_point(header, calibration),
    )


record_from_header = record_from_fpc_header
"""The registry's ingest translation for this instrument (`dcflow.orchestration.prepare`)."""
