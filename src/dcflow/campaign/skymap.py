"""Sky map geometry: tangent-plane tracts cut into overlapping patches, as in LSST sky maps.

A *tract* is a TAN (gnomonic) projection around a centre with a square pixel grid of
``n_patches * patch_inner_pixels + 2 * patch_border_pixels`` pixels on a side. The tract is cut
into ``n_patches x n_patches`` *patches*: patch ``(i, j)`` owns the *inner box*
``[border + i * inner, border + (i + 1) * inner)`` in x (``j`` likewise in y), and its *outer
box* is the inner box grown by ``border`` pixels on every side, so neighbouring patches overlap
by ``2 * border`` pixels and every outer box lies inside the tract. Coadds are made on outer
boxes; an object belongs to the one patch whose inner box holds its position, which makes
Object ids unique across a tract.

Boxes are half-open integer ranges in tract pixel coordinates whose pixel ``(0, 0)`` is the
tract array's first pixel (pixel centres at integers). A patch's WCS is the tract WCS with its
origin moved to the outer box's first pixel, so all patches of a tract share one pixel grid.
Patch names are ``"x,y"`` (``"3,4"``), the text used in data ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dcflow.configs import check_fields, config_field

if TYPE_CHECKING:  # astropy.wcs is imported where a WCS is built: shard Snakemakes need none
    from astropy.wcs import WCS

__all__ = [
    "BBox",
    "PatchInfo",
    "SkyMapConfig",
    "TractInfo",
    "ccd_footprint",
    "circle_footprint",
    "find_patch",
    "make_tracts",
    "overlap_pairs",
    "overlapping_tract_patches",
    "parse_patch_name",
    "patch_info",
    "patch_wcs",
    "patches_for_calexp",
    "patches_for_pointings",
    "patches_for_pointings_loop",
    "patches_overlapping",
    "sky_to_tract_pixels",
    "tract_wcs",
]


@dataclass(frozen=True, slots=True)
class SkyMapConfig:
    """Geometry of the campaign's sky map (a list of tract centres sharing one patch layout)."""

    tract_ra_deg: tuple[float, ...] = config_field(
        (0.0,),
        "Right ascension of each tract centre, deg (ICRS); tract id = index",
        minimum=0.0,
        maximum=360.0,
    )
    tract_dec_deg: tuple[float, ...] = config_field(
        (0.0,),
        "Declination of each tract centre, deg (ICRS), same order as tract_ra_deg",
        minimum=-90.0,
        maximum=90.0,
    )
    pixel_scale_arcsec: float = config_field(
        0.2, "Coadd pixel scale at the tract centre, arcsec/pixel", exclusive_minimum=0.0
    )
    patch_inner_pixels: int = config_field(
        4000, "Side of a patch's inner (owned) box, pixels", minimum=1
    )
    patch_border_pixels: int = config_field(
        100, "Overlap border added on each side of the inner box, pixels", minimum=0
    )
    n_patches: int = config_field(8, "Patches along each axis of a tract", minimum=1)
    field_radius_deg: float = config_field(
        0.75,
        "Radius of a circle around a visit's pointing that holds its whole focal plane and "
        "the pointing error, deg (planning-time patch overlaps; MegaCam: 0.75)",
        exclusive_minimum=0.0,
        maximum=10.0,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.tract_ra_deg) != len(self.tract_dec_deg):
            raise ValueError(
                "SkyMapConfig.tract_ra_deg and tract_dec_deg must have the same length; got "
                f"{len(self.tract_ra_deg)} and {len(self.tract_dec_deg)}"
            )
        if not self.tract_ra_deg:
            raise ValueError("SkyMapConfig.tract_ra_deg must list at least one tract centre")


