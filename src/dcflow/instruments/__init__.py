"""The instrument layer: raw headers to `RawCcd`, and one module per instrument.

`raw_ccd_from_hdu` turns a raw FITS HDU (already read by `dcflow.io.read_fits`) into a
`RawCcd`, the input of `dcflow.stages.isr`. The amplifier layout comes from the header's
section keywords (`dcflow.geometry.DetectorLayout.from_header`), so any camera whose raws
follow the keyword contract of `dcflow.instruments.cfht_sim` can be processed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dcflow.errors import InputDataError
from dcflow.geometry import DetectorLayout

if TYPE_CHECKING:  # astropy is imported where used: every shard Snakemake imports this package
    from astropy.io import fits
    from astropy.wcs import WCS

__all__ = ["OBSTYPES", "REQUIRED_KEYS", "RawCcd", "raw_ccd_from_hdu"]

REQUIRED_KEYS = ("INSTRUME", "OBSTYPE", "EXPNUM", "CCDNUM", "FILTER", "EXPTIME", "SATURATE")
"""Header keywords every raw needs (plus GAIN<amp>, RDNOISE<amp> and the section keywords)."""

_OBJECT_KEYS = ("MJD-OBS", "AIRMASS", "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2")

OBSTYPES = ("object", "bias", "flat")
"""Exposure types a raw may hold."""


@dataclass(frozen=True, slots=True)
class RawCcd:
    """One raw CCD readout and what its header says about it.

    Parameters
    ----------
    data : numpy.ndarray
        ``(ny_raw, nx_raw)`` float32 raw pixels (ADU), overscans included.
    layout : DetectorLayout
        Where each amplifier's data and overscan are.
    gain_e_per_adu : dict of str to float
        Gain per amplifier name (e-/ADU).
    read_noise_e : dict of str to float
        Read noise per amplifier name (e-).
    saturation_adu : float
        Raw value at or above which a pixel is saturated (ADU).
    obstype : str
        ``object``, ``bias`` or ``flat``.
    visit : int
        Visit id (EXPNUM).
    ccd : int
        CCD number (CCDNUM).
    band : str
        Filter name (FILTER); ``none`` for biases.
    exptime_s : float
        Exposure time (s).
    header : astropy.io.fits.Header
        The full raw header.
    wcs : astropy.wcs.WCS or None
        The header WCS of the assembled CCD (None when the header has none).
    source : str
        Where the raw came from (a file name), used in error messages.
    """

    data: np.ndarray
    layout: DetectorLayout
    gain_e_per_adu: dict[str, float]
    read_noise_e: dict[str, float]
    saturation_adu: float
    obstype: str
    visit: int
    ccd: int
    band: str
    exptime_s: float
    header: fits.Header
    wcs: WCS | None
    source: str = ""


def _number(header: fits.Header, key: str, source: str, kind: type = float):
    try:
        return kind(header[key])
    except KeyError:
        raise InputDataError(f"{source}: missing header keyword {key}", keyword=key) from None
    except (TypeError, ValueError):
        raise InputDataError(
            f"{source}: header keyword {key}={header[key]!r} is not a number", keyword=key
        ) from None


def raw_ccd_from_hdu(hdu: fits.PrimaryHDU | fits.ImageHDU, *, source: str = "raw") -> RawCcd:
    """Convert a raw image HDU into a `RawCcd`.

    Parameters
    ----------
    hdu : astropy.io.fits.PrimaryHDU or ImageHDU
        The raw frame: 2-d data (any numeric dtype; uint16 with BZERO as MegaCam writes it)
        and the header keywords of the `dcflow.instruments.cfht_sim` contract.
    source : str
        Name of the file, put in error messages.

    Returns
    -------
    RawCcd
        The data as float32 with its layout, gains, read noises and header WCS.

    Raises
    ------
    InputDataError
        If the HDU has no 2-d data, a required keyword is missing or malformed (the message
        names it), or the sections do not fit the array.
    """
    header = hdu.header
    if hdu.data is None or hdu.data.ndim != 2:
        shape = None if hdu.data is None else hdu.data.shape
        raise InputDataError(f"{source}: raw HDU has no 2-d image data (shape {shape})")
    missing = [key for key in REQUIRED_KEYS if key not in header]
    if missing:
        raise InputDataError(
            f"{source}: missing header keyword(s) {', '.join(missing)}", keyword=missing[0]
        )
    obstype = str(header["OBSTYPE"]).strip().lower()
    if obstype not in OBSTYPES:
        raise InputDataError(
            f"{source}: OBSTYPE={header['OBSTYPE']!r} is not one of {', '.join(OBSTYPES)}"
        )
    if obstype == "object":
        missing = [key for key in _OBJECT_KEYS if key not in header]
        if missing:
            raise InputDataError(
                f"{source}: object frame lacks header keyword(s) {', '.join(missing)}",
                keyword=missing[0],
            )
    try:
        layout = DetectorLayout.from_header(header, hdu.data.shape)
    except KeyError as exc:
        raise InputDataError(f"{source}: {exc.args[0]}") from None
    except ValueError as exc:
        raise InputDataError(f"{source}: bad amplifier sections ({exc})") from None
    gains = {a.name: _number(header, f"GAIN{a.name}", source) for a in layout.amps}
    noises = {a.name: _number(header, f"RDNOISE{a.name}", source) for a in layout.amps}
    for name, gain in gains.items():
        if not np.isfinite(gain) or gain <= 0:
            raise InputDataError(f"{source}: GAIN{name}={gain} must be a positive number")
    wcs = None
    if "CTYPE1" in header:
        from astropy.utils.exceptions import AstropyWarning
        from astropy.wcs import WCS, FITSFixedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (FITSFixedWarning, AstropyWarning))
            wcs = WCS(header, naxis=2, relax=True)
    return RawCcd(
        data=np.asarray(hdu.data, dtype=np.float32),
        layout=layout,
        gain_e_per_adu=gains,
        read_noise_e=noises,
        saturation_adu=_number(header, "SATURATE", source),
        obstype=obstype,
        visit=_number(header, "EXPNUM", source, int),
        ccd=_number(header, "CCDNUM", source, int),
        band=str(header["FILTER"]).strip(),
        exptime_s=_number(header, "EXPTIME", source),
        header=header,
        wcs=wcs,
        source=source,
    )
