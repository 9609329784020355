"""PSF model: an elliptical Moffat profile fitted to bright isolated stars.

The model is integrated over each pixel (mean of ``subsample x subsample`` points), so it
stays right for the undersampled PSFs of good seeing (0.5" FWHM is 2.7 pixels at 0.187").
The four shape parameters (width, two ellipticity components, beta) are fitted jointly to
the stamps of all PSF stars with ``scipy.optimize.least_squares``; each star's amplitude is
solved linearly inside the residual function (variable projection), and its centre is held
at its measured centroid. One round of outlier rejection (per-star chi^2) removes stars that
are not point sources or are contaminated.

For fast photometry of thousands of sources the pixel-integrated model is tabulated once on
a grid of sub-pixel phases (`MoffatPsf.phase_table`) and interpolated bilinearly in phase,
so the cost per source is a gather instead of a Moffat evaluation per sub-sample.

Real PSFs are not Moffats: the cores and wings of bright SDSS stars depart from the best
Moffat by more than their noise. As in DAOPHOT's analytic-plus-lookup-table PSF, an empirical
`PsfResidual` (`fit_psf_residual`: the PSF stars' stacked, normalised residuals from the
analytic model on an oversampled grid) can be added to the model wherever it is rendered.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from photutils.aperture import CircularAperture, aperture_photometry
from scipy import stats
from scipy.optimize import brentq, least_squares, minimize_scalar

from dcflow.errors import CalibrationError
from dcflow.stages.stamps import adaptive_moments, extract_stamps

__all__ = [
    "FWHM_PER_SIGMA",
    "PSF_RESIDUAL_EXTNAME",
    "LocalWidthResult",
    "MoffatPsf",
    "PsfFitResult",
    "PsfPhaseTable",
    "PsfResidual",
    "effective_area",
    "fit_psf",
    "fit_psf_residual",
    "fit_psf_width",
    "local_log_widths",
    "psf_model_from_header",
]

PSF_RESIDUAL_EXTNAME = "PSFRESID"
"""Name of the calexp image extension that holds the `PsfResidual` table."""

FWHM_PER_SIGMA = float(2.0 * np.sqrt(2.0 * np.log(2.0)))
"""FWHM of a Gaussian over its standard deviation."""

log = logging.getLogger(__name__)


def _subsample_offsets(subsample: int) -> np.ndarray:
    return (np.arange(subsample) - (subsample - 1) / 2.0) / subsample


def effective_area(stamp: np.ndarray) -> float:
    """Noise-equivalent area ``(sum p)^2 / sum p^2`` of a PSF image, pixels.

    The sky-limited variance of a PSF flux is ``sky variance x effective area``. SDSS's
    ``psf_width`` (psField) is the FWHM of the Gaussian of the same area,
    ``FWHM_PER_SIGMA * sqrt(area / (4 pi))``, of photo's double-Gaussian fit to its PSF
    (no wing): compare a model with photo's KL PSF image itself
    (`dcflow.instruments.sdss.psfield_psf_image`), whose width is 3-4 % larger in g r i z.
    """
    p = np.asarray(stamp, dtype=float)
    return float(p.sum() ** 2 / (p * p).sum())


@dataclass(frozen=True, slots=True, eq=False)
class PsfResidual:
    """Empirical correction to an analytic PSF: its pixel-integrated residual, tabulated.

    ``table[k, l]`` is the fraction of the total flux to add to a pixel whose centre is offset
    by ``((l - m) / oversample, (k - m) / oversample)`` pixels from the PSF centre, with
    ``m = (n - 1) / 2`` for an ``(n, n)`` table; values in between are bilinear, zero beyond
    the table. Each of the ``oversample^2`` sub-lattices of nodes (``k mod oversample``,
    ``l mod oversample``) sums to zero, so the pixels of a star at any phase sum to zero and
    the analytic model's flux scale is unchanged.

    Attributes
    ----------
    table : numpy.ndarray
        ``(n, n)`` residual per unit flux, ``n`` odd.
    oversample : int
        Nodes per pixel per axis.
    """

    table: np.ndarray
    oversample: int

    def __post_init__(self) -> None:
        t = np.asarray(self.table)
        if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] % 2 == 0 or t.shape[0] < 3:
            raise ValueError(f"table must be square with an odd side >= 3; got shape {t.shape}")
        if self.oversample < 1:
            raise ValueError(f"oversample must be >= 1; got {self.oversample}")
        if not np.all(np.isfinite(t)):
            raise ValueError("table must be finite")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PsfResidual):
            return NotImplemented
        return self.oversample == other.oversample and np.array_equal(self.table, other.table)

    def __hash__(self) -> int:
        return hash((self.oversample, np.asarray(self.table).tobytes()))

    def _corners(self, dx, dy):
        dx, dy = np.broadcast_arrays(np.asarray(dx, dtype=float), np.asarray(dy, dtype=float))
        n = self.table.shape[0]
        m = (n - 1) // 2
        gx = dx * self.oversample + m
        gy = dy * self.oversample + m
        inside = (gx >= 0) & (gx <= n - 1) & (gy >= 0) & (gy <= n - 1)
        ix = np.clip(np.floor(gx).astype(np.int64), 0, n - 2)
        iy = np.clip(np.floor(gy).astype(np.int64), 0, n - 2)
        t = np.asarray(self.table, dtype=float)
        corners = (t[iy, ix], t[iy, ix + 1], t[iy + 1, ix], t[iy + 1, ix + 1])
        return corners, gx - ix, gy - iy, inside

    def value(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Residual of the pixels whose centres are at offsets ``(dx, dy)`` (broadcastable)."""
        (t00, t01, t10, t11), tx, ty, inside = self._corners(dx, dy)
        value = (1 - ty) * ((1 - tx) * t00 + tx * t01) + ty * ((1 - tx) * t10 + tx * t11)
        return np.where(inside, value, 0.0)

    def value_and_gradient(
        self, dx: np.ndarray, dy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`value` and its derivatives with respect to the PSF centre (``-d/d dx``, ``-d/d dy``)."""
        (t00, t01, t10, t11), tx, ty, inside = self._corners(dx, dy)
        value = (1 - ty) * ((1 - tx) * t00 + tx * t01) + ty * ((1 - tx) * t10 + tx * t11)
        d_gx = (1 - ty) * (t01 - t00) + ty * (t11 - t10)
        d_gy = (1 - tx) * (t10 - t00) + tx * (t11 - t01)
        s = float(self.oversample)
        return (
            np.where(inside, value, 0.0),
            np.where(inside, -s * d_gx, 0.0),
            np.where(inside, -s * d_gy, 0.0),
        )


@dataclass(frozen=True, slots=True)
class MoffatPsf:
    """Elliptical Moffat PSF, normalised to unit total flux.

    ``I(dx, dy) = (beta - 1) / (pi alpha^2) * (1 + q(dx, dy))^-beta`` with the quadratic form
    ``q = [(1 - e1) dx^2 - 2 e2 dx dy + (1 + e1) dy^2] / (alpha^2 sqrt(1 - e1^2 - e2^2))``,
    whose determinant is ``alpha^-4`` whatever the ellipticity.

    Attributes
    ----------
    alpha_pix : float
        Core width (geometric mean over the two axes), pixels.
    beta : float
        Moffat power index (> 1).
    e1, e2 : float
        Ellipticity components (``e1 > 0``: elongated along x).
    subsample : int
        Points per pixel per axis used to integrate the profile over a pixel.
    residual : PsfResidual or None
        Empirical correction added to the pixel-integrated profile (`fit_psf_residual`);
        `point_value` is the analytic profile alone.
    """

    alpha_pix: float
    beta: float
    e1: float = 0.0
    e2: float = 0.0
    subsample: int = 5
    residual: PsfResidual | None = None

    @property
    def fwhm_pix(self) -> float:
        """FWHM (geometric mean of the two principal axes), pixels."""
        return float(2.0 * self.alpha_pix * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    def moments_fwhm_pix(self) -> float:
        """Gaussian-equivalent FWHM from adaptive moments of the pixel-integrated model, pixels.

        ``FWHM_PER_SIGMA * (det M)^(1/4)`` (`dcflow.stages.stamps.adaptive_moments`), the
        LSST stack's measure of a PSF's seeing. For a Moffat it exceeds `fwhm_pix` (by 17 %
        at beta = 3, 20 % at beta = 2.5): the wings widen the second moments but not the half
        maximum. Compare it with adaptive moments of stars, not with the half-maximum width.
        """
        half = int(np.clip(np.ceil(4.0 * self.fwhm_pix), 8, 40))
        zero = np.zeros(1)
        offsets = np.arange(-half, half + 1)
        mxx, myy, mxy, _ = adaptive_moments(
            self.render(half)[None], zero, zero, offsets, self.fwhm_pix / FWHM_PER_SIGMA, n_iter=40
        )
        return float(FWHM_PER_SIGMA * (mxx[0] * myy[0] - mxy[0] ** 2) ** 0.25)

    def effective_fwhm_pix(self) -> float:
        """FWHM of the Gaussian with the model's noise-equivalent area (SDSS ``psf_width``), pixels.

        The area is `effective_area` of the pixel-integrated model centred on a pixel, over a
        stamp of half size ``max(10 FWHM, 20)`` pixels.
        """
        half = int(max(np.ceil(10.0 * self.fwhm_pix), 20))
        area = effective_area(self.render(half))
        return float(FWHM_PER_SIGMA * np.sqrt(area / (4.0 * np.pi)))

    def point_value(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Profile value at offsets ``(dx, dy)`` (pixels) from the centre, per unit flux."""
        e = np.sqrt(1.0 - self.e1**2 - self.e2**2)
        a2 = self.alpha_pix**2 * e
        q = ((1.0 - self.e1) * dx * dx - 2.0 * self.e2 * dx * dy + (1.0 + self.e1) * dy * dy) / a2
        norm = (self.beta - 1.0) / (np.pi * self.alpha_pix**2)
        return norm * (1.0 + q) ** (-self.beta)

    def pixel_value(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Profile integrated over the pixel whose centre is at offsets ``(dx, dy)``.

        Parameters
        ----------
        dx, dy : numpy.ndarray
            Offsets (pixels) of pixel centres from the PSF centre; broadcastable.

        Returns
        -------
        numpy.ndarray
            Fraction of the total flux falling in each pixel (`residual` included).
        """
        off = _subsample_offsets(self.subsample)
        sub_dx = np.asarray(dx, dtype=float)[..., None, None] + off[None, :]
        sub_dy = np.asarray(dy, dtype=float)[..., None, None] + off[:, None]
        value = self.point_value(sub_dx, sub_dy).mean(axis=(-2, -1))
        if self.residual is not None:
            value = value + self.residual.value(dx, dy)
        return value

    def render(self, half_size: int, phase_x: float = 0.0, phase_y: float = 0.0) -> np.ndarray:
        """Pixel-integrated ``(2h+1, 2h+1)`` stamp centred at ``(h + phase_x, h + phase_y)``."""
        j = np.arange(-half_size, half_size + 1, dtype=float)
        return self.pixel_value(j[None, :] - phase_x, j[:, None] - phase_y)

    def render_at(self, shape: tuple[int, int], x: float, y: float) -> np.ndarray:
        """Image of shape ``(ny, nx)`` with the unit-flux PSF centred at array ``(x, y)``."""
        ny, nx = shape
        return self.pixel_value(
            np.arange(nx, dtype=float)[None, :] - x, np.arange(ny, dtype=float)[:, None] - y
        )

    def pixel_value_and_gradient(
        self, dx: np.ndarray, dy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`pixel_value` and its derivatives with respect to the PSF centre ``(x0, y0)``.

        Returns
        -------
        value, d_dx0, d_dy0 : numpy.ndarray
            Pixel-integrated profile and ``d value / d x0 = -d value / d dx`` (same for y).
        """
        off = _subsample_offsets(self.subsample)
        pixel_dx, pixel_dy = dx, dy
        dx = np.asarray(dx, dtype=float)[..., None, None] + off[None, :]
        dy = np.asarray(dy, dtype=float)[..., None, None] + off[:, None]
        e = np.sqrt(1.0 - self.e1**2 - self.e2**2)
        a2 = self.alpha_pix**2 * e
        q = ((1.0 - self.e1) * dx * dx - 2.0 * self.e2 * dx * dy + (1.0 + self.e1) * dy * dy) / a2
        norm = (self.beta - 1.0) / (np.pi * self.alpha_pix**2)
        value = norm * (1.0 + q) ** (-self.beta)
        # d value / d q = -beta value / (1 + q); d q / d dx = 2 ((1 - e1) dx - e2 dy) / a2.
        common = self.beta * value / (1.0 + q) * (2.0 / a2)
        d_dx0 = common * ((1.0 - self.e1) * dx - self.e2 * dy)
        d_dy0 = common * ((1.0 + self.e1) * dy - self.e2 * dx)
        axes = (-2, -1)
        value, d_dx0, d_dy0 = value.mean(axis=axes), d_dx0.mean(axis=axes), d_dy0.mean(axis=axes)
        if self.residual is not None:
            r, r_dx0, r_dy0 = self.residual.value_and_gradient(pixel_dx, pixel_dy)
            value, d_dx0, d_dy0 = value + r, d_dx0 + r_dx0, d_dy0 + r_dy0
        return value, d_dx0, d_dy0

    def phase_table(self, half_size: int, n_phase: int = 10) -> PsfPhaseTable:
        """Tabulate pixel-integrated stamps (and their gradients) on a grid of phases.

        Parameters
        ----------
        half_size : int
            Stamp half size ``h``, pixels.
        n_phase : int
            Phase steps per pixel; the grid has ``(n_phase + 1)^2`` phases.
        """
        phases = -0.5 + np.arange(n_phase + 1) / n_phase
        j = np.arange(-half_size, half_size + 1, dtype=float)
        dx = j[None, None, None, :] - phases[None, :, None, None]
        dy = j[None, None, :, None] - phases[:, None, None, None]
        # one row of phases at a time: the subsampled grid of all of them at once is
        # (n_phase + 1)^2 (2h + 1)^2 subsample^2 values per temporary (20 M for h = 35), so
        # memory traffic, not arithmetic, sets the cost; the values are the same to the bit
        rows = [self.pixel_value_and_gradient(dx[0], dy[k]) for k in range(n_phase + 1)]
        value, d_dx0, d_dy0 = (np.stack(parts) for parts in zip(*rows, strict=True))
        return PsfPhaseTable(
            table=value, d_dx0=d_dx0, d_dy0=d_dy0, half_size=half_size, n_phase=n_phase
        )


@dataclass(frozen=True, slots=True)
class PsfPhaseTable:
    """Pixel-integrated PSF stamps tabulated on a grid of sub-pixel phases.

    A table made by `MoffatPsf.phase_table` serves any number of sources. A table made by
    `PsfFitResult.phase_table` for a spatially varying PSF is bound to the sources it was
    made for: it holds the stamps of a few PSF widths (nodes) and, per source, the pair of
    nodes bracketing its width and the interpolation weight; its `stamps` then take the
    phases of exactly those sources, in the same order.

    Attributes
    ----------
    table : numpy.ndarray
        ``(n_phase+1, n_phase+1, 2h+1, 2h+1)``: ``table[ky, kx]`` is the stamp of a star whose
        centre is offset by ``(-0.5 + kx/n_phase, -0.5 + ky/n_phase)`` from the central pixel;
        with width nodes, ``(n_nodes, n_phase+1, n_phase+1, 2h+1, 2h+1)``.
    d_dx0, d_dy0 : numpy.ndarray
        Same shape: derivatives of ``table`` with respect to the star's x and y centre.
    half_size : int
        ``h``, pixels.
    n_phase : int
        Number of phase steps per pixel.
    node_index : numpy.ndarray or None
        Per source, the lower of its two bracketing width nodes (None: a single PSF).
    node_weight : numpy.ndarray or None
        Per source, the weight of the upper node (``0..1``).
    """

    table: np.ndarray
    d_dx0: np.ndarray
    d_dy0: np.ndarray
    half_size: int
    n_phase: int
    node_index: np.ndarray | None = None
    node_weight: np.ndarray | None = None

    def _interpolate(self, tables, phase_x, phase_y):
        n = self.n_phase
        fx = (np.clip(phase_x, -0.5, 0.5) + 0.5) * n
        fy = (np.clip(phase_y, -0.5, 0.5) + 0.5) * n
        ix = np.minimum(fx.astype(int), n - 1)
        iy = np.minimum(fy.astype(int), n - 1)
        tx = (fx - ix)[:, None, None]
        ty = (fy - iy)[:, None, None]
        w00, w01 = (1 - ty) * (1 - tx), (1 - ty) * tx
        w10, w11 = ty * (1 - tx), ty * tx
        if self.node_index is None:
            return [
                w00 * t[iy, ix]
                + w01 * t[iy, ix + 1]
                + w10 * t[iy + 1, ix]
                + w11 * t[iy + 1, ix + 1]
                for t in tables
            ]
        if np.shape(phase_x) != self.node_index.shape:
            raise ValueError(
                f"this PSF phase table is bound to {self.node_index.size} sources; got phases "
                f"of shape {np.shape(phase_x)}"
            )
        k = self.node_index
        tw = self.node_weight[:, None, None]
        out = []
        for t in tables:
            low = w00 * t[k, iy, ix] + w01 * t[k, iy, ix + 1]
            low += w10 * t[k, iy + 1, ix] + w11 * t[k, iy + 1, ix + 1]
            high = w00 * t[k + 1, iy, ix] + w01 * t[k + 1, iy, ix + 1]
            high += w10 * t[k + 1, iy + 1, ix] + w11 * t[k + 1, iy + 1, ix + 1]
            out.append(low + tw * (high - low))
        return out

    def stamps(self, phase_x: np.ndarray, phase_y: np.ndarray) -> np.ndarray:
        """Stamps ``(n, 2h+1, 2h+1)`` for stars at phases in ``[-0.5, 0.5]`` (bilinear in phase)."""
        return self._interpolate((self.table,), phase_x, phase_y)[0]

    def stamps_and_gradients(
        self, phase_x: np.ndarray, phase_y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stamps and their derivatives with respect to the star centre, ``(n, 2h+1, 2h+1)``."""
        value, gx, gy = self._interpolate((self.table, self.d_dx0, self.d_dy0), phase_x, phase_y)
        return value, gx, gy


@dataclass(frozen=True, slots=True)
class PsfFitResult:
    """A fitted PSF model, optionally with a width that varies over the image.

    The width is ``alpha(x, y) = psf.alpha_pix * exp(P(u, v))`` with ``P`` a polynomial of
    total order ``width_order`` in ``u = 2 x / nx - 1``, ``v = 2 y / ny - 1`` (coefficients
    ``width_coeffs`` in the order ``1, v, u, v^2, u v, u^2...``, i.e. ``u^p v^q`` for
    ``total = p + q`` ascending and ``p`` ascending); beta and the ellipticity are the same
    everywhere.

    Attributes
    ----------
    psf : MoffatPsf
        The model (its width is the reference ``alpha`` of the polynomial).
    used : numpy.ndarray
        bool per input star: kept in the final fit.
    n_stars : int
        Number of stars in the final fit.
    chi2_per_dof : float
        Reduced chi^2 of the final fit.
    width_coeffs : tuple of float
        Coefficients of ``P`` (one zero when the width is constant).
    width_order : int
        Total order of ``P``.
    image_shape : tuple of int
        ``(ny, nx)`` of the image the model describes.
    n_width_stars : int
        Stars in the fit of the width polynomial.
    """

    psf: MoffatPsf
    used: np.ndarray
    n_stars: int
    chi2_per_dof: float
    width_coeffs: tuple[float, ...] = (0.0,)
    width_order: int = 0
    image_shape: tuple[int, int] = (1, 1)
    n_width_stars: int = 0

    def alpha_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Moffat core width ``alpha`` (pixels) at array positions ``(x, y)``."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        design = _poly_design(x, y, self.image_shape, self.width_order)
        return self.psf.alpha_pix * np.exp(design @ np.asarray(self.width_coeffs))

    def psf_at(self, x: float, y: float) -> MoffatPsf:
        """The model at one array position ``(x, y)``."""
        alpha = float(self.alpha_at(np.array([x]), np.array([y]))[0])
        return dataclasses.replace(self.psf, alpha_pix=alpha)

    def width_nodes(
        self,
        x: np.ndarray,
        y: np.ndarray,
        step: float = 0.02,
        log_width_offset: np.ndarray | None = None,
    ) -> tuple[list[MoffatPsf], np.ndarray, np.ndarray]:
        """Models at a few widths bracketing those of sources at ``(x, y)``.

        Parameters
        ----------
        x, y : numpy.ndarray
            Source positions (0-based array coordinates, pixels).
        step : float
            Spacing of the nodes in ``ln alpha``. Interpolating linearly between two
            Moffat profiles ``2 %`` apart in width leaves an error of order ``1e-4`` of the
            profile, far below the photon noise of any unsaturated star.
        log_width_offset : numpy.ndarray, optional
            Per source, added to the model's ``ln alpha`` there (`local_log_widths`).

        Returns
        -------
        nodes : list of MoffatPsf
            Models at increasing widths (one when the width is constant).
        index : numpy.ndarray
            Per source, the lower bracketing node.
        weight : numpy.ndarray
            Per source, the weight of the upper node.
        """
        log_alpha = np.log(self.alpha_at(x, y) / self.psf.alpha_pix)
        if log_width_offset is not None:
            log_alpha = log_alpha + np.asarray(log_width_offset, dtype=float)
        if log_alpha.size == 0 or np.ptp(log_alpha) == 0.0:
            zero = np.zeros(log_alpha.size)
            # One width for every source, which need not be the reference's.
            common = float(log_alpha[0]) if log_alpha.size else 0.0
            node = dataclasses.replace(
                self.psf, alpha_pix=float(self.psf.alpha_pix * np.exp(common))
            )
            return [node], zero.astype(np.int64), zero
        low = float(log_alpha.min())
        n_nodes = int(np.ceil(np.ptp(log_alpha) / step)) + 1
        grid = low + step * np.arange(n_nodes)
        pos = (log_alpha - low) / step
        index = np.minimum(pos.astype(np.int64), n_nodes - 2)
        weight = np.clip(pos - index, 0.0, 1.0)
        nodes = [
            dataclasses.replace(self.psf, alpha_pix=float(self.psf.alpha_pix * np.exp(g)))
            for g in grid
        ]
        return nodes, index, weight

    def phase_table(
        self,
        half_size: int,
        x: np.ndarray,
        y: np.ndarray,
        n_phase: int = 10,
        log_width_offset: np.ndarray | None = None,
    ) -> PsfPhaseTable:
        """A phase table bound to the sources at ``(x, y)``, with the width at each.

        With a constant width this is ``psf.phase_table(half_size, n_phase)`` (usable for any
        sources); otherwise see `PsfPhaseTable` and `width_nodes` (which also describes
        ``log_width_offset``).
        """
        nodes, index, weight = self.width_nodes(x, y, log_width_offset=log_width_offset)
        if len(nodes) == 1:
            return nodes[0].phase_table(half_size, n_phase)
        tables = [node.phase_table(half_size, n_phase) for node in nodes]
        return PsfPhaseTable(
            table=np.stack([t.table for t in tables]),
            d_dx0=np.stack([t.d_dx0 for t in tables]),
            d_dy0=np.stack([t.d_dy0 for t in tables]),
            half_size=half_size,
            n_phase=n_phase,
            node_index=index,
            node_weight=weight,
        )

    def enclosed_fraction(
        self,
        radius_pix: float,
        x: np.ndarray,
        y: np.ndarray,
        log_width_offset: np.ndarray | None = None,
    ) -> np.ndarray:
        """Fraction of the pixel-integrated model's flux within a circle, per source.

        Parameters
        ----------
        radius_pix : float
            Aperture radius, pixels.
        x, y : numpy.ndarray
            Source positions (0-based array coordinates, pixels); the width is the model's
            there, interpolated between the `width_nodes`.
        log_width_offset : numpy.ndarray, optional
            Per source, added to the model's ``ln alpha`` there (`local_log_widths`).

        Returns
        -------
        numpy.ndarray
            Enclosed fraction per source (photutils' exact pixel/circle overlaps).
        """
        nodes, index, weight = self.width_nodes(
            np.asarray(x, float), np.asarray(y, float), log_width_offset=log_width_offset
        )
        node_frac = np.array([_enclosed_fraction(node, radius_pix) for node in nodes])
        frac = node_frac[index]
        if len(nodes) > 1:
            frac = frac + weight * (node_frac[index + 1] - frac)
        return frac

    def to_header(self) -> dict[str, tuple[float | int | str, str]]:
        """Header cards that describe the model (`psf_model_from_header` reads them back).

        ``PSFMODEL`` names the model; ``PSFALPHA`` (pixels), ``PSFBETA``, ``PSFE1``,
        ``PSFE2`` and ``PSFSUBS`` are the reference Moffat; ``PSFWORD`` is the order of the
        width polynomial, ``PSFWNX`` / ``PSFWNY`` the image shape it was fitted on and
        ``PSFWC<k>`` its coefficients. Keywords rather than a table extension: the analytic
        model is at most 14 numbers, and every reader of a calexp already reads its header.
        With a `PsfResidual`, ``PSFROVS`` is its oversampling and ``PSFRSIZE`` its table's
        side; the table itself goes in the calexp's image extension `PSF_RESIDUAL_EXTNAME`
        (`residual_table`).
        """
        ny, nx = self.image_shape
        cards: dict[str, tuple[float | int | str, str]] = {
            "PSFMODEL": ("moffat-widthpoly", "PSF model: Moffat, ln(width) polynomial in x, y"),
            "PSFALPHA": (self.psf.alpha_pix, "PSF Moffat reference alpha, pixels"),
            "PSFBETA": (self.psf.beta, "PSF Moffat beta"),
            "PSFE1": (self.psf.e1, "PSF ellipticity e1 (> 0: along x)"),
            "PSFE2": (self.psf.e2, "PSF ellipticity e2"),
            "PSFSUBS": (self.psf.subsample, "PSF pixel-integration points per axis"),
            "PSFWORD": (self.width_order, "PSF ln(width) polynomial total order"),
            "PSFWNX": (nx, "PSF width polynomial: image columns"),
            "PSFWNY": (ny, "PSF width polynomial: image rows"),
        }
        for k, c in enumerate(self.width_coeffs):
            cards[f"PSFWC{k}"] = (c, f"PSF ln(width) polynomial coefficient {k}")
        residual = self.psf.residual
        if residual is not None:
            cards["PSFROVS"] = (residual.oversample, "PSF residual table nodes per pixel")
            cards["PSFRSIZE"] = (residual.table.shape[0], "PSF residual table side (PSFRESID)")
        return cards

    def residual_table(self) -> np.ndarray | None:
        """The `PsfResidual` table, for the calexp's `PSF_RESIDUAL_EXTNAME` extension, or None."""
        if self.psf.residual is None:
            return None
        return np.asarray(self.psf.residual.table, dtype=np.float64)


def _enclosed_fraction(psf: MoffatPsf, radius_pix: float) -> float:
    """Fraction of the pixel-integrated model's total flux within a circular aperture."""
    half = int(np.ceil(radius_pix)) + 2
    stamp = psf.render(half)
    aper = CircularAperture((half, half), r=radius_pix)
    return float(aperture_photometry(stamp, aper, method="exact")["aperture_sum"][0])


def psf_model_from_header(
    header: Mapping, residual_table: np.ndarray | None = None
) -> PsfFitResult | None:
    """The spatially varying PSF model written by `PsfFitResult.to_header`, or None.

    Parameters
    ----------
    header : Mapping
        A calexp header (``astropy.io.fits.Header`` or a dict).
    residual_table : numpy.ndarray, optional
        The calexp's `PSF_RESIDUAL_EXTNAME` extension (`PsfFitResult.residual_table`),
        required when the header has ``PSFROVS``; calexps written without a residual table
        have neither.

    Returns
    -------
    PsfFitResult or None
        The model (``used`` empty, ``n_stars`` and ``chi2_per_dof`` unknown: 0 and NaN);
        None if the header has no ``PSFMODEL`` card.

    Raises
    ------
    ValueError
        If ``PSFMODEL`` names another model, a card is missing or not a number, or the
        residual table is missing, unexpected or not of the header's size.
    """
    if "PSFMODEL" not in header:
        return None
    if header["PSFMODEL"] != "moffat-widthpoly":
        raise ValueError(f"PSFMODEL={header['PSFMODEL']!r} is not 'moffat-widthpoly'")
    try:
        order = int(header["PSFWORD"])
        n_terms = (order + 1) * (order + 2) // 2
        psf = MoffatPsf(
            alpha_pix=float(header["PSFALPHA"]),
            beta=float(header["PSFBETA"]),
            e1=float(header["PSFE1"]),
            e2=float(header["PSFE2"]),
            subsample=int(header["PSFSUBS"]),
        )
        coeffs = tuple(float(header[f"PSFWC{k}"]) for k in range(n_terms))
        shape = (int(header["PSFWNY"]), int(header["PSFWNX"]))
        oversample = int(header["PSFROVS"]) if "PSFROVS" in header else None
        side = int(header["PSFRSIZE"]) if oversample is not None else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"PSF model header card missing or not a number: {exc}") from None
    if oversample is None and residual_table is not None:
        raise ValueError("a PSF residual table was given but the header has no PSFROVS card")
    if oversample is not None:
        if residual_table is None:
            raise ValueError(
                f"the header's PSF model has a residual table (PSFROVS={oversample}) but none "
                f"was given: read the calexp's {PSF_RESIDUAL_EXTNAME} extension"
            )
        table = np.asarray(residual_table, dtype=float)
        if table.shape != (side, side):
            raise ValueError(
                f"PSF residual table has shape {table.shape}; the header says ({side}, {side})"
            )
        psf = dataclasses.replace(psf, residual=PsfResidual(table, oversample))
    return PsfFitResult(
        psf=psf,
        used=np.zeros(0, dtype=bool),
        n_stars=0,
        chi2_per_dof=float("nan"),
        width_coeffs=coeffs,
        width_order=order,
        image_shape=shape,
    )


def _poly_design(x, y, shape, order):
    ny, nx = shape
    u = 2.0 * x / nx - 1.0
    v = 2.0 * y / ny - 1.0
    return np.column_stack(
        [u**p * v ** (total - p) for total in range(order + 1) for p in range(total + 1)]
        or [np.ones_like(u)]
    )


def _star_log_widths(data, weight, dx, dy, psf, n_iter=3, max_step=0.1, max_abs=0.3, start=None):
    """Per-star ``ln(alpha / psf.alpha_pix)`` and its error, beta and ellipticity held.

    Gauss-Newton on each star's width with its amplitude solved jointly: the model is
    linearised as ``A m + B dm/d(ln alpha)``, so ``B / A`` is the step in ``ln alpha``.
    The iteration starts from ``start`` (per star; default 0). Stars that do not converge
    within ``max_abs`` of their start get an infinite error. ``psf.residual`` is added to the
    model unscaled.
    """
    off = _subsample_offsets(psf.subsample)
    dxs = np.asarray(dx, float)[..., None, None] + off[None, :]
    dys = np.asarray(dy, float)[..., None, None] + off[:, None]
    e = np.sqrt(1.0 - psf.e1**2 - psf.e2**2)
    q0 = ((1.0 - psf.e1) * dxs * dxs - 2.0 * psf.e2 * dxs * dys + (1.0 + psf.e1) * dys * dys) / (
        psf.alpha_pix**2 * e
    )
    # The residual table is held at its tabulated shape: the width moves the analytic part.
    residual = 0.0 if psf.residual is None else psf.residual.value(dx, dy)
    n = data.shape[0]
    g0 = np.zeros(n) if start is None else np.asarray(start, dtype=float)
    g = g0.copy()
    err = np.full(n, np.inf)
    for _ in range(n_iter):
        scale = np.exp(-2.0 * g)[:, None, None, None, None]
        q = q0 * scale
        value = (psf.beta - 1.0) / (np.pi * psf.alpha_pix**2) * scale * (1.0 + q) ** (-psf.beta)
        # d ln I / d ln alpha = -2 + 2 beta q / (1 + q)
        dvalue = value * (2.0 * psf.beta * q / (1.0 + q) - 2.0)
        m = value.mean(axis=(-2, -1)) + residual
        dm = dvalue.mean(axis=(-2, -1))
        wm, wd = weight * m, weight * dm
        a11 = (wm * m).sum(axis=(1, 2))
        a12 = (wm * dm).sum(axis=(1, 2))
        a22 = (wd * dm).sum(axis=(1, 2))
        b1 = (wm * data).sum(axis=(1, 2))
        b2 = (wd * data).sum(axis=(1, 2))
        det = a11 * a22 - a12 * a12
        ok = (det > 0) & (a11 > 0)
        safe = np.where(ok, det, 1.0)
        amp = (a22 * b1 - a12 * b2) / safe
        slope = (a11 * b2 - a12 * b1) / safe
        ok &= amp > 0
        step = np.where(ok, slope / np.where(ok, amp, 1.0), 0.0)
        g = g + np.clip(step, -max_step, max_step)
        err = np.where(
            ok, np.sqrt(np.where(ok, a11 / safe, 1.0)) / np.abs(np.where(ok, amp, 1.0)), np.inf
        )
    err = np.where(np.abs(g - g0) < max_abs, err, np.inf)
    return g, err


def _fit_width_polynomial(
    x, y, log_width, err, shape, order, floor=0.003, max_span=0.25, p_value=0.01
):
    """Weighted, clipped least-squares polynomial of the per-star log widths.

    A polynomial whose values over the image span more than ``max_span`` in ``ln alpha``
    (28 %; seeing varies by less across one CCD) is taken for a fit gone wild where the
    stars are sparse, and the order is lowered. The order is then the lowest that the kept
    stars do not reject against it at ``p_value`` (an F-test of the extra terms against the
    residual scatter): a term the widths do not call for only adds its own noise to every
    star's width, and a width 0.3 % off is a PSF flux 3 mmag off (on a simulated CCD of
    constant seeing, order 2 made bright stars' PSF fluxes scatter 1.13 times the photon
    noise, order 0 1.07).
    """
    coef, used_order, n_kept, keep = _fit_width_once(x, y, log_width, err, shape, order, floor)
    gy, gx = np.meshgrid(np.linspace(0, shape[0] - 1, 9), np.linspace(0, shape[1] - 1, 9))
    while used_order > 0:
        values = _poly_design(gx.ravel(), gy.ravel(), shape, used_order) @ coef
        if np.ptp(values) <= max_span:
            break
        coef, used_order, n_kept, keep = _fit_width_once(
            x, y, log_width, err, shape, used_order - 1, floor
        )
    sufficient = _sufficient_order(x, y, log_width, err, floor, keep, shape, used_order, p_value)
    if sufficient < used_order:
        coef, used_order, n_kept, _ = _fit_width_once(
            x, y, log_width, err, shape, sufficient, floor
        )
    return coef, used_order, n_kept


def _sufficient_order(x, y, log_width, err, floor, keep, shape, order, p_value):
    """Lowest polynomial order not rejected against ``order`` by an F-test on ``keep``."""
    sigma = np.hypot(err[keep], floor)
    target = log_width[keep] / sigma

    def chi2(k):
        a = _poly_design(x[keep], y[keep], shape, k) / sigma[:, None]
        resid = target - a @ np.linalg.lstsq(a, target, rcond=None)[0]
        return float(resid @ resid), a.shape[1]

    chi2_full, n_full = chi2(order)
    dof = int(keep.sum()) - n_full
    if order == 0 or dof < 1 or chi2_full <= 0:
        return order
    for k in range(order):
        chi2_k, n_k = chi2(k)
        f = ((chi2_k - chi2_full) / (n_full - n_k)) / (chi2_full / dof)
        if stats.f.sf(f, n_full - n_k, dof) > p_value:
            return k
    return order


def _fit_width_once(x, y, log_width, err, shape, order, floor):
    good = np.isfinite(err) & np.isfinite(log_width)
    n_terms = (order + 1) * (order + 2) // 2
    while order > 0 and good.sum() < 4 * n_terms:
        order -= 1
        n_terms = (order + 1) * (order + 2) // 2
    if good.sum() < 3:
        return np.zeros(1), 0, int(good.sum()), good
    sigma = np.hypot(np.where(good, err, 1.0), floor)
    keep = good.copy()
    coef = np.zeros(n_terms)
    for _ in range(5):
        a = _poly_design(x[keep], y[keep], shape, order) / sigma[keep, None]
        coef = np.linalg.lstsq(a, log_width[keep] / sigma[keep], rcond=None)[0]
        resid = (log_width - _poly_design(x, y, shape, order) @ coef) / sigma
        scatter = 1.4826 * np.median(np.abs(resid[keep]))
        new_keep = good & (np.abs(resid) < 3.0 * max(scatter, 1.0))
        if new_keep.sum() < n_terms + 2 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return coef, order, int(keep.sum()), keep


def _params_to_psf(p: np.ndarray, subsample: int) -> MoffatPsf:
    return MoffatPsf(
        alpha_pix=float(np.exp(p[0])),
        beta=float(1.0 + np.exp(p[3])),
        e1=float(p[1]),
        e2=float(p[2]),
        subsample=subsample,
    )


def _fit(data, weight, dx, dy, p0, subsample):
    sqrt_w = np.sqrt(weight)

    def residuals(p):
        model = _params_to_psf(p, subsample).pixel_value(dx, dy)
        amp = (weight * model * data).sum(axis=(1, 2)) / np.maximum(
            (weight * model * model).sum(axis=(1, 2)), 1e-30
        )
        return (sqrt_w * (data - amp[:, None, None] * model)).ravel()

    lower = [np.log(0.3), -0.6, -0.6, np.log(0.2)]
    upper = [np.log(40.0), 0.6, 0.6, np.log(12.0)]
    p0 = np.clip(p0, np.add(lower, 1e-6), np.subtract(upper, 1e-6))
    sol = least_squares(residuals, p0, bounds=(lower, upper), x_scale=[0.1, 0.05, 0.05, 0.3])
    res = residuals(sol.x).reshape(data.shape)
    chi2_star = (res**2).sum(axis=(1, 2)) / np.maximum((weight > 0).sum(axis=(1, 2)), 1)
    return sol.x, chi2_star


def fit_psf_width(
    fit: PsfFitResult,
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    order: int = 2,
    half_size: int | None = None,
) -> PsfFitResult:
    """Fit the width of ``fit.psf`` as a polynomial over the image, from stars at ``(x, y)``.

    Each star's width is measured with the model's beta and ellipticity (Gauss-Newton on
    ``ln alpha`` with the amplitude solved jointly, weights from ``variance``), then
    ``ln(alpha / fit.psf.alpha_pix)`` is fitted as a polynomial of total order ``order`` in
    ``(x, y)`` by weighted least squares with 3-sigma clipping. The order drops when there
    are fewer than 4 usable stars per coefficient. The width needs fewer photons per star than
    the full shape, so many more (fainter) stars can take part than in `fit_psf`: a width
    polynomial of order 2 from ~20 stars is noisy at the 1 % level, and a PSF width off by
    1 % biases PSF fluxes by about 1 %.

    Parameters
    ----------
    fit : PsfFitResult
        The PSF model (from `fit_psf`); its width is the reference.
    image, variance : numpy.ndarray
        ``(ny, nx)`` background-subtracted image and its variance.
    bad : numpy.ndarray of bool
        ``(ny, nx)``; True pixels are left out.
    x, y : numpy.ndarray
        Centroids of isolated, unsaturated stars (0-based array coordinates, pixels).
    order : int
        Total polynomial order (0: a single width, refitted).
    half_size : int, optional
        Stamp half size, pixels; default ``clip(ceil(1.5 * fwhm), 4, 12)`` (the core and
        shoulders hold the width information).

    Returns
    -------
    PsfFitResult
        ``fit`` with ``width_coeffs``, ``width_order``, ``image_shape`` and ``n_width_stars``
        replaced (the other fields, ``used`` included, refer to the shape fit).

    Raises
    ------
    ValueError
        If ``order`` is negative or ``x`` and ``y`` differ in length.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if order < 0:
        raise ValueError(f"order must be >= 0; got {order}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape; got {x.shape} and {y.shape}")
    if half_size is None:
        half_size = int(np.clip(np.ceil(1.5 * fit.psf.fwhm_pix), 4, 12))
    data, weight, dx, dy = _gather(image, variance, bad, x, y, half_size)
    log_width, err = _star_log_widths(data, weight, dx, dy, fit.psf)
    coeffs, used_order, n_width = _fit_width_polynomial(x, y, log_width, err, image.shape, order)
    log.debug("PSF width: order %d over %d stars, coefficients %s", used_order, n_width, coeffs)
    return dataclasses.replace(
        fit,
        width_coeffs=tuple(float(c) for c in coeffs),
        width_order=used_order,
        image_shape=tuple(int(n) for n in image.shape),
        n_width_stars=n_width,
    )


def fit_psf_residual(
    fit: PsfFitResult,
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    half_size: int,
    oversample: int = 2,
    clip_sigma: float = 4.0,
    min_stars: int = 5,
    n_iter: int = 3,
) -> PsfFitResult:
    """Add to ``fit`` an empirical `PsfResidual` from the stars at ``(x, y)``.

    DAOPHOT's lookup table, PSFEx's pixel basis at order 0: each star's stamp minus the
    analytic model at its width (amplitude fitted linearly) is divided by the amplitude, and
    the residuals of all stars, each pixel at its sub-pixel offset from the star's centre, are
    spread bilinearly onto a grid of ``oversample`` nodes per pixel and averaged with
    inverse-variance weights. Pixels whose residual departs from the table by more than
    ``clip_sigma`` times the robust scatter of the normalised deviations (cosmic rays,
    neighbours) are dropped and the table remade. The table is cut to a circle of radius
    ``half_size - 1 / oversample`` and each node sub-lattice is brought to zero sum by
    removing its sum in the shape of the analytic core, so the flux scale stays the analytic
    model's. The stars' centres are refitted with the model (then with the first table)
    before stacking.

    Parameters
    ----------
    fit : PsfFitResult
        The analytic model (shape and width polynomial); a residual it has is replaced.
    image, variance : numpy.ndarray
        ``(ny, nx)`` background-subtracted image and its variance.
    bad : numpy.ndarray of bool
        ``(ny, nx)``; True pixels are left out.
    x, y : numpy.ndarray
        Centroids (0-based array coordinates, pixels) of bright, isolated, unsaturated stars
        (those of the shape fit).
    half_size : int
        Stamp half size, pixels: the table covers offsets up to ``half_size``.
    oversample : int
        Table nodes per pixel per axis.
    clip_sigma : float
        Pixel outlier cut, in robust standard deviations.
    min_stars : int
        Fewer usable stars leave ``fit`` without a residual.
    n_iter : int
        Rounds of clipping.

    Returns
    -------
    PsfFitResult
        ``fit`` whose ``psf`` carries the residual.

    Raises
    ------
    ValueError
        If ``x`` and ``y`` differ in shape, or ``half_size``, ``oversample`` or
        ``clip_sigma`` is not positive.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape; got {x.shape} and {y.shape}")
    for name, value in (
        ("half_size", half_size),
        ("oversample", oversample),
        ("clip_sigma", clip_sigma),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be > 0; got {value}")
    analytic = dataclasses.replace(fit.psf, residual=None)
    if x.size < min_stars:
        log.debug("PSF residual: %d stars < %d, none fitted", x.size, min_stars)
        return dataclasses.replace(fit, psf=analytic)
    data, weight, dx, dy = _gather(image, variance, bad, x, y, half_size)
    dx, dy = np.broadcast_arrays(dx, dy)
    star_psfs = [dataclasses.replace(analytic, alpha_pix=float(a)) for a in fit.alpha_at(x, y)]
    residual = None
    # Centres from a fit of the model itself (windowed centroids of undersampled stars are
    # off by a phase-dependent few hundredths of a pixel, which would blur the table), then
    # again with the first table, which moves the model's centre to the light's.
    for _ in range(2):
        star_psfs = [dataclasses.replace(p, residual=residual) for p in star_psfs]
        dx, dy = _refined_offsets(data, weight, dx, dy, star_psfs)
        table, n_stars, n_kept, n_usable = _stacked_residual(
            data, weight, dx, dy, star_psfs, half_size, oversample, clip_sigma, n_iter
        )
        if n_stars < min_stars:
            log.debug("PSF residual: %d usable stars < %d, none fitted", n_stars, min_stars)
            return dataclasses.replace(fit, psf=analytic)
        n = table.shape[0]
        node = (np.arange(n) - (n - 1) // 2) / oversample
        # The outer ring of nodes stays zero, so every pixel that a node reaches is inside
        # the table and each phase sums to zero exactly.
        inner = np.hypot(node[None, :], node[:, None]) <= half_size - 1.0 / oversample
        table = np.where(inner, table, 0.0)
        core = np.where(inner, analytic.point_value(node[None, :], node[:, None]), 0.0)
        for ky in range(oversample):
            for kx in range(oversample):
                sub = (slice(ky, None, oversample), slice(kx, None, oversample))
                table[sub] -= table[sub].sum() * core[sub] / core[sub].sum()
        residual = PsfResidual(table, oversample)
    log.debug(
        "PSF residual: %d stars, %d of %d pixels kept, table rms %.3g of the peak",
        n_stars,
        n_kept,
        n_usable,
        float(np.sqrt(np.mean(table**2)) / core.max()),
    )
    return dataclasses.replace(fit, psf=dataclasses.replace(analytic, residual=residual))


def _refined_offsets(data, weight, dx, dy, psfs, n_iter=2, max_step=0.3):
    """Pixel offsets from each star's centre refitted with its model (Gauss-Newton)."""
    dx, dy = dx.copy(), dy.copy()
    for i, psf in enumerate(psfs):
        w, d = weight[i], data[i]
        for _ in range(n_iter):
            value, gx, gy = psf.pixel_value_and_gradient(dx[i], dy[i])
            basis = np.stack([value, gx, gy]).reshape(3, -1)
            normal = (basis * w.ravel()) @ basis.T
            try:
                amp, bx, by = np.linalg.solve(normal, (basis * w.ravel()) @ d.ravel())
            except np.linalg.LinAlgError:
                break
            if amp <= 0:
                break
            dx[i] -= np.clip(bx / amp, -max_step, max_step)
            dy[i] -= np.clip(by / amp, -max_step, max_step)
    return dx, dy


def _stacked_residual(data, weight, dx, dy, psfs, half_size, oversample, clip_sigma, n_iter):
    """Clipped, inverse-variance mean of the stars' normalised residuals on the table grid."""
    analytic = [dataclasses.replace(p, residual=None) for p in psfs]
    model = np.stack([p.pixel_value(dx[i], dy[i]) for i, p in enumerate(analytic)])
    amp = (weight * model * data).sum(axis=(1, 2)) / np.maximum(
        (weight * model * model).sum(axis=(1, 2)), 1e-30
    )
    good_star = amp > 0
    safe_amp = np.where(good_star, amp, 1.0)[:, None, None]
    resid = (data - safe_amp * model) / safe_amp
    w = np.where(good_star[:, None, None], weight * safe_amp**2, 0.0)
    n = 2 * oversample * half_size + 1
    m = oversample * half_size
    gx, gy = dx * oversample + m, dy * oversample + m
    usable = (w > 0) & (gx >= 0) & (gx <= n - 1) & (gy >= 0) & (gy <= n - 1)
    keep = usable
    table = np.zeros((n, n))
    for _ in range(n_iter):
        table = _splat_mean(gx[keep], gy[keep], resid[keep], w[keep], n)
        predicted = PsfResidual(table, oversample).value(dx, dy)
        chi = (resid - predicted) * np.sqrt(w)
        spread = 1.4826 * float(np.median(np.abs(chi[usable])))
        new_keep = usable & (np.abs(chi) <= clip_sigma * max(spread, 1.0))
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return table, int(good_star.sum()), int(keep.sum()), int(usable.sum())


def _splat_mean(gx, gy, value, weight, n):
    """Weighted mean of ``value`` at grid positions ``(gx, gy)``, each spread bilinearly."""
    ix = np.clip(np.floor(gx).astype(np.int64), 0, n - 2)
    iy = np.clip(np.floor(gy).astype(np.int64), 0, n - 2)
    tx, ty = gx - ix, gy - iy
    num = np.zeros(n * n)
    den = np.zeros(n * n)
    for oy, wy in ((0, 1 - ty), (1, ty)):
        for ox, wx in ((0, 1 - tx), (1, tx)):
            index = (iy + oy) * n + ix + ox
            share = weight * wy * wx
            num += np.bincount(index, share * value, minlength=n * n)
            den += np.bincount(index, share, minlength=n * n)
    return (np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)).reshape(n, n)


_LOCAL_WIDTH_CHUNK = 256
"""Sources per chunk of `local_log_widths` (bounds its working memory to ~0.3 GB)."""


@dataclass(frozen=True, slots=True)
class LocalWidthResult:
    """Each source's own PSF width, combined with the model's at its position.

    Attributes
    ----------
    log_width_offset : numpy.ndarray
        Per source, ``ln alpha`` to add to the model's there (0 where the source's width was
        not measured, not trusted or not consistent with a point source).
    star_offset, star_offset_err : numpy.ndarray
        Per source, its measured ``ln(alpha_star / alpha_model)`` and the error (NaN and inf
        where not measured).
    intrinsic_scatter : float
        The scatter of the stars' widths about the model beyond their measurement errors, in
        ``ln alpha`` (0 when the model explains them).
    n_reference : int
        Reference stars kept to measure ``intrinsic_scatter``.
    """

    log_width_offset: np.ndarray
    star_offset: np.ndarray
    star_offset_err: np.ndarray
    intrinsic_scatter: float
    n_reference: int


def local_log_widths(
    fit: PsfFitResult,
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    reference: np.ndarray,
    half_size: int,
    clip_sigma: float = 3.0,
) -> LocalWidthResult:
    """The PSF width at each source: the model's, corrected by the source's own width.

    The width of a real PSF wanders about any smooth model: on SDSS drift scans, bright stars'
    widths scatter by 0.8-2 % about a polynomial (or any smoother) fitted to the other stars,
    while each is measured to 0.15 %; a PSF flux made with a width 1 % off is off by about
    1 %. Treating the model as a prior of width ``intrinsic_scatter`` (measured here from the
    ``reference`` stars: the scatter of their widths about the model beyond their errors)
    and each source's own width fit as a measurement, the best width at the source is the
    inverse-variance mean of the two: bright stars take their own width, faint sources keep
    the model's. A source whose width departs from the model by more than ``clip_sigma``
    times the combined error is not a point source under this PSF (a galaxy, a blend) and
    keeps the model's width, so its PSF flux stays a PSF flux.

    Parameters
    ----------
    fit : PsfFitResult
        The PSF model (shape and width polynomial).
    image, variance : numpy.ndarray
        ``(ny, nx)`` background-subtracted image and its variance.
    bad : numpy.ndarray of bool
        ``(ny, nx)``; True pixels are left out.
    x, y : numpy.ndarray
        Centroids (0-based array coordinates, pixels) of the sources whose width to measure
        (isolated, unsaturated sources with clean stamps).
    reference : numpy.ndarray of bool
        Per source, True for the stars that measure the intrinsic scatter (those of the
        width polynomial); galaxies among them are clipped.
    half_size : int
        Stamp half size of the width fit, pixels: that of the PSF flux fit, so the width is
        the one the flux fit sees.
    clip_sigma : float
        Consistency cut, in combined errors, for a source to take its own width; also the
        clipping of the reference stars.

    Returns
    -------
    LocalWidthResult
        Offsets in ``ln alpha`` per source and the figures behind them.

    Raises
    ------
    ValueError
        If ``x``, ``y`` and ``reference`` differ in length or ``clip_sigma`` is not positive.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    reference = np.asarray(reference, dtype=bool)
    if not (x.shape == y.shape == reference.shape):
        raise ValueError(
            f"x, y and reference must have the same shape; got {x.shape}, {y.shape} and "
            f"{reference.shape}"
        )
    if clip_sigma <= 0:
        raise ValueError(f"clip_sigma must be > 0; got {clip_sigma}")
    zero = np.zeros(x.size)
    if x.size == 0:
        return LocalWidthResult(zero, zero.copy(), zero.copy(), 0.0, 0)
    model = np.log(fit.alpha_at(x, y) / fit.psf.alpha_pix)
    star = np.empty(x.size)
    err = np.empty(x.size)
    # In chunks: the sub-sampled stamps cost 0.3-1.2 MB per source (stamp half size 7-15).
    for start in range(0, x.size, _LOCAL_WIDTH_CHUNK):
        part = slice(start, start + _LOCAL_WIDTH_CHUNK)
        data, weight, dx, dy = _gather(image, variance, bad, x[part], y[part], half_size)
        star[part], err[part] = _star_log_widths(data, weight, dx, dy, fit.psf, start=model[part])
    offset = np.where(np.isfinite(err), star - model, np.nan)
    scatter, n_ref = _intrinsic_scatter(offset[reference], err[reference], clip_sigma)
    total = np.hypot(scatter, err)
    consistent = np.isfinite(err) & (np.abs(np.nan_to_num(offset)) <= clip_sigma * total)
    shrink = scatter**2 / np.where(consistent, total**2, 1.0)
    local = np.where(consistent, shrink * np.nan_to_num(offset), 0.0)
    log.debug(
        "local PSF widths: intrinsic scatter %.4f from %d stars; %d of %d sources moved by > "
        "0.5 %%",
        scatter,
        n_ref,
        int((np.abs(local) > 0.005).sum()),
        x.size,
    )
    return LocalWidthResult(local, offset, err, float(scatter), n_ref)


def _intrinsic_scatter(offset, err, clip_sigma):
    """Maximum-likelihood extra scatter ``s`` of offsets with errors ``err``, clipped.

    Each offset is taken as Gaussian of variance ``err^2 + s^2``; ``s`` maximises the
    likelihood, which weighs each star by how well it measures ``s``: the stars whose errors
    are near ``s``. The moment equation ``mean(offset^2 / (err^2 + s^2)) = 1`` used before
    weighed every star alike, so a 10 % excess in the pulls of faint stars (errors of 2-4 %,
    from neighbours and centroid noise) read as an intrinsic scatter of 0.5-1.5 %, which
    then moved bright stars' widths by their own noise (simulated CCDs of constant width:
    0.004-0.016 where the truth is 0; maximum likelihood finds 0). Stars further than
    ``clip_sigma`` from the model in their combined error are clipped, starting from the
    ``s`` that makes the median squared pull that of a Gaussian (blends and galaxies among
    bright stars then do not set the first cut). NaN-free input assumed for finite errors.
    """
    good = np.isfinite(err) & np.isfinite(offset)
    r, e = offset[good], err[good]
    if r.size < 5:
        return 0.0, int(r.size)
    s = _median_scatter_root(r, e)
    keep = np.ones(r.size, bool)
    for _ in range(10):
        new_keep = np.abs(r) <= clip_sigma * np.hypot(s, e)
        s = _likelihood_scatter(r[new_keep], e[new_keep])
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return s, int(keep.sum())


def _median_scatter_root(r, e):
    """``s`` making the median of ``r^2 / (e^2 + s^2)`` that of chi^2 with 1 dof."""
    median_chi2 = stats.chi2.median(1)
    if np.median(r * r / (e * e)) <= median_chi2:
        return 0.0
    high = 10.0 * float(np.sqrt(np.max(r * r))) + 1e-12  # every term below 0.01 there
    return float(brentq(lambda s: np.median(r * r / (e * e + s * s)) - median_chi2, 0.0, high))


def _likelihood_scatter(r, e):
    """Maximum-likelihood ``s >= 0`` of ``r ~ N(0, e^2 + s^2)`` (0 if none beats it)."""
    if r.size == 0:
        return 0.0

    def neg_log_likelihood(s):
        v = e * e + s * s
        return 0.5 * float(np.sum(np.log(v) + r * r / v))

    high = float(np.sqrt(np.max(r * r))) + 1e-12  # beyond it the likelihood only falls
    best = minimize_scalar(neg_log_likelihood, bounds=(0.0, high), method="bounded")
    if not best.success or neg_log_likelihood(best.x) >= neg_log_likelihood(0.0):
        return 0.0
    return float(best.x)


def _gather(image, variance, bad, x, y, half_size):
    """Stamps, inverse-variance weights (0 on bad pixels) and pixel offsets from ``(x, y)``."""
    xi, yi = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    data, inside = extract_stamps(image, xi, yi, half_size)
    var, _ = extract_stamps(variance, xi, yi, half_size)
    badst, _ = extract_stamps(bad, xi, yi, half_size)
    good = inside & ~badst & (var > 0) & np.isfinite(data)
    weight = np.where(good, 1.0 / np.where(var > 0, var, 1.0), 0.0)
    data = np.where(good, data, 0.0).astype(float)
    j = np.arange(-half_size, half_size + 1, dtype=float)
    dx = j[None, None, :] - (x - xi)[:, None, None]
    dy = j[None, :, None] - (y - yi)[:, None, None]
    return data, weight, dx, dy


def fit_psf(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fwhm_guess_pix: float,
    half_size: int | None = None,
    subsample: int = 5,
    clip_chi2: float = 3.0,
    min_stars: int = 3,
    width_order: int = 0,
) -> PsfFitResult:
    """Fit an elliptical Moffat PSF to the stamps of bright isolated stars.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` background-subtracted image.
    variance : numpy.ndarray
        ``(ny, nx)`` variance of ``image``.
    bad : numpy.ndarray of bool
        ``(ny, nx)``; True for pixels to leave out (saturated, bad, cosmic rays).
    x, y : numpy.ndarray
        Centroids (0-based array coordinates, pixels) of the PSF stars.
    fwhm_guess_pix : float
        Starting FWHM, pixels.
    half_size : int, optional
        Half size of the fitted stamps, pixels; default ``clip(ceil(2 * fwhm), 4, 15)``.
    subsample : int
        Points per pixel per axis for the pixel integration.
    clip_chi2 : float
        Stars whose chi^2 per pixel exceeds ``clip_chi2`` times the median are rejected once
        and the fit repeated.
    min_stars : int
        Minimum number of stars.
    width_order : int
        Total polynomial order in ``(x, y)`` of ``ln alpha`` over the image (0: one width).
        With ``> 0``, each kept star's width is measured with the fitted beta and ellipticity
        and the polynomial fitted to them (weighted, clipped); the order drops when there are
        fewer than 4 stars per coefficient. A PSF whose width changes by 1 % across the image
        biases fixed-model PSF fluxes by about 1 % (10 mmag), which a low-order aperture
        correction removes only in part.

    Returns
    -------
    PsfFitResult
        The model and which stars were used.

    Raises
    ------
    CalibrationError
        If fewer than ``min_stars`` stars are available or kept.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size < min_stars:
        raise CalibrationError(
            f"PSF fit: only {x.size} PSF star candidates, need >= {min_stars}; "
            "the field is too sparse or the S/N cut too high",
            n_psf_stars=int(x.size),
            min_stars=int(min_stars),
        )
    if half_size is None:
        half_size = int(np.clip(np.ceil(2.0 * fwhm_guess_pix), 4, 15))
    data, weight, dx, dy = _gather(image, variance, bad, x, y, half_size)

    beta0 = 3.0
    alpha0 = fwhm_guess_pix / (2.0 * np.sqrt(2.0 ** (1.0 / beta0) - 1.0))
    p0 = np.array([np.log(alpha0), 0.0, 0.0, np.log(beta0 - 1.0)])
    used = np.ones(x.size, dtype=bool)
    p, chi2 = _fit(data, weight, dx, dy, p0, subsample)
    reject = chi2 > clip_chi2 * np.median(chi2)
    if reject.any() and (~reject).sum() >= min_stars:
        used = ~reject
        p, chi2_used = _fit(data[used], weight[used], dx[used], dy[used], p, subsample)
        chi2 = np.full(x.size, np.nan)
        chi2[used] = chi2_used
    psf = _params_to_psf(p, subsample)
    log.debug("PSF fit: %d stars, fwhm %.3f pix, beta %.2f", used.sum(), psf.fwhm_pix, psf.beta)
    coeffs, order, n_width = (0.0,), 0, 0
    if width_order > 0:
        log_width, err = _star_log_widths(data[used], weight[used], dx[used], dy[used], psf)
        coeffs, order, n_width = _fit_width_polynomial(
            x[used], y[used], log_width, err, image.shape, width_order
        )
        log.debug("PSF width: order %d over %d stars, coefficients %s", order, n_width, coeffs)
    return PsfFitResult(
        psf=psf,
        used=used,
        n_stars=int(used.sum()),
        chi2_per_dof=float(np.nanmedian(chi2)),
        width_coeffs=tuple(float(c) for c in coeffs),
        width_order=order,
        image_shape=tuple(int(n) for n in image.shape),
        n_width_stars=n_width,
    )
