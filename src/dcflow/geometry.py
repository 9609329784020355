"""Amplifier geometry of a raw CCD readout, described by FITS sections.

A raw frame holds each amplifier's imaging pixels (DATASEC), its prescan columns (PRESEC),
serial overscan columns (BIASSEC) and parallel overscan rows (POSEC), side by side as a
real camera writes them. ``DETSEC`` says where the amplifier's pixels land in the assembled
CCD; an amplifier read from the right has ``DETSEC`` x1 > x2, as in MegaCam headers.
Everything downstream (ISR, Fe55 analysis, the simulators) reads these from the header, so
a sensor-test camera with another amplifier layout needs only another config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["AmpGeometry", "DetectorLayout", "format_section", "parse_section"]

_SECTION = re.compile(r"^\[(\d+):(\d+),(\d+):(\d+)\]$")

Region = tuple[slice, slice]


def parse_section(text: str) -> tuple[int, int, int, int]:
    """Parse a FITS section ``[x1:x2,y1:y2]`` (1-based, inclusive) into its four integers.

    Raises
    ------
    ValueError
        If ``text`` is not a section.
    """
    match = _SECTION.match(text.strip().replace(" ", ""))
    if match is None:
        raise ValueError(f"not a FITS section [x1:x2,y1:y2]: {text!r}")
    x1, x2, y1, y2 = (int(g) for g in match.groups())
    return x1, x2, y1, y2


def format_section(x1: int, x2: int, y1: int, y2: int) -> str:
    """Format four 1-based inclusive bounds as a FITS section string."""
    return f"[{x1}:{x2},{y1}:{y2}]"


def _to_region(x1: int, x2: int, y1: int, y2: int) -> Region:
    return slice(min(y1, y2) - 1, max(y1, y2)), slice(min(x1, x2) - 1, max(x1, x2))


@dataclass(frozen=True, slots=True)
class AmpGeometry:
    """Where one amplifier's pixels are, in raw and assembled coordinates (0-based slices).

    Parameters
    ----------
    name : str
        Amplifier name used as the header keyword suffix (``A``, ``B``, ``1``...).
    data : tuple of slice
        ``(y, x)`` slices of the imaging pixels in the raw array.
    serial_overscan : tuple of slice
        ``(y, x)`` slices of the serial overscan columns (rows of ``data``), read after the data.
    parallel_overscan : tuple of slice or None
        ``(y, x)`` slices of the parallel overscan rows, or None when the camera has none.
    prescan : tuple of slice or None
        ``(y, x)`` slices of the prescan columns, or None.
    assembled : tuple of slice
        ``(y, x)`` slices of this amplifier in the assembled CCD.
    flip_x : bool
        True when the amplifier reads from the right, so its raw columns are mirrored.
    """

    name: str
    data: Region
    serial_overscan: Region
    parallel_overscan: Region | None
    prescan: Region | None
    assembled: Region
    flip_x: bool

    def header_cards(self) -> dict[str, str]:
        """Header keywords describing this amplifier (DATASEC, BIASSEC, PRESEC, POSEC, DETSEC)."""

        def section(region: Region) -> str:
            ys, xs = region
            return format_section(xs.start + 1, xs.stop, ys.start + 1, ys.stop)

        ys, xs = self.assembled
        x1, x2 = (xs.stop, xs.start + 1) if self.flip_x else (xs.start + 1, xs.stop)
        cards = {
            f"DATASEC{self.name}": section(self.data),
            f"BIASSEC{self.name}": section(self.serial_overscan),
            f"DETSEC{self.name}": format_section(x1, x2, ys.start + 1, ys.stop),
        }
        if self.prescan is not None:
            cards[f"PRESEC{self.name}"] = section(self.prescan)
        if self.parallel_overscan is not None:
            cards[f"POSEC{self.name}"] = section(self.parallel_overscan)
        return cards


@dataclass(frozen=True, slots=True)
class DetectorLayout:
    """The amplifiers of one CCD and the shapes of its raw and assembled arrays.

    Parameters
    ----------
    amps : tuple of AmpGeometry
        The amplifiers, in header order.
    raw_shape : tuple of int
        ``(ny, nx)`` of the raw array.
    assembled_shape : tuple of int
        ``(ny, nx)`` of the trimmed, assembled CCD.
    """

    amps: tuple[AmpGeometry, ...]
    raw_shape: tuple[int, int]
    assembled_shape: tuple[int, int]

    @classmethod
    def regular(
        cls,
        *,
        n_amps: int,
        amp_nx: int,
        ny: int,
        prescan_cols: int = 0,
        overscan_cols: int = 32,
        overscan_rows: int = 0,
        names: tuple[str, ...] | None = None,
    ) -> DetectorLayout:
        """Build a layout of ``n_amps`` amplifiers side by side along x.

        Each amplifier block in the raw array is ``prescan | data | serial overscan`` (mirrored
        for odd-numbered amplifiers, which read from the right, as in MegaCam), with
        ``overscan_rows`` parallel overscan rows above the data.

        Raises
        ------
        ValueError
            If a size is out of range.
        """
        for field, value, low in (
            ("n_amps", n_amps, 1),
            ("amp_nx", amp_nx, 8),
            ("ny", ny, 8),
            ("prescan_cols", prescan_cols, 0),
            ("overscan_cols", overscan_cols, 1),
            ("overscan_rows", overscan_rows, 0),
        ):
            if value < low:
                raise ValueError(f"{field} must be >= {low}, got {value}")
        if names is None:
            names = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_amps]) if n_amps <= 26 else None
        if names is None or len(names) != n_amps:
            raise ValueError(f"names must give one name per amplifier ({n_amps})")
        block = prescan_cols + amp_nx + overscan_cols
        y_all = slice(0, ny)
        amps = []
        for i, name in enumerate(names):
            x0 = i * block
            flip = i % 2 == 1
            if flip:
                over = slice(x0, x0 + overscan_cols)
                data = slice(over.stop, over.stop + amp_nx)
                pre = slice(data.stop, data.stop + prescan_cols)
            else:
                pre = slice(x0, x0 + prescan_cols)
                data = slice(pre.stop, pre.stop + amp_nx)
                over = slice(data.stop, data.stop + overscan_cols)
            amps.append(
                AmpGeometry(
                    name=name,
                    data=(y_all, data),
                    serial_overscan=(y_all, over),
                    parallel_overscan=(slice(ny, ny + overscan_rows), data)
                    if overscan_rows
                    else None,
                    prescan=(y_all, pre) if prescan_cols else None,
                    assembled=(y_all, slice(i * amp_nx, (i + 1) * amp_nx)),
                    flip_x=flip,
                )
            )
        return cls(
            amps=tuple(amps),
            raw_shape=(ny + overscan_rows, n_amps * block),
            assembled_shape=(ny, n_amps * amp_nx),
        )

    def header_cards(self) -> dict[str, str | int]:
        """All keywords needed to rebuild this layout from a raw header."""
        cards: dict[str, str | int] = {"NAMPS": len(self.amps)}
        cards["AMPNAMES"] = ",".join(a.name for a in self.amps)
        for amp in self.amps:
            cards.update(amp.header_cards())
        return cards

    @classmethod
    def from_header(cls, header, raw_shape: tuple[int, int]) -> DetectorLayout:
        """Rebuild the layout from a raw header's section keywords.

        Raises
        ------
        KeyError
            If a required keyword is missing (the message names it).
        ValueError
            If a section lies outside ``raw_shape`` or the amplifiers overlap.
        """
        if "AMPNAMES" not in header:
            raise KeyError("missing header keyword AMPNAMES")
        names = str(header["AMPNAMES"]).split(",")
        amps = []
        ny_asm = nx_asm = 0
        for name in names:

            def region(key: str, required: bool = True, _name: str = name) -> Region | None:
                full = f"{key}{_name}"
                if full not in header:
                    if required:
                        raise KeyError(f"missing header keyword {full}")
                    return None
                reg = _to_region(*parse_section(str(header[full])))
                if reg[0].stop > raw_shape[0] or reg[1].stop > raw_shape[1]:
                    raise ValueError(
                        f"{full}={header[full]} lies outside the raw array {raw_shape}"
                    )
                return reg

            data = region("DATASEC")
            x1, x2, y1, y2 = parse_section(str(header[f"DETSEC{name}"]))
            assembled = _to_region(x1, x2, y1, y2)
            if (assembled[0].stop - assembled[0].start, assembled[1].stop - assembled[1].start) != (
                data[0].stop - data[0].start,
                data[1].stop - data[1].start,
            ):
                raise ValueError(f"DETSEC{name} and DATASEC{name} differ in size")
            ny_asm = max(ny_asm, assembled[0].stop)
            nx_asm = max(nx_asm, assembled[1].stop)
            amps.append(
                AmpGeometry(
                    name=name,
                    data=data,
                    serial_overscan=region("BIASSEC"),
                    parallel_overscan=region("POSEC", required=False),
                    prescan=region("PRESEC", required=False),
                    assembled=assembled,
                    flip_x=x1 > x2,
                )
            )
        return cls(amps=tuple(amps), raw_shape=tuple(raw_shape), assembled_shape=(ny_asm, nx_asm))
