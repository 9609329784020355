"""FITS and table reading with errors that name the file, and atomic writing.

Every output goes to a temporary name in the destination directory, is fsynced and then
renamed, so a job killed at any point never leaves a file that looks complete. The atomic
primitives (`atomic_path`, `write_text`, `write_json`) live in `dcflow.atomic`, which imports no
astropy: planners and every shard Snakemake import them (astropy's import was most of a shard
Snakemake's start-up CPU); they are re-exported here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS, FITSFixedWarning

from dcflow.atomic import atomic_path, write_json, write_text
from dcflow.errors import InputDataError
from dcflow.exposure import Exposure

__all__ = [
    "atomic_path",
    "check_raw_file",
    "outputs_whole",
    "read_exposure",
    "read_exposure_set",
    "read_fits",
    "read_table",
    "read_wcs",
    "write_exposure",
    "write_exposure_set",
    "write_fits",
    "write_json",
    "write_table",
    "write_text",
]


def write_fits(hdus: fits.HDUList, path: str | os.PathLike) -> None:
    """Write an HDU list atomically."""
    with atomic_path(path) as tmp:
        hdus.writeto(tmp, overwrite=True, checksum=True)


def write_table(table: Table, path: str | os.PathLike) -> None:
    """Write an astropy Table as a FITS binary table, atomically.

    Column units become ``TUNITn`` (astropy) and column descriptions ``TCOMMn`` (the HEASARC
    column-comment keyword, which FITS readers other than astropy show), so that a catalog
    says what its columns hold (`dcflow.catalog_schema`).
    """
    with warnings.catch_warnings():
        # Units outside the FITS standard ('electron') are written below as given.
        warnings.filterwarnings("ignore", message=".*could not be saved in native FITS format")
        hdu = fits.table_to_hdu(table)
    for index, name in enumerate(table.colnames, start=1):
        unit = table[name].unit
        if unit is not None and f"TUNIT{index}" not in hdu.header:
            hdu.header[f"TUNIT{index}"] = unit.to_string()
        description = getattr(table[name], "description", None)
        if description:
            hdu.header[f"TCOMM{index}"] = str(description)
    write_fits(fits.HDUList([fits.PrimaryHDU(), hdu]), path)


def _detached(hdu):
    # astropy cannot copy a table with variable-length array columns (the heap is lost: "Could
    # not find heap data"), as in SDSS fpM and psField files; read with memmap=False, its data
    # is already in memory, so it is kept as read.
    if isinstance(hdu, fits.BinTableHDU) and any(
        "P" in str(col.format) or "Q" in str(col.format) for col in hdu.columns
    ):
        return hdu
    return hdu.copy()


def read_fits(path: str | os.PathLike, *, required_keys: tuple[str, ...] = ()) -> fits.HDUList:
    """Read every HDU of a FITS file into memory and check it is whole.

    Parameters
    ----------
    path : str or path-like
        The file.
    required_keys : tuple of str
        Primary-header keywords that must be present.

    Raises
    ------
    InputDataError
        If the file is missing, truncated, not FITS, or lacks a required keyword; the message
        names the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: file does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", fits.verify.VerifyWarning)
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdus:
                for hdu in hdus:
                    if hdu.data is not None:
                        _ = hdu.data.shape
                hdus = fits.HDUList([_detached(hdu) for hdu in hdus])
    except (OSError, ValueError, TypeError, fits.verify.VerifyWarning) as exc:
        raise InputDataError(f"{path}: unreadable or truncated FITS file ({exc})") from exc
    missing = [key for key in required_keys if key not in hdus[0].header]
    if missing:
        raise InputDataError(
            f"{path}: missing header keyword(s) {', '.join(missing)}", n_missing=len(missing)
        )
    return hdus


