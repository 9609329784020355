"""Master calibration products: sigma-clipped master bias and normalised master flat per CCD.

Inputs are frames already overscan-subtracted, assembled and gain-corrected
(`dcflow.stages.isr.assemble_ccd`), so the products are in electrons on the assembled grid.

The clipping scale is pooled per column from pairwise frame differences rather than taken
per pixel: with the 3-5 frames a campaign takes, a per-pixel scatter is too noisy to clip
against, while every column belongs to one amplifier and shares its noise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from dcflow.configs import check_fields, config_field
from dcflow.errors import InputDataError
from dcflow.exposure import Exposure, MaskPlane

__all__ = [
    "BiasResult",
    "CalibConfig",
    "FlatResult",
    "combine_bias",
    "combine_flat",
    "sigma_clipped_mean",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CalibConfig:
    """Configuration of the master bias and flat combination (the ``calibs:`` config section)."""

    clip_sigma: float = config_field(
        3.0, "Reject a frame's pixel beyond this many sigma of the combined value (sigma).",
        exclusive_minimum=0.0,
    )  # fmt: skip
    clip_iterations: int = config_field(2, "Rejection passes.", minimum=0, maximum=10)
    min_frames: int = config_field(2, "Fewest frames accepted for a master.", minimum=1)
    flat_bad_low: float = config_field(
        0.5, "Master-flat pixels below this relative response are BAD (fraction).", minimum=0.0,
        maximum=1.0,
    )  # fmt: skip
    flat_bad_high: float = config_field(
        1.5, "Master-flat pixels above this relative response are BAD (fraction).", minimum=1.0
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class BiasResult:
    """A master bias.

    Attributes
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` float32 residual bias structure after overscan subtraction (electrons).
    variance : numpy.ndarray
        ``(ny, nx)`` float32 variance of ``image`` (electrons^2).
    n_frames : int
        Frames combined.
    n_rejected : int
        Pixel values rejected by the clipping.
    noise_e : float
        Median per-frame pixel noise (electrons), i.e. the read noise.
    """

    image: np.ndarray
    variance: np.ndarray
    n_frames: int
    n_rejected: int
    noise_e: float


@dataclass(frozen=True, slots=True)
class FlatResult:
    """A master flat, normalised to median 1.

    Attributes
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` float32 relative response (1 at BAD pixels).
    variance : numpy.ndarray
        ``(ny, nx)`` float32 variance of ``image``.
    mask : numpy.ndarray
        ``(ny, nx)`` int32, `MaskPlane.BAD` where the response is out of range.
    n_frames : int
        Frames combined.
    n_rejected : int
        Pixel values rejected by the clipping.
    level_e : float
        Median level of the bias-subtracted input frames (electrons).
    n_bad : int
        Pixels flagged BAD.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    n_frames: int
    n_rejected: int
    level_e: float
    n_bad: int


def _check_frames(frames: Sequence[np.ndarray], config: CalibConfig) -> tuple[int, int]:
    if len(frames) < config.min_frames:
        raise InputDataError(
            f"frames: {len(frames)} frame(s) given, at least min_frames={config.min_frames} needed",
            n_frames=len(frames),
        )
    shape = np.shape(frames[0])
    if len(shape) != 2:
        raise ValueError(f"frames[0] must be 2-d (ny, nx); got shape {shape}")
    for i, frame in enumerate(frames):
        if np.shape(frame) != shape:
            raise ValueError(f"frames[{i}] shape {np.shape(frame)} differs from frames[0] {shape}")
        if not np.isfinite(frame).all():
            raise InputDataError(f"frames[{i}] holds non-finite values", frame=i)
    return shape


