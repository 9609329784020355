"""Readout geometry of a sensor read through an R x C grid of taps (amplifiers).

Sensor-test cameras often write one raw array holding every tap's readout side by side, with
no section keywords in the header (the MSFC ESIS cameras, LSST's raw amplifier mosaics). Each
tap reads toward its own corner of the sensor, so in the stored array the taps of the right
half are mirrored in x and those of the top half mirrored in y. Per tap, in readout order, a
row holds ``prescan | data | overscan`` columns; the first rows read (next to the serial
register) may be not live.

`TapGridLayout` describes such a grid and builds the `dcflow.geometry.DetectorLayout` that the
Fe55 and photon-transfer stages read, with every region already trimmed to live pixels.
Tap names are ``"<x><y>"``: ``"00"`` lower-left, ``"10"`` lower-right, ``"01"`` upper-left.

The same geometry is also declared in the camera description
``dcflow/instruments/cameras/esis1.yaml`` (`dcflow.instruments.camera`), whose
``detector(0).detector_layout()`` equals ``esis1().detector_layout()`` (tests/test_camera.py);
the Fe55 gain script takes such a description for raws without section keywords.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcflow.geometry import AmpGeometry, DetectorLayout

__all__ = ["TapGridLayout", "esis1"]


@dataclass(frozen=True, slots=True)
class TapGridLayout:
    """An ``n_tap_rows x n_tap_cols`` grid of mirrored taps in one raw array.

    Parameters
    ----------
    n_tap_rows, n_tap_cols : int
        Taps along y and along x (1 or 2 rows: a second row is mirrored in y).
    tap_ny : int
        Rows read by each tap, dead rows included (pixels).
    prescan_cols, data_cols, overscan_cols : int
        Columns of each tap's row in readout order (pixels).
    dead_rows : int
        Rows read first by each tap (next to its serial register) that hold no live charge
        and are left out of every region (pixels).
    bias_trim_cols : int
        Prescan columns dropped at each end of the prescan (the first read can carry a
        transient, the last sits next to the data) (pixels).
    """

    n_tap_rows: int
    n_tap_cols: int
    tap_ny: int
    prescan_cols: int
    data_cols: int
    overscan_cols: int
    dead_rows: int = 0
    bias_trim_cols: int = 0

    def __post_init__(self) -> None:
        if self.n_tap_rows not in (1, 2):
            raise ValueError(f"n_tap_rows must be 1 or 2; got {self.n_tap_rows}")
        if self.n_tap_cols < 1:
            raise ValueError(f"n_tap_cols must be >= 1; got {self.n_tap_cols}")
        if self.n_tap_cols > 2 and self.n_tap_cols % 2:
            raise ValueError(f"n_tap_cols must be 1 or even; got {self.n_tap_cols}")
        if self.data_cols < 8 or self.overscan_cols < 1:
            raise ValueError(
                f"data_cols must be >= 8 and overscan_cols >= 1; got {self.data_cols}, "
                f"{self.overscan_cols}"
            )
        if not 0 <= self.dead_rows < self.tap_ny - 8:
            raise ValueError(
                f"dead_rows must be in [0, tap_ny - 8) = [0, {self.tap_ny - 8}); "
                f"got {self.dead_rows}"
            )
        if self.prescan_cols and not 0 <= 2 * self.bias_trim_cols < self.prescan_cols:
            raise ValueError(
                f"bias_trim_cols must leave prescan columns ({self.prescan_cols}); "
                f"got {self.bias_trim_cols}"
            )

    @property
    def tap_nx(self) -> int:
        """Columns read by each tap (pixels)."""
        return self.prescan_cols + self.data_cols + self.overscan_cols

    @property
    def raw_shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the raw array."""
        return self.n_tap_rows * self.tap_ny, self.n_tap_cols * self.tap_nx

    def detector_layout(self) -> DetectorLayout:
        """The taps as a `DetectorLayout`: live rows only, prescan trimmed, names ``"xy"``.

        A tap with ``x`` odd (in a grid of 2 or more columns) reads from the right, so its
        overscan is at the left of its block; a tap in the top row reads from the top, so its
        dead rows are its top rows.
        """
        amps = []
        for iy in range(self.n_tap_rows):
            y0 = iy * self.tap_ny
            if iy == 0:
                rows = slice(y0 + self.dead_rows, y0 + self.tap_ny)
            else:
                rows = slice(y0, y0 + self.tap_ny - self.dead_rows)
            for ix in range(self.n_tap_cols):
                x0 = ix * self.tap_nx
                flip = ix % 2 == 1
                trim = self.bias_trim_cols
                if flip:
                    over = slice(x0, x0 + self.overscan_cols)
                    data = slice(over.stop, over.stop + self.data_cols)
                    pre = slice(data.stop + trim, data.stop + self.prescan_cols - trim)
                else:
                    pre = slice(x0 + trim, x0 + self.prescan_cols - trim)
                    data = slice(x0 + self.prescan_cols, x0 + self.prescan_cols + self.data_cols)
                    over = slice(data.stop, data.stop + self.overscan_cols)
                ny_live = rows.stop - rows.start
                amps.append(
                    AmpGeometry(
                        name=f"{ix}{iy}",
                        data=(rows, data),
                        serial_overscan=(rows, over),
                        parallel_overscan=None,
                        prescan=(rows, pre) if self.prescan_cols else None,
                        assembled=(
                            slice(iy * ny_live, (iy + 1) * ny_live),
                            slice(ix * self.data_cols, (ix + 1) * self.data_cols),
                        ),
                        flip_x=flip,
                    )
                )
        ny_live = self.tap_ny - self.dead_rows
        return DetectorLayout(
            amps=tuple(amps),
            raw_shape=self.raw_shape,
            assembled_shape=(self.n_tap_rows * ny_live, self.n_tap_cols * self.data_cols),
        )


def esis1() -> TapGridLayout:
    """The MSFC ESIS1 camera (Teledyne/e2v CCD230-42): 2 x 2 taps of 520 x 1076 pixels.

    50 prescan, 1024 data and 2 overscan columns per tap row (msfc-ccd's description of the
    camera); the first 10 rows each tap reads are left out (measured on the shared LED flat:
    the lower taps' first 8 rows and the upper taps' first 5 rows hold far less signal than
    the rows after them), and 2 prescan columns at each end (the first read sits ~18 DN above
    the others in every frame).
    """
    return TapGridLayout(
        n_tap_rows=2,
        n_tap_cols=2,
        tap_ny=520,
        prescan_cols=50,
        data_cols=1024,
        overscan_cols=2,
        dead_rows=10,
        bias_trim_cols=2,
    )