def check_raw_file(path: str | os.PathLike, *, required_keys: tuple[str, ...] = ()) -> None:
    """Check that a raw file is whole: readable FITS, required keywords, no all-NaN image HDU.

    What a payload that does not read pixels (the noop payload) still checks of its raw
    inputs, so a corrupt raw fails its job as a real stage would, naming the file.

    Raises
    ------
    InputDataError
        If `read_fits` fails, or an image HDU (an amplifier) holds no finite pixel.
    """
    hdus = read_fits(path, required_keys=required_keys)
    for index, hdu in enumerate(hdus):
        data = hdu.data if hdu.is_image else None
        if data is not None and data.size and not np.isfinite(data).any():
            name = hdu.name or str(index)
            raise InputDataError(
                f"{path}: HDU {name} has non-finite (NaN/inf) values in all {data.size} pixels",
                hdu=name,
                n_nonfinite=int(data.size),
            )


def outputs_whole(paths: Sequence[str | os.PathLike]) -> bool:
    """True when every path exists and each FITS file among them passes its checksums.

    Outputs are written atomically, so one that exists is complete as written; a FITS file's
    CHECKSUM and DATASUM (`write_fits` writes them) also catch one damaged since. For a job
    whose batch system did not report success although its payload may have succeeded
    (DIRAC rescheduling a job whose output sandbox upload failed): whole outputs, which its
    Snakemake removed before submitting it, mean the job is done.
    """
    for path in paths:
        if os.path.isdir(path):
            continue
        try:
            with open(path, "rb") as f:
                is_fits = f.read(6) == b"SIMPLE"
        except OSError:
            return False
        if is_fits and not _checksums_verify(path):
            return False
    return True


def _checksums_verify(path: str | os.PathLike) -> bool:
    """No HDU's CHECKSUM or DATASUM keyword disagrees with its content (absent ones pass)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(path, memmap=False) as hdus:
                return all(hdu.verify_checksum() and hdu.verify_datasum() for hdu in hdus)
    except (OSError, ValueError):
        return False


def read_table(path: str | os.PathLike) -> Table:
    """Read a FITS binary table, raising `InputDataError` naming the file when it cannot."""
    hdus = read_fits(path)
    if len(hdus) < 2 or not isinstance(hdus[1], fits.BinTableHDU):
        raise InputDataError(f"{path}: no binary table in HDU 1")
    return Table(hdus[1].data)


def read_wcs(path: str | os.PathLike, *, hdu: str = "IMAGE") -> WCS:
    """The WCS of one HDU of an exposure, reading its header only (no pixels).

    Raises
    ------
    InputDataError
        If the file is unreadable, lacks the HDU, or the HDU has no WCS.
    """
    try:
        header = fits.getheader(path, hdu)
    except (OSError, KeyError, ValueError) as exc:
        raise InputDataError(f"{path}: cannot read the {hdu} header ({exc})") from exc
    wcs = _wcs_from_header(header)
    if wcs is None:
        raise InputDataError(f"{path}: the {hdu} header has no WCS (no CTYPE1)")
    return wcs


def _wcs_from_header(header: fits.Header) -> WCS | None:
    if "CTYPE1" not in header:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FITSFixedWarning, AstropyWarning))
        return WCS(header, relax=True)


def _exposure_hdus(exposure, extra_planes, version):
    header = exposure.header.copy()
    if exposure.wcs is not None:
        for key in list(header):
            if key.startswith(
                ("CTYPE", "CRPIX", "CRVAL", "CD", "PC", "CDELT", "A_", "B_", "AP_", "BP_")
            ):
                del header[key]
        header.update(exposure.wcs.to_header(relax=True))
    image = np.asarray(exposure.image, dtype=np.float32)
    hdus = [
        fits.ImageHDU(image, header=header, name="IMAGE", ver=version),
        fits.ImageHDU(np.asarray(exposure.mask, dtype=np.int32), name="MASK", ver=version),
        fits.ImageHDU(
            np.asarray(exposure.variance, dtype=np.float32), name="VARIANCE", ver=version
        ),
    ]
    for name, plane in (extra_planes or {}).items():
        hdus.append(fits.ImageHDU(np.asarray(plane), name=name, ver=version))
    return header, hdus


def write_exposure(
    exposure: Exposure,
    path: str | os.PathLike,
    *,
    extra_planes: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write an exposure as a FITS file: primary header, IMAGE, MASK and VARIANCE HDUs.

    The exposure's own ``extra_planes`` and ``extra_planes`` (a coadd's NINPUTS and COVERAGE;
    it wins on a shared name) follow them as named image HDUs.
    """
    header, planes = _exposure_hdus(
        exposure, {**exposure.extra_planes, **(extra_planes or {})}, None
    )
    write_fits(fits.HDUList([fits.PrimaryHDU(header=header), *planes]), path)