def sigma_clipped_mean(
    stack: np.ndarray, *, clip_sigma: float, iterations: int, chunk_rows: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean along axis 0 of ``stack`` after rejecting outliers against a per-column scale.

    The scale of each column is the robust (MAD) width of the differences between
    consecutive frames over a subsample of rows, divided by sqrt 2. Rejection starts from
    the median and repeats about the clipped mean. Rows are processed in chunks so the
    temporaries stay small next to ``stack``.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(n, ny, nx)`` float32 frames.
    clip_sigma : float
        Rejection threshold (sigma).
    iterations : int
        Rejection passes (none with fewer than 3 frames: the plain mean is returned).
    chunk_rows : int
        Rows processed at a time.

    Returns
    -------
    mean : numpy.ndarray
        ``(ny, nx)`` float32 clipped mean.
    count : numpy.ndarray
        ``(ny, nx)`` int16 frames kept per pixel.
    sigma : numpy.ndarray
        ``(nx,)`` float32 per-frame pixel noise per column.
    n_rejected : int
        Pixel values rejected.
    """
    n, ny, nx = stack.shape
    if n >= 2:
        sub = stack[:, :: max(1, ny // 512)]
        pairs = range(n) if n > 2 else range(1)
        diffs = np.concatenate([np.abs(sub[i] - sub[(i + 1) % n]) for i in pairs], axis=0)
        sigma = (1.4826 / np.sqrt(2.0)) * np.median(diffs, axis=0)
    else:
        sigma = np.zeros(nx)
    sigma = np.maximum(sigma, 1e-12).astype(np.float32)
    mean = np.empty((ny, nx), dtype=np.float32)
    count = np.empty((ny, nx), dtype=np.int16)
    limit = np.float32(clip_sigma) * sigma
    if n < 3 or iterations == 0:
        np.mean(stack, axis=0, dtype=np.float32, out=mean)
        count[...] = n
        return mean, count, sigma, 0
    n_rejected = 0
    for start in range(0, ny, chunk_rows):
        block = stack[:, start : start + chunk_rows]
        center = np.median(block, axis=0)
        for _ in range(iterations):
            keep = np.abs(block - center) <= limit
            kept = keep.sum(axis=0)
            total = np.where(keep, block, np.float32(0)).sum(axis=0, dtype=np.float64)
            center = np.where(kept > 0, total / np.maximum(kept, 1), center).astype(np.float32)
        mean[start : start + chunk_rows] = center
        count[start : start + chunk_rows] = kept
        n_rejected += int(keep.size - np.count_nonzero(keep))
    return mean, count, sigma, n_rejected


def combine_bias(
    frames: Sequence[np.ndarray], *, config: CalibConfig = CalibConfig()
) -> BiasResult:
    """Combine overscan-subtracted bias frames into a master bias.

    Parameters
    ----------
    frames : sequence of numpy.ndarray
        ``(ny, nx)`` assembled bias frames in electrons (`dcflow.stages.isr.assemble_ccd`).
    config : CalibConfig
        Clipping settings.

    Returns
    -------
    BiasResult
        Clipped mean and its variance (per-column frame noise squared / frames kept).

    Raises
    ------
    InputDataError
        If fewer than ``min_frames`` frames are given or one holds non-finite values.
    ValueError
        If the frames are not 2-d arrays of one shape.
    """
    _check_frames(frames, config)
    stack = np.stack([np.asarray(f, dtype=np.float32) for f in frames])
    mean, count, sigma, n_rej = sigma_clipped_mean(
        stack, clip_sigma=config.clip_sigma, iterations=config.clip_iterations
    )
    variance = (sigma[None, :] ** 2 / np.maximum(count, 1)).astype(np.float32)
    noise = float(np.median(sigma))
    logger.info(
        "master bias from %d frames: noise %.2f e-, %d values rejected", len(frames), noise, n_rej
    )
    return BiasResult(
        image=mean, variance=variance, n_frames=len(frames), n_rejected=n_rej, noise_e=noise
    )


def combine_flat(
    frames: Sequence[np.ndarray],
    *,
    bias: BiasResult | None = None,
    config: CalibConfig = CalibConfig(),
) -> FlatResult:
    """Combine overscan-subtracted flat frames of one band into a normalised master flat.

    Each frame is bias-subtracted, scaled to median 1, clipped and averaged; the result is
    divided by its own median, and pixels outside ``flat_bad_low`` .. ``flat_bad_high`` are
    flagged BAD and set to 1.

    Parameters
    ----------
    frames : sequence of numpy.ndarray
        ``(ny, nx)`` assembled flat frames in electrons (`dcflow.stages.isr.assemble_ccd`).
    bias : BiasResult, optional
        Master bias subtracted from each frame first.
    config : CalibConfig
        Clipping and bad-pixel settings.

    Returns
    -------
    FlatResult
        The normalised flat, its variance and BAD mask.

    Raises
    ------
    InputDataError
        If fewer than ``min_frames`` frames are given, one holds non-finite values, or a
        frame's median level is not positive.
    ValueError
        If the frames are not 2-d arrays of one shape, or ``bias`` has another shape.
    """
    shape = _check_frames(frames, config)
    if bias is not None and bias.image.shape != shape:
        raise ValueError(f"bias shape {bias.image.shape} differs from the flat frames' {shape}")
    stack = np.empty((len(frames), *shape), dtype=np.float32)
    levels = []
    for i, frame in enumerate(frames):
        plane = stack[i]
        plane[...] = frame
        if bias is not None:
            plane -= bias.image
        level = float(np.median(plane[::4, ::4]))
        if not level > 0:
            raise InputDataError(
                f"frames[{i}]: median flat level {level:.1f} e- is not positive", frame=i
            )
        plane *= np.float32(1.0 / level)
        levels.append(level)
    mean, count, sigma, n_rej = sigma_clipped_mean(
        stack, clip_sigma=config.clip_sigma, iterations=config.clip_iterations
    )
    del stack
    norm = float(np.median(mean))
    mean *= np.float32(1.0 / norm)
    variance = (sigma[None, :] ** 2 / np.maximum(count, 1) / norm**2).astype(np.float32)
    bad = ~((mean >= config.flat_bad_low) & (mean <= config.flat_bad_high))
    mask = np.where(bad, np.int32(MaskPlane.BAD), np.int32(0)).astype(np.int32)
    mean[bad] = 1.0
    n_bad = int(np.count_nonzero(bad))
    level_e = float(np.median(levels))
    logger.info(
        "master flat from %d frames: level %.0f e-, %d BAD pixels, %d values rejected",
        len(frames), level_e, n_bad, n_rej,
    )  # fmt: skip
    return FlatResult(
        image=mean, variance=variance, mask=mask, n_frames=len(frames), n_rejected=n_rej,
        level_e=level_e, n_bad=n_bad,
    )  # fmt: skip


def calib_to_exposure(
    result: BiasResult | FlatResult, *, header: fits.Header | None = None
) -> Exposure:
    """Package a master bias or flat as an `Exposure`, ready for `dcflow.io.write_exposure`.

    Parameters
    ----------
    result : BiasResult or FlatResult
        The master.
    header : astropy.io.fits.Header, optional
        Extra keywords to keep (data id, instrument...).

    Returns
    -------
    Exposure
        Image, mask (zeros for a bias), variance; the header records ``CALTYPE`` (``bias`` or
        ``flat``) and the result's scalar fields.
    """
    out = fits.Header() if header is None else header.copy()
    out["NFRAMES"] = (result.n_frames, "frames combined")
    out["NREJECT"] = (result.n_rejected, "pixel values rejected by clipping")
    if isinstance(result, BiasResult):
        out["CALTYPE"] = "bias"
        out["BUNIT"] = "electron"
        out["NOISE_E"] = (result.noise_e, "per-frame pixel noise (e-)")
        mask = np.zeros(result.image.shape, dtype=np.int32)
    else:
        out["CALTYPE"] = "flat"
        out["LEVEL_E"] = (result.level_e, "median input flat level (e-)")
        out["N_BAD"] = (result.n_bad, "pixels flagged BAD")
        mask = result.mask
    return Exposure(image=result.image, mask=mask, variance=result.variance, header=out)


def _calib_keys(exposure: Exposure, caltype: str, keys: tuple[str, ...]) -> dict:
    header = exposure.header
    if header.get("CALTYPE") != caltype:
        raise InputDataError(f"expected a master {caltype}, got CALTYPE={header.get('CALTYPE')!r}")
    missing = [key for key in keys if key not in header]
    if missing:
        raise InputDataError(f"master {caltype} lacks header keyword(s) {', '.join(missing)}")
    return {key: header[key] for key in keys}


def bias_from_exposure(exposure: Exposure) -> BiasResult:
    """Rebuild a `BiasResult` from `calib_to_exposure`'s output (e.g. read back from disk).

    Raises
    ------
    InputDataError
        If the exposure is not a master bias (``CALTYPE``) or lacks its keywords.
    """
    keys = _calib_keys(exposure, "bias", ("NFRAMES", "NREJECT", "NOISE_E"))
    return BiasResult(
        image=np.asarray(exposure.image, dtype=np.float32),
        variance=np.asarray(exposure.variance, dtype=np.float32),
        n_frames=int(keys["NFRAMES"]),
        n_rejected=int(keys["NREJECT"]),
        noise_e=float(keys["NOISE_E"]),
    )


def flat_from_exposure(exposure: Exposure) -> FlatResult:
    """Rebuild a `FlatResult` from `calib_to_exposure`'s output (e.g. read back from disk).

    Raises
    ------
    InputDataError
        If the exposure is not a master flat (``CALTYPE``), lacks its keywords, or holds
        non-positive or non-finite responses outside its BAD mask.
    """
    keys = _calib_keys(exposure, "flat", ("NFRAMES", "NREJECT", "LEVEL_E", "N_BAD"))
    image = np.asarray(exposure.image, dtype=np.float32)
    if not np.all(np.isfinite(image) & (image > 0)):
        raise InputDataError("master flat holds non-positive or non-finite responses")
    return FlatResult(
        image=image,
        variance=np.asarray(exposure.variance, dtype=np.float32),
        mask=np.asarray(exposure.mask, dtype=np.int32),
        n_frames=int(keys["NFRAMES"]),
        n_rejected=int(keys["NREJECT"]),
        level_e=float(keys["LEVEL_E"]),
        n_bad=int(keys["N_BAD"]),
    )
