"""The in-memory exposure (image, mask, variance, WCS) that stages pass between them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from dcflow.errors import InputDataError

__all__ = ["Exposure", "MaskPlane", "header_number"]


class MaskPlane(enum.IntFlag):
    """Bits of the mask plane; the names follow the LSST stack's mask planes."""

    BAD = 1 << 0
    """A defective pixel (hot, dead, bad column) from the calibration."""
    SAT = 1 << 1
    """Saturated in the raw frame, or on a bleed trail."""
    CR = 1 << 2
    """Hit by a cosmic ray."""
    EDGE = 1 << 3
    """Too close to the CCD edge for detection."""
    DETECTED = 1 << 4
    """Part of a detected source footprint."""
    NO_DATA = 1 << 5
    """No input pixel covers this one (warps and coadds)."""
    SUSPECT = 1 << 6
    """Near the non-linear regime or otherwise doubtful."""
    INTRP = 1 << 7
    """Value was interpolated over."""
    CLIPPED = 1 << 8
    """An input was rejected as an outlier when coadding."""


@dataclass(slots=True)
class Exposure:
    """An image with its mask and variance planes, WCS and header metadata.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` float32 pixel values.
    mask : numpy.ndarray
        ``(ny, nx)`` int32 bit mask of `MaskPlane` values.
    variance : numpy.ndarray
        ``(ny, nx)`` float32 variance of ``image``, in the same units squared.
    wcs : astropy.wcs.WCS or None
        Pixel to sky transform, pixel origin at the array's ``[0, 0]``.
    header : astropy.io.fits.Header
        Metadata kept with the exposure (data id, zero point, PSF FWHM...).
    extra_planes : dict of str to numpy.ndarray
        Named arrays stored as image extensions after VARIANCE (a calexp's PSF residual
        table, `dcflow.stages.psf.PSF_RESIDUAL_EXTNAME`).
    """

    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    wcs: WCS | None = None
    header: fits.Header = field(default_factory=fits.Header)
    extra_planes: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 2:
            raise ValueError(f"image must be 2-d (ny, nx), got shape {self.image.shape}")
        for name in ("mask", "variance"):
            shape = getattr(self, name).shape
            if shape != self.image.shape:
                raise ValueError(
                    f"{name} shape {shape} differs from image shape {self.image.shape}"
                )

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the image."""
        return self.image.shape


def header_number(header: fits.Header, key: str, what: str) -> float:
    """A finite number from a header card, or an `InputDataError` naming ``what`` and the key."""
    try:
        value = float(header[key])
    except KeyError:
        raise InputDataError(f"{what} header lacks {key}", key=key) from None
    except (TypeError, ValueError):
        raise InputDataError(
            f"{what} header {key}={header[key]!r} is not a number", key=key
        ) from None
    if not np.isfinite(value):
        raise InputDataError(f"{what} header {key}={value} is not finite", key=key)
    return value