def write_exposure_set(
    members: Sequence[tuple[Exposure, Mapping[str, np.ndarray]]],
    path: str | os.PathLike,
) -> None:
    """Write several exposures (each with its extra planes) in one FITS file, atomically.

    Member ``k`` (1-based) is the IMAGE, MASK, VARIANCE and extra HDUs of ``EXTVER`` k, its
    header on its IMAGE HDU; the primary header's ``NMEMBERS`` counts them (0: an empty set,
    a valid file).
    """
    primary = fits.PrimaryHDU()
    primary.header["NMEMBERS"] = (len(members), "exposures in this file")
    hdus = fits.HDUList([primary])
    for version, (exposure, extra_planes) in enumerate(members, start=1):
        hdus.extend(_exposure_hdus(exposure, extra_planes, version)[1])
    write_fits(hdus, path)


def read_exposure_set(path: str | os.PathLike) -> list[tuple[Exposure, dict[str, np.ndarray]]]:
    """Read the exposures of a `write_exposure_set` file, each with its extra planes.

    Raises
    ------
    InputDataError
        If the file is unreadable, lacks ``NMEMBERS`` or a member's IMAGE, MASK or VARIANCE.
    """
    hdus = read_fits(path, required_keys=("NMEMBERS",))
    members = []
    for version in range(1, int(hdus[0].header["NMEMBERS"]) + 1):
        planes = {hdu.name: hdu for hdu in hdus[1:] if hdu.ver == version}
        missing = {"IMAGE", "MASK", "VARIANCE"} - set(planes)
        if missing:
            raise InputDataError(
                f"{path}: member {version} lacks HDU(s) {', '.join(sorted(missing))}",
                member=version,
            )
        exposure = Exposure(
            image=np.asarray(planes["IMAGE"].data, dtype=np.float32),
            mask=np.asarray(planes["MASK"].data, dtype=np.int32),
            variance=np.asarray(planes["VARIANCE"].data, dtype=np.float32),
            wcs=_wcs_from_header(planes["IMAGE"].header),
            header=planes["IMAGE"].header,
        )
        extra = {
            name: np.asarray(hdu.data)
            for name, hdu in planes.items()
            if name not in {"IMAGE", "MASK", "VARIANCE"}
        }
        members.append((exposure, extra))
    return members


def read_exposure(path: str | os.PathLike) -> Exposure:
    """Read an exposure written by `write_exposure`.

    Raises
    ------
    InputDataError
        If the file is unreadable or lacks one of the IMAGE, MASK, VARIANCE HDUs.
    """
    hdus = read_fits(path)
    names = {hdu.name for hdu in hdus}
    missing = {"IMAGE", "MASK", "VARIANCE"} - names
    if missing:
        raise InputDataError(f"{path}: missing HDU(s) {', '.join(sorted(missing))}")
    header = hdus[0].header
    return Exposure(
        image=np.asarray(hdus["IMAGE"].data, dtype=np.float32),
        mask=np.asarray(hdus["MASK"].data, dtype=np.int32),
        variance=np.asarray(hdus["VARIANCE"].data, dtype=np.float32),
        wcs=_wcs_from_header(hdus["IMAGE"].header),
        header=header,
        extra_planes={
            hdu.name: np.asarray(hdu.data)
            for hdu in hdus[1:]
            if hdu.is_image
            and hdu.data is not None
            and hdu.name not in {"IMAGE", "MASK", "VARIANCE"}
        },
    )