@dataclass(frozen=True, slots=True)
class BBox:
    """Half-open integer pixel box ``[x0, x1) x [y0, y1)``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the box."""
        return (self.y1 - self.y0, self.x1 - self.x0)

    def contains(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Whether pixel positions fall in the box (pixel centres at integers).

        A pixel ``k`` spans ``[k - 0.5, k + 0.5)``, so the box covers ``[x0 - 0.5, x1 - 0.5)``.
        """
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        return (
            (x >= self.x0 - 0.5) & (x < self.x1 - 0.5) & (y >= self.y0 - 0.5) & (y < self.y1 - 0.5)
        )


@dataclass(frozen=True, slots=True)
class TractInfo:
    """One tract: its id, tangent point and patch layout."""

    tract_id: int
    ra_deg: float
    dec_deg: float
    pixel_scale_arcsec: float
    patch_inner_pixels: int
    patch_border_pixels: int
    n_patches: int

    @property
    def size_pixels(self) -> int:
        """Side of the (square) tract pixel grid, pixels."""
        return self.n_patches * self.patch_inner_pixels + 2 * self.patch_border_pixels

    @property
    def bbox(self) -> BBox:
        """The tract's pixel box."""
        return BBox(0, 0, self.size_pixels, self.size_pixels)


@dataclass(frozen=True, slots=True)
class PatchInfo:
    """One patch of a tract: its indices, name and boxes in tract pixel coordinates."""

    tract_id: int
    patch_x: int
    patch_y: int
    inner: BBox
    outer: BBox

    @property
    def name(self) -> str:
        """The patch's data-id text, ``"x,y"``."""
        return f"{self.patch_x},{self.patch_y}"

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the patch (outer box) arrays."""
        return self.outer.shape


def make_tracts(config: SkyMapConfig) -> tuple[TractInfo, ...]:
    """Tracts of a sky map config, with ids equal to their index in the config lists."""
    return tuple(
        TractInfo(
            tract_id=index,
            ra_deg=float(ra) % 360.0,
            dec_deg=float(dec),
            pixel_scale_arcsec=config.pixel_scale_arcsec,
            patch_inner_pixels=config.patch_inner_pixels,
            patch_border_pixels=config.patch_border_pixels,
            n_patches=config.n_patches,
        )
        for index, (ra, dec) in enumerate(
            zip(config.tract_ra_deg, config.tract_dec_deg, strict=True)
        )
    )


def tract_wcs(tract: TractInfo) -> WCS:
    """TAN WCS of a tract: north up, east left, tangent point at the grid centre.

    Pixel ``(0, 0)`` is the first array element (FITS CRPIX is 1-based, hence the +1).
    """
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    centre = (tract.size_pixels - 1) / 2.0
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [tract.ra_deg, tract.dec_deg]
    wcs.wcs.crpix = [centre + 1.0, centre + 1.0]
    scale_deg = tract.pixel_scale_arcsec / 3600.0
    wcs.wcs.cdelt = [-scale_deg, scale_deg]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    wcs.pixel_shape = (tract.size_pixels, tract.size_pixels)
    return wcs


def parse_patch_name(name: str) -> tuple[int, int]:
    """Patch indices ``(x, y)`` from a name ``"x,y"``.

    Raises
    ------
    ValueError
        If ``name`` is not two non-negative integers joined by a comma.
    """
    parts = str(name).split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"patch name must be 'x,y' with non-negative integers; got {name!r}")
    return int(parts[0]), int(parts[1])


def patch_info(tract: TractInfo, patch_x: int, patch_y: int) -> PatchInfo:
    """Boxes of patch ``(patch_x, patch_y)`` of a tract.

    Raises
    ------
    ValueError
        If an index is outside ``[0, n_patches)``.
    """
    for label, value in (("patch_x", patch_x), ("patch_y", patch_y)):
        if not 0 <= value < tract.n_patches:
            raise ValueError(f"{label} must be in [0, {tract.n_patches}); got {value}")
    inner_size = tract.patch_inner_pixels
    border = tract.patch_border_pixels
    x0 = border + patch_x * inner_size
    y0 = border + patch_y * inner_size
    inner = BBox(x0, y0, x0 + inner_size, y0 + inner_size)
    outer = BBox(x0 - border, y0 - border, x0 + inner_size + border, y0 + inner_size + border)
    return PatchInfo(tract.tract_id, int(patch_x), int(patch_y), inner, outer)


def patch_wcs(tract: TractInfo, patch: PatchInfo) -> WCS:
    """WCS of a patch's outer-box arrays: the tract WCS shifted to the outer box origin."""
    wcs = tract_wcs(tract)
    wcs.wcs.crpix = wcs.wcs.crpix - np.array([patch.outer.x0, patch.outer.y0], dtype=float)
    wcs.pixel_shape = (patch.outer.shape[1], patch.outer.shape[0])
    return wcs


def sky_to_tract_pixels(
    tract: TractInfo, ra_deg: np.ndarray, dec_deg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tract pixel coordinates of sky positions, and whether each is on the near hemisphere.

    Returns
    -------
    x, y : numpy.ndarray
        Tract pixel coordinates (NaN where the point is 90 deg or more from the tangent point).
    in_front : numpy.ndarray of bool
        True where the gnomonic projection is defined.
    """
    ra = np.radians(np.atleast_1d(np.asarray(ra_deg, dtype=float)))
    dec = np.radians(np.atleast_1d(np.asarray(dec_deg, dtype=float)))
    ra0 = np.radians(tract.ra_deg)
    dec0 = np.radians(tract.dec_deg)
    cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    in_front = cos_c > 1e-6
    x = np.full(ra.shape, np.nan)
    y = np.full(ra.shape, np.nan)
    if np.any(in_front):
        px, py = tract_wcs(tract).all_world2pix(
            np.degrees(ra[in_front]), np.degrees(dec[in_front]), 0
        )
        x[in_front] = px
        y[in_front] = py
    return x, y, in_front


def ccd_footprint(wcs: WCS, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Sky polygon of a CCD: its four outer pixel corners, counter-clockwise in pixel space.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        The CCD's pixel-to-sky transform (pixel origin at the array's ``[0, 0]``).
    shape : tuple of int
        ``(ny, nx)`` of the CCD array.

    Returns
    -------
    ra_deg, dec_deg : numpy.ndarray
        The four corners.
    """
    ny, nx = shape
    if ny < 1 or nx < 1:
        raise ValueError(f"shape must be positive (ny, nx); got {shape}")
    xs = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    ys = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    return np.asarray(ra), np.asarray(dec)


def circle_footprint(
    ra_deg: float, dec_deg: float, radius_deg: float, *, n_vertices: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """A convex sky polygon that contains the circle of ``radius_deg`` around a pointing.

    The polygon circumscribes the circle (vertex radius ``radius / cos(pi / n)``), so using it
    for overlap tests never misses a patch the circle touches. Used at planning time, when only
    a visit's pointing and field radius are known.
    """
    if not 0.0 < radius_deg < 45.0:
        raise ValueError(f"radius_deg must be in (0, 45); got {radius_deg}")
    if n_vertices < 3:
        raise ValueError(f"n_vertices must be >= 3; got {n_vertices}")
    rho = np.radians(radius_deg / np.cos(np.pi / n_vertices))
    angle = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    ra0 = np.radians(ra_deg)
    dec0 = np.radians(dec_deg)
    # Destination point at angular distance rho and position angle `angle` from the centre.
    sin_dec = np.sin(dec0) * np.cos(rho) + np.cos(dec0) * np.sin(rho) * np.cos(angle)
    dec = np.arcsin(np.clip(sin_dec, -1.0, 1.0))
    ra = ra0 + np.arctan2(
        np.sin(angle) * np.sin(rho) * np.cos(dec0), np.cos(rho) - np.sin(dec0) * sin_dec
    )
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _convex_polygon_overlaps_box(
    px: np.ndarray, py: np.ndarray, box_x: tuple, box_y: tuple
) -> bool:
    """Separating-axis test between a convex polygon and an axis-aligned box (open overlap)."""
    if px.max() <= box_x[0] or px.min() >= box_x[1]:
        return False
    if py.max() <= box_y[0] or py.min() >= box_y[1]:
        return False
    corners_x = np.array([box_x[0], box_x[1], box_x[1], box_x[0]])
    corners_y = np.array([box_y[0], box_y[0], box_y[1], box_y[1]])
    n = len(px)
    for k in range(n):
        ex = px[(k + 1) % n] - px[k]
        ey = py[(k + 1) % n] - py[k]
        nx, ny = -ey, ex
        poly = nx * px + ny * py
        box = nx * corners_x + ny * corners_y
        if poly.max() <= box.min() or poly.min() >= box.max():
            return False
    return True


def patches_overlapping(
    tract: TractInfo, ra_deg: Sequence[float], dec_deg: Sequence[float]
) -> list[PatchInfo]:
    """Patches of a tract whose outer box overlaps a convex sky polygon.

    Parameters
    ----------
    tract : TractInfo
        The tract.
    ra_deg, dec_deg : sequence of float
        Vertices of a convex polygon (a CCD footprint from `ccd_footprint`, or a pointing's
        circle from `circle_footprint`), in order around the polygon.

    Returns
    -------
    list of PatchInfo
        Sorted by ``(patch_y, patch_x)``; empty if the polygon misses the tract or lies on the
        far side of the sky from its tangent point.
    """
    ra = np.asarray(ra_deg, dtype=float)
    dec = np.asarray(dec_deg, dtype=float)
    if ra.ndim != 1 or ra.shape != dec.shape or ra.size < 3:
        raise ValueError(
            f"ra_deg and dec_deg must be 1-d with the same length >= 3; got {ra.shape}, {dec.shape}"
        )
    x, y, in_front = sky_to_tract_pixels(tract, ra, dec)
    if not np.all(in_front):
        return []
    # Pixel k covers [k - 0.5, k + 0.5): boxes in continuous coordinates.
    edge = -0.5
    size = tract.size_pixels
    if not _convex_polygon_overlaps_box(x, y, (edge, size + edge), (edge, size + edge)):
        return []
    inner = tract.patch_inner_pixels
    border = tract.patch_border_pixels
    # Candidate index range from the polygon's bounding box, then the exact test.
    lo_x = max(0, int(np.floor((x.min() - border - edge - border) / inner)) - 1)
    hi_x = min(tract.n_patches - 1, int(np.floor((x.max() - edge) / inner)) + 1)
    lo_y = max(0, int(np.floor((y.min() - border - edge - border) / inner)) - 1)
    hi_y = min(tract.n_patches - 1, int(np.floor((y.max() - edge) / inner)) + 1)
    found = []
    for j in range(lo_y, hi_y + 1):
        for i in range(lo_x, hi_x + 1):
            patch = patch_info(tract, i, j)
            box_x = (patch.outer.x0 + edge, patch.outer.x1 + edge)
            box_y = (patch.outer.y0 + edge, patch.outer.y1 + edge)
            if _convex_polygon_overlaps_box(x, y, box_x, box_y):
                found.append(patch)
    return found


def overlapping_tract_patches(
    tracts: Sequence[TractInfo], ra_deg: Sequence[float], dec_deg: Sequence[float]
) -> list[tuple[int, str]]:
    """``(tract_id, patch name)`` of every patch of any tract that a convex sky polygon overlaps."""
    return [
        (tract.tract_id, patch.name)
        for tract in tracts
        for patch in patches_overlapping(tract, ra_deg, dec_deg)
    ]


def find_patch(tract: TractInfo, ra_deg: float, dec_deg: float) -> PatchInfo | None:
    """The patch whose inner box holds a sky position, or None if it is outside every inner box."""
    x, y, in_front = sky_to_tract_pixels(tract, ra_deg, dec_deg)
    if not in_front[0]:
        return None
    border = tract.patch_border_pixels
    inner = tract.patch_inner_pixels
    i = int(np.floor((x[0] + 0.5 - border) / inner))
    j = int(np.floor((y[0] + 0.5 - border) / inner))
    if not (0 <= i < tract.n_patches and 0 <= j < tract.n_patches):
        return None
    return patch_info(tract, i, j)


_CIRCLE_VERTICES = 32
"""Vertices of the planning-time circle polygon (`circle_footprint`'s default)."""


def _circle_footprints(
    ra_deg: np.ndarray, dec_deg: np.ndarray, radius_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """`circle_footprint` of many pointings at once, ``(n, 32)``: the same operations, in order."""
    if not 0.0 < radius_deg < 45.0:
        raise ValueError(f"radius_deg must be in (0, 45); got {radius_deg}")
    n_vertices = _CIRCLE_VERTICES
    rho = np.radians(radius_deg / np.cos(np.pi / n_vertices))
    angle = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    ra0 = np.radians(ra_deg)[:, None]
    dec0 = np.radians(dec_deg)[:, None]
    sin_dec = np.sin(dec0) * np.cos(rho) + np.cos(dec0) * np.sin(rho) * np.cos(angle)
    dec = np.arcsin(np.clip(sin_dec, -1.0, 1.0))
    ra = ra0 + np.arctan2(
        np.sin(angle) * np.sin(rho) * np.cos(dec0), np.cos(rho) - np.sin(dec0) * sin_dec
    )
    return np.degrees(ra) % 360.0, np.degrees(dec)


@dataclass(frozen=True, slots=True)
class _Polygons:
    """Convex polygons ``(m, k)`` with what the separating-axis test needs per polygon."""

    xmin: np.ndarray
    xmax: np.ndarray
    ymin: np.ndarray
    ymax: np.ndarray
    nx: np.ndarray
    ny: np.ndarray
    pmin: np.ndarray
    pmax: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> _Polygons:
        # the same expressions as _convex_polygon_overlaps_box, per polygon row
        ex = np.roll(x, -1, axis=1) - x
        ey = np.roll(y, -1, axis=1) - y
        nx, ny = -ey, ex
        pmin = np.empty_like(nx)
        pmax = np.empty_like(nx)
        for start in range(0, len(x), 8192):
            part = slice(start, start + 8192)
            pmin[part], pmax[part] = _edge_projections(x[part], y[part], nx[part], ny[part])
        return cls(x.min(axis=1), x.max(axis=1), y.min(axis=1), y.max(axis=1), nx, ny, pmin, pmax)


_WINDOW = 3
"""Vertices on each side of the antipode of an edge that `_edge_projections` projects."""


def _edge_projections(
    x: np.ndarray, y: np.ndarray, nx: np.ndarray, ny: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Min and max over the vertices of each polygon's projection on each of its edge normals.

    A convex polygon lies on one side of each edge, so one extreme is at the edge's own two
    vertices; the other is at the vertex farthest from it, near the antipode of a near-circle.
    Projecting those plus ``2 * _WINDOW + 1`` vertices around the antipode gives exactly the
    extremes over all vertices whenever the window's extreme lies strictly inside it (the
    projections of a convex polygon's vertices rise to one peak and fall); rows where it does
    not are projected on every vertex. Values are the same floating-point expressions.
    """
    n_vertices = x.shape[1]
    edge = np.arange(n_vertices)
    window = (edge[:, None] + n_vertices // 2 + np.arange(-_WINDOW, _WINDOW + 1)) % n_vertices
    columns = np.concatenate([edge[:, None], (edge[:, None] + 1) % n_vertices, window], axis=1)
    proj = nx[:, :, None] * x[:, columns] + ny[:, :, None] * y[:, columns]
    pmin, pmax = proj.min(axis=2), proj.max(axis=2)
    inner = proj[:, :, 2:]
    ends = np.stack((inner[:, :, 0], inner[:, :, -1]), axis=2)
    peak_inside = inner.max(axis=2) > ends.max(axis=2)
    trough_inside = inner.min(axis=2) < ends.min(axis=2)
    edge_is_low = proj[:, :, :2].max(axis=2) < inner.min(axis=2)
    edge_is_high = proj[:, :, :2].min(axis=2) > inner.max(axis=2)
    exact = (edge_is_low & peak_inside) | (edge_is_high & trough_inside)
    redo = np.flatnonzero(~exact.all(axis=1))
    if redo.size:
        full = nx[redo, :, None] * x[redo, None, :] + ny[redo, :, None] * y[redo, None, :]
        pmin[redo] = full.min(axis=2)
        pmax[redo] = full.max(axis=2)
    return pmin, pmax


def _boxes_overlap(
    polygons: _Polygons,
    row: np.ndarray,
    bx0: np.ndarray,
    bx1: np.ndarray,
    by0: np.ndarray,
    by1: np.ndarray,
) -> np.ndarray:
    """`_convex_polygon_overlaps_box` of polygon ``row[i]`` and box ``i``, for every ``i``.

    Every comparison uses the same floating-point expressions as the scalar test (a box's
    projection extremes are the corners picked by the normal's signs, which equal the min and
    max over the four corners because rounding is monotonic), so results are identical.
    """
    p = polygons
    ok = ~((p.xmax[row] <= bx0) | (p.xmin[row] >= bx1))
    ok &= ~((p.ymax[row] <= by0) | (p.ymin[row] >= by1))
    candidates = np.flatnonzero(ok)
    for start in range(0, candidates.size, 65536):
        sel = candidates[start : start + 65536]
        r = row[sel]
        nx, ny = p.nx[r], p.ny[r]
        x0, x1 = bx0[sel][:, None], bx1[sel][:, None]
        y0, y1 = by0[sel][:, None], by1[sel][:, None]
        positive_x, positive_y = nx >= 0, ny >= 0
        bmin = nx * np.where(positive_x, x0, x1) + ny * np.where(positive_y, y0, y1)
        bmax = nx * np.where(positive_x, x1, x0) + ny * np.where(positive_y, y1, y0)
        separated = (p.pmax[r] <= bmin) | (p.pmin[r] >= bmax)
        ok[sel] = ~separated.any(axis=1)
    return ok


def _angular_separation_deg(
    ra1_deg: np.ndarray, dec1_deg: np.ndarray, ra2_deg: float, dec2_deg: float
) -> np.ndarray:
    ra1, dec1 = np.radians(ra1_deg), np.radians(dec1_deg)
    ra2, dec2 = np.radians(ra2_deg), np.radians(dec2_deg)
    sin_dra = np.sin(ra2 - ra1)
    cos_dra = np.cos(ra2 - ra1)
    num = np.hypot(
        np.cos(dec2) * sin_dra, np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * cos_dra
    )
    den = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * cos_dra
    return np.degrees(np.arctan2(num, den))


class _PointingTree:
    """Pointings on the unit sphere in a k-d tree: the few near a tract, without a pass over all.

    `within` returns a superset (a chord radius padded well beyond rounding) of the pointings
    within an angle; the caller keeps those its own separation test accepts, so results do
    not depend on the tree.
    """

    def __init__(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> None:
        from scipy.spatial import cKDTree  # heavy: imported when overlaps are computed

        self._tree = cKDTree(_unit_vectors(ra_deg, dec_deg)) if len(ra_deg) else None

    def within(self, ra_deg: float, dec_deg: float, radius_deg: float) -> np.ndarray:
        if self._tree is None:
            return np.zeros(0, dtype=np.int64)
        centre = _unit_vectors(np.array([ra_deg]), np.array([dec_deg]))[0]
        chord = 2.0 * np.sin(np.radians(min(radius_deg, 180.0)) / 2.0) * (1 + 1e-9) + 1e-9
        found = self._tree.query_ball_point(centre, chord)
        return np.sort(np.asarray(found, dtype=np.int64))


def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack((np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)))


def overlap_pairs(
    tracts: Sequence[TractInfo],
    ra_deg: np.ndarray,
    dec_deg: np.ndarray,
    *,
    field_radius_deg: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Planning-time overlaps of many pointings at once (vectorized per tract).

    The result is exactly that of `patches_overlapping` applied to each pointing's
    `circle_footprint` (same candidate patch ranges, same floating-point tests), computed for
    all pointings near a tract together: a pointing farther from a tract centre than the
    tract's half diagonal plus the circle's radius cannot overlap it and is skipped.

    Parameters
    ----------
    tracts : sequence of TractInfo
        The sky map.
    ra_deg, dec_deg : numpy.ndarray
        Pointings, deg (1-d, same length).
    field_radius_deg : float
        Circle radius, deg.

    Returns
    -------
    pointing, tract_id, patch_x, patch_y : numpy.ndarray
        One entry per overlapping (pointing, patch): the pointing's index in the inputs and
        the patch (int64 arrays), sorted by tract, then pointing, then ``(patch_y, patch_x)``.
    """
    ra = np.asarray(ra_deg, dtype=float)
    dec = np.asarray(dec_deg, dtype=float)
    if ra.ndim != 1 or ra.shape != dec.shape:
        raise ValueError(
            f"ra_deg and dec_deg must be 1-d of one length; got {ra.shape}, {dec.shape}"
        )
    poly_ra, poly_dec = _circle_footprints(ra, dec, field_radius_deg)
    rho_deg = float(np.degrees(np.radians(field_radius_deg / np.cos(np.pi / _CIRCLE_VERTICES))))
    empty = np.zeros(0, dtype=np.int64)
    out: list[tuple[np.ndarray, ...]] = []
    edge = -0.5
    pointings = _PointingTree(ra, dec)
    for tract in tracts:
        size = tract.size_pixels
        half_diag_rad = (
            np.sqrt(2.0) * (size / 2.0 + 1.0) * np.radians(tract.pixel_scale_arcsec / 3600.0)
        )
        reach = np.degrees(np.arctan(half_diag_rad)) + rho_deg + 1e-3
        candidates = pointings.within(tract.ra_deg, tract.dec_deg, reach)
        separation = _angular_separation_deg(
            ra[candidates], dec[candidates], tract.ra_deg, tract.dec_deg
        )
        near = candidates[separation <= reach]
        if near.size == 0:
            continue
        x, y, in_front = sky_to_tract_pixels(tract, poly_ra[near].ravel(), poly_dec[near].ravel())
        shape = (near.size, _CIRCLE_VERTICES)
        x, y, in_front = x.reshape(shape), y.reshape(shape), in_front.reshape(shape)
        keep = in_front.all(axis=1)
        near, x, y = near[keep], x[keep], y[keep]
        polygons = _Polygons.of(x, y)
        full = np.full(near.size, float(edge))
        rows = np.arange(near.size)
        on_tract = _boxes_overlap(polygons, rows, full, full + size, full, full + size)
        if not on_tract.any():
            continue
        inner = tract.patch_inner_pixels
        border = tract.patch_border_pixels
        n = tract.n_patches
        xmin, xmax = polygons.xmin, polygons.xmax
        ymin, ymax = polygons.ymin, polygons.ymax
        lo_x = np.maximum(0, np.floor((xmin - border - edge - border) / inner).astype(np.int64) - 1)
        hi_x = np.minimum(n - 1, np.floor((xmax - edge) / inner).astype(np.int64) + 1)
        lo_y = np.maximum(0, np.floor((ymin - border - edge - border) / inner).astype(np.int64) - 1)
        hi_y = np.minimum(n - 1, np.floor((ymax - edge) / inner).astype(np.int64) + 1)
        width = np.maximum(hi_x - lo_x + 1, 0)
        count = np.where(on_tract, width * np.maximum(hi_y - lo_y + 1, 0), 0)
        row = np.repeat(np.arange(near.size), count)
        if row.size == 0:
            continue
        offset = np.arange(row.size) - np.repeat(np.cumsum(count) - count, count)
        j = lo_y[row] + offset // width[row]
        i = lo_x[row] + offset % width[row]
        bx0 = (border + i * inner - border) + edge
        bx1 = (border + (i + 1) * inner + border) + edge
        by0 = (border + j * inner - border) + edge
        by1 = (border + (j + 1) * inner + border) + edge
        hit = _boxes_overlap(
            polygons,
            row,
            bx0.astype(float),
            bx1.astype(float),
            by0.astype(float),
            by1.astype(float),
        )
        out.append((near[row[hit]], np.full(int(hit.sum()), tract.tract_id), i[hit], j[hit]))
    if not out:
        return empty, empty, empty, empty
    pointing, tract_id, patch_x, patch_y = (
        np.concatenate(a).astype(np.int64) for a in zip(*out, strict=True)
    )
    return pointing, tract_id, patch_x, patch_y


def patches_for_pointings(
    tracts: Sequence[TractInfo],
    pointings: Iterable[tuple[int, float, float]],
    *,
    field_radius_deg: float,
) -> dict[tuple[int, str], list[int]]:
    """Planning-time overlaps: for every (tract, patch), the visits whose field may touch it.

    Parameters
    ----------
    tracts : sequence of TractInfo
        The sky map.
    pointings : iterable of (visit, ra_deg, dec_deg)
        Each visit's boresight (one entry per visit; repeats are ignored).
    field_radius_deg : float
        Radius of a circle that holds the whole focal plane (and the pointing error), deg:
        `SkyMapConfig.field_radius_deg`.

    Returns
    -------
    dict
        ``(tract_id, patch name)`` to the sorted visits overlapping it. A superset of the
        run-time overlaps from `patches_for_calexp`: a visit listed here may still leave a
        patch empty (its warp then covers no pixel). Computed by `overlap_pairs` (all
        pointings of a tract at once), equal to testing each visit's `circle_footprint` with
        `overlapping_tract_patches`.
    """
    first: dict[int, tuple[float, float]] = {}
    for visit, ra, dec in pointings:
        first.setdefault(int(visit), (float(ra), float(dec)))
    visits = np.fromiter(first, dtype=np.int64, count=len(first))
    coords = np.array(list(first.values()), dtype=float).reshape(-1, 2)
    pointing, tract_id, patch_x, patch_y = overlap_pairs(
        tracts, coords[:, 0], coords[:, 1], field_radius_deg=field_radius_deg
    )
    found: dict[tuple[int, str], set[int]] = {}
    for k, t, i, j in zip(
        pointing.tolist(), tract_id.tolist(), patch_x.tolist(), patch_y.tolist(), strict=True
    ):
        found.setdefault((t, f"{i},{j}"), set()).add(int(visits[k]))
    return {key: sorted(v) for key, v in sorted(found.items())}


def patches_for_pointings_loop(
    tracts: Sequence[TractInfo],
    pointings: Iterable[tuple[int, float, float]],
    *,
    field_radius_deg: float,
) -> dict[tuple[int, str], list[int]]:
    """`patches_for_pointings` one visit at a time (the reference the vectorized one equals)."""
    found: dict[tuple[int, str], set[int]] = {}
    seen: set[int] = set()
    for visit, ra, dec in pointings:
        if visit in seen:
            continue
        seen.add(visit)
        poly_ra, poly_dec = circle_footprint(ra, dec, field_radius_deg)
        for key in overlapping_tract_patches(tracts, poly_ra, poly_dec):
            found.setdefault(key, set()).add(int(visit))
    return {key: sorted(visits) for key, visits in sorted(found.items())}


def patches_for_calexp(
    tracts: Sequence[TractInfo], wcs: WCS, shape: tuple[int, int]
) -> list[tuple[int, str]]:
    """Run-time overlaps: ``(tract_id, patch name)`` of the patches a calexp's footprint touches."""
    ra, dec = ccd_footprint(wcs, shape)
    return overlapping_tract_patches(tracts, ra, dec)
